"""Copies a split's original images into a folder with another share of NORMAL (label shift).

    python scripts/make_prior_shift_set.py --data_dir=../shared/data/chest_xray --normal_share=0.375 \
        --out_dir=runs/validation_normal375
    python -m xray_jax.evaluate --workdir=runs/cnn_s0 --image_dir=runs/validation_normal375 --stress --adapt_bn

Kaggle's test/ holds 37.5% NORMAL where the patient-held-out validation split holds 25.6%.
Tools that read the unlabeled evaluated set (evaluate --adapt_bn, --label_shift=em) can be
fooled by a change of class mix, and this folder measures by how much without the test
split. Whole patients of the over-represented class are dropped, in an order fixed by
--seed, until the share is reached; the files are copied unchanged, so `--image_dir`
reads them exactly as the prepared split was read. OUT_DIR.json lists what was kept (beside the
folder: a file inside it would be reported as skipped).
"""

import argparse
import collections
import json
import os
import random
import shutil

from xray_jax import chest_xray
from xray_jax import images


def choose(file_names: list[str], labels: list[int], normal_share: float, seed: int) -> list[int]:
  """Indices kept: every image of the minority side, whole patients of the other dropped at
  random until NORMAL is `normal_share` of what is left (or just above it)."""
  if not 0.0 < normal_share < 1.0:
    raise SystemExit(f"--normal_share={normal_share}: give a share strictly between 0 and 1, e.g. 0.375.")
  counts = collections.Counter(labels)
  share = counts[0] / len(labels)
  drop_label = 1 if normal_share > share else 0  # fewer PNEUMONIA raises NORMAL's share
  by_patient = collections.defaultdict(list)
  for i, (name, label) in enumerate(zip(file_names, labels)):
    if label == drop_label:
      by_patient[images.patient_id(name)].append(i)
  patients = sorted(by_patient)
  random.Random(seed).shuffle(patients)
  dropped: set[int] = set()
  for pid in patients:
    n_normal = counts[0] - (len(dropped) if drop_label == 0 else 0)
    left = len(labels) - len(dropped)
    if (drop_label == 1 and n_normal / left >= normal_share) or (drop_label == 0 and n_normal / left <= normal_share):
      break
    dropped.update(by_patient[pid])
  return [i for i in range(len(labels)) if i not in dropped]


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data_dir", required=True, help="The Kaggle folder the split was prepared from.")
  ap.add_argument("--tfds_data_dir", default=None, help="Prepared TFDS data (default: TFDS's).")
  ap.add_argument("--image_size", type=int, default=128, help="The prepared set's image size.")
  ap.add_argument("--split", default="validation")
  ap.add_argument("--normal_share", type=float, required=True)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out_dir", required=True)
  args = ap.parse_args()
  builder = chest_xray.load_builder(data_dir=args.data_dir, tfds_data_dir=args.tfds_data_dir,
                                    image_size=args.image_size)
  rows = [(ex["file_name"].decode(), int(ex["label"]))
          for ex in builder.as_dataset(split=args.split).as_numpy_iterator()]
  names, labels = [r[0] for r in rows], [r[1] for r in rows]
  kept = choose(names, labels, args.normal_share, args.seed)
  if os.path.exists(args.out_dir):
    raise SystemExit(f"--out_dir={args.out_dir} exists; remove it or name another folder.")
  for i in kept:
    src = os.path.join(args.data_dir, names[i])
    dst = os.path.join(args.out_dir, images.CLASS_NAMES[labels[i]], os.path.basename(names[i]))
    if os.path.exists(dst):
      raise SystemExit(f"{names[i]} and another kept file share the name {os.path.basename(dst)}; "
                       f"{args.out_dir} would lose one of them.")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
  counts = collections.Counter(labels[i] for i in kept)
  manifest = {"split": args.split, "data_dir": os.path.abspath(args.data_dir), "seed": args.seed,
              "normal_share_asked": args.normal_share, "normal_share": counts[0] / len(kept),
              "counts": {images.CLASS_NAMES[k]: counts[k] for k in sorted(counts)},
              "files": sorted(names[i] for i in kept)}
  with open(args.out_dir.rstrip("/") + ".json", "w") as f:
    json.dump(manifest, f, indent=1)
  print(f"{args.out_dir}: {len(kept)} of {len(names)} images, NORMAL {manifest['normal_share']:.3f} "
        f"({manifest['counts']})")


if __name__ == "__main__":
  main()
