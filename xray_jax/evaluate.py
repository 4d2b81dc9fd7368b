"""Evaluates a trained workdir and writes reports to WORKDIR/reports/.

    python -m xray_jax.evaluate --workdir=runs/cnn --split=test
    python -m xray_jax.evaluate --workdir=runs/cnn --image_dir=FOLDER   # holds NORMAL/ and PNEUMONIA/
"""

from __future__ import annotations

import os
import re
from typing import Any

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from xray_jax import checkpoints
from xray_jax import chest_xray
from xray_jax import cli
from xray_jax import input_pipeline
from xray_jax import metrics
from xray_jax import parallel
from xray_jax import images
from xray_jax import reports
from xray_jax import saliency
from xray_jax import trainer
from xray_jax.errors import UsageError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only for the command line: train.py imports this module and owns flags of these names."""
  flags.DEFINE_string("workdir", None, "The training run to evaluate.")
  flags.DEFINE_string("split", None, "A split of the prepared data: train, validation, test, kaggle_val.")
  flags.DEFINE_string("image_dir", None, "Any folder holding NORMAL/ and PNEUMONIA/ (instead of --split).")
  flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "best: best validation metric; latest: last saved.")
  flags.DEFINE_string("data_dir", None, "Kaggle folder (default: the one the run trained on, if it still exists).")
  flags.DEFINE_string("tfds_data_dir", None, "Prepared TFDS data (default: the one the run trained on).")
  flags.DEFINE_integer("batch_size", None, "Evaluation batch size (default: the run's).")
  flags.DEFINE_string("report_name", None, "Report file name (default: the split, or image_dir_<folder>).")
  flags.DEFINE_integer("mistake_maps", 8, "Saliency maps of this many most confident mistakes (0: none).")


def restore_for_eval(workdir: str, which: str) -> tuple[trainer.TrainConfig, trainer.TrainState, dict[str, Any]]:
  config = trainer.load_config(workdir)
  mngr = checkpoints.manager(workdir, checkpoints.BEST if which == "best" else checkpoints.LATEST, max_to_keep=1)
  step = mngr.latest_step()
  if step is None:
    raise UsageError(f"--workdir={workdir} has no {which} checkpoint in {mngr.directory}. Train first, or let "
                     "the run reach its first epoch end.")
  model = trainer.create_model(config)
  state = trainer.create_train_state(config, model, jax.random.key(0), lambda _: 0.0)
  try:
    state, meta = checkpoints.restore(mngr, step, state)
  except checkpoints.CheckpointDamagedError as e:
    raise UsageError(f"Refusing to evaluate a damaged checkpoint: {e}. Evaluate another with "
                     "--checkpoint=best|latest, or train again.") from e
  finally:
    mngr.close()
  return config, state, meta


def evaluate_workdir(workdir: str, *, split: str | None = None, image_dir: str | None = None,
                     checkpoint: str = "best", data_dir: str | None = None, tfds_data_dir: str | None = None,
                     batch_size: int | None = None, report_name: str | None = None,
                     mistake_maps: int = 0) -> dict[str, Any]:
  """Evaluates one checkpoint of `workdir` on a split or a folder; returns the report."""
  if (split is None) == (image_dir is None):
    raise UsageError("Pass exactly one of --split=NAME or --image_dir=FOLDER.")
  config, state, meta = restore_for_eval(workdir, checkpoint)
  mesh = parallel.make_mesh()
  batch_size = batch_size or config.eval_batch_size
  batch_size = parallel.round_up_to_devices(batch_size, mesh)
  builder = None
  if split is not None or meta.get("chosen_threshold") is None:
    # The data the run trained on, unless told otherwise; its fingerprint check catches edits.
    data_dir = data_dir or (config.data_dir if config.data_dir and os.path.isdir(config.data_dir) else None)
    builder = chest_xray.load_builder(data_dir=data_dir, tfds_data_dir=tfds_data_dir or config.tfds_data_dir,
                                      image_size=config.image_size)

  def predict_split(name: str) -> trainer.Predictions:
    ds = input_pipeline.load_split(builder, name, config.image_size)
    n = input_pipeline.num_examples(builder, name)
    return trainer.predict(state, input_pipeline.eval_batches(ds, num_examples=n, batch_size=batch_size))

  threshold, rule = meta.get("chosen_threshold"), meta.get("threshold_rule", trainer.THRESHOLD_RULE)
  if threshold is None:  # a mid-epoch checkpoint: choose now, by the same rule
    val = predict_split("validation")
    threshold = metrics.youden_threshold(val.labels, val.probs)

  skipped: list[dict[str, str]] = []
  notes = []
  if image_dir is not None:
    max_side = chest_xray.config_for_image_size(config.image_size).max_side  # as the builder stored them
    ds, skipped_files, records = input_pipeline.folder_dataset(image_dir, image_size=config.image_size,
                                                               max_side=max_side)
    skipped = [{"path": s.path, "reason": s.reason} for s in skipped_files]
    for s in skipped:
      logging.warning("Skipped %s: %s", s["path"], s["reason"])
    preds = trainer.predict(state, input_pipeline.eval_batches(ds, num_examples=len(records),
                                                                batch_size=batch_size))
    source = os.path.abspath(image_dir)
    name = report_name or "image_dir_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(source.rstrip("/")))
  else:
    ds = input_pipeline.load_split(builder, split, config.image_size)
    preds = predict_split(split)
    source = f"split '{split}' of {builder.data_dir}"
    name = report_name or split
    skipped = list(builder.info.metadata["skipped"])
    if split == "validation":
      notes.append("The chosen threshold was picked on this split, so its figures at that threshold are "
                   "optimistic; judge it on another split.")
    if split == "train":
      notes.append("Training split: the model has seen these images.")
  info = {"name": name, "source": source, "workdir": os.path.abspath(workdir), "model": config.model,
          "image_size": config.image_size, "checkpoint": checkpoint, "step": int(meta["step"]),
          "notes": notes, "skipped_files": skipped}
  weights = np.asarray(meta.get("class_weights", [1.0, 1.0]), np.float64)
  report = reports.build_report(labels=preds.labels, probs=preds.probs, class_weights=weights,
                                chosen_threshold=threshold, threshold_rule=rule, info=info)
  if not parallel.is_primary():
    return report
  report_dir = os.path.join(workdir, "reports")
  os.makedirs(report_dir, exist_ok=True)
  if mistake_maps:
    report["mistake_maps"] = write_mistake_maps(config, state, ds, preds, threshold, mistake_maps,
                                                os.path.join(report_dir, f"{name}_mistakes.png"))
  paths = reports.write(report_dir, name, report, file_names=preds.file_names,
                        labels=preds.labels, probs=preds.probs)
  logging.info("%s: %d examples, ROC AUC %.4f, accuracy %.4f at 0.5, %.4f at %.3f. Report: %s", name,
               report["num_examples"], report["roc_auc"], report["at_threshold_0.5"]["accuracy"],
               report["at_chosen_threshold"]["accuracy"], threshold, paths["md"])
  return report


def write_mistake_maps(config: trainer.TrainConfig, state: trainer.TrainState, ds, preds: trainer.Predictions,
                       threshold: float, k: int, path: str) -> dict[str, Any] | None:
  """A page of saliency overlays for the k most confident mistakes at the chosen threshold."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  wrong = np.flatnonzero((preds.probs >= threshold) != (preds.labels == 1))
  if not len(wrong):
    return None
  confidence = np.abs(preds.probs[wrong] - threshold)
  chosen = wrong[np.argsort(-confidence, kind="stable")[:k]]
  wanted = {preds.file_names[i]: i for i in chosen}
  pixels = {}
  for ex in ds.as_numpy_iterator():
    name = ex["file_name"].decode()
    if name in wanted:
      pixels[name] = ex["image"]
  model = trainer.create_model(config)
  method = saliency.default_method(model, config.image_size)
  names = [preds.file_names[i] for i in chosen]
  x = jnp.asarray(np.stack([pixels[n] for n in names]), jnp.float32) / 255.0
  maps = np.asarray(saliency.METHODS[method](model, {"params": state.params, "batch_stats": state.batch_stats}, x))
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, n, m in zip(axes.ravel(), names, maps):
    i = wanted[n]
    ax.imshow(saliency.overlay(pixels[n][..., 0], m))
    ax.set_title(f"{os.path.basename(n)}\ntrue {images.CLASS_NAMES[preds.labels[i]]}, "
                 f"P(pneu)={preds.probs[i]:.3f}", fontsize=7)
  fig.suptitle(f"Most confident mistakes at threshold {threshold:.3f} ({method})", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return {"png": os.path.basename(path), "method": method, "files": names}


def main(argv: list[str]) -> None:
  if not FLAGS.workdir:
    raise UsageError("Pass --workdir=WD, the folder of a training run.")
  report = evaluate_workdir(FLAGS.workdir, split=FLAGS.split, image_dir=FLAGS.image_dir,
                            checkpoint=FLAGS.checkpoint, data_dir=FLAGS.data_dir, tfds_data_dir=FLAGS.tfds_data_dir,
                            batch_size=FLAGS.batch_size, report_name=FLAGS.report_name,
                            mistake_maps=FLAGS.mistake_maps)
  print(f"{report['name']}: ROC AUC {report['roc_auc']:.4f}, accuracy {report['at_threshold_0.5']['accuracy']:.4f} "
        f"at 0.5 and {report['at_chosen_threshold']['accuracy']:.4f} at the chosen threshold "
        f"{report['at_chosen_threshold']['threshold']:.4f}. Reports in {os.path.join(FLAGS.workdir, 'reports')}/")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
