"""Evaluates a trained workdir and writes reports to WORKDIR/reports/.

    python -m xray_jax.evaluate --workdir=runs/cnn --split=test
    python -m xray_jax.evaluate --workdir=runs/cnn --image_dir=FOLDER   # holds NORMAL/ and PNEUMONIA/
    python -m xray_jax.evaluate --workdir=runs/cnn_s0 --ensemble=runs/cnn_s1,runs/cnn_s2 --tta \
        --split=validation --stress --label_shift=em --report_name=ensemble_validation
"""

from __future__ import annotations

from xray_jax import hostmem

hostmem.keep_freed_memory()  # before jax and TensorFlow start their threads (see hostmem)

# pylint: disable=wrong-import-position
import dataclasses
import functools
import json
import os
import re
from typing import Any

from absl import flags
from absl import logging
import jax
import numpy as np

from xray_jax import adapt
from xray_jax import calibration
from xray_jax import checkpoints
from xray_jax import chest_xray
from xray_jax import cli
from xray_jax import images
from xray_jax import input_pipeline
from xray_jax import learning
from xray_jax import metrics
from xray_jax import parallel
from xray_jax import reports
from xray_jax import saliency
from xray_jax import stress
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
  flags.DEFINE_list("ensemble", [], "More workdirs whose probabilities are averaged with --workdir's "
                    "(same image size); the threshold is then chosen on the ensemble's validation output.")
  flags.DEFINE_bool("tta", False, "Test-time augmentation: average over augment.TTA_VIEWS (zooms, shifts).")
  flags.DEFINE_bool("adapt_bn", False, "Re-estimate every BatchNorm's statistics on each evaluated set of images "
                    "(unlabeled; AdaBN, xray_jax/adapt.py) before predicting it.")
  flags.DEFINE_float("adapt_bn_prior", 0.0, "With --adapt_bn: weight of the training statistics, as a count of "
                     "images mixed with the evaluated set's (Schneider et al. 2020; 0: the set's alone).")
  flags.DEFINE_bool("temperature_scaling", False, "Divide logits by a temperature fitted on validation.")
  flags.DEFINE_enum("label_shift", "none", ["none", "em"], "em: estimate the evaluated data's class prior "
                    "from its unlabeled outputs (Saerens et al. 2002) and also report the minimum-error "
                    "threshold under that prior.")
  flags.DEFINE_bool("stress", False, "Also evaluate under each shift of xray_jax/stress.py (a table in the "
                    "report), and compare threshold rules on shifts left out of the choice.")
  flags.DEFINE_enum("stress_set", "standard", list(stress.SHIFT_SETS), "Which shifts --stress applies: "
                    "standard (the families the augmentation draws and the stress threshold rule sees) or "
                    "unseen (families nothing here is trained or tuned on).")
  flags.DEFINE_enum("threshold_rule", None, list(trainer.THRESHOLD_RULES), "How the chosen threshold is "
                    "picked (default: the run's --threshold_rule): " + "; ".join(
                        f"{k}: {v}" for k, v in trainer.THRESHOLD_RULES.items()))
  flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples (of patients) for the 95% intervals.")


def restore_for_eval(workdir: str, which: str) -> tuple[learning.TrainConfig, learning.TrainState, dict[str, Any]]:
  config = trainer.load_config(workdir)
  mngr = checkpoints.manager(workdir, checkpoints.BEST if which == "best" else checkpoints.LATEST, max_to_keep=1)
  step = mngr.latest_step()
  if step is None:
    raise UsageError(f"--workdir={workdir} has no {which} checkpoint in {mngr.directory}. Train first, or let "
                     "the run reach its first epoch end.")
  model = learning.create_model(config)
  state = learning.create_train_state(config, model, jax.random.key(0), lambda _: 0.0)
  try:
    state, meta = checkpoints.restore(mngr, step, state)
  except checkpoints.CheckpointDamagedError as e:
    raise UsageError(f"Refusing to evaluate a damaged checkpoint: {e}. Evaluate another with "
                     "--checkpoint=best|latest, or train again.") from e
  finally:
    mngr.close()
  return config, state, meta


# The threshold of the run's own rule (config.threshold_rule), as evaluate last chose it for a
# checkpoint: `predict` labels with it. The trainer's checkpoints hold the validation-only
# choice; the stress rule needs the shifted validation images, so evaluate records it here.
THRESHOLD_FILE = "chosen_threshold.json"


def recorded_threshold(workdir: str, checkpoint: str, step: int, rule_key: str) -> dict[str, Any] | None:
  """The threshold evaluate recorded for this checkpoint, step and rule, if any is still valid.

  A stress-rule entry counts only while the standard shift set it pooled is unchanged.
  """
  path = os.path.join(workdir, THRESHOLD_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    entry = json.load(f).get(checkpoint, {})
  if entry.get("step") != step or entry.get("rule_key") != rule_key:
    return None
  if rule_key == "stress" and entry.get("shifts") != list(stress.SHIFTS):
    return None
  return entry


def run_threshold(workdir: str, config: learning.TrainConfig, meta: dict[str, Any],
                  checkpoint: str) -> tuple[float, str]:
  """The threshold `predict` labels with, and its rule: the one the run's reports use."""
  if config.threshold_rule != "validation":
    entry = recorded_threshold(workdir, checkpoint, int(meta["step"]), config.threshold_rule)
    if entry is not None:
      return float(entry["threshold"]), entry["rule"]
  threshold = meta.get("chosen_threshold")
  if threshold is None:
    logging.warning("The %s checkpoint has no chosen threshold; labelling at 0.5.", checkpoint)
    return 0.5, "none recorded: 0.5"
  if config.threshold_rule != "validation":
    logging.warning("--workdir=%s was trained with --threshold_rule=%s, but no threshold of that rule is recorded "
                    "for its %s checkpoint (step %d) over the current stress shifts; labelling at the validation-only "
                    "threshold %.4f. Run `python -m xray_jax.evaluate --workdir=%s --split=validation` once to "
                    "record it.", workdir,
                    config.threshold_rule, checkpoint, int(meta["step"]), threshold, workdir)
  return float(threshold), meta.get("threshold_rule", trainer.THRESHOLD_RULE)


def _record_threshold(workdir: str, checkpoint: str, step: int, threshold: float, rule_key: str,
                      rule: str) -> None:
  path = os.path.join(workdir, THRESHOLD_FILE)
  recorded = {}
  if os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f)
  recorded[checkpoint] = {"step": step, "threshold": float(threshold), "rule_key": rule_key, "rule": rule}
  if rule_key == "stress":
    recorded[checkpoint]["shifts"] = list(stress.SHIFTS)
  with open(path + ".tmp", "w") as f:
    json.dump(recorded, f, indent=1)
  os.replace(path + ".tmp", path)  # a reader never sees half a file


@dataclasses.dataclass
class Predictor:
  """What a report scores: one checkpoint's probabilities, or their mean over several runs
  (an ensemble), each optionally averaged over test-time views."""
  members: list[tuple[learning.TrainConfig, learning.TrainState]]
  batch_size: int
  tta: bool = False
  adapt_bn: bool = False  # each member's BatchNorm statistics re-estimated on each set it predicts
  adapt_bn_prior: float = 0.0
  # (id(state), id(ds)) -> (state, ds, adapted state): the mistake maps reuse the adaptation the
  # predictions made. The entry holds both keys' objects, so their ids are not reused meanwhile.
  _adapted: dict[tuple[int, int], tuple[Any, Any, learning.TrainState]] = dataclasses.field(
      default_factory=dict, repr=False)

  def state_for(self, state: learning.TrainState, ds, num_examples: int) -> learning.TrainState:
    if not self.adapt_bn:
      return state
    key = (id(state), id(ds))
    if key not in self._adapted:
      adapted = adapt.adapt_batch_norm(state, ds, num_examples, self.batch_size, prior=self.adapt_bn_prior)
      self._adapted[key] = (state, ds, adapted)
    return self._adapted[key][2]

  def __call__(self, ds, num_examples: int) -> trainer.Predictions:
    runs = [trainer.predict(self.state_for(state, ds, num_examples),
                            input_pipeline.eval_batches(ds, num_examples=num_examples, batch_size=self.batch_size),
                            tta=self.tta)
            for _, state in self.members]
    return dataclasses.replace(runs[0], probs=np.mean([r.probs for r in runs], axis=0))

  @property
  def plain(self) -> bool:
    return len(self.members) == 1 and not self.tta and not self.adapt_bn

  def describe(self) -> str:
    parts = [f"mean of {len(self.members)} runs"] if len(self.members) > 1 else []
    if self.tta:
      parts.append("test-time augmentation")
    if self.adapt_bn:
      parts.append("BatchNorm statistics re-estimated on each evaluated set" +
                   (f" (prior weight {self.adapt_bn_prior:g} images)" if self.adapt_bn_prior else ""))
    return ", ".join(parts) or "single model"


def _source_prior(builder, weights: np.ndarray) -> float:
  return calibration.effective_prior(input_pipeline.class_counts(builder, "train"), weights)


def shifted_probs(predictor: Predictor, ds, n: int, temperature: float,
                  stress_set: str = "standard") -> dict[str, np.ndarray]:
  """P(PNEUMONIA) of every example of `ds` under each shift of stress.SHIFT_SETS[stress_set]."""
  return {shift: calibration.apply_temperature(predictor(stress.apply(ds, shift), n).probs, temperature)
          for shift in stress.SHIFT_SETS[stress_set]}


def stress_youden(labels: np.ndarray, unshifted: np.ndarray, shifted: list[np.ndarray]) -> float:
  """Youden's J threshold on the unshifted images pooled with their shifted copies."""
  pool = [unshifted, *shifted]
  return metrics.youden_threshold(np.tile(labels, len(pool)), np.concatenate(pool))


def evaluate_workdir(workdir: str, *, split: str | None = None, image_dir: str | None = None,
                     checkpoint: str = "best", data_dir: str | None = None, tfds_data_dir: str | None = None,
                     batch_size: int | None = None, report_name: str | None = None,
                     mistake_maps: int = 0, ensemble: list[str] | tuple[str, ...] = (), tta: bool = False,
                     temperature_scaling: bool = False, label_shift: str = "none", stress_test: bool = False,
                     stress_set: str = "standard", threshold_rule: str | None = None,
                     bootstrap: int = 1000, adapt_bn: bool = False, adapt_bn_prior: float = 0.0) -> dict[str, Any]:
  """Evaluates one checkpoint of `workdir` (or an ensemble) on a split or a folder; returns the report."""
  if (split is None) == (image_dir is None):
    raise UsageError("Pass exactly one of --split=NAME or --image_dir=FOLDER.")
  config, state, meta = restore_for_eval(workdir, checkpoint)
  members = [(config, state)]
  for other in ensemble:
    other_config, other_state, _ = restore_for_eval(other, checkpoint)
    if other_config.image_size != config.image_size:
      raise UsageError(f"--ensemble={other} trained at image size {other_config.image_size}, --workdir={workdir} "
                       f"at {config.image_size}; an ensemble needs one image size.")
    members.append((other_config, other_state))
  mesh = parallel.make_mesh()
  batch_size = parallel.round_up_to_devices(batch_size or config.eval_batch_size, mesh)
  if adapt_bn_prior and not adapt_bn:
    raise UsageError(f"--adapt_bn_prior={adapt_bn_prior} does nothing without --adapt_bn; add it or drop the prior.")
  predictor = Predictor(members, batch_size, tta, adapt_bn, adapt_bn_prior)
  threshold_rule = threshold_rule or config.threshold_rule
  if threshold_rule not in trainer.THRESHOLD_RULES:
    raise UsageError(f"--threshold_rule={threshold_rule}: choose one of {', '.join(trainer.THRESHOLD_RULES)}.")
  if stress_set not in stress.SHIFT_SETS:
    raise UsageError(f"--stress_set={stress_set}: choose one of {', '.join(stress.SHIFT_SETS)}.")
  # A plain model's stress-rule threshold is a property of the checkpoint: reuse the recorded one
  # rather than predicting the validation split under every shift again.
  reused = None
  if predictor.plain and not temperature_scaling and threshold_rule != "validation":
    reused = recorded_threshold(workdir, checkpoint, int(meta["step"]), threshold_rule)
  needs_validation = (not predictor.plain or temperature_scaling or meta.get("chosen_threshold") is None
                      or (threshold_rule != "validation" and reused is None))
  builder = None
  if split is not None or needs_validation or label_shift != "none":
    # The data the run trained on, unless told otherwise; its fingerprint check catches edits.
    data_dir = data_dir or (config.data_dir if config.data_dir and os.path.isdir(config.data_dir) else None)
    builder = chest_xray.load_builder(data_dir=data_dir, tfds_data_dir=tfds_data_dir or config.tfds_data_dir,
                                      image_size=config.image_size)

  @functools.cache  # one dataset object per split, so that Predictor's adapted states are found again
  def split_ds(name: str):
    if name in ("train", "validation"):
      for run in [workdir, *ensemble]:
        trainer.check_split_version(run, builder, f"reading its {name} split")
    return input_pipeline.load_split(builder, name, config.image_size), input_pipeline.num_examples(builder, name)

  extra: dict[str, str] = {}
  threshold, rule = meta.get("chosen_threshold"), meta.get("threshold_rule", trainer.THRESHOLD_RULE)
  if reused is not None:
    threshold, rule = float(reused["threshold"]), reused["rule"]
    extra["threshold"] = (f"{threshold:.4f}, recorded in {THRESHOLD_FILE} by an earlier evaluation of this "
                          f"checkpoint (step {int(meta['step'])})")
  temperature = 1.0
  val, val_shifted = None, None
  if needs_validation:
    val = predictor(*split_ds("validation"))
    if temperature_scaling:
      temperature = calibration.fit_temperature(val.labels, val.probs)
      extra["temperature"] = (f"{temperature:.4f}, fitted on validation (ECE there "
                              f"{metrics.calibration_bins(val.labels, val.probs)['ece']:.4f} before, "
                              f"{metrics.calibration_bins(val.labels, calibration.apply_temperature(val.probs, temperature))['ece']:.4f} after)")
      val = dataclasses.replace(val, probs=calibration.apply_temperature(val.probs, temperature))
    if threshold_rule == "stress":  # validation and its shifted copies, pooled
      val_shifted = shifted_probs(predictor, *split_ds("validation"), temperature)
      threshold = stress_youden(val.labels, val.probs, list(val_shifted.values()))
    elif threshold is None or not predictor.plain:
      threshold = metrics.youden_threshold(val.labels, val.probs)
    else:  # the run's own threshold, moved by the same monotone map as the probabilities
      threshold = float(calibration.apply_temperature(threshold, temperature))
    rule = trainer.THRESHOLD_RULES[threshold_rule]
    if not predictor.plain:
      rule = f"{rule} ({predictor.describe()})"
  if not predictor.plain or temperature_scaling:
    extra["predictions"] = predictor.describe() + (", temperature-scaled" if temperature_scaling else "")
  if ensemble:
    extra["ensemble"] = ", ".join([os.path.abspath(workdir)] + [os.path.abspath(e) for e in ensemble])

  skipped: list[dict[str, str]] = []
  notes = []
  if image_dir is not None:
    max_side = chest_xray.config_for_image_size(config.image_size).max_side  # as the builder stored them
    ds, skipped_files, records = input_pipeline.folder_dataset(image_dir, image_size=config.image_size,
                                                               max_side=max_side)
    skipped = [{"path": s.path, "reason": s.reason} for s in skipped_files]
    for s in skipped:
      logging.warning("Skipped %s: %s", s["path"], s["reason"])
    n = len(records)
    source = os.path.abspath(image_dir)
    name = report_name or "image_dir_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(source.rstrip("/")))
  else:
    ds, n = split_ds(split)
    source = f"split '{split}' of {builder.data_dir}"
    name = report_name or split
    skipped = list(builder.info.metadata["skipped"])
    if split == "validation":
      notes.append("The chosen threshold was picked on this split, so its figures at that threshold are "
                   "optimistic; judge it on another split.")
    if split == "train":
      notes.append("Training split: the model has seen these images.")
  if split == "validation" and val is not None:
    preds = val  # already predicted (and temperature-scaled) above
  else:
    preds = predictor(ds, n)
    preds = dataclasses.replace(preds, probs=calibration.apply_temperature(preds.probs, temperature))
  info = {"name": name, "source": source, "workdir": os.path.abspath(workdir), "model": config.model,
          "image_size": config.image_size, "checkpoint": checkpoint, "step": int(meta["step"]),
          "notes": notes, "skipped_files": skipped, "extra": extra}
  weights = np.asarray(meta.get("class_weights", [1.0, 1.0]), np.float64)
  report = reports.build_report(labels=preds.labels, probs=preds.probs, class_weights=weights,
                                chosen_threshold=threshold, threshold_rule=rule, info=info,
                                file_names=preds.file_names, bootstrap_samples=bootstrap)
  if label_shift == "em":
    report["label_shift"] = label_shift_report(preds, _source_prior(builder, weights))
    ls = report["label_shift"]
    report["extra"]["label shift (EM)"] = (f"estimated P(PNEUMONIA) {ls['estimated_prior']:.4f} (observed "
                                 f"{ls['observed_prior']:.4f}, training posteriors' prior {ls['source_prior']:.4f}); "
                                 f"minimum-error threshold {ls['threshold']:.4f}: accuracy "
                                 f"{ls['at_threshold']['accuracy']:.4f}, sensitivity "
                                 f"{ls['at_threshold']['sensitivity']:.4f}, specificity "
                                 f"{ls['at_threshold']['specificity']:.4f}")
  if stress_test:
    reuse = split == "validation" and val_shifted is not None and stress_set == "standard"
    shifted = val_shifted if reuse else shifted_probs(predictor, ds, n, temperature, stress_set)
    report["stress"] = {"set": stress_set, **stress_report(
        preds, shifted, threshold, _source_prior(builder, weights) if label_shift == "em" else None)}
  if not parallel.is_primary():
    return report
  if predictor.plain and not temperature_scaling and threshold_rule == config.threshold_rule and reused is None:
    _record_threshold(workdir, checkpoint, int(meta["step"]), threshold, threshold_rule, rule)
  report_dir = os.path.join(workdir, "reports")
  os.makedirs(report_dir, exist_ok=True)
  report["figures"] = reports.write_figures(report_dir, name, report, preds.labels, preds.probs)
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    reports.plot_training_curves(workdir, os.path.join(report_dir, "training_curves.png"))
    report["figures"]["training curves"] = "training_curves.png"
  if mistake_maps:
    # The maps explain the predictions scored, so they use the same (adapted) statistics.
    report["mistake_maps"] = write_mistake_maps(config, predictor.state_for(state, ds, n), ds, preds, threshold,
                                                mistake_maps, os.path.join(report_dir, f"{name}_mistakes.png"))
  paths = reports.write(report_dir, name, report, file_names=preds.file_names,
                        labels=preds.labels, probs=preds.probs)
  logging.info("%s: %d examples, ROC AUC %.4f, accuracy %.4f at 0.5, %.4f at %.3f. Report: %s", name,
               report["num_examples"], report["roc_auc"], report["at_threshold_0.5"]["accuracy"],
               report["at_chosen_threshold"]["accuracy"], threshold, paths["md"])
  return report


def label_shift_report(preds: trainer.Predictions, source_prior: float) -> dict[str, Any]:
  """EM estimate of the evaluated set's P(PNEUMONIA) and the minimum-error threshold under it."""
  prior, iterations = calibration.em_prior(preds.probs, source_prior)
  threshold = calibration.prior_threshold(source_prior, prior)
  return {"method": "EM (Saerens et al. 2002)", "source_prior": source_prior, "estimated_prior": prior,
          "observed_prior": float(np.mean(preds.labels)), "iterations": iterations, "threshold": threshold,
          "at_threshold": metrics.at_threshold(preds.labels, preds.probs, threshold)}


def stress_report(unshifted: trainer.Predictions, shifted: dict[str, np.ndarray], threshold: float,
                  source_prior: float | None = None) -> dict[str, Any]:
  """ROC AUC and the figures at `threshold` (and 0.5) under each shift in `shifted`.

  `threshold_rules` compares ways to choose a threshold on shifts they did not see: for
  each shift, Youden's J on the unshifted images plus the other shifts, scored on the
  left-out shift, against `threshold` and 0.5 on the same shift. With `source_prior`,
  also label-shift EM on each shifted set alone: its estimate of P(PNEUMONIA) (the true
  share does not change under these shifts) and the figures at its minimum-error threshold.
  """
  labels = unshifted.labels
  three = ("accuracy", "sensitivity", "specificity")
  subgroups = [images.subgroup(n) for n in unshifted.file_names]
  named = any(s is not None for s in subgroups)
  rows, left_out, em, by_subgroup = {}, {}, {}, {}
  for shift, probs in shifted.items():
    at, at_half = metrics.at_threshold(labels, probs, threshold), metrics.at_threshold(labels, probs, 0.5)
    rows[shift] = {"roc_auc": metrics.roc_auc(labels, probs), "loss": float(np.mean(metrics.binary_nll(labels, probs))),
                   **{k: at[k] for k in three}, **{f"{k}_at_0.5": at_half[k] for k in three}}
    if named:
      rates = metrics.subgroup_rates(labels, probs, subgroups, {"rate": threshold}, num_samples=0)
      by_subgroup[shift] = {name: r["rate"] for name, r in rates.items()}
    t = stress_youden(labels, unshifted.probs, [p for s, p in shifted.items() if s != shift])
    left_out[shift] = {"threshold": t, **{k: metrics.at_threshold(labels, probs, t)[k] for k in three}}
    if source_prior is not None:
      prior, _ = calibration.em_prior(probs, source_prior)
      t_em = calibration.prior_threshold(source_prior, prior)
      em[shift] = {"estimated_prior": prior, "threshold": t_em,
                   **{k: metrics.at_threshold(labels, probs, t_em)[k] for k in three}}
  keys = ("roc_auc", *three, *(f"{k}_at_0.5" for k in three))
  aggregate = lambda table, ks, fn: {k: float(fn([r[k] for r in table.values()])) for k in ks}
  rules = {"stress_youden_left_out": {
               "mean": aggregate(left_out, three, np.mean), "worst": aggregate(left_out, three, np.min),
               "thresholds": {s: r["threshold"] for s, r in left_out.items()}},
           "stress_youden_all_shifts": stress_youden(labels, unshifted.probs, list(shifted.values()))}
  if em:
    rules["em_per_shift"] = {"observed_prior": float(np.mean(labels)), "shifts": em,
                             "mean": aggregate(em, ("estimated_prior", *three), np.mean),
                             "worst": aggregate(em, three, np.min)}
  out = {"threshold": threshold, "shifts": rows,
         "mean": aggregate(rows, keys, np.mean), "worst": aggregate(rows, keys, np.min), "threshold_rules": rules}
  if by_subgroup:
    # Each subgroup's sensitivity (PNEUMONIA) or specificity (NORMAL) at `threshold` per shift.
    names = list(next(iter(by_subgroup.values())))
    out["subgroups"] = {"shifts": by_subgroup, "mean": aggregate(by_subgroup, names, np.mean),
                        "worst": aggregate(by_subgroup, names, np.min),
                        "worst_shift": {k: min(by_subgroup, key=lambda s: by_subgroup[s][k]) for k in names}}
  return out


def write_mistake_maps(config: learning.TrainConfig, state: learning.TrainState, ds, preds: trainer.Predictions,
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
  model = learning.create_model(config)
  method = saliency.default_method(model, config.image_size)
  names = [preds.file_names[i] for i in chosen]
  x = learning.model_input(np.stack([pixels[n] for n in names]))
  maps = np.asarray(saliency.METHODS[method](model, learning.inference_variables(state), x))
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
                            mistake_maps=FLAGS.mistake_maps, ensemble=FLAGS.ensemble, tta=FLAGS.tta,
                            temperature_scaling=FLAGS.temperature_scaling, label_shift=FLAGS.label_shift,
                            stress_test=FLAGS.stress, stress_set=FLAGS.stress_set, bootstrap=FLAGS.bootstrap,
                            threshold_rule=FLAGS.threshold_rule, adapt_bn=FLAGS.adapt_bn,
                            adapt_bn_prior=FLAGS.adapt_bn_prior)
  print(f"{report['name']}: ROC AUC {report['roc_auc']:.4f}, accuracy {report['at_threshold_0.5']['accuracy']:.4f} "
        f"at 0.5 and {report['at_chosen_threshold']['accuracy']:.4f} at the chosen threshold "
        f"{report['at_chosen_threshold']['threshold']:.4f}. Reports in {os.path.join(FLAGS.workdir, 'reports')}/")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
