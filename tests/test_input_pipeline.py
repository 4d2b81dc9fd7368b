import numpy as np
import pytest
import tensorflow as tf

from conftest import SAMPLE_DIR
from xray_jax import images
from xray_jax import input_pipeline


def test_preprocessing_is_the_same_eagerly_and_inside_tf_data():
  rng = np.random.default_rng(0)
  raw = [rng.integers(0, 256, (h, w, 1), dtype=np.uint8) for h, w in ((256, 200), (97, 131), (128, 128))]
  eager = [input_pipeline.preprocess_image(tf.constant(x), 64).numpy() for x in raw]
  ds = tf.data.Dataset.from_generator(lambda: iter(raw), output_signature=tf.TensorSpec((None, None, 1), tf.uint8))
  mapped = list(ds.map(lambda x: input_pipeline.preprocess_image(x, 64)).as_numpy_iterator())
  for a, b in zip(eager, mapped):
    assert a.shape == (64, 64, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_preprocessing_keeps_a_constant_image_constant():
  out = input_pipeline.preprocess_image(tf.fill((300, 250, 1), tf.constant(77, tf.uint8)), 128).numpy()
  assert (out == 77).all()


def test_eval_batches_count_every_example_exactly_once(prepared_sample):
  builder, _ = prepared_sample
  n = input_pipeline.num_examples(builder, "validation")
  ds = input_pipeline.load_split(builder, "validation", 32)
  batch_size = 7 if n % 7 else 8
  batches = list(input_pipeline.eval_batches(ds, num_examples=n, batch_size=batch_size))
  assert all(b["image"].shape == (batch_size, 32, 32, 1) for b in batches)  # static shapes
  masks = np.concatenate([b["mask"] for b in batches])
  names = [x for b in batches for x, m in zip(b["file_name"], b["mask"]) if m]
  assert masks.sum() == n and len(set(names)) == n
  assert masks[:n].all() and not masks[n:].any() and len(masks) > n  # padding only at the end


def test_train_batches_depend_only_on_seed_and_epoch_and_resume_exactly(prepared_sample):
  builder, _ = prepared_sample
  ds = input_pipeline.load_split(builder, "train", 32)
  n = input_pipeline.num_examples(builder, "train")
  names = lambda **kw: [tuple(b["file_name"]) for b in input_pipeline.train_batches(
      ds, num_examples=n, batch_size=16, **kw)]
  first = names(seed=1, epoch=0)
  assert len(first) == n // 16
  assert names(seed=1, epoch=0) == first
  assert names(seed=1, epoch=1) != first and names(seed=2, epoch=0) != first
  assert names(seed=1, epoch=0, skip_batches=3) == first[3:]


def test_pipelines_run_without_tf_data_autotuning(prepared_sample):
  # With autotuning on, dropping an epoch's iterator waited 20-35 s at 11 of 27 epoch ends
  # of training runs (benchmarks/RESULTS.md, "Epoch ends").
  builder, _ = prepared_sample
  ds = input_pipeline.load_split(builder, "train", 32)
  derived = ds.shuffle(8).batch(4).prefetch(2)  # what train_batches and eval_batches build on it
  folder, _, _ = input_pipeline.folder_dataset(f"{SAMPLE_DIR}/val", image_size=32, max_side=256)
  for d in (ds, derived, folder):
    assert d.options().autotune.enabled is False and d.options().deterministic is True


def test_folder_dataset_reads_like_the_builder_and_lists_bad_files(tmp_path, prepared_sample):
  import shutil
  builder, _ = prepared_sample
  folder = tmp_path / "kaggle_val"
  shutil.copytree(f"{SAMPLE_DIR}/val", folder)
  (folder / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 broken")
  ds, skipped, records = input_pipeline.folder_dataset(str(folder), image_size=64, max_side=256)
  assert [s.path.endswith("broken.jpeg") for s in skipped] == [True]
  from_folder = {e["file_name"].split(b"/")[-1]: e["image"] for e in ds.as_numpy_iterator()}
  from_builder = {e["file_name"].split(b"/")[-1]: e["image"]
                  for e in input_pipeline.load_split(builder, "kaggle_val", 64).as_numpy_iterator()}
  assert len(records) == len(from_folder) == len(from_builder) == 16
  for k in from_builder:  # same loader, same resize: identical pixels
    np.testing.assert_array_equal(from_folder[k], from_builder[k])
  assert images.CLASS_NAMES == ("NORMAL", "PNEUMONIA")


def test_missing_split_is_a_clear_error(prepared_sample):
  builder, _ = prepared_sample
  with pytest.raises(ValueError, match="Split 'holdout' is not in the prepared data"):
    input_pipeline.load_split(builder, "holdout", 64)
