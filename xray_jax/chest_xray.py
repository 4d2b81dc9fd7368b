"""TFDS builder for the Kermany et al. (2018) pediatric chest X-ray set, Kaggle layout.

The user downloads the set by hand (see MANUAL_DOWNLOAD_INSTRUCTIONS) and passes its
folder; `load_builder` prepares it once into the TFDS data dir and reuses it after.

Splits:
  train, validation  carved from Kaggle `train/` by patient (about 10% of each class to
                     validation): all images of one patient, and byte-identical copies of
                     any of them, land on one side, so the validation score does not leak.
  test               Kaggle `test/`, when present.
  kaggle_val         the 16-image Kaggle `val/`, when present (too small to choose on).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import shutil

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from xray_jax import images
from xray_jax.errors import UsageError

VALIDATION_PERMILLE = 100  # about 10% of each class of Kaggle train/, whole patients, go to validation
KAGGLE_SPLITS = {"train": "train", "test": "test", "val": "kaggle_val"}  # folder -> split(s)

MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download the "Chest X-Ray Images (Pneumonia)" set (Kermany, Zhang and Goldbaum 2018, CC BY 4.0) '
    "from Kaggle (paultimothymooney/chest-xray-pneumonia) or Mendeley Data (doi:10.17632/rscbjbr9sj.2), "
    "unzip it, and pass the folder that holds train/ (and test/, val/ when you have them), each with "
    "NORMAL/ and PNEUMONIA/, as --data_dir=PATH. The repository ships a small sample: "
    "--data_dir=sample_data/chest_xray.")


@dataclasses.dataclass
class ChestXrayConfig(tfds.core.BuilderConfig):
  max_side: int = 256  # images are stored shrunk to this longer side (aspect kept)


def config_for_image_size(image_size: int) -> ChestXrayConfig:
  """The smallest stored resolution that serves `image_size` without upsampling."""
  for config in ChestXrayPneumonia.BUILDER_CONFIGS:
    if config.max_side >= image_size:
      return config
  largest = ChestXrayPneumonia.BUILDER_CONFIGS[-1].max_side
  raise UsageError(f"--image_size={image_size} is larger than the largest stored resolution "
                   f"({largest}); pass --image_size<={largest}.")


def file_sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _stable_rank(key: str) -> bytes:
  """An order of keys that looks random but is the same on every machine (unlike hash())."""
  return hashlib.sha256(key.encode()).digest()


def patient_groups(records: list[images.ImageRecord], digests: list[str]) -> list[str]:
  """For each record, a group key joining patients that share byte-identical files.

  The upstream set has identical files under different names; if those were split
  apart, validation would score images the model trained on.
  """
  parent: dict[str, str] = {}

  def find(x: str) -> str:
    while parent.setdefault(x, x) != x:
      parent[x] = parent[parent[x]]
      x = parent[x]
    return x

  first_patient_of_digest: dict[str, str] = {}
  for record, digest in zip(records, digests):
    other = first_patient_of_digest.setdefault(digest, record.patient_id)
    a, b = find(record.patient_id), find(other)
    if a != b:
      parent[max(a, b)] = min(a, b)
  return [find(r.patient_id) for r in records]


def validation_groups(labels: list[int], groups: list[str], permille: int = VALIDATION_PERMILLE) -> set[str]:
  """Whole groups for validation: about `permille`/1000 of each class's images.

  Per class (a group's majority label), groups are taken in a fixed pseudo-random order
  until the share is reached, so both classes are always in validation, in about their
  training proportions, and the choice depends only on the patient ids.
  """
  per_group: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for label, group in zip(labels, groups):
    per_group[group][label] += 1
  chosen: set[str] = set()
  for label in (0, 1):
    members = sorted((g for g, c in per_group.items() if np.argmax(c) == label), key=_stable_rank)
    target = round(sum(sum(per_group[g]) for g in members) * permille / 1000)
    taken = 0
    for g in members[:-1]:  # always leave the class at least one group to train on
      if taken >= max(target, 1):
        break
      chosen.add(g)
      taken += sum(per_group[g])
  return chosen


def source_fingerprint(data_dir: str) -> str:
  """Changes whenever a file under the Kaggle split folders is added, removed or rewritten."""
  h = hashlib.sha256()
  for folder in KAGGLE_SPLITS:
    top = os.path.join(data_dir, folder)
    for dirpath, dirnames, filenames in os.walk(top):
      dirnames.sort()
      for name in sorted(filenames):
        path = os.path.join(dirpath, name)
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, data_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


def check_layout(data_dir: str) -> list[str]:
  """The Kaggle split folders present under data_dir; a clear error if train/ is missing."""
  if not os.path.isdir(data_dir):
    raise images.DataLayoutError(f"--data_dir={data_dir} does not exist or is not a folder. "
                                 + MANUAL_DOWNLOAD_INSTRUCTIONS)
  present = [f for f in KAGGLE_SPLITS if os.path.isdir(os.path.join(data_dir, f))]
  if "train" not in present:
    hint = ""
    for sub in sorted(os.listdir(data_dir)):
      if os.path.isdir(os.path.join(data_dir, sub, "train")):
        hint = f" Did you mean --data_dir={os.path.join(data_dir, sub)} ?"
    found = sorted(e for e in os.listdir(data_dir) if not images.is_junk(e))
    raise images.DataLayoutError(
        f"--data_dir={data_dir} has no train/ folder (found: {found or 'nothing'}). It must be the "
        f"folder holding train/ (and optionally val/, test/), each with NORMAL/ and PNEUMONIA/.{hint}")
  return present


class ChestXrayPneumonia(tfds.core.GeneratorBasedBuilder):
  """Pediatric chest X-rays, NORMAL vs PNEUMONIA, as 8-bit grayscale."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Patient-wise train/validation split of Kaggle train/, 10% validation.",
      "1.1.0": "Names with two image numbers (IM-0429-0001-0002.jpeg, person447_virus_921_1.jpeg) belong to their "
               "patient (IM-0429, person447): 1.0.0 made each its own patient, and its validation split held 21 "
               "NORMAL films of 20 children whose other films were in train.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      ChestXrayConfig(name="max256", max_side=256, description="Longer side shrunk to 256 px."),
      ChestXrayConfig(name="max512", max_side=512, description="Longer side shrunk to 512 px."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=list(images.CLASS_NAMES)),
            "patient_id": tfds.features.Text(),
            "file_name": tfds.features.Text(),  # relative to the data folder
        }),
        supervised_keys=("image", "label"),
        homepage="https://data.mendeley.com/datasets/rscbjbr9sj/2",
        citation="""@article{kermany2018identifying,
  title={Identifying medical diagnoses and treatable diseases by image-based deep learning},
  author={Kermany, Daniel S and Goldbaum, Michael and Cai, Wenjia and others},
  journal={Cell}, volume={172}, number={5}, pages={1122--1131}, year={2018}}""",
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    data_dir = os.fspath(dl_manager.manual_dir)
    present = check_layout(data_dir)
    records: dict[str, list[images.ImageRecord]] = {}
    skipped: list[images.SkippedFile] = []
    for folder in present:
      recs, skips = images.scan_class_folders(os.path.join(data_dir, folder), root=data_dir)
      records[folder] = recs
      skipped.extend(skips)

    # Patient-wise split of Kaggle train/, byte-identical copies kept together.
    train_records = records["train"]
    digests = {r.path: file_sha256(r.path) for rs in records.values() for r in rs}
    groups = patient_groups(train_records, [digests[r.path] for r in train_records])
    val_groups = validation_groups([r.label for r in train_records], groups)
    splits = {
        "train": [r for r, g in zip(train_records, groups) if g not in val_groups],
        "validation": [r for r, g in zip(train_records, groups) if g in val_groups],
    }
    for folder in present:
      if folder != "train":
        splits[KAGGLE_SPLITS[folder]] = records[folder]
    for name in ("train", "validation"):
      if not splits[name]:
        raise images.DataLayoutError(
            f"{os.path.join(data_dir, 'train')} has too few patients to carve a patient-wise "
            f"{name} split from; add images of more patients.")

    # Facts a researcher must see, kept with the prepared data (read back by the trainer).
    by_digest = collections.defaultdict(list)
    for r in (r for rs in records.values() for r in rs):
      by_digest[digests[r.path]].append(r)
    duplicate_groups = [[r.relpath for r in rs] for rs in by_digest.values() if len(rs) > 1]
    conflicts = [[r.relpath for r in rs] for rs in by_digest.values() if len({r.label for r in rs}) > 1]
    cross_split = [[r.relpath for r in rs] for rs in by_digest.values()
                   if len({r.relpath.split(os.sep)[0] for r in rs}) > 1]
    for group in conflicts:
      logging.warning("Byte-identical files carry different labels: %s", group)
    for group in cross_split:
      logging.warning("Byte-identical files sit in different Kaggle splits: %s", group)
    self.info.metadata.update({
        "source_dir": os.path.abspath(data_dir),
        "source_fingerprint": source_fingerprint(data_dir),
        "max_side": self.builder_config.max_side,
        "class_counts": {name: np.bincount([r.label for r in rs], minlength=2).tolist()
                         for name, rs in splits.items()},
        "patients": {name: len({r.patient_id for r in rs}) for name, rs in splits.items()},
        "duplicate_groups": duplicate_groups,
        "label_conflicts": conflicts,
        "cross_split_duplicates": cross_split,
        "skipped": [],  # filled while generating: decoding errors surface there
    })
    self.info.metadata["skipped"].extend(dataclasses.asdict(s) for s in skipped)
    for s in skipped:
      logging.warning("Skipped %s: %s", s.path, s.reason)
    return {name: self._generate_examples(rs) for name, rs in splits.items()}

  def _generate_examples(self, records: list[images.ImageRecord]):
    for record, pixels in images.load_all(records, self.builder_config.max_side):
      if isinstance(pixels, images.ImageLoadError):
        logging.warning("Skipped %s: %s", pixels.path, pixels.reason)
        self.info.metadata["skipped"].append({"path": pixels.path, "reason": pixels.reason})
        continue
      yield record.relpath, {
          "image": pixels,
          "label": record.label,
          "patient_id": record.patient_id,
          "file_name": record.relpath,
      }


def default_tfds_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def load_builder(*, data_dir: str | None, tfds_data_dir: str | None, image_size: int) -> ChestXrayPneumonia:
  """The prepared builder; prepares (or refreshes) it from `data_dir` when one is given.

  The prepared copy records the folder it came from and a fingerprint of its files:
  changed files are prepared again; data prepared from another folder is never
  overwritten (the error says to pass another --tfds_data_dir).
  """
  tfds_data_dir = tfds_data_dir or default_tfds_data_dir()
  config = config_for_image_size(image_size)
  builder = ChestXrayPneumonia(config=config.name, data_dir=tfds_data_dir)
  if data_dir is None:
    if not builder.is_prepared():
      raise images.DataLayoutError(
          f"No prepared chest X-ray data in {builder.data_dir}. Prepare it once by passing "
          f"--data_dir. {MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return builder
  check_layout(data_dir)
  fingerprint = source_fingerprint(data_dir)
  if builder.is_prepared():
    prepared = dict(builder.info.metadata)
    if prepared.get("source_fingerprint") == fingerprint:
      return builder
    if prepared.get("source_dir") != os.path.abspath(data_dir):
      # Never delete data prepared from another folder: it may be hours of work.
      raise UsageError(
          f"{builder.data_dir} holds data prepared from {prepared.get('source_dir')}, not from "
          f"--data_dir={data_dir}. Pass a separate --tfds_data_dir for this folder, or delete "
          f"{builder.data_dir} to replace it.")
    logging.warning("Files under --data_dir=%s changed since they were prepared into %s: preparing again.",
                    data_dir, builder.data_dir)
    shutil.rmtree(builder.data_dir)
    builder = ChestXrayPneumonia(config=config.name, data_dir=tfds_data_dir)
  logging.info("Preparing %s from %s into %s", builder.name, data_dir, builder.data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data_dir))
  skipped = builder.info.metadata["skipped"]
  if skipped:
    logging.warning("%d file(s) were skipped while preparing; the list is in %s/metadata.json",
                    len(skipped), builder.data_dir)
  return builder
