"""On-device augmentation, run inside the jitted train step, keyed by the step's rng.

Geometry: a random affine per image (small rotation, scale, shift), sampled bilinearly
with edges replicated, so no black borders appear that a model could learn from.
Intensity: gamma, contrast and brightness, as exposure and processing differ between
X-ray machines. No flips: a mirrored chest (heart on the right) is not a real patient.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  rotate_deg: float = 10.0  # rotation uniform in [-rotate_deg, rotate_deg]
  scale: float = 0.10  # zoom uniform in [1 - scale, 1 + scale]
  shift: float = 0.08  # shift uniform in [-shift, shift] of the image size, per axis
  brightness: float = 0.10  # added, uniform in [-brightness, brightness]
  contrast: float = 0.20  # factor around the image mean, uniform in [1 - contrast, 1 + contrast]
  gamma: float = 0.25  # exponent log-uniform in [1 / (1 + gamma), 1 + gamma]


def affine(image_HxWxC: jnp.ndarray, *, angle: jnp.ndarray, scale: jnp.ndarray,
           shift_yx: jnp.ndarray) -> jnp.ndarray:
  """Rotates by `angle` radians (clockwise on screen) and zooms by `scale` about the centre,
  then shifts by `shift_yx` pixels (down, right)."""
  h, w, _ = image_HxWxC.shape
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  # Inverse map: for each output pixel, where it comes from in the input.
  dy, dx = yy - cy - shift_yx[0], xx - cx - shift_yx[1]
  cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
  src_y = cos * dy - sin * dx + cy
  src_x = sin * dy + cos * dx + cx

  def sample(channel):
    return jax.scipy.ndimage.map_coordinates(channel, [src_y, src_x], order=1, mode="nearest")

  return jax.vmap(sample, in_axes=2, out_axes=2)(image_HxWxC)


def intensity(image: jnp.ndarray, *, gamma: jnp.ndarray, contrast: jnp.ndarray,
              brightness: jnp.ndarray) -> jnp.ndarray:
  image = jnp.clip(image, 0.0, 1.0) ** gamma
  mean = jnp.mean(image)
  return jnp.clip((image - mean) * contrast + mean + brightness, 0.0, 1.0)


def _augment_one(key: jax.Array, image: jnp.ndarray, cfg: AugmentConfig) -> jnp.ndarray:
  k = jax.random.split(key, 6)
  h, w, _ = image.shape
  u = lambda key, r, shape=(): jax.random.uniform(key, shape, minval=-r, maxval=r)
  image = affine(image, angle=jnp.deg2rad(u(k[0], cfg.rotate_deg)), scale=1.0 + u(k[1], cfg.scale),
                 shift_yx=u(k[2], cfg.shift, (2,)) * jnp.array([h, w], jnp.float32))
  return intensity(image, gamma=jnp.exp(u(k[3], jnp.log1p(cfg.gamma))), contrast=1.0 + u(k[4], cfg.contrast),
                   brightness=u(k[5], cfg.brightness))


def augment_batch(key: jax.Array, images_BxHxWxC: jnp.ndarray, cfg: AugmentConfig) -> jnp.ndarray:
  """Independent random transforms per image; float images in [0, 1] stay in [0, 1]."""
  keys = jax.random.split(key, images_BxHxWxC.shape[0])
  return jax.vmap(lambda k, x: _augment_one(k, x, cfg))(keys, images_BxHxWxC)
