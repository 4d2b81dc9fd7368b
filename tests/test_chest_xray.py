"""The TFDS builder on generated folders: splits, patients, duplicates, bad input."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import gradient_image, make_kaggle_folder, write_image
from xray_jax import chest_xray
from xray_jax.errors import DataLayoutError, UsageError


def _examples(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split)))


def test_patient_groups_join_patients_sharing_identical_files():
  from xray_jax.images import ImageRecord
  recs = [ImageRecord("a", "a", 0, "p1"), ImageRecord("b", "b", 0, "p2"), ImageRecord("c", "c", 0, "p3"),
          ImageRecord("d", "d", 0, "p3")]
  groups = chest_xray.patient_groups(recs, ["h1", "h2", "h3", "h1"])  # p1 and p3 share a file
  assert groups[0] == groups[2] == groups[3] and groups[1] != groups[0]


def test_builder_splits_by_patient_and_reads_every_split(tmp_path):
  data = make_kaggle_folder(str(tmp_path / "kaggle"), n_patients=40, per_patient=3,
                            splits=("train", "val", "test"))
  # A byte-identical copy of one patient's image under another patient's name.
  shutil.copy(os.path.join(data, "train", "NORMAL", "IM-0001-0001.jpeg"),
              os.path.join(data, "train", "NORMAL", "IM-0777-0001.jpeg"))
  # Names with two image numbers are more films of the same child (Kaggle train/ has IM-0429-0001.jpeg,
  # IM-0429-0001-0001.jpeg and IM-0429-0001-0002.jpeg): one more for every NORMAL patient.
  for p in range(40):
    pixels = gradient_image(seed=p)
    pixels[12:20, 2:10], pixels[30:38, 30:38] = p, 250  # unlike any other file
    write_image(os.path.join(data, "train", "NORMAL", f"IM-{p:04d}-0001-0002.jpeg"), pixels)
  builder = chest_xray.load_builder(data_dir=data, tfds_data_dir=str(tmp_path / "tfds"), image_size=128)
  splits = builder.info.splits
  assert set(splits) == {"train", "validation", "test", "kaggle_val"}
  assert splits["train"].num_examples + splits["validation"].num_examples == 40 * 3 * 2 + 1 + 40
  assert splits["test"].num_examples == splits["kaggle_val"].num_examples == 40 * 3 * 2
  train, val = _examples(builder, "train"), _examples(builder, "validation")
  train_patients = {e["patient_id"] for e in train}
  val_patients = {e["patient_id"] for e in val}
  assert val_patients and not train_patients & val_patients
  assert 0.03 < len(val) / (len(train) + len(val)) < 0.25
  side = {e["patient_id"]: name for name, es in (("train", train), ("val", val)) for e in es}
  assert side[b"IM-0001"] == side[b"IM-0777"]  # the duplicate stays with its twin
  assert len(val_patients) < len({e["file_name"] for e in val})  # so validation holds all 4 films of some
  for e in train + val:
    if e["file_name"].endswith(b"-0001-0002.jpeg"):
      assert e["patient_id"] == e["file_name"][len("train/NORMAL/"):len("train/NORMAL/IM-0000")]
  assert [["train/NORMAL/IM-0001-0001.jpeg", "train/NORMAL/IM-0777-0001.jpeg"]] == [
      sorted(g) for g in builder.info.metadata["duplicate_groups"] if "train/NORMAL/IM-0001-0001.jpeg" in g]
  # Labels follow the folders, features are complete, pixels are the images'.
  for e in train[:20]:
    assert e["label"] == (1 if b"PNEUMONIA" in e["file_name"] else 0)
    assert e["image"].shape == (40, 48, 1) and e["image"].dtype == np.uint8
  counts = builder.info.metadata["class_counts"]
  assert sum(counts["train"]) == splits["train"].num_examples


def test_same_split_on_every_preparation(tmp_path):
  data = make_kaggle_folder(str(tmp_path / "kaggle"), n_patients=25)
  keys = []
  for i in range(2):
    b = chest_xray.load_builder(data_dir=data, tfds_data_dir=str(tmp_path / f"tfds{i}"), image_size=64)
    keys.append(sorted(e["file_name"] for e in _examples(b, "validation")))
  assert keys[0] == keys[1]


def test_bad_files_are_skipped_counted_and_listed(tmp_path):
  data = make_kaggle_folder(str(tmp_path / "kaggle"), n_patients=20)
  bad = os.path.join(data, "train", "PNEUMONIA", "person900_virus_1.jpeg")
  with open(bad, "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
  notes = os.path.join(data, "train", "NORMAL", "notes.txt")
  with open(notes, "w") as f:
    f.write("x")
  with open(os.path.join(data, "train", "NORMAL", ".DS_Store"), "wb") as f:
    f.write(b"junk")
  builder = chest_xray.load_builder(data_dir=data, tfds_data_dir=str(tmp_path / "tfds"), image_size=64)
  skipped = {s["path"]: s["reason"] for s in builder.info.metadata["skipped"]}
  assert set(skipped) == {os.path.abspath(bad), notes}  # .DS_Store is junk, not data
  assert "cannot decode" in skipped[os.path.abspath(bad)]
  total = builder.info.splits["train"].num_examples + builder.info.splits["validation"].num_examples
  assert total == 20 * 2 * 2  # every good image is there, the bad one is not
  # The list survives a reload from disk, where the trainer reads it.
  again = chest_xray.load_builder(data_dir=None, tfds_data_dir=str(tmp_path / "tfds"), image_size=64)
  assert len(again.info.metadata["skipped"]) == 2


def test_layout_errors_name_the_path_and_the_fix(tmp_path):
  tfds_dir = str(tmp_path / "tfds")
  with pytest.raises(DataLayoutError, match="does not exist"):
    chest_xray.load_builder(data_dir=str(tmp_path / "missing"), tfds_data_dir=tfds_dir, image_size=128)
  nested = make_kaggle_folder(str(tmp_path / "download" / "chest_xray"), n_patients=2)
  with pytest.raises(DataLayoutError, match=f"Did you mean --data_dir={nested}"):
    chest_xray.load_builder(data_dir=str(tmp_path / "download"), tfds_data_dir=tfds_dir, image_size=128)
  shutil.rmtree(os.path.join(nested, "train", "PNEUMONIA"))
  with pytest.raises(DataLayoutError, match="missing"):
    chest_xray.load_builder(data_dir=nested, tfds_data_dir=tfds_dir, image_size=128)


def test_no_data_dir_and_nothing_prepared_says_where_to_download(tmp_path):
  with pytest.raises(DataLayoutError, match="from Kaggle.*--data_dir=PATH"):
    chest_xray.load_builder(data_dir=None, tfds_data_dir=str(tmp_path), image_size=128)


def test_changed_folder_is_prepared_again_other_folder_is_refused(tmp_path):
  data = make_kaggle_folder(str(tmp_path / "kaggle"), n_patients=20)
  tfds_dir = str(tmp_path / "tfds")
  n0 = chest_xray.load_builder(data_dir=data, tfds_data_dir=tfds_dir, image_size=128).info.splits.total_num_examples
  write_image(os.path.join(data, "train", "NORMAL", "IM-0500-0001.jpeg"), gradient_image(seed=5))
  n1 = chest_xray.load_builder(data_dir=data, tfds_data_dir=tfds_dir, image_size=128).info.splits.total_num_examples
  assert n1 == n0 + 1
  other = make_kaggle_folder(str(tmp_path / "other"), n_patients=20)
  with pytest.raises(UsageError, match="separate --tfds_data_dir"):
    chest_xray.load_builder(data_dir=other, tfds_data_dir=tfds_dir, image_size=128)


def test_image_size_picks_a_stored_resolution():
  assert chest_xray.config_for_image_size(128).max_side == 256
  assert chest_xray.config_for_image_size(384).max_side == 512
  with pytest.raises(UsageError, match="--image_size=1024"):
    chest_xray.config_for_image_size(1024)
