"""Tests of regkit.io.nifti: NIfTI volumes and label maps."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from regkit.data import chest_ct_crop
from regkit.errors import FileFormatError, InputError
from regkit.io.nifti import NiftiFile, load_labels, load_nifti, read_nifti_file, save_nifti
from regkit.volume import Volume


def _oblique_affine() -> np.ndarray:
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0],
                         [np.sin(angle), np.cos(angle), 0.0],
                         [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = (-101.3, 55.123456, 12.5)
    return affine


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.Nifti1Image(data, affine, dtype=data.dtype).to_filename(path)
    return path


def test_round_trip_is_exact_for_data_and_float32_affine(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(-1024, 3000, size=(7, 6, 5)).astype(np.int16)
    labels = rng.integers(0, 50, size=(7, 6, 5)).astype(np.uint8)
    affine = np.array([[-0.75, 0, 0, 120.5], [0, 0.75, 0, -80.25], [0, 0, 2.5, -300], [0, 0, 0, 1]])
    save_nifti(Volume(data, affine, labels), tmp_path / "ct.nii.gz",
               labels_path=tmp_path / "labels.nii.gz")
    loaded = load_nifti(tmp_path / "ct.nii.gz", labels=tmp_path / "labels.nii.gz")
    assert loaded.data.dtype == np.int16
    np.testing.assert_array_equal(loaded.data, data)
    np.testing.assert_array_equal(loaded.world_from_index, affine)
    assert loaded.labels is not None
    assert loaded.labels.dtype == np.uint8
    np.testing.assert_array_equal(loaded.labels, labels)
    image = nib.load(tmp_path / "ct.nii.gz")
    assert isinstance(image, nib.Nifti1Image)
    assert int(image.header["sform_code"]) == 1
    assert int(image.header["qform_code"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "labels.nii.gz"]


def test_volumes_load_in_c_order_with_their_values(tmp_path: Path) -> None:
    """The read's copy to C order, slab by slab: a middle axis of several slabs and a part."""
    from regkit.io.nifti import _c_order

    rng = np.random.default_rng(3)
    data = rng.integers(-1024, 3000, size=(9, 37, 5)).astype(np.int16)
    save_nifti(Volume(data, np.eye(4)), tmp_path / "ct.nii.gz")
    loaded = load_nifti(tmp_path / "ct.nii.gz")
    assert loaded.data.flags.c_contiguous
    np.testing.assert_array_equal(loaded.data, data)
    fortran = np.asfortranarray(rng.normal(size=(4, 40, 3)))
    copied = _c_order(fortran)
    assert copied.flags.c_contiguous
    np.testing.assert_array_equal(copied, fortran)
    c_ordered = np.ascontiguousarray(fortran)
    assert _c_order(c_ordered) is c_ordered                  # no copy of a C-ordered array
    strided = c_ordered[:, ::3]
    np.testing.assert_array_equal(_c_order(strided), strided)
    assert _c_order(strided).flags.c_contiguous


def test_round_trip_oblique_float_volume(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32)
    affine = _oblique_affine()
    save_nifti(Volume(data, affine, units="mu"), tmp_path / "mu.nii")
    loaded = load_nifti(tmp_path / "mu.nii")
    assert loaded.data.dtype == np.float32
    np.testing.assert_array_equal(loaded.data, data)
    np.testing.assert_allclose(loaded.world_from_index, affine, atol=1e-5)
    # qform (rigid + zooms) holds the same orthogonal affine as the sform.
    image = nib.load(tmp_path / "mu.nii")
    assert isinstance(image, nib.Nifti1Image)
    np.testing.assert_allclose(image.get_qform(), affine, atol=1e-4)


def test_any_orientation_is_read_without_reorienting(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    las = np.diag([-0.5, 0.5, 2.0, 1.0])
    loaded = load_nifti(_write(tmp_path / "las.nii.gz", data, las))
    np.testing.assert_array_equal(loaded.data, data)
    np.testing.assert_array_equal(loaded.world_from_index, las)


def test_scaled_integers_become_float_and_plain_integers_stay(tmp_path: Path) -> None:
    data = np.arange(8, dtype=np.int16).reshape(2, 2, 2)
    image = nib.Nifti1Image(data, np.eye(4), dtype=np.int16)
    image.header.set_slope_inter(2.0, -1024.0)
    image.to_filename(tmp_path / "scaled.nii")
    scaled = load_nifti(tmp_path / "scaled.nii")
    assert np.issubdtype(scaled.data.dtype, np.floating)
    np.testing.assert_array_equal(scaled.data, data * 2.0 - 1024.0)
    plain = load_nifti(_write(tmp_path / "plain.nii", data.astype(np.uint16), np.eye(4)))
    assert plain.data.dtype == np.uint16


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_a_file_read_first_loads_as_the_path_does(tmp_path: Path, name: str) -> None:
    """read_nifti_file (what a command runs on a thread) then load_nifti / load_labels."""
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    image = nib.Nifti1Image(data, _oblique_affine(), dtype=np.int16)
    image.header.set_slope_inter(1.0, -1024.0)           # a CT's usual scaling
    image.to_filename(tmp_path / name)
    labels = _write(tmp_path / ("l" + name), (data % 3).astype(np.uint8), _oblique_affine())
    file = read_nifti_file(tmp_path / name)
    assert isinstance(file, NiftiFile)
    assert file.source == tmp_path / name
    assert (file.raw is None) == (name == "ct.nii")
    direct = load_nifti(tmp_path / name, labels=labels)
    read = load_nifti(file, labels=read_nifti_file(labels))
    np.testing.assert_array_equal(read.data, direct.data)
    np.testing.assert_array_equal(read.world_from_index, direct.world_from_index)
    np.testing.assert_array_equal(read.labels, direct.labels)
    np.testing.assert_array_equal(load_labels(read_nifti_file(labels), like=read), data % 3)


def test_reading_first_reports_gzip_damage_and_loading_the_rest(tmp_path: Path) -> None:
    data = np.random.default_rng(3).normal(size=(8, 8, 8)).astype(np.float32)
    full = _write(tmp_path / "full.nii.gz", data, np.eye(4)).read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(full[:-500])
    with pytest.raises(FileFormatError, match=r"cut\.nii\.gz.*truncated or corrupt gzip"):
        read_nifti_file(tmp_path / "cut.nii.gz")
    with pytest.raises(FileFormatError, match=r"absent\.nii\.gz.*no such file"):
        read_nifti_file(tmp_path / "absent.nii.gz")
    (tmp_path / "text.nii").write_text("this is not an image")
    file = read_nifti_file(tmp_path / "text.nii")           # parsed only when loaded
    with pytest.raises(FileFormatError, match=r"text\.nii.*not a readable NIfTI"):
        load_nifti(file)


def test_four_d_with_one_volume_is_accepted(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1)
    loaded = load_nifti(_write(tmp_path / "one.nii", data, np.eye(4)))
    np.testing.assert_array_equal(loaded.data, data[..., 0])


@pytest.mark.parametrize("shape", [(2, 3, 4, 2), (5, 6), (2, 2, 2, 1, 3)])
def test_wrong_dimensionality_is_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = _write(tmp_path / "bad.nii", np.zeros(shape, np.float32), np.eye(4))
    with pytest.raises(FileFormatError, match=r"bad\.nii.*3-D"):
        load_nifti(path)


def test_nan_voxels_are_refused_naming_the_file(tmp_path: Path) -> None:
    data = np.zeros((2, 2, 2), np.float32)
    data[0, 1, 1] = np.nan
    with pytest.raises(FileFormatError, match=r"nan\.nii\.gz.*1 NaN"):
        load_nifti(_write(tmp_path / "nan.nii.gz", data, np.eye(4)))


def test_missing_and_non_nifti_files(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match=r"absent\.nii.*no such file"):
        load_nifti(tmp_path / "absent.nii")
    text = tmp_path / "text.nii"
    text.write_text("this is not an image")
    with pytest.raises(FileFormatError, match=r"text\.nii.*not a readable NIfTI"):
        load_nifti(text)
    plain_gz = tmp_path / "text.nii.gz"
    plain_gz.write_bytes(b"not gzip at all")
    with pytest.raises(FileFormatError, match="not a readable NIfTI"):
        load_nifti(plain_gz)
    mgh = tmp_path / "brain.mgh"
    nib.MGHImage(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_filename(mgh)
    with pytest.raises(FileFormatError, match="MGHImage, not a NIfTI image"):
        load_nifti(mgh)
    mgz = tmp_path / "brain.mgz"
    nib.MGHImage(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_filename(mgz)
    with pytest.raises(FileFormatError, match="gzip-compressed but holds no NIfTI header"):
        load_nifti(mgz)


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    data = np.random.default_rng(2).normal(size=(20, 20, 20)).astype(np.float32)
    full = _write(tmp_path / "full.nii.gz", data, np.eye(4)).read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(full[: len(full) - 2000])
    with pytest.raises(FileFormatError, match=r"truncated\.nii\.gz.*truncated or corrupt gzip"):
        load_nifti(truncated)
    corrupt = bytearray(full)
    corrupt[len(full) // 2: len(full) // 2 + 64] = bytes(64)
    damaged = tmp_path / "corrupt.nii.gz"
    damaged.write_bytes(bytes(corrupt))
    with pytest.raises(FileFormatError, match=r"corrupt\.nii\.gz.*truncated or corrupt gzip"):
        load_nifti(damaged)
    raw = gzip.decompress(full)
    short = tmp_path / "short.nii"
    short.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FileFormatError, match=r"short\.nii.*truncated or corrupt"):
        load_nifti(short)


def test_label_grid_must_match(tmp_path: Path) -> None:
    ct = _write(tmp_path / "ct.nii", np.zeros((3, 4, 5), np.int16), np.eye(4))
    wrong_shape = _write(tmp_path / "shape.nii", np.zeros((3, 4, 6), np.uint8), np.eye(4))
    with pytest.raises(FileFormatError, match=r"shape\.nii.*\(3, 4, 6\).*\(3, 4, 5\)"):
        load_nifti(ct, labels=wrong_shape)
    shifted = np.eye(4)
    shifted[0, 3] = 1e-3
    moved = _write(tmp_path / "moved.nii", np.zeros((3, 4, 5), np.uint8), shifted)
    with pytest.raises(FileFormatError, match=r"moved\.nii.*label affine differs"):
        load_nifti(ct, labels=moved)
    shifted[0, 3] = 1e-6
    close = _write(tmp_path / "close.nii", np.ones((3, 4, 5), np.uint8), shifted)
    volume = load_nifti(ct, labels=close)
    assert volume.labels is not None
    assert int(volume.labels.sum()) == 60
    np.testing.assert_array_equal(volume.world_from_index, np.eye(4))


def test_float_labels_holding_whole_numbers_are_accepted(tmp_path: Path) -> None:
    values = np.array([0, 3, 300, 7, 0, 1, 2, 5], np.float32).reshape(2, 2, 2)
    labels = load_labels(_write(tmp_path / "float.nii", values, np.eye(4)))
    assert labels.dtype == np.int16
    np.testing.assert_array_equal(labels, values)
    values[0, 0, 0] = 0.5
    with pytest.raises(FileFormatError, match="whole numbers"):
        load_labels(_write(tmp_path / "fraction.nii", values, np.eye(4)))


def test_int64_and_float16_are_stored_in_portable_dtypes(tmp_path: Path) -> None:
    data = np.array([-5, 0, 70000, 3], np.int64).reshape(1, 2, 2)
    labels = np.array([0, 1, 2, 255], np.int64).reshape(1, 2, 2)
    save_nifti(Volume(data, np.eye(4), labels), tmp_path / "a.nii", labels_path=tmp_path / "l.nii")
    loaded = load_nifti(tmp_path / "a.nii", labels=tmp_path / "l.nii")
    assert loaded.data.dtype == np.int32
    assert loaded.labels is not None
    assert loaded.labels.dtype == np.uint8
    np.testing.assert_array_equal(loaded.data, data)
    np.testing.assert_array_equal(loaded.labels, labels)
    half = np.array([0.5, 1.25], np.float16).reshape(1, 1, 2)
    save_nifti(Volume(half, np.eye(4)), tmp_path / "h.nii")
    np.testing.assert_array_equal(load_nifti(tmp_path / "h.nii").data, half.astype(np.float32))


def test_save_refuses_bad_names_and_missing_labels(tmp_path: Path) -> None:
    volume = Volume(np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(InputError, match=r"'path'.*ct\.nrrd"):
        save_nifti(volume, tmp_path / "ct.nrrd")
    with pytest.raises(InputError, match="no labels"):
        save_nifti(volume, tmp_path / "ct.nii", labels_path=tmp_path / "l.nii")
    with pytest.raises(InputError, match="'labels_path'"):
        save_nifti(volume.with_labels(np.zeros((2, 2, 2), np.uint8)), tmp_path / "ct.nii",
                   labels_path=tmp_path / "l.png")
    assert list(tmp_path.iterdir()) == []
    labelled = volume.with_labels(np.ones((2, 2, 2), np.uint8))
    for same in (tmp_path / "ct.nii", tmp_path / "sub" / ".." / "ct.nii"):
        with pytest.raises(InputError, match=r"'labels_path'.*would replace the image"):
            save_nifti(labelled, tmp_path / "ct.nii", labels_path=same)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "ct.nii").write_bytes(b"old")          # the same file by another name
    (tmp_path / "link.nii").symlink_to(tmp_path / "ct.nii")
    with pytest.raises(InputError, match="would replace the image"):
        save_nifti(labelled, tmp_path / "ct.nii", labels_path=tmp_path / "link.nii")
    assert (tmp_path / "ct.nii").read_bytes() == b"old"


def test_failed_write_leaves_existing_file_untouched(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ct.nii.gz"
    save_nifti(Volume(np.ones((2, 2, 2), np.int16), np.eye(4)), target)
    before = target.read_bytes()

    def fail(_self: nib.Nifti1Image, filename: Path) -> None:
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", fail)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(Volume(np.zeros((2, 2, 2), np.int16), np.eye(4)), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ct.nii.gz"]


def test_shipped_chest_crop_loads_with_bone_labels() -> None:
    paths = chest_ct_crop()
    volume = load_nifti(paths["ct"], labels=paths["bones"])
    assert volume.shape == (160, 192, 64)
    assert volume.data.dtype == np.int16
    assert volume.units == "HU"
    assert volume.world_from_index[0, 0] < 0  # stored LAS, not reoriented
    np.testing.assert_allclose(volume.spacing, [0.703125, 0.703125, 2.5])
    assert volume.labels is not None
    assert volume.labels.dtype == np.uint8
    assert int(volume.labels.max()) > 0
