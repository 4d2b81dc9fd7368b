"""The training library: evaluation over a mesh, the workdir, and the resumable loop over learning.py's steps."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Iterable
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from xray_jax import checkpoints
from xray_jax import chest_xray
from xray_jax import compile_options
from xray_jax import environment
from xray_jax import input_pipeline
from xray_jax import learning
from xray_jax import losses
from xray_jax import metrics
from xray_jax import models
from xray_jax import parallel
from xray_jax.errors import UsageError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
# What shapes a run's checkpoints: changing it under an existing workdir would restore into the
# wrong model or state. Each maps a setting to what must match (any decay of a moving average
# gives the same state; none gives another).
INCOMPATIBLE = {"model": lambda v: v, "image_size": lambda v: v, "num_classes": lambda v: v,
                "ema_decay": lambda decay: decay > 0}
THRESHOLD_RULE = ("maximises Youden's J (sensitivity + specificity - 1) on the validation split, "
                  "carved from Kaggle train/ by patient")
# How evaluate picks the reported threshold. "stress" pools the validation images with their
# 10 shifted copies (xray_jax/stress.py): a threshold that holds when the look of the films
# changes, and one that varies far less from seed to seed (experiments/RESULTS.md).
THRESHOLD_RULES = {
    "validation": THRESHOLD_RULE,
    "stress": THRESHOLD_RULE.replace("on the validation split", "on the validation split pooled with its "
                                     "10 stress shifts (xray_jax/stress.py)"),
}


@functools.lru_cache(maxsize=None)
def _jitted_eval_step(mesh: jax.sharding.Mesh, tta: bool):
  repl = parallel.replicated(mesh)
  return jax.jit(functools.partial(learning.eval_step, tta=tta), in_shardings=(repl, parallel.batch_sharded(mesh)),
                 out_shardings=repl)


@dataclasses.dataclass
class Predictions:
  labels: np.ndarray
  probs: np.ndarray  # P(PNEUMONIA)
  file_names: list[str]

  @property
  def nll(self) -> np.ndarray:
    return metrics.binary_nll(self.labels, self.probs)


def predict(state: learning.TrainState, batches: Iterable[input_pipeline.Batch],
            mesh: jax.sharding.Mesh | None = None, *, tta: bool = False) -> Predictions:
  """Runs masked eval batches split over the mesh; every real example appears once.

  Every process iterates the whole (small) evaluation set; each device computes its
  slice of each batch, and the probabilities come back to every process.
  """
  mesh = mesh or parallel.make_mesh()
  step = _jitted_eval_step(mesh, tta)
  state = parallel.replicate(state, mesh)
  labels, probs, names = [], [], []
  for batch in batches:
    images = parallel.put_global_batch({"image": batch["image"]}, mesh)["image"]
    p = np.asarray(step(state, images))[:, 1]
    keep = batch["mask"]
    labels.append(batch["label"][keep])
    probs.append(p[keep])
    names.extend(n.decode() for n in batch["file_name"][keep])
  return Predictions(np.concatenate(labels).astype(np.int32), np.concatenate(probs).astype(np.float64), names)


BEST_METRICS = ("roc_auc", "loss", "accuracy", "final")


def is_better(candidate: dict[str, float], best: dict[str, float] | None, metric: str) -> bool:
  """Strictly better on `metric`; ties go to the lower loss (a saturated AUC says little).

  "final" keeps every newer checkpoint, so `best/` ends as the last one validated: where the
  validation metric is saturated, picking among late epochs by it picks by noise (RESULTS idea 31).
  """
  if best is None or metric == "final":
    return True
  sign = -1.0 if metric == "loss" else 1.0
  key = lambda m: (sign * m[metric], -m["loss"])
  c, b = key(candidate), key(best)
  return not np.isnan(c[0]) and (np.isnan(b[0]) or c > b)


def prepare_workdir(config: learning.TrainConfig, workdir: str, overwrite: bool) -> None:
  """Writes config.json, or checks that an existing run is one this config can resume."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path) and overwrite:
    logging.warning("--overwrite: deleting the run in %s", workdir)
    shutil.rmtree(workdir)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    was = learning.TrainConfig.from_json(old)  # settings it predates take their defaults
    clash = {k: (getattr(was, k), getattr(config, k)) for k, shape in INCOMPATIBLE.items()
             if shape(getattr(was, k)) != shape(getattr(config, k))}
    if clash:
      desc = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in clash.items())
      raise UsageError(f"--workdir={workdir} holds a run with a different setup ({desc}). Pass another "
                       "--workdir, or --overwrite to delete that run.")
    changed = {k: v for k, v in config.to_json().items() if old.get(k) != v and k not in ("data_dir",)}
    if changed:
      logging.warning("Resuming %s with changed settings %s (were %s)", workdir, changed,
                      {k: old.get(k) for k in changed})
  try:
    os.makedirs(workdir, exist_ok=True)
    if parallel.is_primary():
      with open(path, "w") as f:
        json.dump(config.to_json(), f, indent=2)
  except OSError as e:
    raise UsageError(f"Cannot write to --workdir={workdir} ({e.strerror or e}). Pass a writable folder.") from e


def check_disk_space(workdir: str, state: Any) -> None:
  """Refuses to start when the workdir's disk cannot hold the run's checkpoints.

  Three copies of the state (two latest, one best), twice over for Orbax's temporary
  folder during a save, plus room for logs and reports.
  """
  state_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
  need = 6 * state_bytes + 50 * 2**20
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise UsageError(f"--workdir={workdir} has {free / 2**20:.0f} MiB free; this run's checkpoints need about "
                     f"{need / 2**20:.0f} MiB. Free some space or pass a --workdir on another disk.")


def load_config(workdir: str) -> learning.TrainConfig:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise UsageError(f"--workdir={workdir} holds no {CONFIG_FILE}: it is not a training run's workdir. "
                     "Train first with `python -m xray_jax.train --workdir=...`.")
  with open(path) as f:
    return learning.TrainConfig.from_json(json.load(f))


class MetricsLog:
  """One JSON line per evaluation in the workdir, mirrored to TensorBoard."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.enabled = parallel.is_primary()  # one writer in a multi-process run
    if not self.enabled:
      return
    if os.path.exists(self.path):  # drop lines a killed run wrote after its last checkpoint
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    self.writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    with self.writer.as_default():
      for k, v in record.items():
        if isinstance(v, (int, float)) and k != "step":
          tf.summary.scalar(k, v, step=record["step"])
    self.writer.flush()


def _check_finite(step: int, m: dict[str, np.ndarray], file_names: np.ndarray) -> None:
  if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
    names = ", ".join(n.decode() for n in file_names[:8]) + (" ..." if len(file_names) > 8 else "")
    raise FloatingPointError(
        f"Training diverged at step {step}: loss={float(m['loss'])}, grad_norm={float(m['grad_norm'])}; "
        f"batch files: {names}. The last good checkpoint is kept. Try a lower --learning_rate, "
        "a longer --warmup_epochs, or check those images.")


def _format_seconds(s: float) -> str:
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclasses.dataclass(frozen=True)
class TrainingData:
  builder: chest_xray.ChestXrayPneumonia
  n_train: int
  n_val: int
  class_weights: np.ndarray


def check_split_version(workdir: str, builder: chest_xray.ChestXrayPneumonia, doing: str) -> None:
  """Refuses to `doing` when the run trained on another version of the train/validation split: its
  validation images could then be ones it trained on."""
  trained, now = environment.data_version(workdir), str(builder.version)
  if trained is not None and trained != now:
    raise UsageError(
        f"--workdir={workdir} trained on version {trained} of the prepared data, whose train/validation split "
        f"is not that of the prepared {now} ({now}: {builder.RELEASE_NOTES.get(now, 'see chest_xray.py')}), so "
        f"{doing} would mix in images it trained on. Train again in a new --workdir (or with --overwrite); "
        f"--split=test and --image_dir need no validation split once the run's threshold is recorded.")


def load_training_data(config: learning.TrainConfig, workdir: str, overwrite: bool) -> TrainingData:
  """Prepares (process 0) or loads the data and the workdir, checks the batch, logs the split."""
  load = functools.partial(chest_xray.load_builder, data_dir=config.data_dir,
                           tfds_data_dir=config.tfds_data_dir, image_size=config.image_size)
  builder = load() if parallel.is_primary() else None  # one process prepares the data...
  parallel.sync("data prepared")
  builder = builder or load()  # ...the others then find it prepared
  if parallel.is_primary():
    if not overwrite:
      check_split_version(workdir, builder, "resuming it")
    prepare_workdir(config, workdir, overwrite)
    environment.append(workdir, environment.describe(data_dir=builder.data_dir,
                                                     compiler_options=compile_options.compiler_options()))
  parallel.sync("workdir ready")
  meta = builder.info.metadata
  if meta["skipped"]:
    logging.warning("%d file(s) of the data folder were skipped (listed in %s/metadata.json), e.g. %s",
                    len(meta["skipped"]), builder.data_dir, meta["skipped"][0])
  n_train = input_pipeline.num_examples(builder, "train")
  n_val = input_pipeline.num_examples(builder, "validation")
  if config.batch_size > n_train:
    raise UsageError(f"--batch_size={config.batch_size} is larger than the train split ({n_train} images); "
                     f"pass --batch_size<={n_train}.")
  counts = input_pipeline.class_counts(builder, "train")
  weights = losses.class_weights(counts)
  logging.info("Train split: %d images (%d patients), validation: %d images (%d patients).", n_train,
               meta["patients"]["train"], n_val, meta["patients"]["validation"])
  logging.info("Class counts %s -> class weights %s", dict(zip(("NORMAL", "PNEUMONIA"), counts)),
               dict(zip(("NORMAL", "PNEUMONIA"), [round(float(w), 4) for w in weights])))
  return TrainingData(builder, n_train, n_val, weights)


def train_and_evaluate(config: learning.TrainConfig, workdir: str, *, overwrite: bool = False) -> dict[str, Any]:
  """Trains (resuming from the workdir's last checkpoint), keeps the best, returns its metrics."""
  models.get_model(config.model)  # fail fast on an unknown name, before any data work
  learning.size_schedule(config)  # and on a malformed --size_schedule
  if config.best_metric not in BEST_METRICS:
    raise UsageError(f"--best_metric={config.best_metric!r} must be one of {', '.join(BEST_METRICS)}.")
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  data = load_training_data(config, workdir, overwrite)
  builder, n_train, n_val, weights = data.builder, data.n_train, data.n_val, data.class_weights

  steps_per_epoch = n_train // config.batch_size
  total_steps = config.num_steps or config.num_epochs * steps_per_epoch
  rng = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  model = learning.create_model(config)
  learning_rate_fn = learning.create_learning_rate_fn(config, total_steps, steps_per_epoch)
  state = learning.create_train_state(config, model, init_rng, learning_rate_fn)
  logging.info("Model %s: %s parameters", config.model, f"{learning.param_count(state.params):,}")
  check_disk_space(workdir, state)
  logging.info("Mesh %s over %d device(s) in %d process(es); global batch %d, %d per device.",
               dict(mesh.shape), mesh.size, jax.process_count(), config.batch_size, config.batch_size // mesh.size)

  # Closing a manager waits for its saves in flight, also on errors: the last one may be the
  # last good checkpoint.
  with checkpoints.manager(workdir, checkpoints.LATEST, max_to_keep=2) as latest, \
       checkpoints.manager(workdir, checkpoints.BEST, max_to_keep=1) as best_mngr:
    best: dict[str, float] | None = None
    start_step = 0
    restored = checkpoints.restore_latest_good(latest, state)
    if restored is not None:
      state, ckpt_meta = restored
      start_step = int(state.step)
      best = ckpt_meta.get("best")
      logging.info("Resuming from step %d of %d (checkpoint in %s)", start_step, total_steps, latest.directory)
    if start_step >= total_steps:
      logging.info("The run in %s is already complete (%d steps).", workdir, total_steps)

    train_ds = input_pipeline.load_split(builder, "train", config.image_size)
    val_ds = input_pipeline.load_split(builder, "validation", config.image_size)
    eval_batch_size = parallel.round_up_to_devices(config.eval_batch_size, mesh)
    state = parallel.replicate(state, mesh)
    repl = parallel.replicated(mesh)

    @functools.lru_cache(maxsize=None)  # one compiled step per size of --size_schedule
    def step_fn(train_size: int):
      return compile_options.jit(learning.train_step_for(config, jnp.asarray(weights), train_size),
                                 in_shardings=(repl, parallel.batch_sharded(mesh), repl),
                                 out_shardings=(repl, repl), donate_argnums=0)

    log = MetricsLog(workdir, start_step)
    saved_note = "  (kept: final)" if config.best_metric == "final" else "  (best so far: saved)"

    def evaluate_and_save(step: int, epoch_outputs: dict[str, list[np.ndarray]]) -> None:
      nonlocal best
      preds = predict(state, input_pipeline.eval_batches(val_ds, num_examples=n_val, batch_size=eval_batch_size),
                      mesh)
      val = metrics.summarize(preds.labels, preds.probs, preds.nll)
      train = metrics.summarize(*(np.concatenate(epoch_outputs[k]) for k in ("label", "prob", "nll"))) \
          if epoch_outputs["label"] else {}
      record = {"step": step, "epoch": round(step / steps_per_epoch, 3),
                "learning_rate": float(learning_rate_fn(step)),
                **{f"train_{k}": v for k, v in train.items() if k != "num_examples"},
                **{f"val_{k}": v for k, v in val.items() if k != "num_examples"}}
      improved = is_better(val, best, config.best_metric)
      if improved:
        best = {**val, "step": step}
      ckpt_meta = {"step": step, "best": best, "val": val, "class_weights": weights.tolist(),
                   "chosen_threshold": metrics.youden_threshold(preds.labels, preds.probs),
                   "threshold_rule": THRESHOLD_RULE}
      if improved:
        checkpoints.save(best_mngr, step, state, ckpt_meta)
      checkpoints.save(latest, step, state, ckpt_meta)
      log.write(record)
      logging.info("epoch %.2f step %d | train loss %.4f acc %.4f auc %.4f | val loss %.4f acc %.4f auc %.4f%s",
                   record["epoch"], step, train.get("loss", np.nan), train.get("accuracy", np.nan),
                   train.get("roc_auc", np.nan), val["loss"], val["accuracy"], val["roc_auc"],
                   saved_note if improved else "")

    step = start_step
    pending = None  # (step, device metrics, file names): fetched one step late, so the host never stalls
    epoch_outputs: dict[str, list[np.ndarray]] = {"label": [], "prob": [], "nll": []}
    t0, steps_timed = time.perf_counter(), 0
    train_size = learning.train_size_at(config, step // steps_per_epoch)

    def collect(p) -> dict[str, np.ndarray]:
      s, m, names = p
      m = jax.device_get(m)
      _check_finite(s, m, names)
      for k in epoch_outputs:
        epoch_outputs[k].append(np.asarray(m[k]))
      return m

    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      if learning.train_size_at(config, epoch) != train_size:  # a new step to compile, a new rate to time
        train_size, steps_timed = learning.train_size_at(config, epoch), 0
      if train_size != config.image_size:
        logging.info("Epoch %d trains at %dx%d (--size_schedule=%s).", epoch + 1, train_size, train_size,
                     config.size_schedule)
      batches = input_pipeline.train_batches(
          train_ds, num_examples=n_train, batch_size=parallel.local_batch_size(config.batch_size),
          steps_per_epoch=steps_per_epoch, seed=config.seed, epoch=epoch, skip_batches=offset,
          num_shards=jax.process_count(), shard_index=jax.process_index())
      for batch in batches:
        if step >= total_steps:
          break
        device_batch = parallel.put_local_batch({"image": batch["image"], "label": batch["label"]}, mesh)
        state, m = step_fn(train_size)(state, device_batch, train_rng)
        step += 1
        if pending is not None:
          last = collect(pending)
          if steps_timed == 0:  # time from here: the first step included compilation
            t0 = time.perf_counter()
          steps_timed += 1
          if pending[0] % config.log_every_steps == 0 and steps_timed > 1:
            rate = (steps_timed - 1) / (time.perf_counter() - t0)
            logging.info("step %d/%d loss %.4f grad_norm %.3f | %.2f steps/s, %.0f img/s, %s left",
                         pending[0], total_steps, last["loss"], last["grad_norm"], rate, rate * config.batch_size,
                         _format_seconds((total_steps - step) / rate))
        pending = (step, m, batch["file_name"])
        end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
        if end_of_epoch or step % config.checkpoint_every_steps == 0:
          collect(pending)
          pending = None
          if end_of_epoch:
            evaluate_and_save(step, epoch_outputs)
            epoch_outputs = {k: [] for k in epoch_outputs}
          else:
            checkpoints.save(latest, step, state, {"step": step, "best": best, "class_weights": weights.tolist()})
    return best or {}
