"""Tests of regkit.io.dicom: CT series written and read back, and every way a series can be bad."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from regkit.data import chest_ct_crop
from regkit.errors import FileFormatError, InputError
from regkit.io.dicom import load_dicom_series, save_dicom_series
from regkit.io.nifti import load_nifti, save_nifti
from regkit.volume import Volume


def _rotation(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _ct(shape: tuple[int, int, int] = (6, 5, 4), affine: np.ndarray | None = None,
        seed: int = 0) -> Volume:
    """A random int16 CT with a right-handed index frame (so DICOM keeps its k order)."""
    data = np.random.default_rng(seed).integers(-1024, 3071, size=shape).astype(np.int16)
    if affine is None:
        affine = np.diag([0.7, 0.8, 2.5, 1.0])
        affine[:3, 3] = (-90.0, 40.25, -300.0)
    return Volume(data, affine)


def _oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _rotation((0.3, -1.0, 0.6), 0.7) @ np.diag([0.6, 0.9, 1.7])
    affine[:3, 3] = (12.345678, -33.3, 101.01)
    assert np.linalg.det(affine) > 0
    return affine


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _edit(path: Path, change: Callable[[pydicom.Dataset], Any]) -> None:
    dataset = pydicom.dcmread(path)
    change(dataset)
    dataset.save_as(path, enforce_file_format=True)


def _assert_same_volume(a: Volume, b: Volume) -> None:
    assert a.shape == b.shape
    assert a.data.dtype == b.data.dtype
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(a.world_from_index, b.world_from_index, atol=1e-5)


# ---------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("affine", [None, _oblique_affine()], ids=["axial", "oblique"])
def test_round_trip_matches_original_and_nifti(tmp_path: Path, affine: np.ndarray | None) -> None:
    volume = _ct(affine=affine)
    uid = save_dicom_series(volume, tmp_path / "series")
    assert len(_files(tmp_path / "series")) == volume.shape[2]
    loaded = load_dicom_series(tmp_path / "series")
    _assert_same_volume(loaded, volume)
    assert loaded.units == "HU"
    save_nifti(volume, tmp_path / "ct.nii.gz")
    _assert_same_volume(loaded, load_nifti(tmp_path / "ct.nii.gz"))
    assert str(pydicom.dcmread(_files(tmp_path / "series")[0]).SeriesInstanceUID) == uid


def test_written_headers_follow_the_documented_convention(tmp_path: Path) -> None:
    # The worked example of the module docstring: IOP [1,0,0,0,1,0], PixelSpacing [0.8, 0.5],
    # first IPP (-100, -120, 30) LPS, i.e. first voxel at RAS (100, 120, 30).
    affine = np.diag([-0.5, -0.8, 3.0, 1.0])
    affine[:3, 3] = (100.0, 120.0, 30.0)
    volume = _ct(shape=(4, 3, 2), affine=affine)
    save_dicom_series(volume, tmp_path / "s")
    first, second = (pydicom.dcmread(p) for p in _files(tmp_path / "s"))
    np.testing.assert_allclose([float(v) for v in first.ImageOrientationPatient],
                               [1, 0, 0, 0, 1, 0])
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], [0.8, 0.5])
    np.testing.assert_allclose([float(v) for v in first.ImagePositionPatient], [-100, -120, 30])
    np.testing.assert_allclose([float(v) for v in second.ImagePositionPatient], [-100, -120, 33])
    assert (first.Rows, first.Columns) == (3, 4)
    np.testing.assert_array_equal(first.pixel_array, volume.data[:, :, 0].T)  # [j, i]
    np.testing.assert_array_equal(second.pixel_array, volume.data[:, :, 1].T)
    assert first.SOPClassUID == pydicom.uid.CTImageStorage
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.Modality == "CT"
    assert first.RescaleType == "HU"
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, 0.0)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    loaded = load_dicom_series(tmp_path / "s")
    np.testing.assert_allclose(loaded.index_to_world([0, 0, 0]), [100, 120, 30])


def test_left_handed_volume_comes_back_with_k_reversed(tmp_path: Path) -> None:
    # The shipped crop is stored LAS (negative determinant): same image in the world, k reversed.
    volume = load_nifti(chest_ct_crop()["ct"]).crop((40, 60, 20), (104, 124, 28))
    assert np.linalg.det(volume.world_from_index[:3, :3]) < 0
    save_dicom_series(volume, tmp_path / "las")
    loaded = load_dicom_series(tmp_path / "las")
    np.testing.assert_array_equal(loaded.data, volume.data[:, :, ::-1])
    k_last = volume.shape[2] - 1
    np.testing.assert_allclose(loaded.index_to_world([[0, 0, 0], [5, 7, 3]]),
                               volume.index_to_world([[0, 0, k_last], [5, 7, k_last - 3]]),
                               atol=1e-5)


def test_fractional_and_wide_values_use_a_rescale_slope(tmp_path: Path) -> None:
    data = np.random.default_rng(4).uniform(-0.01, 0.05, size=(5, 4, 3))
    volume = Volume(data, np.diag([1.0, 1.0, 2.0, 1.0]), units="mu")
    save_dicom_series(volume, tmp_path / "mu")
    header = pydicom.dcmread(_files(tmp_path / "mu")[0])
    slope = float(header.RescaleSlope)
    assert slope != 1.0
    assert header.RescaleType == "US"
    loaded = load_dicom_series(tmp_path / "mu")
    assert loaded.data.dtype == np.float32
    assert loaded.units == "other"
    np.testing.assert_allclose(loaded.data, data, atol=slope * 0.51 + 1e-9)

    wide = Volume(np.array([-70000, 0, 5, 90000], np.int32).reshape(2, 2, 1), np.eye(4))
    save_dicom_series(wide, tmp_path / "wide")
    back = load_dicom_series(tmp_path / "wide")
    step = float(pydicom.dcmread(_files(tmp_path / "wide")[0]).RescaleSlope)
    np.testing.assert_allclose(back.data, wide.data, atol=step * 0.51)


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    volume = Volume(np.arange(24, dtype=np.int16).reshape(4, 3, 2), np.eye(4))
    save_dicom_series(volume, tmp_path / "s")

    def rescale(ds: pydicom.Dataset) -> None:
        ds.RescaleSlope = "2"
        ds.RescaleIntercept = "-1024"

    for path in _files(tmp_path / "s"):
        _edit(path, rescale)
    loaded = load_dicom_series(tmp_path / "s")
    assert loaded.data.dtype == np.int16
    np.testing.assert_array_equal(loaded.data, volume.data * 2 - 1024)

    def half(ds: pydicom.Dataset) -> None:
        ds.RescaleSlope = "0.5"

    _edit(_files(tmp_path / "s")[1], half)
    loaded = load_dicom_series(tmp_path / "s")
    assert loaded.data.dtype == np.float32
    np.testing.assert_array_equal(loaded.data[:, :, 1], volume.data[:, :, 1] * 0.5 - 1024)
    np.testing.assert_array_equal(loaded.data[:, :, 0], volume.data[:, :, 0] * 2 - 1024)


def test_file_order_and_names_do_not_matter(tmp_path: Path) -> None:
    volume = _ct(shape=(4, 4, 7), affine=_oblique_affine())
    save_dicom_series(volume, tmp_path / "s")
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    order = np.random.default_rng(5).permutation(7)
    for n, path in zip(order, _files(tmp_path / "s"), strict=True):
        shutil.copy(path, shuffled / f"IM{n:02d}")  # no suffix, names in a random order
    (shuffled / "README.txt").write_text("not DICOM, skipped quietly")
    (shuffled / "notes").mkdir()
    _assert_same_volume(load_dicom_series(shuffled), volume)


def test_single_slice_series_uses_slice_thickness(tmp_path: Path) -> None:
    volume = _ct(shape=(3, 3, 1))
    save_dicom_series(volume, tmp_path / "one")
    _assert_same_volume(load_dicom_series(tmp_path / "one"), volume)

    def no_thickness(ds: pydicom.Dataset) -> None:
        del ds.SliceThickness

    _edit(_files(tmp_path / "one")[0], no_thickness)
    with pytest.raises(FileFormatError, match="single-slice series"):
        load_dicom_series(tmp_path / "one")


def test_units_other_for_non_ct_modalities(tmp_path: Path) -> None:
    save_dicom_series(_ct(), tmp_path / "s")

    def make_mr(ds: pydicom.Dataset) -> None:
        ds.Modality = "MR"

    for path in _files(tmp_path / "s"):
        _edit(path, make_mr)
    assert load_dicom_series(tmp_path / "s").units == "other"


# ---------------------------------------------------------------------------------- bad series

def test_mixed_series_needs_a_series_uid(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    uid_a = save_dicom_series(_ct(seed=1), tmp_path / "a", series_description="bone kernel")
    uid_b = save_dicom_series(_ct(seed=2), tmp_path / "b", series_description="soft kernel")
    folder.mkdir()
    for name in ("a", "b"):
        for path in _files(tmp_path / name):
            shutil.copy(path, folder / f"{name}_{path.name}")
    with pytest.raises(InputError, match="mixed series") as caught:
        load_dicom_series(folder)
    message = str(caught.value)
    for text in (str(folder), uid_a, uid_b, "bone kernel", "soft kernel", "4 file(s)"):
        assert text in message
    np.testing.assert_array_equal(load_dicom_series(folder, series_uid=uid_b).data,
                                  _ct(seed=2).data)
    with pytest.raises(InputError, match=r"no series with SeriesInstanceUID 1\.2\.3"):
        load_dicom_series(folder, series_uid="1.2.3")


def test_missing_slice_is_detected(tmp_path: Path) -> None:
    save_dicom_series(_ct(shape=(3, 3, 6)), tmp_path / "s")
    _files(tmp_path / "s")[3].unlink()
    with pytest.raises(FileFormatError, match=r"'ImagePositionPatient'.*uneven slice gaps.*5\.0"):
        load_dicom_series(tmp_path / "s")


def test_duplicate_position_is_detected(tmp_path: Path) -> None:
    save_dicom_series(_ct(shape=(3, 3, 4)), tmp_path / "s")
    copy = tmp_path / "s" / "copy.dcm"
    shutil.copy(_files(tmp_path / "s")[2], copy)

    def new_uid(ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = generate_uid()

    _edit(copy, new_uid)
    with pytest.raises(FileFormatError, match="duplicate slice position"):
        load_dicom_series(tmp_path / "s")


def test_slices_off_a_straight_line_are_refused(tmp_path: Path) -> None:
    save_dicom_series(_ct(shape=(3, 3, 5)), tmp_path / "s")

    def shift(ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + 2.0, y, z]

    _edit(_files(tmp_path / "s")[2], shift)
    with pytest.raises(FileFormatError, match="straight line"):
        load_dicom_series(tmp_path / "s")


@pytest.mark.parametrize(("field", "change"), [
    ("ImageOrientationPatient",
     lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.9, 0.43588989])),
    ("Rows/Columns", lambda ds: setattr(ds, "Rows", 4)),
    ("PixelSpacing", lambda ds: setattr(ds, "PixelSpacing", [0.8, 0.75])),
])
def test_inconsistent_slices_are_refused_naming_the_field(
        tmp_path: Path, field: str, change: Callable[[pydicom.Dataset], Any]) -> None:
    save_dicom_series(_ct(shape=(3, 3, 4)), tmp_path / "s")
    _edit(_files(tmp_path / "s")[1], change)
    with pytest.raises(FileFormatError, match=f"'{field}'.*inconsistent"):
        load_dicom_series(tmp_path / "s")


def test_missing_field_is_named(tmp_path: Path) -> None:
    save_dicom_series(_ct(shape=(3, 3, 2)), tmp_path / "s")

    def drop(ds: pydicom.Dataset) -> None:
        del ds.PixelSpacing

    _edit(_files(tmp_path / "s")[0], drop)
    with pytest.raises(FileFormatError, match="'PixelSpacing': is missing"):
        load_dicom_series(tmp_path / "s")


def test_folders_without_dicom_images(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="no such folder"):
        load_dicom_series(tmp_path / "absent")
    empty = tmp_path / "text"
    empty.mkdir()
    (empty / "a.txt").write_text("hello")
    (empty / "b.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(FileFormatError, match="holds no DICOM image file"):
        load_dicom_series(empty)


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
def test_damaged_dicom_file_is_named(tmp_path: Path) -> None:
    save_dicom_series(_ct(shape=(3, 3, 2)), tmp_path / "s")
    (tmp_path / "s" / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00ab" * 9)
    with pytest.raises(FileFormatError, match=r"broken\.dcm.*damaged DICOM"):
        load_dicom_series(tmp_path / "s")


def test_truncated_pixel_data_is_named(tmp_path: Path) -> None:
    save_dicom_series(_ct(shape=(30, 30, 2)), tmp_path / "s")
    path = _files(tmp_path / "s")[1]
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(FileFormatError, match=r"slice_0001\.dcm"):
        load_dicom_series(tmp_path / "s")


# ---------------------------------------------------------------------------------- writing

def test_save_refuses_sheared_planes_and_occupied_folders(tmp_path: Path) -> None:
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    with pytest.raises(InputError, match="not perpendicular"):
        save_dicom_series(_ct(affine=sheared), tmp_path / "sheared")
    assert not (tmp_path / "sheared").exists()

    folder = tmp_path / "out"
    save_dicom_series(_ct(seed=1), folder)
    with pytest.raises(InputError, match="not empty"):
        save_dicom_series(_ct(seed=2), folder)
    np.testing.assert_array_equal(load_dicom_series(folder).data, _ct(seed=1).data)
    save_dicom_series(_ct(seed=2, shape=(6, 5, 3)), folder, overwrite=True)
    np.testing.assert_array_equal(load_dicom_series(folder).data, _ct(seed=2, shape=(6, 5, 3)).data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        save_dicom_series(_ct(), tmp_path / "file")


def test_written_folder_has_ordinary_permissions(tmp_path: Path) -> None:
    save_dicom_series(_ct(), tmp_path / "series")
    (tmp_path / "reference").mkdir()
    assert (tmp_path / "series").stat().st_mode == (tmp_path / "reference").stat().st_mode


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    calls = []

    def failing_write(path: Path, _dataset: pydicom.Dataset, **_kwargs: Any) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        Path(path).write_bytes(b"partial")

    monkeypatch.setattr(pydicom, "dcmwrite", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_dicom_series(_ct(), tmp_path / "series")
    assert list(tmp_path.iterdir()) == []
