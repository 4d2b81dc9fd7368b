"""Evaluation reports: JSON for tools, Markdown for people, CSV of every prediction."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

import numpy as np

from xray_jax import images
from xray_jax import metrics


def build_report(*, labels: np.ndarray, probs: np.ndarray, class_weights: np.ndarray, chosen_threshold: float,
                 threshold_rule: str, info: dict[str, Any], file_names: list[str] | None = None,
                 bootstrap_samples: int = 1000) -> dict[str, Any]:
  """The report dict. `loss` is the plain mean cross-entropy; `weighted_loss` uses the
  training class weights, as the training loss does. `ci95` holds percentile bootstrap
  intervals, resampling patients when `file_names` are given."""
  nll = metrics.binary_nll(labels, probs)
  counts = np.bincount(labels, minlength=2)
  groups = [images.patient_id(n) for n in file_names] if file_names is not None else None
  ci = lambda t: metrics.bootstrap_intervals(labels, probs, t, groups=groups, num_samples=bootstrap_samples)
  ci_05, ci_chosen = ci(0.5), ci(chosen_threshold)
  subgroups = [images.subgroup(n) for n in file_names] if file_names is not None else []
  by_subgroup = metrics.subgroup_rates(
      labels, probs, subgroups, {"at_threshold_0.5": 0.5, "at_chosen_threshold": chosen_threshold},
      groups=groups, num_samples=bootstrap_samples) if any(s is not None for s in subgroups) else {}
  return {
      **info,
      "num_examples": int(len(labels)),
      "class_counts": dict(zip(images.CLASS_NAMES, counts.tolist())),
      "loss": float(np.mean(nll)),
      "weighted_loss": float(np.mean(nll * class_weights[labels])),
      "roc_auc": metrics.roc_auc(labels, probs),
      "roc_auc_ci95": ci_05["roc_auc"],
      "average_precision": metrics.average_precision(labels, probs),
      "calibration": metrics.calibration_bins(labels, probs),
      "bootstrap": {"samples": bootstrap_samples, "unit": "patient" if groups is not None else "image"},
      "at_threshold_0.5": {**metrics.at_threshold(labels, probs, 0.5),
                           "ci95": {k: v for k, v in ci_05.items() if k != "roc_auc"}},
      "at_chosen_threshold": {**metrics.at_threshold(labels, probs, chosen_threshold), "rule": threshold_rule,
                              "ci95": {k: v for k, v in ci_chosen.items() if k != "roc_auc"}},
      **({"subgroups": {name: {**by_subgroup[name], "class_counts": dict(zip(images.CLASS_NAMES,
                                                                          by_subgroup[name]["class_counts"]))}
                        for name in _subgroup_order(by_subgroup)}} if by_subgroup else {}),
  }


def _subgroup_order(names) -> list[str]:
  return sorted(names, key=images.SUBGROUPS.index)


def write_figures(report_dir: str, name: str, report: dict[str, Any], labels: np.ndarray,
                  probs: np.ndarray) -> dict[str, str]:
  """ROC, precision-recall, reliability and confusion-matrix PNGs; returns {kind: file name}."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  files = {}

  def save(fig, kind):
    files[kind] = f"{name}_{kind}.png"
    fig.tight_layout()
    fig.savefig(os.path.join(report_dir, files[kind]), dpi=100)
    plt.close(fig)

  fpr, tpr, _ = metrics.roc_curve(labels, probs)
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.plot(fpr, tpr, lw=1.5, label=f"AUC {report['roc_auc']:.4f}")
  ax.plot([0, 1], [0, 1], ":", color="gray", lw=1)
  for key, marker in (("at_threshold_0.5", "o"), ("at_chosen_threshold", "s")):
    m = report[key]
    ax.plot(1 - m["specificity"], m["sensitivity"], marker, label=f"threshold {m['threshold']:.3f}")
  ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC: {name}", xlim=(0, 1), ylim=(0, 1.01))
  ax.legend(loc="lower right", fontsize=8)
  save(fig, "roc")

  recall, precision = metrics.precision_recall_curve(labels, probs)
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.step(recall, precision, where="post", lw=1.5, label=f"AP {report['average_precision']:.4f}")
  ax.axhline(float(np.mean(labels)), ls=":", color="gray", lw=1, label="prevalence")
  ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=f"Precision-recall: {name}",
         xlim=(0, 1), ylim=(0, 1.01))
  ax.legend(loc="lower left", fontsize=8)
  save(fig, "pr")

  cal = report["calibration"]
  edges = np.linspace(0, 1, cal["num_bins"] + 1)
  fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4, 5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
  used = np.asarray(cal["count"]) > 0
  ax.bar(edges[:-1][used], np.asarray(cal["fraction_positive"])[used], width=1 / cal["num_bins"], align="edge",
         edgecolor="k", alpha=0.7, label="observed fraction PNEUMONIA")
  ax.plot([0, 1], [0, 1], ":", color="gray", lw=1, label="perfect calibration")
  ax.set(ylabel="fraction PNEUMONIA", title=f"Reliability: {name} (ECE {cal['ece']:.4f})", ylim=(0, 1))
  ax.legend(loc="upper left", fontsize=8)
  ax2.bar(edges[:-1], cal["count"], width=1 / cal["num_bins"], align="edge", edgecolor="k", color="gray")
  ax2.set(xlabel="predicted P(PNEUMONIA)", ylabel="images", yscale="symlog")
  save(fig, "reliability")

  fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
  for ax, key in zip(axes, ("at_threshold_0.5", "at_chosen_threshold")):
    cm = np.asarray(report[key]["confusion_matrix"])
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
      ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=images.CLASS_NAMES, yticklabels=images.CLASS_NAMES,
           xlabel="predicted", ylabel="true", title=f"threshold {report[key]['threshold']:.3f}")
  save(fig, "confusion")
  return files


def _fmt(x: Any, ci: list[float] | None = None) -> str:
  if isinstance(x, float):
    text = "n/a" if math.isnan(x) else f"{x:.4f}"
    if ci is not None and not any(math.isnan(c) for c in ci):
      text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
    return text
  return str(x)


def to_markdown(report: dict[str, Any]) -> str:
  t05, tc = report["at_threshold_0.5"], report["at_chosen_threshold"]
  lines = [
      f"# Evaluation: {report['name']}",
      "",
      f"- data: {report['source']}",
      f"- model: `{report['model']}` at {report['image_size']}x{report['image_size']}, "
      f"{report['checkpoint']} checkpoint (step {report['step']}) of `{report['workdir']}`",
      f"- examples: {report['num_examples']} ({', '.join(f'{k} {v}' for k, v in report['class_counts'].items())})",
      f"- loss (mean cross-entropy): {_fmt(report['loss'])}; class-weighted: {_fmt(report['weighted_loss'])}",
      f"- ROC AUC: {_fmt(report['roc_auc'], report.get('roc_auc_ci95'))}; average precision "
      f"{_fmt(report.get('average_precision', float('nan')))}",
  ]
  if "calibration" in report:
    lines.append(f"- expected calibration error ({report['calibration']['num_bins']} bins): "
                 f"{_fmt(report['calibration']['ece'])}")
  for key, text in report.get("extra", {}).items():
    lines.append(f"- {key}: {text}")
  lines += [
      "",
      "PNEUMONIA is the positive class; an image is called PNEUMONIA when its probability is "
      "at least the threshold.",
  ]
  if "bootstrap" in report:
    lines += [f"[brackets]: 95% percentile bootstrap interval, {report['bootstrap']['samples']} resamples of "
              f"{report['bootstrap']['unit']}s."]
  lines += ["", "| metric | at 0.5 | at chosen threshold |", "|---|---|---|"]
  for key in ("threshold", "accuracy", "sensitivity", "specificity", "precision", "f1"):
    lines.append(f"| {key} | {_fmt(t05[key], t05.get('ci95', {}).get(key))} | "
                 f"{_fmt(tc[key], tc.get('ci95', {}).get(key))} |")
  lines += ["", f"Chosen threshold: {tc['rule']}.", ""]
  if report.get("subgroups"):
    lines += ["By subgroup of the file names (`images.subgroup`: the pneumonia's cause; the two series of "
              "NORMAL films): the share called correctly, which is the sensitivity of a PNEUMONIA subgroup and "
              "the specificity of a NORMAL one; ROC AUC against every image of the other class.", "",
              "| subgroup | images (patients) | rate | at 0.5 | at chosen threshold | ROC AUC vs other class |",
              "|---|---|---|---|---|---|"]
    for name, r in report["subgroups"].items():
      lines.append(f"| {name} | {r['num_examples']} ({r['num_patients']}) | {r['rate']} | "
                   f"{_fmt(r['at_threshold_0.5'], r['ci95']['at_threshold_0.5'])} | "
                   f"{_fmt(r['at_chosen_threshold'], r['ci95']['at_chosen_threshold'])} | "
                   f"{_fmt(r.get('roc_auc_vs_other_class', float('nan')))} |")
    lines.append("")
  for title, block in (("at 0.5", t05), ("at the chosen threshold", tc)):
    (tn, fp), (fn, tp) = block["confusion_matrix"]
    lines += [f"Confusion matrix {title}:", "", "| true \\ predicted | NORMAL | PNEUMONIA |", "|---|---|---|",
              f"| NORMAL | {tn} | {fp} |", f"| PNEUMONIA | {fn} | {tp} |", ""]
  if report.get("stress"):
    st = report["stress"]
    which = {"standard": "", "unseen": ", the unseen set: families no augmentation or threshold rule saw"}
    lines += [f"Stress test (xray_jax/stress.py{which.get(st.get('set', 'standard'), '')}): the same images under "
              "fixed shifts; accuracy, sensitivity "
              f"and specificity at the chosen threshold {st['threshold']:.4f} (and at 0.5):", "",
              "| shift | ROC AUC | accuracy | sensitivity | specificity | loss |", "|---|---|---|---|---|---|"]
    both = lambda r, k: f"{_fmt(r[k])} ({_fmt(r[k + '_at_0.5'])})" if k + "_at_0.5" in r else _fmt(r[k])
    rows = [*st["shifts"].items(), ("**mean**", st["mean"]), ("**worst**", st["worst"])]
    lines += [f"| {k} | {_fmt(r['roc_auc'])} | {both(r, 'accuracy')} | {both(r, 'sensitivity')} | "
              f"{both(r, 'specificity')} | {_fmt(r['loss']) if 'loss' in r else ''} |" for k, r in rows]
    rule = st.get("threshold_rules", {}).get("stress_youden_left_out")
    if rule:
      m, w = rule["mean"], rule["worst"]
      lines += ["", "Threshold chosen by Youden's J on the other shifts (and the unshifted images), scored on "
                f"the left-out shift: mean accuracy {_fmt(m['accuracy'])}, sensitivity {_fmt(m['sensitivity'])}, "
                f"specificity {_fmt(m['specificity'])}; worst {_fmt(w['accuracy'])}, {_fmt(w['sensitivity'])}, "
                f"{_fmt(w['specificity'])}. Chosen on all shifts: "
                f"{st['threshold_rules']['stress_youden_all_shifts']:.4f}."]
    em = st.get("threshold_rules", {}).get("em_per_shift")
    if em:
      m, w = em["mean"], em["worst"]
      lines += ["", f"Label-shift EM on each shifted set alone (true P(PNEUMONIA) {em['observed_prior']:.4f} under "
                f"every shift): estimates " + ", ".join(f"{k} {r['estimated_prior']:.3f}"
                                                         for k, r in em["shifts"].items()) +
                f"; at EM's minimum-error threshold mean sensitivity {_fmt(m['sensitivity'])}, specificity "
                f"{_fmt(m['specificity'])}; worst {_fmt(w['sensitivity'])}, {_fmt(w['specificity'])}."]
    sub = st.get("subgroups")
    if sub:
      lines += ["", "By subgroup of the file names, the share called correctly at the chosen threshold (sensitivity "
                "or specificity): " + "; ".join(f"{k} mean {_fmt(sub['mean'][k])}, worst {_fmt(sub['worst'][k])} "
                                               f"({sub['worst_shift'][k]})" for k in _subgroup_order(sub["mean"])) + "."]
    lines.append("")
  figures = report.get("figures", {})
  if figures:
    lines += ["Figures:", ""] + [f"![{kind}]({png})" for kind, png in figures.items()] + [""]
  if report.get("mistake_maps"):
    lines += [f"Saliency ({report['mistake_maps']['method']}) of the most confident mistakes:", "",
              f"![most confident mistakes]({report['mistake_maps']['png']})", ""]
  for note in report.get("notes", []):
    lines.append(f"> {note}")
  skipped = report.get("skipped_files", [])
  if skipped:
    lines += ["", f"{len(skipped)} file(s) were skipped:", ""]
    lines += [f"- `{s['path']}`: {s['reason']}" for s in skipped]
  return "\n".join(lines) + "\n"


def write(report_dir: str, name: str, report: dict[str, Any], *, file_names: list[str], labels: np.ndarray,
          probs: np.ndarray) -> dict[str, str]:
  """Writes <name>.json, <name>.md and <name>_predictions.csv; returns their paths."""
  os.makedirs(report_dir, exist_ok=True)
  paths = {ext: os.path.join(report_dir, f"{name}{suffix}")
           for ext, suffix in (("json", ".json"), ("md", ".md"), ("csv", "_predictions.csv"))}
  with open(paths["json"], "w") as f:
    json.dump(report, f, indent=2)
  with open(paths["md"], "w") as f:
    f.write(to_markdown(report))
  chosen = report["at_chosen_threshold"]["threshold"]
  with open(paths["csv"], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file_name", "patient_id", "label", "prob_pneumonia", "pred_at_0.5", "pred_at_chosen"])
    for name_, y, p in zip(file_names, labels, probs):
      w.writerow([name_, images.patient_id(name_), images.CLASS_NAMES[y], f"{p:.6f}",
                  images.CLASS_NAMES[int(p >= 0.5)], images.CLASS_NAMES[int(p >= chosen)]])
  return paths


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The epoch records (lines with validation figures) of WORKDIR/metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir} a training run folder?")
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if "val_loss" in r]


def plot_training_curves(workdir: str, path: str | None = None) -> str:
  """Loss, accuracy and ROC AUC per epoch, train vs validation; returns the PNG's path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = read_metrics(workdir)
  path = path or os.path.join(workdir, "reports", "training_curves.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  epochs = [r["epoch"] for r in rows]
  fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
  for ax, key, title in zip(axes, ("loss", "accuracy", "roc_auc"),
                            ("loss (mean cross-entropy)", "accuracy at 0.5", "ROC AUC")):
    for prefix, style in (("train", "-o"), ("val", "-s")):
      ax.plot(epochs, [r.get(f"{prefix}_{key}", float("nan")) for r in rows], style, ms=3,
              label="train (augmented, while learning)" if prefix == "train" else "validation")
    ax.set(xlabel="epoch", title=title)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(os.path.basename(os.path.abspath(workdir)), fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
