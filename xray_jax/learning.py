"""What one step of learning is: the config, the state, one pure train step, one eval step.

Only JAX, Flax and Optax: a model can be built, trained a step and timed (scripts/benchmark.py)
on a machine without TensorFlow. trainer.py runs these over the data in its resumable loop.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xray_jax import augment as augment_lib
from xray_jax import losses
from xray_jax import models
from xray_jax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  model: str = "cnn"
  data_dir: str | None = None
  tfds_data_dir: str | None = None
  image_size: int = 128
  num_classes: int = 2
  batch_size: int = 32
  eval_batch_size: int = 128
  num_epochs: int = 10
  num_steps: int = 0  # > 0: stop after this many steps instead (quick checks)
  learning_rate: float = 1e-3
  warmup_epochs: float = 1.0
  weight_decay: float = 1e-4
  label_smoothing: float = 0.0
  mixup_alpha: float = 0.0  # > 0: mixup with lam ~ Beta(alpha, alpha) (augment.mixup)
  ema_decay: float = 0.0  # > 0: evaluate an exponential moving average of the weights (TrainState.ema)
  augment: bool = True
  # Progressive resizing: the first epochs at lower resolutions, as "SIZE:EPOCHS,..." from the start (e.g.
  # "64:2,96:3"); the remaining epochs, and every evaluation, at image_size. See size_schedule().
  size_schedule: str = ""
  augment_config: augment_lib.AugmentConfig = augment_lib.AugmentConfig()
  seed: int = 0
  log_every_steps: int = 50
  checkpoint_every_steps: int = 500
  best_metric: str = "roc_auc"  # roc_auc | loss | accuracy on the validation split, or final (no selection)
  dtype: str = "float32"  # compute dtype of the model; parameters and optimizer stay float32
  threshold_rule: str = "validation"  # evaluate's default way to pick the threshold: a key of THRESHOLD_RULES

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "TrainConfig":
    d = dict(d)
    d["augment_config"] = augment_lib.AugmentConfig(**d.get("augment_config", {}))
    return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


class TrainState(train_state.TrainState):
  batch_stats: Any = None
  # With --ema_decay: moving averages of `params` and `batch_stats` ({"params", "batch_stats"}),
  # what evaluation and prediction use. None otherwise, which adds nothing to a checkpoint.
  ema: Any = None


def live_variables(state: TrainState) -> dict[str, Any]:
  """The model's variables as trained so far (what `ema` averages)."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def inference_variables(state: TrainState) -> dict[str, Any]:
  """The variables to evaluate with: the moving average when the run keeps one."""
  return live_variables(state) if state.ema is None else state.ema


def model_input(images: Any) -> jnp.ndarray:
  """uint8 pixels as the models take them: float32 in [0, 1]."""
  return jnp.asarray(images).astype(jnp.float32) / 255.0


def create_model(config: TrainConfig) -> nn.Module:
  return models.get_model(config.model, num_classes=config.num_classes, dtype=config.dtype)


def size_schedule(config: TrainConfig) -> tuple[tuple[int, int], ...]:
  """--size_schedule as ((size, epochs), ...), checked: sizes below --image_size, whole epochs, and at
  least the last epoch at --image_size, so the final weights and BatchNorm statistics are those of the
  resolution every evaluation uses."""
  spec = config.size_schedule.replace(" ", "")
  if not spec:
    return ()
  how = (f"--size_schedule={config.size_schedule!r} must be SIZE:EPOCHS pairs separated by commas, e.g. "
         "64:2,96:3 (2 epochs at 64 px, then 3 at 96, then the rest at --image_size)")
  pairs = []
  for part in spec.split(","):
    size, _, epochs = part.partition(":")
    if not (size.isdigit() and epochs.isdigit() and int(size) > 0 and int(epochs) > 0):
      raise UsageError(f"{how}; {part!r} is not.")
    if int(size) >= config.image_size:
      raise UsageError(f"{how}; each SIZE below --image_size={config.image_size}, and {size} is not.")
    pairs.append((int(size), int(epochs)))
  if sum(e for _, e in pairs) >= config.num_epochs:
    raise UsageError(f"--size_schedule={config.size_schedule!r} covers {sum(e for _, e in pairs)} epochs; at least "
                     f"the last of --num_epochs={config.num_epochs} must train at --image_size. Shorten the "
                     "schedule or raise --num_epochs.")
  return tuple(pairs)


def train_size_at(config: TrainConfig, epoch: int) -> int:
  """The image size epoch `epoch` (0 first) trains at: --size_schedule's, then --image_size."""
  for size, epochs in size_schedule(config):
    if epoch < epochs:
      return size
    epoch -= epochs
  return config.image_size


def downscale(images_BxHxWxC: jnp.ndarray, size: int) -> jnp.ndarray:
  """Images at `size` x `size`, antialiased bilinear: what tf.image.resize(..., antialias=True) gives
  the input pipeline and the stress set's resolution shifts."""
  b, _, _, c = images_BxHxWxC.shape
  return jax.image.resize(images_BxHxWxC, (b, size, size, c), method="linear", antialias=True)


def create_learning_rate_fn(config: TrainConfig, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up to --learning_rate, then cosine decay to zero at the last step."""
  warmup = min(int(config.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup_steps=warmup,
                                            decay_steps=max(total_steps, warmup + 1), end_value=0.0)


def create_train_state(config: TrainConfig, model: nn.Module, rng: jax.Array,
                       learning_rate_fn: optax.Schedule) -> TrainState:
  if not 0.0 <= config.ema_decay < 1.0:
    raise UsageError(f"--ema_decay={config.ema_decay} must be in [0, 1) (0: no moving average).")
  dummy = jnp.zeros((1, config.image_size, config.image_size, 1), jnp.float32)
  try:
    variables = jax.jit(functools.partial(model.init, train=False))(rng, dummy)
  except Exception as e:  # e.g. shapes the architecture cannot pool down
    raise UsageError(f"--model={config.model} cannot take --image_size={config.image_size}: {e}") from e
  for size, _ in size_schedule(config):  # found now, not when training reaches that epoch
    try:
      jax.eval_shape(functools.partial(model.apply, train=False),  # as the step applies it
                     {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})},
                     dummy[:, :size, :size])
    except Exception as e:
      raise UsageError(f"--model={config.model} cannot take size {size} of --size_schedule="
                       f"{config.size_schedule!r}: {e}") from e
  tx = optax.adamw(learning_rate_fn, weight_decay=config.weight_decay)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", {}))
  if config.ema_decay > 0:  # copies: the step donates the state, and one buffer cannot be donated twice
    state = state.replace(ema=jax.tree.map(jnp.copy, live_variables(state)))
  # An int32 array, as every step after the first makes it: one dtype in every checkpoint.
  return state.replace(step=jnp.zeros((), jnp.int32))


def param_count(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _global_norm(tree: Any) -> jnp.ndarray:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def train_step(state: TrainState, batch: dict[str, jnp.ndarray], rng: jax.Array, *,
               class_weights: jnp.ndarray, augment_config: augment_lib.AugmentConfig | None,
               label_smoothing: float = 0.0, mixup_alpha: float = 0.0, ema_decay: float = 0.0,
               train_size: int | None = None) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One optimizer step on uint8 images; augmentation and dropout keyed by (rng, step).

  With `train_size` below the images' size, the (augmented) images are downscaled to it before the
  model sees them: the augmentation's blur and noise keep their meaning, in pixels of the input.

  With a moving average in the state, it moves by `ema_decay`, or by less in the first
  steps ((1 + step) / (10 + step), as TensorFlow's ExponentialMovingAverage with
  num_updates), so the random initialisation does not linger in it.

  With mixup the per-example outputs (train metrics) are those of the mixed images,
  scored against each image's own label, which keeps the larger share of the blend.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  aug_rng, dropout_rng = jax.random.split(step_rng)
  images = model_input(batch["image"])
  if augment_config is not None:
    images = augment_lib.augment_batch(aug_rng, images, augment_config)
  if train_size is not None and train_size != images.shape[1]:
    images = downscale(images, train_size)
  labels = batch["label"]
  mix = None
  if mixup_alpha > 0:  # its own key, so runs without mixup draw the same numbers as before
    images, partner, lam = augment_lib.mixup(jax.random.fold_in(step_rng, 2), images, mixup_alpha)
    mix = (labels[partner], lam)

  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                                     rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    logits = logits.astype(jnp.float32)  # the loss in float32 whatever the compute dtype
    loss = losses.weighted_softmax_xent(logits=logits, labels=labels, class_weights=class_weights,
                                        label_smoothing=label_smoothing, mixup=mix)
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
  if state.ema is not None:
    decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
    state = state.replace(ema=jax.tree.map(lambda e, x: decay * e + (1.0 - decay) * x, state.ema,
                                           live_variables(state)))
  probs = jax.nn.softmax(logits)
  step_metrics = {
      "loss": loss,
      "grad_norm": _global_norm(grads),
      "param_norm": _global_norm(state.params),
      # Per-example outputs: the host needs them for the epoch's ROC AUC.
      "prob": probs[:, 1],
      "nll": -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0] + 1e-12),
      "label": labels,
  }
  return state, step_metrics


def train_step_for(config: TrainConfig, class_weights: jnp.ndarray, train_size: int | None = None
                   ) -> Callable[..., Any]:
  """`train_step(state, batch, rng)` with `config`'s step options bound, as the trainer runs it and
  the benchmark times it (augmentation only with config.augment), the model fed `train_size` images
  (an epoch's train_size_at; default --image_size)."""
  return functools.partial(train_step, class_weights=class_weights,
                           augment_config=config.augment_config if config.augment else None,
                           label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha,
                           ema_decay=config.ema_decay,
                           train_size=None if train_size in (None, config.image_size) else train_size)


def eval_step(state: TrainState, images: jnp.ndarray, tta: bool = False) -> jnp.ndarray:
  """Class probabilities in inference mode (running BatchNorm statistics, no dropout).

  With `tta`, the mean of the probabilities over augment.TTA_VIEWS of each image.
  """
  x = model_input(images)
  views = augment_lib.TTA_VIEWS if tta else ((1.0, 0.0, 0.0),)
  probs = [jax.nn.softmax(state.apply_fn(inference_variables(state), augment_lib.tta_view(x, v),
                                         train=False).astype(jnp.float32))
           for v in views]
  return sum(probs) / len(probs)
