"""Test-time BatchNorm adaptation (AdaBN: Li et al. 2016; Schneider et al. 2020).

Films from another hospital shift the activations, and BatchNorm's running statistics,
learned on the training images, no longer centre and scale them. `adapt_batch_norm`
re-estimates them on the unlabeled images being evaluated: each BatchNorm's mean and
variance become those of its inputs over the whole set, one layer at a time in call order,
so each layer sees what the adapted layers before it produce. That is what one
training-mode pass over the whole set as a single batch would compute, for a set of any
size and without dropout. No label is read. `prior` mixes the training statistics back in
with the weight of that many images (Schneider et al.'s N), for small sets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from xray_jax import input_pipeline
from xray_jax import learning
from xray_jax import parallel
from xray_jax.errors import UsageError

Path = tuple[str, ...]


class _Reached(Exception):
  """Carries a layer's input moments out of the forward pass, which stops there."""

  def __init__(self, moments):
    super().__init__()
    self.moments = moments


def batch_norm_paths(apply_fn: Callable, variables: dict[str, Any], image_shape: tuple[int, ...]) -> list[Path]:
  """The module path of every BatchNorm the forward pass calls, in call order."""
  paths: list[Path] = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      paths.append(tuple(context.module.path))
    return next_fun(*args, **kwargs)

  def forward(v, x):
    with nn.intercept_methods(record):
      return apply_fn(v, x, train=False)

  jax.eval_shape(forward, variables, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return paths


@functools.partial(jax.jit, static_argnums=(0, 1))
def _input_moments(apply_fn: Callable, path: Path, variables: dict[str, Any], images: jax.Array,
                   mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Count, mean and sum of squared deviations, per channel, of the input of BatchNorm `path`
  over the unmasked examples; the layers after it are never computed."""

  def stop_at(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and tuple(context.module.path) == path:
      x = args[0].astype(jnp.float32)
      w = mask.reshape((-1,) + (1,) * (x.ndim - 1)).astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      count = jnp.sum(w) * (x[0].size // x.shape[-1])
      mean = jnp.sum(x * w, axes) / jnp.maximum(count, 1.0)
      m2 = jnp.sum(jnp.square(x - mean) * w, axes)
      raise _Reached((count, mean, m2))
    return next_fun(*args, **kwargs)

  try:
    with nn.intercept_methods(stop_at):
      apply_fn(variables, learning.model_input(images), train=False)
  except _Reached as reached:
    return reached.moments
  raise AssertionError(f"BatchNorm {'/'.join(path)} was not called")


def _combine(a: tuple[float, np.ndarray, np.ndarray], b: tuple[float, np.ndarray, np.ndarray]):
  """Chan et al.'s pairwise update of (count, mean, M2): exact, and stable in float64."""
  (na, ma, sa), (nb, mb, sb) = a, b
  n = na + nb
  if nb == 0:
    return a
  delta = mb - ma
  return n, ma + delta * (nb / n), sa + sb + delta**2 * (na * nb / n)


def adapt_batch_norm(state: learning.TrainState, ds: tf.data.Dataset, num_examples: int, batch_size: int, *,
                     prior: float = 0.0, mesh: jax.sharding.Mesh | None = None) -> learning.TrainState:
  """`state` with every BatchNorm's statistics re-estimated on the images of `ds`.

  The statistics evaluation uses are replaced: the moving average's when the run keeps one
  (--ema_decay), the live ones otherwise.
  """
  if prior < 0:
    raise UsageError(f"--adapt_bn_prior={prior}: it is a count of images, so 0 or more.")
  variables = learning.inference_variables(state)
  if not variables.get("batch_stats"):
    raise UsageError("--adapt_bn: this model has no BatchNorm statistics to re-estimate (a model with "
                     "GroupNorm or none, such as cnn_gn or mlp); evaluate it without --adapt_bn.")
  mesh = mesh or parallel.make_mesh()
  # The images are read once (8 MB per 500 at 128 px) and reused for each layer's pass.
  batches = [parallel.put_global_batch({"image": b["image"], "mask": b["mask"]}, mesh)
             for b in input_pipeline.eval_batches(ds, num_examples=num_examples, batch_size=batch_size)]
  if not batches:
    raise UsageError("--adapt_bn: the evaluated set has no images to estimate statistics from.")
  params = parallel.replicate(variables["params"], mesh)  # fixed; only the statistics change
  stats = traverse_util.flatten_dict(jax.device_get(variables["batch_stats"]))  # {(*path, "mean"): array}
  image_shape = tuple(batches[0]["image"].shape[1:])
  weight = num_examples / (num_examples + prior)  # Schneider et al.: N pseudo-images of the source
  for path in batch_norm_paths(state.apply_fn, variables, image_shape):
    current = {"params": params, "batch_stats": parallel.replicate(traverse_util.unflatten_dict(stats), mesh)}
    total = (0.0, 0.0, 0.0)
    for b in batches:
      count, mean, m2 = jax.device_get(_input_moments(state.apply_fn, path, current, b["image"], b["mask"]))
      total = _combine(total, (float(count), np.float64(mean), np.float64(m2)))
    n, mean, m2 = total
    for key, target in (("mean", mean), ("var", m2 / n)):
      old = stats[(*path, key)]
      stats[(*path, key)] = np.asarray(weight * target + (1 - weight) * np.float64(old), old.dtype)
  batch_stats = traverse_util.unflatten_dict(stats)
  if state.ema is None:
    return state.replace(batch_stats=batch_stats)
  return state.replace(ema={**state.ema, "batch_stats": batch_stats})
