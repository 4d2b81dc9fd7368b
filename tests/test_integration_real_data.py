"""Trains the CNN briefly on a few hundred real X-rays; runs where ../shared/data exists."""

import hashlib
import os

import pytest

from conftest import SHARED_DATA
from xray_jax import evaluate
from xray_jax import images
from xray_jax import learning
from xray_jax import trainer

pytestmark = pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "train")),
                                reason=f"needs the real images in {SHARED_DATA}")


def _subset(dst, per_class):
  """Whole patients picked by a hash of their id, linked into a Kaggle-layout folder."""
  records, _ = images.scan_class_folders(os.path.join(SHARED_DATA, "train"))
  for label, name in enumerate(images.CLASS_NAMES):
    by_patient = {}
    for r in records:
      if r.label == label:
        by_patient.setdefault(r.patient_id, []).append(r)
    taken = 0
    for pid in sorted(by_patient, key=lambda p: hashlib.sha256(p.encode()).hexdigest()):
      if taken >= per_class:
        break
      for r in by_patient[pid]:
        os.makedirs(os.path.join(dst, "train", name), exist_ok=True)
        os.symlink(r.path, os.path.join(dst, "train", name, os.path.basename(r.path)))
        taken += 1
  return dst


def test_cnn_learns_real_xrays_and_evaluates_full_resolution_originals(tmp_path):
  data = _subset(str(tmp_path / "chest_xray"), per_class=250)
  workdir = str(tmp_path / "run")
  config = learning.TrainConfig(model="cnn", data_dir=data, tfds_data_dir=str(tmp_path / "tfds"), image_size=128,
                               batch_size=32, num_epochs=6, log_every_steps=20)
  best = trainer.train_and_evaluate(config, workdir)
  report = evaluate.evaluate_workdir(workdir, split="validation")
  assert report["num_examples"] >= 40
  # A model that learned nothing scores about 0.5; this one must separate the classes.
  assert report["roc_auc"] >= 0.9, report
  assert best["roc_auc"] == pytest.approx(report["roc_auc"])
  # The official val/ folder holds full-resolution originals (up to 1776x1416).
  originals = evaluate.evaluate_workdir(workdir, image_dir=os.path.join(SHARED_DATA, "val"))
  assert originals["num_examples"] == 16 and not originals["skipped_files"]
