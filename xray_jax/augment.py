"""On-device augmentation, run inside the jitted train step, keyed by the step's rng.

Geometry: a random affine per image (small rotation, scale, shift), sampled bilinearly
with edges replicated, so no black borders appear that a model could learn from.
Intensity: gamma, contrast and brightness, as exposure and processing differ between
X-ray machines. Detector: optional Gaussian blur and noise (off by default; the `cnn`
experiment turns them on, because the stress test showed a model trained without them
calls noisy or soft NORMAL films PNEUMONIA). Collimator bands: optional flat bands of a random
level at the edges, as shutters and collimation crop films differently (off by default; the
unseen stress shift `collimation` showed whether a model reads them as NORMAL is a seed lottery).
Random erasing: optional, one rectangle of uniform noise anywhere in the image (Zhong et al.
2020), so that no single region can be relied on; off by default (RESULTS idea 37).
No flips: a mirrored chest (heart on the right) is not a real patient.
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
  blur: float = 0.0  # Gaussian blur sigma uniform in [0, blur] pixels (at most 2)
  noise: float = 0.0  # Gaussian noise std uniform in [0, noise] (images in [0, 1])
  border: float = 0.0  # probability of collimator bands (each side up to BORDER_MAX of the size)
  erase: float = 0.0  # probability of one noise-filled rectangle (area and aspect in ERASE_*)


BORDER_MAX = 0.12
ERASE_AREA = (0.02, 0.2)  # fraction of the image, uniform (Zhong et al. 2020 go to 0.4; pneumonia can be focal)
ERASE_ASPECT = (0.3, 3.3)  # height / width, log-uniform


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


_BLUR_RADIUS = 6  # taps each side: enough for sigma up to 2


def gaussian_blur(image_HxWxC: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
  """Separable Gaussian blur with a traced sigma (edges replicated); sigma 0 is the identity."""
  taps = jnp.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=jnp.float32)
  k = jnp.where(sigma > 1e-3, jnp.exp(-jnp.square(taps) / (2 * jnp.square(jnp.maximum(sigma, 1e-3)))),
                (taps == 0).astype(jnp.float32))
  k = k / jnp.sum(k)
  h, w, _ = image_HxWxC.shape
  r = _BLUR_RADIUS
  x = jnp.pad(image_HxWxC, ((r, r), (0, 0), (0, 0)), mode="edge")
  x = sum(k[i] * x[i:i + h] for i in range(2 * r + 1))
  x = jnp.pad(x, ((0, 0), (r, r), (0, 0)), mode="edge")
  return sum(k[i] * x[:, i:i + w] for i in range(2 * r + 1))


def collimator_bands(image_HxWxC: jnp.ndarray, widths_tblr: jnp.ndarray, level: jnp.ndarray) -> jnp.ndarray:
  """Sets bands at the top, bottom, left and right edges (widths in fractions of the size) to
  `level`; a pixel is covered when its centre lies in a band, so zero widths are the identity."""
  h, w, _ = image_HxWxC.shape
  rows = (jnp.arange(h, dtype=jnp.float32)[:, None] + 0.5) / h
  cols = (jnp.arange(w, dtype=jnp.float32)[None, :] + 0.5) / w
  top, bottom, left, right = widths_tblr
  inside = (rows >= top) & (rows <= 1.0 - bottom) & (cols >= left) & (cols <= 1.0 - right)
  return jnp.where(inside[..., None], image_HxWxC, level.astype(image_HxWxC.dtype))


def erase_rectangle(image_HxWxC: jnp.ndarray, top_left_yx: jnp.ndarray, size_hw: jnp.ndarray,
                    fill_HxWxC: jnp.ndarray) -> jnp.ndarray:
  """Replaces the pixels whose centres lie in a rectangle (corner and size in fractions of the
  image) by `fill`; a zero size is the identity."""
  h, w, _ = image_HxWxC.shape
  rows = (jnp.arange(h, dtype=jnp.float32)[:, None] + 0.5) / h
  cols = (jnp.arange(w, dtype=jnp.float32)[None, :] + 0.5) / w
  (y0, x0), (eh, ew) = top_left_yx, size_hw
  inside = (rows >= y0) & (rows < y0 + eh) & (cols >= x0) & (cols < x0 + ew)
  return jnp.where(inside[..., None], fill_HxWxC.astype(image_HxWxC.dtype), image_HxWxC)


def _random_erase(key: jax.Array, image: jnp.ndarray, p: float) -> jnp.ndarray:
  kp, ka, kr, kc, kf = jax.random.split(key, 5)
  area = jax.random.uniform(ka, (), minval=ERASE_AREA[0], maxval=ERASE_AREA[1])
  log_aspect = jax.random.uniform(kr, (), minval=jnp.log(ERASE_ASPECT[0]), maxval=jnp.log(ERASE_ASPECT[1]))
  size = jnp.minimum(jnp.sqrt(area * jnp.exp(jnp.array([log_aspect, -log_aspect]))), 1.0)
  corner = jax.random.uniform(kc, (2,)) * (1.0 - size)  # the whole rectangle inside the image
  size = size * jax.random.bernoulli(kp, p)
  return erase_rectangle(image, corner, size, jax.random.uniform(kf, image.shape))


def _augment_one(key: jax.Array, image: jnp.ndarray, cfg: AugmentConfig) -> jnp.ndarray:
  k = jax.random.split(key, 6)
  h, w, _ = image.shape
  u = lambda key, r, shape=(): jax.random.uniform(key, shape, minval=-r, maxval=r)
  image = affine(image, angle=jnp.deg2rad(u(k[0], cfg.rotate_deg)), scale=1.0 + u(k[1], cfg.scale),
                 shift_yx=u(k[2], cfg.shift, (2,)) * jnp.array([h, w], jnp.float32))
  if cfg.blur or cfg.noise:  # a static branch: runs without them draw the same random numbers as before
    kb, kn, kz = jax.random.split(jax.random.fold_in(key, 1), 3)
    if cfg.blur:
      image = gaussian_blur(image, jax.random.uniform(kb, (), maxval=min(cfg.blur, 2.0)))
  if cfg.border:  # before intensity: the bands are exposed and processed like the rest of the film
    kp, kw, kl = jax.random.split(jax.random.fold_in(key, 2), 3)
    widths = jax.random.uniform(kw, (4,), maxval=BORDER_MAX) * jax.random.bernoulli(kp, cfg.border)
    image = collimator_bands(image, widths, jax.random.uniform(kl, ()))
  image = intensity(image, gamma=jnp.exp(u(k[3], jnp.log1p(cfg.gamma))), contrast=1.0 + u(k[4], cfg.contrast),
                    brightness=u(k[5], cfg.brightness))
  if cfg.noise:
    std = jax.random.uniform(kn, (), maxval=cfg.noise)
    image = jnp.clip(image + std * jax.random.normal(kz, image.shape), 0.0, 1.0)
  if cfg.erase:  # last, so the fill is plain noise, untouched by the intensity changes
    image = _random_erase(jax.random.fold_in(key, 3), image, cfg.erase)
  return image


def augment_batch(key: jax.Array, images_BxHxWxC: jnp.ndarray, cfg: AugmentConfig) -> jnp.ndarray:
  """Independent random transforms per image; float images in [0, 1] stay in [0, 1]."""
  keys = jax.random.split(key, images_BxHxWxC.shape[0])
  return jax.vmap(lambda k, x: _augment_one(k, x, cfg))(keys, images_BxHxWxC)


def mixup(key: jax.Array, images_BxHxWxC: jnp.ndarray,
          alpha: float) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Mixup (Zhang et al. 2018): each image blended with a random other image of the batch.

  Returns (mixed images, partner index per image, lam per image) with lam ~ Beta(alpha, alpha)
  folded into [0.5, 1], so each mixed image's own label keeps the larger share (the
  train metrics score mixed images against it). The loss is
  lam * loss(label) + (1 - lam) * loss(label[partner]) (losses.weighted_softmax_xent).
  """
  k_perm, k_lam = jax.random.split(key)
  n = images_BxHxWxC.shape[0]
  partner = jax.random.permutation(k_perm, n)
  lam = jax.random.beta(k_lam, alpha, alpha, (n,))
  lam = jnp.maximum(lam, 1.0 - lam)
  lam_b = lam.reshape((n,) + (1,) * (images_BxHxWxC.ndim - 1))
  return lam_b * images_BxHxWxC + (1.0 - lam_b) * images_BxHxWxC[partner], partner, lam


# Test-time augmentation: the identity plus mild zooms and horizontal/vertical shifts, as
# (scale, shift_y, shift_x) with shifts in fractions of the image size. No flips or large
# rotations: chest anatomy is not mirror-symmetric and films are taken upright.
TTA_VIEWS = ((1.0, 0.0, 0.0), (1.08, 0.0, 0.0), (0.93, 0.0, 0.0), (1.0, 0.0, 0.04), (1.0, 0.0, -0.04),
             (1.0, 0.04, 0.0), (1.0, -0.04, 0.0))


def tta_view(images_BxHxWxC: jnp.ndarray, view: tuple[float, float, float]) -> jnp.ndarray:
  scale, dy, dx = view
  if view == (1.0, 0.0, 0.0):
    return images_BxHxWxC
  h, w = images_BxHxWxC.shape[1:3]
  shift = jnp.array([dy * h, dx * w], jnp.float32)
  return jax.vmap(lambda x: affine(x, angle=jnp.float32(0.0), scale=jnp.float32(scale), shift_yx=shift))(
      images_BxHxWxC)
