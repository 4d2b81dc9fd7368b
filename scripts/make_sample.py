"""Rebuilds sample_data/chest_xray from the full set: a few hundred real images, downscaled.

    python scripts/make_sample.py --src=../shared/data/chest_xray --dst=sample_data/chest_xray

Patients are picked deterministically (by a hash of the patient id), whole patients at a
time, so the sample keeps the patient structure the splits depend on. Its test/ folder is
carved from Kaggle train/ (other patients than its train/), not from the official test set.
"""

import argparse
import hashlib
import os
import shutil

from PIL import Image

from xray_jax import images


def _rank(key: str) -> str:
  return hashlib.sha256(key.encode()).hexdigest()


def _pick_patients(records, n_train, n_test):
  """Whole patients, in hash order, first for train/ then for test/: no patient on both."""
  by_patient = {}
  for r in records:
    by_patient.setdefault(r.patient_id, []).append(r)
  train, test = [], []
  for pid in sorted(by_patient, key=_rank):
    if len(train) < n_train:
      train.extend(by_patient[pid])
    elif len(test) < n_test:
      test.extend(by_patient[pid])
  return {"train": train, "test": test}


def _write(record, dst_dir, size, quality):
  pixels = images.load_grayscale(record.path)[:, :, 0]
  img = Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS)
  os.makedirs(dst_dir, exist_ok=True)
  img.save(os.path.join(dst_dir, os.path.basename(record.path)), quality=quality, optimize=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--src", default="../shared/data/chest_xray")
  ap.add_argument("--dst", default="sample_data/chest_xray")
  ap.add_argument("--size", type=int, default=128)
  ap.add_argument("--quality", type=int, default=90)
  args = ap.parse_args()
  shutil.rmtree(args.dst, ignore_errors=True)
  records, _ = images.scan_class_folders(os.path.join(args.src, "train"))
  # (train images, test images) per class; NORMAL is the minority, as in the full set.
  wanted = {"NORMAL": (110, 30), "PNEUMONIA": (190, 30)}
  for label, name in enumerate(images.CLASS_NAMES):
    chosen = _pick_patients([r for r in records if r.label == label], *wanted[name])
    for split, recs in chosen.items():
      for r in recs:
        _write(r, os.path.join(args.dst, split, name), args.size, args.quality)
  val_records, _ = images.scan_class_folders(os.path.join(args.src, "val"))
  for r in val_records:  # the official 16-image val split, kept whole (downscaled)
    _write(r, os.path.join(args.dst, "val", images.CLASS_NAMES[r.label]), args.size, args.quality)


if __name__ == "__main__":
  main()
