import os

import numpy as np
import pytest
from PIL import Image

from conftest import gradient_image, write_image
from xray_jax import images
from xray_jax.errors import DataLayoutError

GREY = gradient_image()


@pytest.mark.parametrize("file_name,patient", [
    ("person12_virus_3.jpeg", "person12"),
    ("person1000_bacteria_2931.jpeg", "person1000"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    # Two image numbers: more films of the same child (Kaggle train/ has 134 such names).
    ("IM-0429-0001-0002.jpeg", "IM-0429"),
    ("NORMAL2-IM-0395-0001-0002.jpeg", "NORMAL2-IM-0395"),
    ("person447_virus_921_1.jpeg", "person447"),
    ("scan_from_elsewhere.png", "scan_from_elsewhere"),  # unknown pattern: its own patient
])
def test_patient_id(file_name, patient):
  assert images.patient_id(file_name) == patient


@pytest.mark.parametrize("file_name,subgroup", [
    ("person12_virus_3.jpeg", "virus"),
    ("train/PNEUMONIA/person1000_bacteria_2931.jpeg", "bacteria"),
    ("IM-0115-0001.jpeg", "IM"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM"),
    ("IM-0429-0001-0002.jpeg", "IM"),
    ("person447_virus_921_1.jpeg", "virus"),
    ("person12_fungus_3.jpeg", None),  # the patient is known, the cause is not one of the set's
    ("scan_from_elsewhere.png", None),
])
def test_subgroup(file_name, subgroup):
  assert images.subgroup(file_name) == subgroup


def _save_mode(path, mode):
  """GREY saved in `mode`, so that the right grayscale conversion gives GREY back."""
  img = Image.fromarray(GREY)
  if mode == "I;16":
    img = Image.fromarray(GREY.astype(np.uint16) * 257)  # 16-bit with the same relative intensities
  elif mode == "P":
    img = img.convert("P")
  elif mode == "LA":
    img = img.convert("LA")
  elif mode != "L":
    img = img.convert(mode)
  img.save(path, **({"quality": 95} if path.endswith(".jpeg") else {}))
  return img


@pytest.mark.parametrize("mode,ext,tol", [
    ("L", ".png", 0), ("RGB", ".png", 0), ("RGBA", ".png", 0), ("LA", ".png", 0), ("P", ".png", 0),
    ("I;16", ".png", 0), ("L", ".jpeg", 3), ("RGB", ".jpeg", 3), ("CMYK", ".jpeg", 3), ("1", ".png", None),
])
def test_any_mode_becomes_the_same_8bit_grayscale(tmp_path, mode, ext, tol):
  path = str(tmp_path / f"img{ext}")
  _save_mode(path, mode)
  if mode in ("I;16",):
    assert Image.open(path).mode.startswith("I")  # really stored as 16-bit
  out = images.load_grayscale(path)
  assert out.dtype == np.uint8 and out.shape == GREY.shape + (1,)
  if tol is not None:
    assert np.abs(out[..., 0].astype(int) - GREY).max() <= tol
  else:  # bilevel: only black and white survive
    assert set(np.unique(out)) <= {0, 255}


def test_exif_orientation_is_applied(tmp_path):
  path = str(tmp_path / "rotated.jpeg")
  exif = Image.Exif()
  exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
  Image.fromarray(GREY).save(path, exif=exif, quality=100)
  out = images.load_grayscale(path)[..., 0]
  assert out.shape == (GREY.shape[1], GREY.shape[0])
  assert np.abs(out.astype(int) - np.rot90(GREY, -1)).max() <= 3


def test_max_side_shrinks_and_keeps_aspect(tmp_path):
  path = write_image(str(tmp_path / "big.jpeg"), np.tile(GREY, (30, 30)))  # 1200 x 1440
  out = images.load_grayscale(path, max_side=256)
  assert out.shape == (213, 256, 1)


@pytest.mark.parametrize("content,reason", [
    (b"", "cannot decode"),
    (b"this is not an image at all", "cannot decode"),
])
def test_non_images_raise_a_clear_error_naming_the_file(tmp_path, content, reason):
  path = tmp_path / "bad.jpeg"
  path.write_bytes(content)
  with pytest.raises(images.ImageLoadError, match=reason) as e:
    images.load_grayscale(str(path))
  assert str(path) in str(e.value)


def test_truncated_jpeg_is_an_error_not_a_grey_image(tmp_path):
  good = write_image(str(tmp_path / "good.jpeg"), np.tile(GREY, (4, 4)))
  data = open(good, "rb").read()
  bad = tmp_path / "truncated.jpeg"
  bad.write_bytes(data[: len(data) // 2])
  with pytest.raises(images.ImageLoadError, match="truncated"):
    images.load_grayscale(str(bad))


def test_scan_lists_images_ignores_junk_and_reports_non_images(tmp_path):
  for cls in images.CLASS_NAMES:
    write_image(str(tmp_path / cls / "IM-0001-0001.jpeg"))
  (tmp_path / "NORMAL" / ".DS_Store").write_bytes(b"junk")
  (tmp_path / "NORMAL" / "Thumbs.db").write_bytes(b"junk")
  (tmp_path / "PNEUMONIA" / "notes.txt").write_text("not an image")
  (tmp_path / "readme.md").write_text("beside the class folders")
  records, skipped = images.scan_class_folders(str(tmp_path))
  assert [(r.label, os.path.basename(r.path)) for r in records] == [(0, "IM-0001-0001.jpeg"),
                                                                   (1, "IM-0001-0001.jpeg")]
  assert sorted(os.path.basename(s.path) for s in skipped) == ["notes.txt", "readme.md"]


def test_scan_errors_name_the_folder(tmp_path):
  write_image(str(tmp_path / "NORMAL" / "IM-0001-0001.jpeg"))
  with pytest.raises(DataLayoutError, match=r"missing: \['PNEUMONIA'\]"):
    images.scan_class_folders(str(tmp_path))
  (tmp_path / "PNEUMONIA").mkdir()
  with pytest.raises(DataLayoutError, match=f"{tmp_path / 'PNEUMONIA'} holds no images"):
    images.scan_class_folders(str(tmp_path))
  write_image(str(tmp_path / "PNEUMONIA" / "person1_virus_1.jpeg"))
  (tmp_path / "COVID").mkdir()
  with pytest.raises(DataLayoutError, match=r"unexpected: \['COVID'\]"):
    images.scan_class_folders(str(tmp_path))
  with pytest.raises(DataLayoutError, match="is not a folder"):
    images.scan_class_folders(str(tmp_path / "nope"))


def _write_dicom(path, pixels_u16, photometric, window=None):
  pydicom = pytest.importorskip("pydicom")
  from pydicom.dataset import FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, generate_uid
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
  ds.Modality, ds.PatientID = "DX", "test"
  ds.Rows, ds.Columns = pixels_u16.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  if window:
    ds.WindowCenter, ds.WindowWidth = window
  ds.PixelData = pixels_u16.astype("<u2").tobytes()
  ds.save_as(path, enforce_file_format=True)
  return str(path)


def test_dicom_monochrome1_is_inverted_and_the_window_applied(tmp_path):
  ramp = (GREY.astype(np.uint16) * 16)  # 12-bit values 320..3680
  m2 = images.load_grayscale(_write_dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2"))[..., 0]
  m1 = images.load_grayscale(_write_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1"))[..., 0]
  assert m2.min() == 0 and m2.max() == 255
  assert np.abs(m1.astype(int) - (255 - m2.astype(int))).max() <= 1  # the same data, as on a light box
  order = np.argsort(GREY.ravel(), kind="stable")
  assert (np.diff(m2.ravel()[order].astype(int)) >= 0).all()  # intensities keep their order
  # A narrow window saturates what lies outside it.
  w = images.load_grayscale(_write_dicom(tmp_path / "w.dcm", ramp, "MONOCHROME2", window=(2000, 400)))[..., 0]
  assert (w[ramp <= 1800] == 0).all() and (w[ramp >= 2200] == 255).all()
