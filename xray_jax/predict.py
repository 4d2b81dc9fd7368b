"""Predicts pneumonia on new X-rays, with saliency maps.

    python -m xray_jax.predict --workdir=runs/cnn IMAGE_OR_FOLDER...

For each JPEG, PNG or DICOM file (folders are searched recursively): the probability of
PNEUMONIA, the label at the threshold the run's reports use (its --threshold_rule, as
`evaluate` last chose it; the validation-only choice until then), and a saliency overlay
PNG, all listed in OUTPUT_DIR/predictions.jsonl (one JSON line each; files that cannot be
read get a line with their error).
"""

from __future__ import annotations

from xray_jax import hostmem

hostmem.keep_freed_memory()  # before jax and TensorFlow start their threads (see hostmem)

# pylint: disable=wrong-import-position
import json
import os
from typing import Any

from absl import flags
from absl import logging
import jax
import numpy as np
from PIL import Image
import tensorflow as tf

from xray_jax import chest_xray
from xray_jax import cli
from xray_jax import images
from xray_jax import input_pipeline
from xray_jax import learning
from xray_jax import saliency
from xray_jax.errors import UsageError

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run whose best checkpoint predicts.")
  flags.DEFINE_string("output_dir", None, "Where predictions.jsonl and the maps go (default WORKDIR/predictions).")
  flags.DEFINE_bool("maps", True, "Write a saliency overlay per image; --nomaps (or --no_maps) is faster.")
  flags.DEFINE_bool("no_maps", False, "Same as --nomaps.")
  flags.DEFINE_enum("saliency", "auto", ["auto", *saliency.METHODS],
                    "auto: Grad-CAM where the model marks its last conv block, else integrated gradients.")
  flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint of the run.")
  flags.DEFINE_integer("batch_size", 16, "Images per forward pass.")


def find_images(paths: list[str]) -> tuple[list[str], list[images.SkippedFile]]:
  """Files named, and image files under folders named; anything else is reported."""
  found, skipped = [], []
  for path in paths:
    if os.path.isdir(path):
      for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not images.is_junk(d))
        for name in sorted(filenames):
          full = os.path.join(dirpath, name)
          if images.is_junk(name):
            continue
          if os.path.splitext(name)[1].lower() in images.IMAGE_EXTENSIONS:
            found.append(full)
          else:
            skipped.append(images.SkippedFile(full, "not an image file extension"))
    elif os.path.isfile(path):
      found.append(path)
    else:
      skipped.append(images.SkippedFile(path, "no such file or folder"))
  return found, skipped


def predict_files(workdir: str, paths: list[str], *, output_dir: str | None = None, maps: bool = True,
                  method: str = "auto", checkpoint: str = "best", batch_size: int = 16) -> list[dict[str, Any]]:
  """Writes predictions.jsonl (and overlays) for `paths`; returns its records."""
  from xray_jax import evaluate  # pylint: disable=g-import-not-at-top
  config, state, meta = evaluate.restore_for_eval(workdir, checkpoint)
  threshold, rule = evaluate.run_threshold(workdir, config, meta, checkpoint)
  model = learning.create_model(config)
  method = saliency.default_method(model, config.image_size) if method == "auto" else method
  variables = learning.inference_variables(state)
  probs_fn = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False))[:, 1])
  map_fn = jax.jit(lambda v, x: saliency.METHODS[method](model, v, x))
  max_side = chest_xray.config_for_image_size(config.image_size).max_side
  output_dir = output_dir or os.path.join(workdir, "predictions")
  os.makedirs(output_dir, exist_ok=True)

  files, skipped = find_images(paths)
  records: list[dict[str, Any]] = [{"file": s.path, "error": s.reason} for s in skipped]
  loaded = []
  for path in files:
    try:
      loaded.append((path, images.load_grayscale(path, max_side)))
    except images.ImageLoadError as e:
      records.append({"file": path, "error": e.reason})
  for r in records:
    logging.warning("Skipped %s: %s", r["file"], r["error"])
  if not loaded:
    raise UsageError(f"No readable image among {paths}; see the skipped files above.")

  names_used: dict[str, int] = {}
  for start in range(0, len(loaded), batch_size):
    chunk = loaded[start:start + batch_size]
    # The same preprocessing as training and evaluation (input_pipeline.preprocess_image).
    x = np.stack([input_pipeline.preprocess_image(tf.constant(g), config.image_size).numpy() for _, g in chunk])
    x = learning.model_input(x)
    probs = np.asarray(probs_fn(variables, x))
    heat = np.asarray(map_fn(variables, x)) if maps else None
    for i, ((path, gray), p) in enumerate(zip(chunk, probs)):
      record = {"file": path, "prob_pneumonia": float(p), "label": images.CLASS_NAMES[int(p >= threshold)],
                "threshold": float(threshold), "threshold_rule": rule, "model": config.model,
                "checkpoint_step": int(meta["step"])}
      if heat is not None:
        stem = os.path.splitext(os.path.basename(path))[0]
        names_used[stem] = names_used.get(stem, 0) + 1
        suffix = "" if names_used[stem] == 1 else f"_{names_used[stem]}"
        out = os.path.join(output_dir, f"{stem}{suffix}_{method}.png")
        g = gray[..., 0]
        m = np.asarray(Image.fromarray(heat[i].astype(np.float32)).resize((g.shape[1], g.shape[0]),
                                                                           Image.Resampling.BILINEAR))
        Image.fromarray(saliency.overlay(g, m)).save(out)
        record.update(saliency_map=out, saliency_method=method)
      records.append(record)
  with open(os.path.join(output_dir, "predictions.jsonl"), "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return records


def main(argv: list[str]) -> None:
  if not FLAGS.workdir:
    raise UsageError("Pass --workdir=WD, the folder of a training run, then image files or folders.")
  if len(argv) < 2:
    raise UsageError("Name at least one image file or folder after the flags.")
  records = predict_files(FLAGS.workdir, argv[1:], output_dir=FLAGS.output_dir,
                          maps=FLAGS.maps and not FLAGS.no_maps, method=FLAGS.saliency,
                          checkpoint=FLAGS.checkpoint, batch_size=FLAGS.batch_size)
  for r in records:
    if "error" in r:
      print(f"{r['file']}: skipped ({r['error']})")
    else:
      print(f"{r['file']}: P(pneumonia) = {r['prob_pneumonia']:.3f} -> {r['label']} (threshold "
            f"{r['threshold']:.3f})" + (f", map {r['saliency_map']}" if "saliency_map" in r else ""))
  out = FLAGS.output_dir or os.path.join(FLAGS.workdir, "predictions")
  print(f"All predictions: {os.path.join(out, 'predictions.jsonl')}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, positional=True)
