"""tf.data input: decode, resize, cache, then shuffled training batches or masked eval batches.

Batches are dicts of numpy arrays: `image` uint8 [B, S, S, 1] (floats are made on the
device, a quarter of the bytes to move), `label` int32 [B], `file_name` bytes [B] (kept on
the host, to name the images of a failing batch), and for evaluation `mask` bool [B].
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from xray_jax import images
from xray_jax.errors import UsageError

# TensorFlow is only the input pipeline: it must never take GPU (or TPU) memory from JAX.
tf.config.set_visible_devices([], "GPU")
tfds.disable_progress_bar()

Batch = dict[str, np.ndarray]


def preprocess_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """HxWx1 uint8 -> image_size x image_size x 1 uint8, antialiased (aspect not kept)."""
  image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size),
                          method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _preprocess(example: dict[str, tf.Tensor], image_size: int) -> dict[str, tf.Tensor]:
  return {
      "image": preprocess_image(example["image"], image_size),
      "label": tf.cast(example["label"], tf.int32),
      "file_name": example["file_name"],
  }


def _decoded_and_cached(ds: tf.data.Dataset, image_size: int) -> tf.data.Dataset:
  """Examples resized in parallel, cached in memory, and read in a fixed order from then on."""
  ds = ds.map(lambda ex: _preprocess(ex, image_size), num_parallel_calls=tf.data.AUTOTUNE).cache()
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(1, os.cpu_count() or 1)
  # No autotuning: the trainer drops an iterator at every epoch's end, and with
  # autotuning on that waited 20-35 s on a background thread at 11 of 27 epoch ends
  # (benchmarks/RESULTS.md, "Epoch ends"). After the cache nothing is left to tune.
  options.autotune.enabled = False
  return ds.with_options(options)


def load_split(builder: tfds.core.DatasetBuilder, split: str, image_size: int) -> tf.data.Dataset:
  """One split, decoded and resized, cached in memory (uint8: 16 KiB an image at 128 px)."""
  if split not in builder.info.splits:
    raise UsageError(f"Split {split!r} is not in the prepared data (it has "
                     f"{sorted(builder.info.splits)}); the Kaggle folder it comes from was missing.")
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return _decoded_and_cached(ds, image_size)


def folder_dataset(image_dir: str, *, image_size: int, max_side: int) -> tuple[tf.data.Dataset, list[images.SkippedFile], list[images.ImageRecord]]:
  """Any folder holding NORMAL/ and PNEUMONIA/, read exactly as the builder reads files.

  Returns the dataset, the files skipped (not images, or undecodable), and the records
  of the images it yields, in order.
  """
  records, skipped = images.scan_class_folders(image_dir, root=image_dir)
  loaded = []
  for record, pixels in images.load_all(records, max_side):
    if isinstance(pixels, images.ImageLoadError):
      skipped.append(images.SkippedFile(pixels.path, pixels.reason))
    else:
      loaded.append((record, pixels))
  if not loaded:
    raise images.DataLayoutError(f"{image_dir}: none of its images could be read; see the skipped files above.")

  def generate():
    for record, pixels in loaded:
      yield {"image": pixels, "label": np.int32(record.label), "file_name": record.relpath.encode()}

  ds = tf.data.Dataset.from_generator(generate, output_signature={
      "image": tf.TensorSpec((None, None, 1), tf.uint8),
      "label": tf.TensorSpec((), tf.int32),
      "file_name": tf.TensorSpec((), tf.string),
  })
  return _decoded_and_cached(ds, image_size), skipped, [r for r, _ in loaded]


def epoch_seed(seed: int, epoch: int) -> int:
  return (seed * 1_000_003 + epoch) % (2**31 - 1)


def train_batches(ds: tf.data.Dataset, *, num_examples: int, batch_size: int, seed: int, epoch: int,
                  steps_per_epoch: int | None = None, skip_batches: int = 0, num_shards: int = 1,
                  shard_index: int = 0) -> Iterator[Batch]:
  """One epoch of shuffled full batches; the order depends only on (seed, epoch).

  Every process shuffles alike and keeps its own shard, so the processes' batches are
  disjoint parts of one global permutation. A resumed run skips the batches of the
  epoch it already trained on, so it sees the same images in the same order as a run
  that was never stopped. (No `repeat`: epochs are explicit, for exact resumption.)
  """
  ds = ds.shuffle(num_examples, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
  ds = ds.shard(num_shards, shard_index)
  ds = ds.batch(batch_size, drop_remainder=True)  # static shapes: one compiled train step
  if steps_per_epoch is not None:  # uneven shards must not give processes different step counts
    ds = ds.take(steps_per_epoch)
  return ds.skip(skip_batches).prefetch(2).as_numpy_iterator()


def eval_batches(ds: tf.data.Dataset, *, num_examples: int, batch_size: int) -> Iterator[Batch]:
  """Every example exactly once, in order; the last batch is padded and masked out."""
  ds = ds.map(lambda ex: {**ex, "mask": tf.constant(True)})
  pad = -num_examples % batch_size
  if pad:
    blank = {"image": tf.zeros(ds.element_spec["image"].shape, tf.uint8), "label": tf.constant(0, tf.int32),
             "file_name": tf.constant(b""), "mask": tf.constant(False)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(pad))
  return ds.batch(batch_size).prefetch(2).as_numpy_iterator()


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  return builder.info.splits[split].num_examples


def class_counts(builder: tfds.core.DatasetBuilder, split: str) -> list[int]:
  return list(builder.info.metadata["class_counts"][split])
