"""Shared fixtures: generated image folders and the prepared sample set, in temp folders."""

from __future__ import annotations

import os
import shutil
import tempfile

# Many tests start the train, evaluate and predict commands, and each process compiled the same
# programs again (a 2-step `cnn` run: 26 s, 10 s with its programs cached). So the session shares
# JAX's persistent compilation cache, in a fresh temporary folder that no other session sees (or in
# JAX_COMPILATION_CACHE_DIR if set; set empty, no cache). The cache key is the program with its
# compile options, and a cached run writes the same metrics.jsonl, byte for byte, as a compiled
# one. Set before jax is imported, so this process and the commands it starts all use it; under
# pytest-xdist the controller sets it, so its workers inherit one cache and only it removes the folder.
_OWN_CACHE_DIR = None  # the folder this session made, removed at its end
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE_DIR = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="xray_jax_tests_jit_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import numpy as np
import pytest
from PIL import Image

from xray_jax import hostmem

# The suite compiles hundreds of small programs and runs few steps of each: with one malloc
# arena XLA's multi-threaded compiler is slower (benchmarks/RESULTS.md), and there are no
# large steps to gain on. So tests, and the commands they start, keep glibc's defaults;
# tests/test_hostmem.py tests hostmem itself. Results are the same either way.
os.environ.setdefault(hostmem.OPT_OUT, "default")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO, "sample_data", "chest_xray")
SHARED_DATA = os.path.abspath(os.path.join(REPO, "..", "shared", "data", "chest_xray"))


def gradient_image(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
  """A smooth grey ramp (JPEG keeps it nearly exact) with a per-seed offset."""
  yy, xx = np.mgrid[0:h, 0:w]
  return np.clip(20 + (yy * 150) // h + (xx * 60) // w + seed % 20, 0, 255).astype(np.uint8)


def write_image(path: str, pixels: np.ndarray | None = None, **save_kwargs) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(gradient_image() if pixels is None else pixels).save(path, **save_kwargs)
  return path


def make_kaggle_folder(root: str, *, n_patients: int = 30, per_patient: int = 2, splits=("train",)) -> str:
  """A Kaggle-layout folder of generated images; file names carry patients as upstream."""
  for s, split in enumerate(splits):
    for p in range(n_patients):
      for k in range(per_patient):
        pixels = gradient_image(seed=p + k)
        pixels[2:10, 2:10] = (s * 97 + p * 7 + k * 13) % 256  # a mark that makes every file unique
        pixels[12:20, 2:10] = p % 256
        write_image(os.path.join(root, split, "NORMAL", f"IM-{p:04d}-{k + 1:04d}.jpeg"), pixels)
        write_image(os.path.join(root, split, "PNEUMONIA", f"person{p}_bacteria_{k}.jpeg"), 255 - pixels)
  return root


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory):
  """The repository's sample set prepared once into a temporary TFDS data dir."""
  from xray_jax import chest_xray
  tfds_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = chest_xray.load_builder(data_dir=SAMPLE_DIR, tfds_data_dir=tfds_dir, image_size=128)
  return builder, tfds_dir


@pytest.fixture
def copy_of_sample(tmp_path):
  dst = tmp_path / "chest_xray"
  shutil.copytree(SAMPLE_DIR, dst)
  return str(dst)


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE_DIR:
    shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)
