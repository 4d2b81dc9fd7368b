"""A stress-validation set: the validation images under fixed, plausible acquisition shifts.

The official test images come from a shifted distribution (another look, more NORMAL), so
a validation score alone says little about them. Each shift below is applied to every
image of a split, deterministically (noise is seeded by the file name), in the tf.data
pipeline on the stored uint8 images, at a severity a radiograph can plausibly have:
exposure and contrast (gamma, contrast), detector and processing (blur, noise, JPEG),
framing (zoom in and out), and resolution. Measuring on them tells a robust model from a
brittle one without touching the test split.
"""

from __future__ import annotations

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


def apply(ds: tf.data.Dataset, shift: str) -> tf.data.Dataset:
  """`ds` (uint8 images) with `shift` applied to every image, deterministically."""
  fn = SHIFTS[shift]

  def one(ex):
    seed = tf.strings.to_hash_bucket_fast(ex["file_name"], 2**31 - 1)
    x = tf.cast(ex["image"], tf.float32) / 255.0
    x = tf.clip_by_value(fn(x, seed), 0.0, 1.0)
    out = tf.cast(tf.round(x * 255.0), tf.uint8)
    out.set_shape(ex["image"].shape)  # keep the static shape that batching and padding rely on
    return {**ex, "image": out}

  return ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
