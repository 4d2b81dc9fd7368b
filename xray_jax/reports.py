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
                 threshold_rule: str, info: dict[str, Any]) -> dict[str, Any]:
  """The report dict. `loss` is the plain mean cross-entropy; `weighted_loss` uses the
  training class weights, as the training loss does."""
  nll = metrics.binary_nll(labels, probs)
  counts = np.bincount(labels, minlength=2)
  return {
      **info,
      "num_examples": int(len(labels)),
      "class_counts": dict(zip(images.CLASS_NAMES, counts.tolist())),
      "loss": float(np.mean(nll)),
      "weighted_loss": float(np.mean(nll * class_weights[labels])),
      "roc_auc": metrics.roc_auc(labels, probs),
      "at_threshold_0.5": metrics.at_threshold(labels, probs, 0.5),
      "at_chosen_threshold": {**metrics.at_threshold(labels, probs, chosen_threshold), "rule": threshold_rule},
  }


def _fmt(x: Any) -> str:
  if isinstance(x, float):
    return "n/a" if math.isnan(x) else f"{x:.4f}"
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
      f"- ROC AUC: {_fmt(report['roc_auc'])}",
      "",
      "PNEUMONIA is the positive class; an image is called PNEUMONIA when its probability is "
      "at least the threshold.",
      "",
      "| metric | at 0.5 | at chosen threshold |",
      "|---|---|---|",
  ]
  for key in ("threshold", "accuracy", "sensitivity", "specificity", "precision", "f1"):
    lines.append(f"| {key} | {_fmt(t05[key])} | {_fmt(tc[key])} |")
  lines += ["", f"Chosen threshold: {tc['rule']}.", ""]
  for title, block in (("at 0.5", t05), ("at the chosen threshold", tc)):
    (tn, fp), (fn, tp) = block["confusion_matrix"]
    lines += [f"Confusion matrix {title}:", "", "| true \\ predicted | NORMAL | PNEUMONIA |", "|---|---|---|",
              f"| NORMAL | {tn} | {fp} |", f"| PNEUMONIA | {fn} | {tp} |", ""]
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
