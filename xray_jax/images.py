"""Reading chest X-ray folders: layout checks, patient ids and robust grayscale decoding.

One loader serves the TFDS builder and `evaluate --image_dir`, so an image is turned into
pixels the same way whether it was seen in training or handed in later.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps

from xray_jax.errors import DataLayoutError

CLASS_NAMES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")  # label index = position; PNEUMONIA is positive
IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm"})
# Files that operating systems and archivers scatter into folders; they are never data.
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "__macosx", ".ipynb_checkpoints"})
# X-rays are at most a few thousand pixels a side; anything far larger is a decompression bomb.
MAX_PIXELS = 64_000_000

# A truncated file must fail loudly, not decode into a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageLoadError(ValueError):
  """One file could not be read as an image."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  path: str  # absolute path on disk
  relpath: str  # path relative to the data folder, e.g. "train/NORMAL/IM-0115-0001.jpeg"
  label: int  # index into CLASS_NAMES
  patient_id: str


@dataclasses.dataclass(frozen=True)
class SkippedFile:
  path: str
  reason: str


# A Kermany file name gives the child and the kind of film: the pneumonia's cause, and for NORMAL
# the two series of the upstream set (IM-..., NORMAL2-IM-...), which may differ in acquisition.
# Most names end in one image number; some in two (`IM-0429-0001-0002.jpeg`,
# `person447_virus_921_1.jpeg`): more films of the same child, who must stay on one side of the split.
_NAME_PATTERNS = (  # (subgroup, pattern whose group 1 is the patient)
    ("bacteria", re.compile(r"^(person\d+)_bacteria(?:_\d+)+$", re.IGNORECASE)),
    ("virus", re.compile(r"^(person\d+)_virus(?:_\d+)+$", re.IGNORECASE)),
    ("NORMAL2-IM", re.compile(r"^(NORMAL2-IM-\d+)(?:-\d+)+$", re.IGNORECASE)),
    ("IM", re.compile(r"^(IM-\d+)(?:-\d+)+$", re.IGNORECASE)),
)
SUBGROUPS: tuple[str, ...] = tuple(name for name, _ in _NAME_PATTERNS)


def _parse_name(file_name: str) -> tuple[str, str | None, str | None]:
  """(stem, subgroup, patient) of a file name; subgroup and patient are None for unknown patterns."""
  stem = os.path.splitext(os.path.basename(file_name))[0]
  for name, pattern in _NAME_PATTERNS:
    match = pattern.match(stem)
    if match:
      return stem, name, match.group(1)
  return stem, None, None


def patient_id(file_name: str) -> str:
  """The patient a Kermany file name belongs to; unknown patterns are their own patient.

  `person12_virus_3.jpeg` -> `person12`, `IM-0115-0001.jpeg` -> `IM-0115`,
  `NORMAL2-IM-1427-0001.jpeg` -> `NORMAL2-IM-1427`, `IM-0429-0001-0002.jpeg` -> `IM-0429`.
  """
  stem, _, patient = _parse_name(file_name)
  return patient or stem


def subgroup(file_name: str) -> str | None:
  """The Kermany subgroup a file name names (one of SUBGROUPS), or None for other names.

  A model that misses viral pneumonia, or one series of normal films, should say so:
  `person12_virus_3.jpeg` -> `virus`, `person1_bacteria_1.jpeg` -> `bacteria`,
  `NORMAL2-IM-1427-0001.jpeg` -> `NORMAL2-IM`, `IM-0115-0001.jpeg` -> `IM`.
  """
  return _parse_name(file_name)[1]


def is_junk(name: str) -> bool:
  return name.startswith(".") or name.lower() in JUNK_NAMES


def scan_class_folders(split_dir: str, root: str | None = None) -> tuple[list[ImageRecord], list[SkippedFile]]:
  """Lists the images of one split folder holding NORMAL/ and PNEUMONIA/.

  Raises DataLayoutError, naming the folder, when a class folder is missing, empty, or
  an unexpected folder sits beside them. Files that are not images by their extension
  are returned as skipped (never silently dropped); junk like `.DS_Store` is ignored.
  """
  root = root or os.path.dirname(os.path.abspath(split_dir))
  if not os.path.isdir(split_dir):
    raise DataLayoutError(f"{split_dir} is not a folder. Expected a folder holding NORMAL/ and PNEUMONIA/.")
  entries = sorted(e for e in os.listdir(split_dir) if not is_junk(e))
  folders = [e for e in entries if os.path.isdir(os.path.join(split_dir, e))]
  missing = [c for c in CLASS_NAMES if c not in folders]
  unexpected = [e for e in folders if e not in CLASS_NAMES]
  if missing or unexpected:
    raise DataLayoutError(
        f"{split_dir} must hold exactly the class folders {', '.join(CLASS_NAMES)}; "
        f"missing: {missing or 'none'}, unexpected: {unexpected or 'none'}. "
        "Use the Kaggle layout (SPLIT/NORMAL/*.jpeg, SPLIT/PNEUMONIA/*.jpeg) and move other folders out.")
  records, skipped = [], []
  for e in entries:
    if e not in folders:
      skipped.append(SkippedFile(os.path.join(split_dir, e), "a file beside the class folders, not inside one"))
  for label, class_name in enumerate(CLASS_NAMES):
    class_dir = os.path.join(split_dir, class_name)
    n_before = len(records)
    for name in sorted(os.listdir(class_dir)):
      path = os.path.join(class_dir, name)
      if is_junk(name):
        continue
      if os.path.isdir(path):
        skipped.append(SkippedFile(path, "a folder inside a class folder; images must sit directly in it"))
      elif os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
        skipped.append(SkippedFile(path, f"not an image file extension ({', '.join(sorted(IMAGE_EXTENSIONS))})"))
      else:
        records.append(ImageRecord(path=os.path.abspath(path), relpath=os.path.relpath(path, root),
                                   label=label, patient_id=patient_id(name)))
    if len(records) == n_before:
      raise DataLayoutError(f"{class_dir} holds no images. Each class folder needs at least one "
                            ".jpeg or .png file.")
  return records, skipped


def _to_grayscale_u8(img: Image.Image) -> np.ndarray:
  """Any PIL mode -> HxW uint8, keeping the full intensity range of the source."""
  mode = img.mode
  if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    # 16-bit (and 32-bit int) grey: scale the type's range onto 0..255; PIL's own
    # convert("L") would clip everything above 255 to white.
    arr = np.asarray(img).astype(np.float64)
    top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) <= 65535 else float(arr.max())
    return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
  if mode == "F":
    arr = np.asarray(img, dtype=np.float64)
    arr = np.nan_to_num(arr)
    scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
    return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
  if mode in ("LA", "La", "RGBA", "RGBa", "PA", "P"):
    # Transparency carries no signal on an X-ray: composite onto black, then take luma.
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    img = Image.alpha_composite(background, rgba).convert("RGB")
  elif mode not in ("L", "RGB", "1"):
    img = img.convert("RGB")  # CMYK (Adobe-inverted handled by PIL), YCbCr, LAB, HSV
  return np.asarray(img.convert("L"), dtype=np.uint8)


def _dicom_to_grayscale_u8(path: str) -> np.ndarray:
  """A DICOM image as HxW uint8: modality and VOI LUT (or window) applied, MONOCHROME1 inverted."""
  try:
    import pydicom  # pylint: disable=g-import-not-at-top
    from pydicom.pixels import apply_modality_lut, apply_voi_lut  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImageLoadError(path, "reading DICOM needs pydicom 3: pip install -e '.[dicom]'") from e
  ds = pydicom.dcmread(path)
  arr = ds.pixel_array
  if arr.ndim != 2:
    raise ImageLoadError(path, f"expected one grayscale frame, got pixel data of shape {arr.shape}")
  arr = apply_voi_lut(apply_modality_lut(arr, ds), ds).astype(np.float64)
  lo, hi = float(arr.min()), float(arr.max())
  out = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
  if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
    out = 255.0 - out  # MONOCHROME1 stores bright as low values
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def load_grayscale(path: str, max_side: int | None = None) -> np.ndarray:
  """Reads any image file (or DICOM, with pydicom) as an HxWx1 uint8 array, EXIF orientation applied.

  With `max_side`, images larger than that are shrunk (aspect kept, antialiased) so
  their longer side is `max_side`. Raises ImageLoadError naming the file on anything
  that is not a complete, decodable image.
  """
  try:
    if path.lower().endswith(".dcm"):
      gray = _dicom_to_grayscale_u8(path)
      if gray.size > MAX_PIXELS or 0 in gray.shape:
        raise ImageLoadError(path, f"{gray.shape[1]}x{gray.shape[0]} pixels is not a usable X-ray size")
    else:
      gray = _decode_with_pil(path, max_side)
  except ImageLoadError:
    raise
  except Exception as e:  # PIL and pydicom raise many types on hostile bytes; each becomes one clear error
    raise ImageLoadError(path, f"cannot decode as an image ({type(e).__name__}: {e})") from e
  if max_side and max(gray.shape) > max_side:
    h, w = gray.shape
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    gray = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)
  return gray[:, :, None]


def _decode_with_pil(path: str, max_side: int | None) -> np.ndarray:
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    with Image.open(path) as img:
      if img.width * img.height > MAX_PIXELS:
        raise ImageLoadError(path, f"{img.width}x{img.height} pixels is over the {MAX_PIXELS:,} pixel "
                             "limit (a decompression bomb or not an X-ray)")
      if img.width == 0 or img.height == 0:
        raise ImageLoadError(path, "the image has zero width or height")
      if max_side and img.format == "JPEG":
        img.draft(img.mode, (max_side, max_side))  # DCT-domain downscale: decodes big JPEGs fast
      img.load()  # decode now so truncation raises here
      return _to_grayscale_u8(ImageOps.exif_transpose(img))


def load_all(records: Sequence[ImageRecord], max_side: int | None) -> Iterable[tuple[ImageRecord, np.ndarray | ImageLoadError]]:
  """Yields (record, pixels) or (record, error) for each record, never raising on one bad file."""
  for record in records:
    try:
      yield record, load_grayscale(record.path, max_side)
    except ImageLoadError as e:
      yield record, e
