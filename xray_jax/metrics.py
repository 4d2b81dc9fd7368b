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
