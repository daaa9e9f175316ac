"""Tests of regkit.io.radiograph: reading radiographs and turning them into line integrals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from regkit.errors import FileFormatError, InputError, ShapeError
from regkit.io.radiograph import (
    TRANSMITTED_FLOOR,
    Radiograph,
    load_radiograph,
    to_line_integral,
)


def _write_dx(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
              bits_stored: int = 16, **fields: Any) -> Path:
    """A minimal digital X-ray DICOM file holding ``pixels`` (uint16, rows x columns)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


_GEOMETRY: dict[str, Any] = {
    "DistanceSourceToDetector": "1200",
    "DistanceSourceToPatient": "800",
    "ImagerPixelSpacing": ["0.3", "0.2"],  # [row spacing, column spacing]
    "PositionerPrimaryAngle": "30",
    "PositionerSecondaryAngle": "-10",
}


# ------------------------------------------------------------------------------ line integrals

def test_transmitted_to_line_integral_is_minus_log() -> None:
    lengths = np.array([[0.0, 0.5], [1.0, 3.0]])
    intensity = 4000.0 * np.exp(-lengths)
    np.testing.assert_allclose(to_line_integral(intensity, "transmitted"), lengths, atol=1e-6)
    result = to_line_integral(intensity, "transmitted", i0=8000.0)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, lengths + math.log(2.0), atol=1e-6)
    brighter = to_line_integral(np.array([100.0, 200.0]), "transmitted", i0=100.0)
    np.testing.assert_allclose(brighter, [0.0, -math.log(2.0)], atol=1e-6)


def test_transmitted_zeros_are_clamped_to_the_floor() -> None:
    image = np.full(200, 1000.0)
    image[:2] = [0.0, -5.0]                   # a dark pixel and 1 of 200 (0.5 %) below it
    result = to_line_integral(image, "transmitted")
    floor = -math.log(TRANSMITTED_FLOOR)
    np.testing.assert_allclose(result[:3], [floor, floor, 0.0], rtol=1e-6)


def test_a_transmitted_image_of_many_negative_pixels_is_refused() -> None:
    image = np.full(200, 1000.0)
    image[:3] = -50.0                         # 1.5 % far below zero: not noise about a dark frame
    with pytest.raises(InputError, match=r"3 pixels \(1.5 %\) below minus 1 %"):
        to_line_integral(image, "transmitted")
    np.testing.assert_allclose(to_line_integral(image, "line-integral")[:3], -50.0)
    image[:100] = -5.0                        # half the image a noisy dark border: clamped
    assert np.isfinite(to_line_integral(image, "transmitted")).all()


def test_line_integral_kind_passes_values_through() -> None:
    values = np.array([[1, 2], [3, 250]], np.uint8)
    result = to_line_integral(values, "line-integral")
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, values)


@pytest.mark.parametrize(("image", "kind", "i0", "pattern"), [
    (np.zeros((0, 3)), "transmitted", None, "empty"),
    (np.array([1.0, np.nan]), "line-integral", None, "1 NaN"),
    (np.array([1.0, np.inf]), "transmitted", None, "1 infinite"),
    (np.zeros((2, 2)), "transmitted", None, "brightest pixel.*positive"),
    (np.ones((2, 2)), "transmitted", 0.0, "'i0'.*positive"),
    (np.ones((2, 2)), "transmitted", float("nan"), "'i0'"),
    (np.ones((2, 2)), "log", None, "'kind'.*line-integral, transmitted"),
    (np.array(["a"]), "line-integral", None, "real numbers"),
])
def test_to_line_integral_refuses(image: np.ndarray, kind: Any, i0: float | None,
                                  pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        to_line_integral(image, kind, i0=i0)


# ------------------------------------------------------------------------------- value object

def test_radiograph_stores_read_only_float32_without_touching_the_caller() -> None:
    pixels = np.arange(6, dtype=np.float64).reshape(2, 3)
    radiograph = Radiograph(pixels, source="x.npy")
    assert radiograph.image.dtype == np.float32
    assert not radiograph.image.flags.writeable
    assert pixels.flags.writeable
    assert radiograph.shape == (2, 3)
    assert radiograph.camera is None
    assert radiograph.geometry_missing == ()
    with pytest.raises(ShapeError, match="2-D"):
        Radiograph(np.zeros((2, 3, 4)))
    with pytest.raises(ShapeError, match="non-empty"):
        Radiograph(np.zeros((0, 3)))
    with pytest.raises(InputError, match="1 NaN"):
        Radiograph(np.array([[np.nan, 1.0]]))


def test_radiograph_camera_must_match_the_image_size() -> None:
    from regkit.geometry.carm import camera_from_carm

    camera = camera_from_carm(source_to_detector_mm=1000, source_to_isocenter_mm=600,
                              pixel_spacing_mm=0.5, width=40, height=30)
    assert Radiograph(np.zeros((30, 40)), camera=camera).camera is camera
    with pytest.raises(ShapeError, match="40x30 pixels but the image is 30x40"):
        Radiograph(np.zeros((40, 30)), camera=camera)


# ------------------------------------------------------------------------------------ readers

@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_and_tiff_read_back_exactly(tmp_path: Path, suffix: str, dtype: type) -> None:
    top = np.iinfo(dtype).max
    pixels: np.ndarray = np.random.default_rng(0).integers(0, top, size=(17, 23),
                                                        endpoint=True).astype(dtype)
    pixels[0, 0], pixels[0, 1] = 0, top
    path = tmp_path / f"image{suffix}"
    Image.fromarray(pixels).save(path)
    radiograph = load_radiograph(path)
    assert radiograph.shape == (17, 23)
    assert radiograph.image.dtype == np.float32
    np.testing.assert_array_equal(radiograph.image, pixels.astype(np.float32))
    assert radiograph.source == str(path)
    assert radiograph.camera is None


def test_float_tiff_and_equal_channel_rgb(tmp_path: Path) -> None:
    values = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)
    Image.fromarray(values).save(tmp_path / "float.tif")
    np.testing.assert_array_equal(load_radiograph(tmp_path / "float.tif").image, values)
    gray = np.random.default_rng(2).integers(0, 255, size=(4, 6)).astype(np.uint8)
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_radiograph(tmp_path / "rgb.png").image, gray)


def test_transmitted_png_is_converted(tmp_path: Path) -> None:
    pixels = np.array([[1000, 500], [250, 0]], np.uint16)
    Image.fromarray(pixels).save(tmp_path / "raw.png")
    radiograph = load_radiograph(tmp_path / "raw.png", kind="transmitted")
    expected = [[0.0, math.log(2.0)], [math.log(4.0), -math.log(TRANSMITTED_FLOOR)]]
    np.testing.assert_allclose(radiograph.image, expected, rtol=1e-6)
    with_i0 = load_radiograph(tmp_path / "raw.png", kind="transmitted", i0=2000.0)
    np.testing.assert_allclose(with_i0.image[0, 0], math.log(2.0), rtol=1e-6)


def test_npy_images(tmp_path: Path) -> None:
    image = np.random.default_rng(3).normal(size=(6, 8)).astype(np.float32)
    np.save(tmp_path / "flat.npy", image)
    np.save(tmp_path / "batch.npy", image[None])
    np.testing.assert_array_equal(load_radiograph(tmp_path / "flat.npy").image, image)
    np.testing.assert_array_equal(load_radiograph(tmp_path / "batch.npy").image, image)


@pytest.mark.parametrize(("array", "pattern"), [
    (np.zeros((2, 4, 4), np.float32), r"shape \(2, 4, 4\)"),
    (np.zeros(5, np.float32), r"shape \(5,\)"),
    (np.zeros((0, 4), np.float32), "empty image"),
    (np.zeros((3, 3), bool), "real numbers"),
    (np.array([[1.0, np.nan], [np.inf, 0.0]]), "1 NaN and 1 infinite"),
])
def test_bad_npy_images_are_refused_naming_the_file(tmp_path: Path, array: np.ndarray,
                                                    pattern: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(FileFormatError, match=rf"bad\.npy.*{pattern}"):
        load_radiograph(path)


def test_bad_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match=r"none\.png.*no such file"):
        load_radiograph(tmp_path / "none.png")
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(FileFormatError, match=r"photo\.jpg.*unknown radiograph format '\.jpg'"):
        load_radiograph(tmp_path / "photo.jpg")
    (tmp_path / "noext").write_bytes(b"plain text")
    with pytest.raises(FileFormatError, match="unknown radiograph format"):
        load_radiograph(tmp_path / "noext")
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    with pytest.raises(FileFormatError, match=r"fake\.png.*not a readable \.png"):
        load_radiograph(tmp_path / "fake.png")
    pixels = np.random.default_rng(4).integers(0, 65535, size=(64, 64)).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match=r"cut\.png.*truncated or corrupt"):
        load_radiograph(tmp_path / "cut.png")
    np.save(tmp_path / "whole.npy", pixels)
    data = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match=r"cut\.npy.*not a readable \.npy"):
        load_radiograph(tmp_path / "cut.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FileFormatError, match=r"objects\.npy"):
        load_radiograph(tmp_path / "objects.npy")


def test_colour_and_unsupported_modes_are_refused(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "red.png")
    with pytest.raises(FileFormatError, match=r"red\.png.*colour \(RGB\)"):
        load_radiograph(tmp_path / "red.png")
    Image.fromarray(np.zeros((4, 4, 2), np.uint8), mode="LA").save(tmp_path / "la.png")
    with pytest.raises(FileFormatError, match="image mode 'LA' is not supported"):
        load_radiograph(tmp_path / "la.png")
    pages = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (1, 2)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(FileFormatError, match="holds 2 images"):
        load_radiograph(tmp_path / "pages.tif")


def test_invalid_kind_names_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((2, 2)))
    with pytest.raises(InputError, match=r"a\.npy.*'kind'"):
        load_radiograph(tmp_path / "a.npy", kind="raw")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- DICOM

def test_dicom_rescale_and_monochrome(tmp_path: Path) -> None:
    stored = np.array([[0, 100], [1000, 4095]], np.uint16)
    plain = _write_dx(tmp_path / "plain.dcm", stored, bits_stored=12, RescaleSlope="2",
                      RescaleIntercept="-10")
    radiograph = load_radiograph(plain)
    np.testing.assert_array_equal(radiograph.image, stored * 2.0 - 10.0)
    # MONOCHROME1: inverted over the 12-bit range, so 0 becomes the largest value.
    inverted = _write_dx(tmp_path / "mono1.dcm", stored, photometric="MONOCHROME1", bits_stored=12)
    np.testing.assert_array_equal(load_radiograph(inverted).image, 4095.0 - stored)
    transmitted = load_radiograph(inverted, kind="transmitted")
    intensity = np.maximum(4095.0 - stored, TRANSMITTED_FLOOR * 4095.0)
    np.testing.assert_allclose(transmitted.image, -np.log(intensity / 4095.0), rtol=1e-6)
    # Without geometry fields, no camera, and every geometry field is listed as missing.
    assert radiograph.camera is None
    assert set(radiograph.geometry_missing) == {
        "DistanceSourceToDetector", "ImagerPixelSpacing", "DistanceSourceToPatient",
        "DistanceSourceToIsocenter", "PositionerPrimaryAngle", "PositionerSecondaryAngle"}


@pytest.mark.parametrize("name", ["IM0001", "1.2.840.113619.2.55"])
def test_dicom_is_recognised_by_its_signature(tmp_path: Path, name: str) -> None:
    path = _write_dx(tmp_path / name, np.full((3, 4), 7, np.uint16))
    np.testing.assert_array_equal(load_radiograph(path).image, np.full((3, 4), 7.0))


def test_dicom_geometry_builds_the_carm_camera(tmp_path: Path) -> None:
    from regkit.geometry.carm import camera_from_carm

    pixels = np.zeros((30, 40), np.uint16)
    radiograph = load_radiograph(_write_dx(tmp_path / "view.dcm", pixels, **_GEOMETRY))
    camera = radiograph.camera
    assert camera is not None
    assert (camera.width, camera.height) == (40, 30)
    fx, fy = camera.focal_lengths
    assert fx == pytest.approx(1200 / 0.2)  # columns: ImagerPixelSpacing[1]
    assert fy == pytest.approx(1200 / 0.3)  # rows: ImagerPixelSpacing[0]
    expected = camera_from_carm(source_to_detector_mm=1200, source_to_isocenter_mm=800,
                                pixel_spacing_mm=(0.2, 0.3), width=40, height=30,
                                primary_angle=math.radians(30), secondary_angle=math.radians(-10))
    np.testing.assert_allclose(camera.camera_from_world, expected.camera_from_world, atol=1e-9)
    np.testing.assert_allclose(camera.intrinsic, expected.intrinsic)
    assert radiograph.geometry_missing == ()


def test_dicom_geometry_falls_back_and_reports_what_is_missing(tmp_path: Path) -> None:
    fields = {k: v for k, v in _GEOMETRY.items()
              if k not in ("DistanceSourceToPatient", "PositionerSecondaryAngle")}
    fields["DistanceSourceToIsocenter"] = 700.0  # VR FL
    radiograph = load_radiograph(_write_dx(tmp_path / "iso.dcm", np.zeros((8, 8), np.uint16),
                                           **fields))
    assert radiograph.camera is not None
    source = radiograph.camera.source_world
    assert float(np.linalg.norm(source)) == pytest.approx(700.0)
    assert radiograph.geometry_missing == ("PositionerSecondaryAngle",)

    no_sdd = {k: v for k, v in _GEOMETRY.items() if k != "DistanceSourceToDetector"}
    radiograph = load_radiograph(_write_dx(tmp_path / "nosdd.dcm", np.zeros((8, 8), np.uint16),
                                           **no_sdd))
    assert radiograph.camera is None
    assert radiograph.geometry_missing == ("DistanceSourceToDetector",)


def test_dicom_bad_geometry_and_bad_images_are_refused(tmp_path: Path) -> None:
    bad = dict(_GEOMETRY, DistanceSourceToPatient="1500")  # isocentre beyond the detector
    with pytest.raises(FileFormatError, match=r"bad\.dcm.*inconsistent C-arm geometry"):
        load_radiograph(_write_dx(tmp_path / "bad.dcm", np.zeros((4, 4), np.uint16), **bad))
    spacing = dict(_GEOMETRY, ImagerPixelSpacing=["0.2"])
    with pytest.raises(FileFormatError, match=r"'ImagerPixelSpacing'.*2 finite number"):
        load_radiograph(_write_dx(tmp_path / "sp.dcm", np.zeros((4, 4), np.uint16), **spacing))
    with pytest.raises(FileFormatError, match="'PhotometricInterpretation'"):
        load_radiograph(_write_dx(tmp_path / "pal.dcm", np.zeros((4, 4), np.uint16),
                                  photometric="PALETTE COLOR"))
    path = _write_dx(tmp_path / "cut.dcm", np.zeros((40, 40), np.uint16))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(FileFormatError, match=r"cut\.dcm.*'PixelData'"):
        load_radiograph(path)
    (tmp_path / "text.dcm").write_text("not dicom")
    with pytest.raises(FileFormatError, match=r"text\.dcm.*not a DICOM file"):
        load_radiograph(tmp_path / "text.dcm")
    no_pixels = _write_dx(tmp_path / "nopix.dcm", np.zeros((4, 4), np.uint16))
    dataset = pydicom.dcmread(no_pixels)
    del dataset.PixelData
    dataset.save_as(no_pixels, enforce_file_format=True)
    with pytest.raises(FileFormatError, match="holds no pixel data"):
        load_radiograph(no_pixels)
