"""Classification metrics on host numpy arrays; PNEUMONIA (label 1) is the positive class."""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve: P(score of a random positive > a random negative), ties 1/2.

  Computed from average ranks (Mann-Whitney U); NaN when one class is absent.
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, dtype=np.float64)
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  ranks = np.empty(len(scores), dtype=np.float64)
  # Average rank within each run of tied scores.
  boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
  starts = np.concatenate([[0], boundaries])
  ends = np.concatenate([boundaries, [len(scores)]])
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = (s + e + 1) / 2.0  # ranks are 1-based
  u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def _ratio(a: int, b: int) -> float:
  return float(a / b) if b else float("nan")


def at_threshold(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
  """Accuracy, sensitivity, specificity, precision, F1 and [[tn, fp], [fn, tp]] at `threshold`.

  An example is called PNEUMONIA when its probability is >= threshold.
  """
  labels = np.asarray(labels).astype(bool)
  pred = np.asarray(probs) >= threshold
  tp, fp = int(np.sum(pred & labels)), int(np.sum(pred & ~labels))
  fn, tn = int(np.sum(~pred & labels)), int(np.sum(~pred & ~labels))
  sensitivity, precision = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
  return {
      "threshold": float(threshold),
      "accuracy": _ratio(tp + tn, len(labels)),
      "sensitivity": sensitivity,
      "specificity": _ratio(tn, tn + fp),
      "precision": precision,
      "f1": _ratio(2 * tp, 2 * tp + fp + fn),
      "confusion_matrix": [[tn, fp], [fn, tp]],
  }


def youden_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
  """The threshold maximising sensitivity + specificity - 1 (Youden's J).

  Candidates are midpoints between consecutive distinct probabilities, so the cut sits
  between examples rather than on one; ties in J go to the candidate nearest 0.5.
  """
  labels = np.asarray(labels).astype(bool)
  probs = np.asarray(probs, dtype=np.float64)
  if labels.all() or (~labels).all():
    return 0.5
  distinct, index = np.unique(probs, return_inverse=True)
  candidates = np.concatenate([[0.0], (distinct[:-1] + distinct[1:]) / 2.0, [np.nextafter(1.0, 2.0)]])
  # Candidate i calls positive every example whose probability is >= distinct[i].
  pos = np.bincount(index, weights=labels, minlength=len(distinct))
  neg = np.bincount(index, weights=~labels, minlength=len(distinct))
  tp = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])
  fp = np.concatenate([np.cumsum(neg[::-1])[::-1], [0.0]])
  sens = tp / labels.sum()
  spec = 1.0 - fp / (~labels).sum()
  j = sens + spec - 1.0
  best = np.flatnonzero(np.isclose(j, j.max()))
  return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def binary_nll(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
  """Per-example cross-entropy of P(PNEUMONIA) = probs against 0/1 labels."""
  p_true = np.where(np.asarray(labels) == 1, probs, 1.0 - np.asarray(probs))
  return -np.log(np.clip(p_true, 1e-12, 1.0))


def summarize(labels: np.ndarray, probs: np.ndarray, nll: np.ndarray) -> dict:
  """Threshold-free metrics plus those at 0.5, the headline numbers of a training epoch."""
  at_half = at_threshold(labels, probs, 0.5)
  return {"num_examples": int(len(labels)), "loss": float(np.mean(nll)) if len(nll) else float("nan"),
          "roc_auc": roc_auc(labels, probs), "accuracy": at_half["accuracy"],
          "sensitivity": at_half["sensitivity"], "specificity": at_half["specificity"]}


def roc_curve(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(false positive rate, true positive rate, threshold) at every distinct probability.

  Starts at (0, 0) with threshold +inf; the i-th point calls PNEUMONIA every example
  whose probability is >= threshold[i].
  """
  labels = np.asarray(labels).astype(bool)
  probs = np.asarray(probs, dtype=np.float64)
  order = np.argsort(-probs, kind="mergesort")
  sorted_probs = probs[order]
  last = np.r_[np.flatnonzero(np.diff(sorted_probs)), len(probs) - 1].astype(int)  # end of each tie run
  last = last[last >= 0]
  tp = np.cumsum(labels[order])[last].astype(np.float64)
  fp = last + 1 - tp
  n_pos, n_neg = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
  return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, sorted_probs[last]]


def precision_recall_curve(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(recall, precision) at every distinct probability, highest threshold first."""
  fpr, tpr, _ = roc_curve(labels, probs)
  labels = np.asarray(labels).astype(bool)
  tp, fp = tpr[1:] * labels.sum(), fpr[1:] * (~labels).sum()
  return tpr[1:], tp / np.maximum(tp + fp, 1e-12)


def average_precision(labels: np.ndarray, probs: np.ndarray) -> float:
  """Area under the precision-recall curve as the step sum sum_k (R_k - R_{k-1}) P_k."""
  recall, precision = precision_recall_curve(labels, probs)
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def calibration_bins(labels: np.ndarray, probs: np.ndarray, num_bins: int = 10) -> dict:
  """Reliability diagram data and expected calibration error for P(PNEUMONIA).

  Equal-width bins over [0, 1]; ECE = sum_b (n_b / n) |mean label_b - mean prob_b|.
  """
  labels = np.asarray(labels, np.float64)
  probs = np.asarray(probs, np.float64)
  index = np.minimum((probs * num_bins).astype(int), num_bins - 1)
  count = np.bincount(index, minlength=num_bins).astype(np.float64)
  mean_prob = np.bincount(index, probs, num_bins) / np.maximum(count, 1)
  frac_pos = np.bincount(index, labels, num_bins) / np.maximum(count, 1)
  ece = float(np.sum(count * np.abs(frac_pos - mean_prob)) / max(len(probs), 1))
  return {"num_bins": num_bins, "count": count.astype(int).tolist(), "mean_prob": mean_prob.tolist(),
          "fraction_positive": frac_pos.tolist(), "ece": ece}


def bootstrap_intervals(labels: np.ndarray, probs: np.ndarray, threshold: float, *,
                        groups: list[str] | None = None, num_samples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, list[float]]:
  """Percentile bootstrap intervals of ROC AUC and the metrics at `threshold`.

  With `groups` (patient ids) whole patients are resampled: images of one child are not
  independent, and resampling them one by one would make the intervals too narrow.
  """
  labels = np.asarray(labels).astype(bool)
  probs = np.asarray(probs, np.float64)
  names = groups if groups is not None else [str(i) for i in range(len(labels))]
  _, group_index = np.unique(np.asarray(names), return_inverse=True)
  members = [np.flatnonzero(group_index == g) for g in range(group_index.max() + 1)] if len(labels) else []
  rng = np.random.default_rng(seed)
  keys = ("roc_auc", "accuracy", "sensitivity", "specificity")
  samples = {k: [] for k in keys}
  for _ in range(num_samples if members else 0):
    idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
    y, p = labels[idx], probs[idx]
    at = at_threshold(y, p, threshold)
    samples["roc_auc"].append(roc_auc(y, p))
    for k in keys[1:]:
      samples[k].append(at[k])
  tail = (1.0 - level) / 2.0 * 100.0
  return {k: [float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100.0 - tail))]
          if v and not np.all(np.isnan(v)) else [float("nan"), float("nan")] for k, v in samples.items()}


def subgroup_rates(labels: np.ndarray, probs: np.ndarray, subgroups: list[str | None], thresholds: dict[str, float],
                   *, groups: list[str] | None = None, num_samples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict[str, dict]:
  """Per subgroup of the images (None: in none), the fraction called correctly at each threshold.

  For a subgroup of one class that fraction is its sensitivity (PNEUMONIA) or specificity
  (NORMAL); `roc_auc_vs_other_class` ranks its images against every image of the other class.
  `ci95` are percentile bootstrap intervals of each fraction, resampling the subgroup's
  patients (`groups`) or, without them, its images.
  """
  labels = np.asarray(labels).astype(int)
  probs = np.asarray(probs, np.float64)
  names = np.asarray(groups if groups is not None else [str(i) for i in range(len(labels))])
  rng = np.random.default_rng(seed)
  tail = (1.0 - level) / 2.0 * 100.0
  out = {}
  for sub in sorted({s for s in subgroups if s is not None}):
    member = np.array([s == sub for s in subgroups])
    y, p = labels[member], probs[member]
    counts = np.bincount(y, minlength=2)
    _, patient = np.unique(names[member], return_inverse=True)
    per_patient = np.bincount(patient)
    entry = {"num_examples": int(member.sum()), "num_patients": int(len(per_patient)), "class_counts": counts.tolist(),
             "rate": ("specificity", "sensitivity")[y[0]] if counts.min() == 0 else "accuracy",
             "mean_prob": float(p.mean())}
    if counts.min() == 0:
      other = labels != y[0]
      both = member | other
      entry["roc_auc_vs_other_class"] = roc_auc(labels[both], probs[both]) if other.any() else float("nan")
    draws = rng.integers(0, len(per_patient), (num_samples, len(per_patient)))
    n_drawn = per_patient[draws].sum(axis=1)
    for key, threshold in thresholds.items():
      correct = (p >= threshold) == (y == 1)
      entry[key] = float(correct.mean())
      drawn = np.bincount(patient, weights=correct)[draws].sum(axis=1) / n_drawn
      entry.setdefault("ci95", {})[key] = ([float(np.percentile(drawn, tail)), float(np.percentile(drawn, 100 - tail))]
                                           if num_samples else [float("nan"), float("nan")])
    out[sub] = entry
  return out
