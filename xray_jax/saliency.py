"""Where the model looked: saliency maps as pure JAX functions.

- Grad-CAM (Selvaraju et al. 2017) on the last conv block of a model that marks it with
  `mark_features`: channel weights are the mean gradient of the pneumonia log-odds over
  the block's positions; the map is ReLU of the weighted sum, upsampled to the image.
- Integrated gradients (Sundararajan et al. 2017): model-agnostic (the MLP too); the
  attribution of each pixel along a straight path from a black image.

Both explain the log-odds of PNEUMONIA, logit[1] - logit[0], and return maps [B, H, W]
scaled to [0, 1] per image.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURES = "features"


def mark_features(module: nn.Module, x: jnp.ndarray) -> jnp.ndarray:
  """Marks `x` as the last conv block's activations; call it once inside a model.

  Adds a zero "perturbation" there (a no-op unless the caller passes one), through which
  Grad-CAM takes the gradient, and sows the activations themselves. `model.init` returns
  that perturbation as a `perturbations` collection shaped like the init batch: apply the
  model with `params` and `batch_stats` only, as the trainer does.
  """
  x = module.perturb(FEATURES, x)
  module.sow("intermediates", FEATURES, x)
  return x


def _log_odds(logits: jnp.ndarray) -> jnp.ndarray:
  return logits[:, 1] - logits[:, 0]


def _normalize(maps_BxHxW: jnp.ndarray) -> jnp.ndarray:
  top = jnp.max(maps_BxHxW, axis=(1, 2), keepdims=True)
  return jnp.where(top > 0, maps_BxHxW / jnp.where(top > 0, top, 1.0), 0.0)


def supports_grad_cam(model: nn.Module, image_size: int) -> bool:
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 1)),
                                             train=False))
  return "perturbations" in shapes


def grad_cam(model: nn.Module, variables: dict[str, Any], images_BxHxWx1: jnp.ndarray) -> jnp.ndarray:
  """Grad-CAM maps [B, H, W] for float images in [0, 1]."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images_BxHxWx1, train=False))
  if "perturbations" not in shapes:
    raise ValueError(f"{type(model).__module__} marks no last conv block (saliency.mark_features); "
                     "use integrated_gradients.")
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["perturbations"])

  def score(perturbations):
    logits, state = model.apply({**variables, "perturbations": perturbations}, images_BxHxWx1, train=False,
                                mutable=["intermediates"])
    return jnp.sum(_log_odds(logits)), state["intermediates"]

  grads, inter = jax.grad(score, has_aux=True)(zeros)
  (g,) = jax.tree.leaves(grads)  # [B, h, w, C]
  (a,) = jax.tree.leaves(inter)
  weights = jnp.mean(g, axis=(1, 2), keepdims=True)
  cam = jax.nn.relu(jnp.sum(weights * a, axis=-1))  # [B, h, w]
  b, h, w, _ = images_BxHxWx1.shape
  return _normalize(jax.image.resize(cam, (b, h, w), method="bilinear"))


def integrated_gradients(model: nn.Module, variables: dict[str, Any], images_BxHxWx1: jnp.ndarray,
                         steps: int = 32) -> jnp.ndarray:
  """|Integrated gradients| maps [B, H, W] from a black baseline, midpoint rule in `steps`."""
  baseline = jnp.zeros_like(images_BxHxWx1)

  def total_log_odds(x):
    return jnp.sum(_log_odds(model.apply(variables, x, train=False)))

  grad_fn = jax.grad(total_log_odds)
  alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps
  mean_grad = jax.lax.map(lambda a: grad_fn(baseline + a * (images_BxHxWx1 - baseline)), alphas).mean(0)
  attributions = (images_BxHxWx1 - baseline) * mean_grad
  return _normalize(jnp.sum(jnp.abs(attributions), axis=-1))


METHODS = {"grad_cam": grad_cam, "integrated_gradients": integrated_gradients}


def default_method(model: nn.Module, image_size: int) -> str:
  return "grad_cam" if supports_grad_cam(model, image_size) else "integrated_gradients"


def overlay(gray_HxW: np.ndarray, map_HxW: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  """RGB uint8: the X-ray in grey with the map in the 'jet' colours laid over it."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  heat = colormaps["jet"](np.clip(map_HxW, 0, 1))[..., :3]
  grey = np.repeat(gray_HxW[..., None].astype(np.float32) / 255.0, 3, axis=-1)
  weight = alpha * np.clip(map_HxW, 0, 1)[..., None]  # colour only where the map is high
  return np.clip(np.rint(255 * ((1 - weight) * grey + weight * heat)), 0, 255).astype(np.uint8)
