"""Fuzzing the one image loader that the builder and `--image_dir` share.

Whatever bytes a file holds, loading it returns an HxWx1 uint8 array or raises
ImageLoadError naming the file: it never crashes the process or hangs, and a folder of
such files reports every bad one.
"""

import io
import os
import struct
import zlib

import hypothesis
from hypothesis import strategies as st
import numpy as np
from PIL import Image
import pytest

from conftest import gradient_image
from xray_jax import images
from xray_jax import input_pipeline


def _valid_files() -> dict[str, bytes]:
  out = {}
  grey = gradient_image(24, 20)
  for name, img, fmt, kw in [
      ("gray.png", Image.fromarray(grey), "PNG", {}),
      ("gray.jpeg", Image.fromarray(grey), "JPEG", {"quality": 90}),
      ("rgb.jpeg", Image.fromarray(grey).convert("RGB"), "JPEG", {}),
      ("cmyk.jpeg", Image.fromarray(grey).convert("CMYK"), "JPEG", {}),
      ("palette.png", Image.fromarray(grey).convert("P"), "PNG", {}),
      ("sixteen.png", Image.fromarray(grey.astype(np.uint16) * 257), "PNG", {}),
      ("rgba.png", Image.fromarray(grey).convert("RGBA"), "PNG", {}),
  ]:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    out[name] = buf.getvalue()
  return out


VALID = _valid_files()


def _check(path: str) -> None:
  try:
    out = images.load_grayscale(path, max_side=256)
  except images.ImageLoadError as e:
    assert e.path == path and path in str(e)
  else:
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 1 and min(out.shape[:2]) >= 1
    assert max(out.shape[:2]) <= 256


@hypothesis.settings(max_examples=150, deadline=2000, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=st.binary(max_size=2048))
def test_random_bytes(tmp_path, data):
  path = str(tmp_path / "random.jpeg")
  with open(path, "wb") as f:
    f.write(data)
  _check(path)


@hypothesis.settings(max_examples=300, deadline=2000, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(name=st.sampled_from(sorted(VALID)), edits=st.lists(
    st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8), cut=st.floats(0.05, 1.0))
def test_mutated_images(tmp_path, name, edits, cut):
  data = bytearray(VALID[name])
  for where, value in edits:
    data[min(int(where * len(data)), len(data) - 1)] = value
  data = data[: max(1, int(len(data) * cut))]
  path = str(tmp_path / name)
  with open(path, "wb") as f:
    f.write(data)
  _check(path)


def _png_header_only(width: int, height: int) -> bytes:
  """A PNG that claims a size and holds one tiny compressed row: a decompression bomb's shape."""
  def chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height", [(100_000, 100_000), (20_000, 5_000), (0, 10), (10, 0)])
def test_absurd_dimensions_are_refused_quickly(tmp_path, width, height):
  path = str(tmp_path / "bomb.png")
  with open(path, "wb") as f:
    f.write(_png_header_only(width, height))
  with pytest.raises(images.ImageLoadError):
    images.load_grayscale(path)


def test_a_folder_of_hostile_files_reports_each_one(tmp_path):
  folder = tmp_path / "incoming"
  for cls in images.CLASS_NAMES:
    (folder / cls).mkdir(parents=True)
    for name, data in VALID.items():
      (folder / cls / name).write_bytes(data)
  bad = {"NORMAL/empty.png": b"", "NORMAL/bomb.png": _png_header_only(100_000, 100_000),
         "PNEUMONIA/half.jpeg": VALID["gray.jpeg"][:200], "PNEUMONIA/text.jpeg": b"<html>not an x-ray</html>"}
  for rel, data in bad.items():
    (folder / rel).write_bytes(data)
  ds, skipped, records = input_pipeline.folder_dataset(str(folder), image_size=32, max_side=256)
  assert sorted(os.path.relpath(s.path, folder) for s in skipped) == sorted(bad)
  assert len(records) == 2 * len(VALID) == sum(1 for _ in ds)
