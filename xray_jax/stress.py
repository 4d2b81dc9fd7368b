"""A stress-validation set: the validation images under fixed, plausible acquisition shifts.

The official test images come from a shifted distribution (another look, more NORMAL), so
a validation score alone says little about them. Each shift below is applied to every
image of a split, deterministically (noise is seeded by the file name), in the tf.data
pipeline on the stored uint8 images, at a severity a radiograph can plausibly have:
exposure and contrast (gamma, contrast), detector and processing (blur, noise, JPEG),
framing (zoom in and out), and resolution. Measuring on them tells a robust model from a
brittle one without touching the test split.

`SHIFTS` are the same families that the `cnn` recipes' augmentation draws from (blur,
noise, contrast, gamma, zoom), so a model can learn to be invariant to them, and the
`stress` threshold rule is chosen on them. `UNSEEN_SHIFTS` are families that no
augmentation here draws and no threshold rule sees: display and post-processing
(histogram equalisation, edge enhancement, fewer grey levels), a graded exposure across
the film (the anode heel effect), unexposed collimator borders, burned-in markers, and a
rotation beyond the augmentation's range. They measure how a model fares on a shift that
nothing was tuned on, as the official test split's will be.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

ImageFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (float HxWx1 in [0, 1], int seed) -> same


def _contrast(factor: float) -> ImageFn:
  return lambda x, _: (x - tf.reduce_mean(x)) * factor + tf.reduce_mean(x)


def _gamma(g: float) -> ImageFn:
  return lambda x, _: tf.pow(x, g)


def _blur(sigma: float) -> ImageFn:
  r = int(3 * sigma + 0.5)
  k = tf.exp(-tf.square(tf.range(-r, r + 1, dtype=tf.float32)) / (2 * sigma**2))
  k /= tf.reduce_sum(k)

  def fn(x, _):
    padded = tf.pad(x[None], [[0, 0], [r, r], [r, r], [0, 0]], mode="SYMMETRIC")
    y = tf.nn.conv2d(padded, tf.reshape(k, [-1, 1, 1, 1]), 1, "VALID")
    return tf.nn.conv2d(y, tf.reshape(k, [1, -1, 1, 1]), 1, "VALID")[0]
  return fn


def _noise(std: float) -> ImageFn:
  return lambda x, seed: x + std * tf.random.stateless_normal(tf.shape(x), seed=tf.stack([seed, 0]))


def _zoom(factor: float) -> ImageFn:
  """factor > 1 crops the centre and enlarges it; < 1 shrinks the image inside a black border."""
  def fn(x, _):
    size = tf.shape(x)[:2]
    if factor > 1:
      return tf.image.resize(tf.image.central_crop(x, 1.0 / factor), size, antialias=True)
    inner = tf.cast(tf.cast(size, tf.float32) * factor, tf.int32)
    small = tf.image.resize(x, inner, antialias=True)
    return tf.image.resize_with_crop_or_pad(small, size[0], size[1])
  return fn


def _resolution(side: int) -> ImageFn:
  return lambda x, _: tf.image.resize(tf.image.resize(x, [side, side], antialias=True), tf.shape(x)[:2])


def _jpeg(quality: int) -> ImageFn:
  return lambda x, _: tf.image.adjust_jpeg_quality(x, quality)


def _equalize(x: tf.Tensor, _) -> tf.Tensor:
  """Global histogram equalisation of the 256 grey levels, as some viewers display films."""
  levels = tf.cast(tf.round(x * 255.0), tf.int32)
  cdf = tf.cast(tf.cumsum(tf.math.bincount(tf.reshape(levels, [-1]), minlength=256, maxlength=256)), tf.float32)
  lowest = tf.reduce_min(tf.where(cdf > 0, cdf, cdf[-1]))  # count of the darkest level present
  return tf.gather((cdf - lowest) / tf.maximum(cdf[-1] - lowest, 1.0), levels)


def _unsharp(sigma: float, amount: float) -> ImageFn:
  """Edge enhancement (unsharp masking), a common step of radiograph post-processing."""
  blur = _blur(sigma)
  return lambda x, seed: x + amount * (x - blur(x, seed))


def _posterize(levels: int) -> ImageFn:
  return lambda x, _: tf.round(x * (levels - 1)) / (levels - 1)


def _exposure_ramp(top: float, bottom: float) -> ImageFn:
  """Exposure falling off from one end of the film to the other (anode heel effect)."""
  return lambda x, _: x * tf.linspace(top, bottom, tf.shape(x)[0])[:, None, None]


def _frac_mask(shape: tf.Tensor, rows: tuple[float, float], cols: tuple[float, float]) -> tf.Tensor:
  """HxWx1 bool: True inside the rectangle given in fractions of the height and width."""
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  y = (tf.range(shape[0], dtype=tf.float32) + 0.5) / h
  x = (tf.range(shape[1], dtype=tf.float32) + 0.5) / w
  inside_y = (y >= rows[0]) & (y < rows[1])
  inside_x = (x >= cols[0]) & (x < cols[1])
  return (inside_y[:, None] & inside_x[None, :])[..., None]


def _paint(rects: tuple[tuple[tuple[float, float], tuple[float, float]], ...], value: float) -> ImageFn:
  def fn(x, _):
    mask = tf.zeros_like(x, tf.bool)
    for rows, cols in rects:
      mask |= _frac_mask(tf.shape(x), rows, cols)
    return tf.where(mask, value, x)
  return fn


def _rotate(degrees: float) -> ImageFn:
  """Counter-clockwise rotation about the centre, edges replicated (the augmentation rotates up to 10
  degrees)."""
  def fn(x, _):
    h, w = tf.cast(tf.shape(x)[0], tf.float32), tf.cast(tf.shape(x)[1], tf.float32)
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Output (x, y) is read from input (cos*(x-cx) - sin*(y-cy) + cx, sin*(x-cx) + cos*(y-cy) + cy).
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform[None], output_shape=tf.shape(x)[:2], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")[0]
  return fn


SHIFTS: dict[str, ImageFn] = {
    "contrast_low": _contrast(0.6),
    "contrast_high": _contrast(1.5),
    "gamma_dark": _gamma(1.6),
    "gamma_bright": _gamma(0.6),
    "blur": _blur(1.5),
    "noise": _noise(0.05),
    "jpeg_q20": _jpeg(20),
    "zoom_in": _zoom(1.2),
    "zoom_out": _zoom(0.8),
    "low_resolution": _resolution(48),
}

UNSEEN_SHIFTS: dict[str, ImageFn] = {
    "equalize": _equalize,
    "unsharp": _unsharp(2.0, 1.0),
    "posterize_16": _posterize(16),
    "heel_effect": _exposure_ramp(1.25, 0.75),
    # Unexposed film outside the collimator's shutters reads white: bands on all four sides.
    "collimation": _paint((((0.0, 0.06), (0.0, 1.0)), ((0.94, 1.0), (0.0, 1.0)),
                           ((0.0, 1.0), (0.0, 0.08)), ((0.0, 1.0), (0.92, 1.0))), 0.95),
    # A side marker in one top corner and a line of burned-in text in the other.
    "markers": _paint((((0.04, 0.12), (0.05, 0.12)), ((0.04, 0.08), (0.55, 0.95))), 1.0),
    "rotate_15": _rotate(15.0),
}

SHIFT_SETS: dict[str, dict[str, ImageFn]] = {"standard": SHIFTS, "unseen": UNSEEN_SHIFTS}
_ALL = {**SHIFTS, **UNSEEN_SHIFTS}


def apply(ds: tf.data.Dataset, shift: str) -> tf.data.Dataset:
  """`ds` (uint8 images) with `shift` (a name from any set) applied to every image, deterministically."""
  fn = _ALL[shift]

  def one(ex):
    seed = tf.strings.to_hash_bucket_fast(ex["file_name"], 2**31 - 1)
    x = tf.cast(ex["image"], tf.float32) / 255.0
    x = tf.clip_by_value(fn(x, seed), 0.0, 1.0)
    out = tf.cast(tf.round(x * 255.0), tf.uint8)
    out.set_shape(ex["image"].shape)  # keep the static shape that batching and padding rely on
    return {**ex, "image": out}

  return ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
