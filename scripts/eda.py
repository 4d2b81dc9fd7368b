"""Exploratory plots of a Kaggle-layout chest X-ray folder, as the seed project made them.

    python scripts/eda.py --data_dir=../shared/data/chest_xray --out_dir=runs/eda \
        [--tfds_data_dir=runs/tfds_shared]

Writes to --out_dir: class_counts.png (images per class in every split folder, and in the
patient-wise train/validation split when the prepared data is found), samples.png (the
first images of each class of train/, in file-name order), image_sizes.png (histograms of
the original widths and heights, read from the file headers), and eda.md linking them.
"""

import argparse
import collections
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # pylint: disable=g-import-not-at-top
matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from xray_jax import chest_xray
from xray_jax import images


def _sizes(records: list[images.ImageRecord]) -> list[tuple[int, int]]:
  out = []
  for r in records:
    try:
      with Image.open(r.path) as im:  # header only: no decoding
        out.append(im.size)
    except Exception as e:  # pylint: disable=broad-except
      raise SystemExit(f"error: cannot read the size of {r.path}: {e}") from e
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data_dir", required=True, help="folder holding train/ (and val/, test/)")
  ap.add_argument("--out_dir", default="runs/eda")
  ap.add_argument("--tfds_data_dir", help="prepared data, for the patient-wise train/validation counts")
  ap.add_argument("--samples", type=int, default=4, help="sample images per class")
  args = ap.parse_args()
  os.makedirs(args.out_dir, exist_ok=True)

  splits = {}
  for name in ("train", "val", "test"):
    folder = os.path.join(args.data_dir, name)
    if os.path.isdir(folder):
      splits[name], skipped = images.scan_class_folders(folder, root=args.data_dir)
      for s in skipped:
        print(f"skipped {s.path}: {s.reason}")
  if "train" not in splits:
    raise SystemExit(f"error: {args.data_dir} has no train/ folder; pass the Kaggle chest_xray folder.")
  counts = {f"{k}/ (folder)": np.bincount([r.label for r in v], minlength=2).tolist() for k, v in splits.items()}
  if args.tfds_data_dir:
    builder = chest_xray.load_builder(data_dir=args.data_dir, tfds_data_dir=args.tfds_data_dir, image_size=128)
    for k in ("train", "validation"):
      counts[f"{k} (by patient)"] = list(builder.info.metadata["class_counts"][k])

  fig, ax = plt.subplots(figsize=(1.6 * len(counts) + 2, 3.5))
  x = np.arange(len(counts))
  for i, cls in enumerate(images.CLASS_NAMES):
    vals = [c[i] for c in counts.values()]
    bars = ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=cls)
    ax.bar_label(bars, fontsize=7)
  ax.set_xticks(x, list(counts), fontsize=8)
  ax.set(ylabel="images", title="Images per class and split")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.out_dir, "class_counts.png"), dpi=100)
  plt.close(fig)

  by_class = collections.defaultdict(list)
  for r in splits["train"]:
    by_class[r.label].append(r)
  fig, axes = plt.subplots(2, args.samples, figsize=(2.2 * args.samples, 4.8), squeeze=False)
  for label, row in enumerate(axes):
    for ax, r in zip(row, sorted(by_class[label], key=lambda r: r.relpath)[:args.samples]):
      ax.imshow(images.load_grayscale(r.path, max_side=256)[..., 0], cmap="gray")
      ax.set_title(f"{images.CLASS_NAMES[label]}\n{os.path.basename(r.path)}", fontsize=7)
    for ax in row:
      ax.axis("off")
  fig.tight_layout()
  fig.savefig(os.path.join(args.out_dir, "samples.png"), dpi=100)
  plt.close(fig)

  sizes = {name: _sizes(recs) for name, recs in splits.items()}
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
  for ax, dim, title in zip(axes, (0, 1), ("width", "height")):
    for name, sz in sizes.items():
      ax.hist([s[dim] for s in sz], bins=30, alpha=0.6, label=f"{name}/ ({len(sz)})")
    ax.set(xlabel=f"{title} (pixels)", ylabel="images", title=f"Original image {title}")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out_dir, "image_sizes.png"), dpi=100)
  plt.close(fig)

  summary = {name: {"images": len(sz), "width_median": int(np.median([s[0] for s in sz])),
                    "height_median": int(np.median([s[1] for s in sz])),
                    "min_side": int(min(min(s) for s in sz)), "max_side": int(max(max(s) for s in sz))}
             for name, sz in sizes.items()}
  with open(os.path.join(args.out_dir, "eda.md"), "w") as f:
    f.write(f"# Exploratory plots of `{args.data_dir}`\n\n")
    f.write("| split | NORMAL | PNEUMONIA | NORMAL share |\n|---|---|---|---|\n")
    for k, (n, p) in counts.items():
      f.write(f"| {k} | {n} | {p} | {n / max(n + p, 1):.3f} |\n")
    f.write("\n![class counts](class_counts.png)\n\n![samples](samples.png)\n\n![image sizes](image_sizes.png)\n\n")
    f.write("Original sizes (pixels):\n\n```\n" + json.dumps(summary, indent=1) + "\n```\n")
  print(f"Wrote {args.out_dir}/eda.md, class_counts.png, samples.png, image_sizes.png")


if __name__ == "__main__":
  main()
