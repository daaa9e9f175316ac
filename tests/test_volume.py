"""Tests of regkit.volume: the Volume value object and the HU → μ conversion."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from regkit.errors import InputError, ShapeError
from regkit.volume import MU_WATER_PER_MM, Volume, hu_to_mu


def _rotation(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    """Rotation matrix (3, 3) about a unit ``axis`` by ``angle`` radians (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _oblique_affine(spacing: tuple[float, float, float] = (0.8, 1.1, 2.5)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _rotation((1.0, 2.0, 0.5), 0.4) @ np.diag(spacing)
    affine[:3, 3] = (-40.0, 12.5, 7.0)
    return affine


def _ramp(shape: tuple[int, int, int]) -> np.ndarray:
    """Data linear in the index: trilinear interpolation reproduces it exactly."""
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return 3.0 * i - 2.0 * j + 0.5 * k + 10.0


# ------------------------------------------------------------------------------------- hu_to_mu

def test_hu_to_mu_values_dtype_and_clamp() -> None:
    hu = np.array([-2000, -1000, 0, 1000, 3000], dtype=np.int16)
    mu = hu_to_mu(hu)
    assert mu.dtype == np.float32
    np.testing.assert_allclose(mu, [0.0, 0.0, 0.02, 0.04, 0.08], rtol=1e-6, atol=1e-9)
    assert MU_WATER_PER_MM == 0.02
    np.testing.assert_allclose(hu_to_mu(np.array([0.0, 500.0]), mu_water=0.03), [0.03, 0.045],
                               rtol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e39])
def test_hu_to_mu_refuses_non_finite_values(bad: float) -> None:
    # a list of Python floats too; 1e39 is finite in float64 but not as float32
    for hu in ([0.0, 100.0, bad, float("nan")], np.array([0.0, 100.0, bad, np.nan])):
        with pytest.raises(InputError, match="2 NaN or infinite") as info:
            hu_to_mu(hu)
        assert info.value.key == "hu"


@pytest.mark.parametrize("mu_water", [0.0, -0.02, float("nan"), float("inf")])
def test_hu_to_mu_refuses_bad_mu_water(mu_water: float) -> None:
    with pytest.raises(InputError, match="mu_water"):
        hu_to_mu(np.zeros(3), mu_water=mu_water)


# ---------------------------------------------------------------------------------- validation

def test_docstring_worked_example() -> None:
    affine = np.array([[0.5, 0, 0, -10], [0, 0.5, 0, 20], [0, 0, 2, 30], [0, 0, 0, 1]], float)
    volume = Volume(np.zeros((4, 3, 2), np.int16), affine)
    np.testing.assert_allclose(volume.index_to_world([2, 0, 1]), [-9, 20, 32])
    np.testing.assert_allclose(volume.spacing, [0.5, 0.5, 2.0])


def test_arrays_are_read_only_views_and_callers_untouched() -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    affine = np.eye(4)
    labels = np.zeros((2, 3, 4), np.uint8)
    volume = Volume(data, affine, labels)
    assert data.flags.writeable
    assert affine.flags.writeable
    assert labels.flags.writeable
    assert not volume.data.flags.writeable
    assert not volume.world_from_index.flags.writeable
    assert volume.labels is not None
    assert not volume.labels.flags.writeable
    assert np.shares_memory(volume.data, data)
    with pytest.raises(ValueError, match="read-only"):
        volume.data[0, 0, 0] = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        volume.units = "mu"  # type: ignore[misc]


def test_integer_affine_is_converted_to_float64() -> None:
    volume = Volume(np.ones((1, 1, 1), np.float32), np.eye(4, dtype=int))
    assert volume.world_from_index.dtype == np.float64
    assert volume.shape == (1, 1, 1)


@pytest.mark.parametrize("data", [np.zeros((3, 3)), np.zeros((2, 2, 2, 2)), np.zeros(4)])
def test_refuses_data_not_3d(data: np.ndarray) -> None:
    with pytest.raises(ShapeError, match="3-D"):
        Volume(data, np.eye(4))


def test_refuses_tensors_that_require_gradients() -> None:
    import torch

    from regkit.geometry.camera import Camera

    data = torch.zeros(2, 2, 2, requires_grad=True)
    with pytest.raises(InputError, match="'data': is a tensor that requires gradients"):
        Volume(data, np.eye(4))  # type: ignore[arg-type]
    assert Volume(data.detach(), np.eye(4)).shape == (2, 2, 2)  # type: ignore[arg-type]
    pose = torch.eye(4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(InputError, match="'camera_from_world': is a tensor that requires"):
        Camera(np.diag([500.0, 500.0, 1.0]), pose, 64, 64)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(0, 4, 4), (4, 4, 0)])
def test_refuses_an_empty_grid(shape: tuple[int, int, int]) -> None:
    # an empty grid passed the checks and failed later: a division by zero in the torch
    # renderer, an all-zero DRR from the OpenGL one, a file load_nifti then refused
    with pytest.raises(ShapeError, match="at least one voxel along each axis"):
        Volume(np.zeros(shape, np.float32), np.eye(4))


@pytest.mark.parametrize("dtype", [np.complex64, bool, object])
def test_refuses_data_not_real(dtype: type) -> None:
    with pytest.raises(ShapeError, match="real numbers"):
        Volume(np.zeros((2, 2, 2), dtype=dtype), np.eye(4))


def test_refuses_nan_and_inf_naming_them() -> None:
    data = np.zeros((2, 3, 4), np.float32)
    data[1, 2, 3] = np.nan
    with pytest.raises(InputError, match=r"'data'.*1 NaN.*\(1, 2, 3\)"):
        Volume(data, np.eye(4))
    data[1, 2, 3] = np.inf
    with pytest.raises(InputError, match="0 NaN and 1 infinite"):
        Volume(data, np.eye(4))


@pytest.mark.parametrize(("affine", "error", "pattern"), [
    (np.eye(3), ShapeError, "4x4"),
    (np.full((4, 4), np.nan), InputError, "non-finite"),
    (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], float), InputError,
     "last row"),
    (np.diag([1.0, 0.0, 1.0, 1.0]), InputError, "not invertible"),
    (np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float), InputError,
     "not invertible"),
])
def test_refuses_bad_affine(affine: np.ndarray, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        Volume(np.zeros((2, 2, 2)), affine)


def test_refuses_bad_labels_and_units() -> None:
    data = np.zeros((2, 3, 4))
    with pytest.raises(ShapeError, match="labels must be on the data grid"):
        Volume(data, np.eye(4), np.zeros((2, 3, 5), np.uint8))
    with pytest.raises(ShapeError, match="integer dtype"):
        Volume(data, np.eye(4), np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ShapeError, match="boolean mask"):
        Volume(data, np.eye(4), np.zeros((2, 3, 4), bool))
    with pytest.raises(InputError, match=r"'units'.*'kelvin'"):
        Volume(data, np.eye(4), units="kelvin")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ geometry

def test_index_world_round_trip_on_oblique_grid() -> None:
    affine = _oblique_affine()
    volume = Volume(np.zeros((5, 6, 7)), affine)
    points = np.random.default_rng(0).uniform(-3, 9, size=(4, 2, 3))
    world = volume.index_to_world(points)
    assert world.shape == (4, 2, 3)
    np.testing.assert_allclose(world[1, 0], affine[:3, :3] @ points[1, 0] + affine[:3, 3])
    np.testing.assert_allclose(volume.world_to_index(world), points, atol=1e-12)
    np.testing.assert_allclose(volume.spacing, [0.8, 1.1, 2.5])
    np.testing.assert_allclose(volume.index_from_world @ affine, np.eye(4), atol=1e-12)
    with pytest.raises(ShapeError, match=r"\(\.\.\., 3\)"):
        volume.index_to_world(np.zeros((4, 2)))


def test_center_and_bounds() -> None:
    affine = np.diag([2.0, 1.0, 0.5, 1.0])
    affine[:3, 3] = (10, 20, 30)
    volume = Volume(np.zeros((3, 4, 5)), affine)
    np.testing.assert_allclose(volume.center_world, [10 + 2 * 1.0, 20 + 1.5, 30 + 0.5 * 2])
    corners = volume.bounds_world
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners[0], [10 - 1.0, 20 - 0.5, 30 - 0.25])
    np.testing.assert_allclose(corners[-1], [10 + 2 * 2.5, 20 + 3.5, 30 + 0.5 * 4.5])
    np.testing.assert_allclose(corners[1], [9.0, 19.5, 32.25])  # k bound varies fastest
    np.testing.assert_allclose(corners.mean(axis=0), volume.center_world)


# ---------------------------------------------------------------------------------- operations

def test_to_mu() -> None:
    volume = Volume(np.array([[[-1000, 0], [1000, 2000]]], np.int16), np.eye(4),
                    np.ones((1, 2, 2), np.uint8))
    mu = volume.to_mu()
    assert mu.units == "mu"
    assert mu.data.dtype == np.float32
    np.testing.assert_allclose(mu.data, [[[0, 0.02], [0.04, 0.06]]], rtol=1e-6)
    assert mu.labels is not None
    assert volume.labels is not None
    assert np.shares_memory(mu.labels, volume.labels)
    np.testing.assert_allclose(volume.to_mu(mu_water=0.01).data[0, 0, 1], 0.01)
    assert mu.to_mu() is mu
    with pytest.raises(InputError, match="'other'"):
        volume.with_data(volume.data, units="other").to_mu()


def test_with_labels_and_with_data() -> None:
    volume = Volume(np.zeros((2, 2, 2), np.int16), np.eye(4))
    labelled = volume.with_labels(np.ones((2, 2, 2), np.int32))
    assert labelled.labels is not None
    assert labelled.labels.dtype == np.int32
    assert volume.labels is None
    assert labelled.with_labels(None).labels is None
    replaced = labelled.with_data(np.full((2, 2, 2), 0.5), units="mu")
    assert replaced.units == "mu"
    assert replaced.labels is not None
    assert np.shares_memory(replaced.labels, labelled.labels)
    assert labelled.with_data(np.zeros((2, 2, 2))).units == "HU"
    with pytest.raises(ShapeError, match=r"new data must be on the volume's grid \(2, 2, 2\)"):
        labelled.with_data(np.zeros((3, 2, 2)))


def test_crop_keeps_world_positions_and_labels() -> None:
    affine = _oblique_affine()
    data = _ramp((6, 7, 8))
    labels = np.arange(6 * 7 * 8, dtype=np.int32).reshape(6, 7, 8)
    volume = Volume(data, affine, labels)
    cropped = volume.crop((1, 2, 3), (4, 7, 5))
    assert cropped.shape == (3, 5, 2)
    np.testing.assert_array_equal(cropped.data, data[1:4, 2:7, 3:5])
    assert cropped.labels is not None
    np.testing.assert_array_equal(cropped.labels, labels[1:4, 2:7, 3:5])
    np.testing.assert_allclose(cropped.index_to_world([0, 0, 0]), volume.index_to_world([1, 2, 3]))
    np.testing.assert_allclose(cropped.spacing, volume.spacing)
    assert not np.shares_memory(cropped.data, volume.data)


def test_crop_clips_without_wrapping_and_refuses_empty() -> None:
    volume = Volume(np.ones((4, 4, 4)), np.eye(4))
    clipped = volume.crop((-3, 2, 0), (2, 99, 4))
    assert clipped.shape == (2, 2, 4)
    np.testing.assert_allclose(clipped.world_from_index[:3, 3], [0, 2, 0])
    with pytest.raises(InputError, match="holds no voxel"):
        volume.crop((2, 0, 0), (2, 4, 4))
    with pytest.raises(InputError, match="holds no voxel"):
        volume.crop((5, 0, 0), (9, 4, 4))
    with pytest.raises(InputError, match="whole numbers"):
        volume.crop((0.5, 0, 0), (2, 2, 2))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="3 indices"):
        volume.crop((0, 0), (2, 2))


def test_crop_to_labels_with_margin_in_mm() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[5:8, 10:12, 10] = 3
    labels[9, 10, 10] = 7
    labels[15, 15, 15] = 9
    volume = Volume(np.zeros((20, 20, 20)), np.diag([1.0, 2.0, 0.5, 1.0]), labels)
    tight = volume.crop_to_labels([3, 7])
    assert tight.shape == (5, 2, 1)
    np.testing.assert_allclose(tight.world_from_index[:3, 3], [5, 20, 5])
    # 3 mm margin: 3 voxels at 1 mm, 2 voxels at 2 mm (rounded up), 6 voxels at 0.5 mm.
    margin = volume.crop_to_labels(3, margin_mm=3.0)
    assert margin.shape == (3 + 6, 2 + 4, 1 + 12)
    np.testing.assert_allclose(margin.world_from_index[:3, 3], [2, 16, 2])
    assert volume.crop_to_labels(9, margin_mm=100.0).shape == (20, 20, 20)
    with pytest.raises(InputError, match=r"no voxel carries label \[4\].*\[0, 3, 7, 9\]"):
        volume.crop_to_labels(4)
    with pytest.raises(InputError, match="margin_mm"):
        volume.crop_to_labels(3, margin_mm=-1.0)
    with pytest.raises(InputError, match="no label map"):
        volume.with_labels(None).crop_to_labels(3)


def test_resample_same_spacing_is_identity() -> None:
    data = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    labels = np.random.default_rng(2).integers(0, 4, size=(5, 6, 7)).astype(np.uint8)
    volume = Volume(data, _oblique_affine(), labels)
    same = volume.resample(volume.spacing)
    assert same.shape == volume.shape
    np.testing.assert_allclose(same.world_from_index, volume.world_from_index, atol=1e-12)
    np.testing.assert_array_equal(same.data, data)
    assert same.labels is not None
    np.testing.assert_array_equal(same.labels, labels)


def test_resample_keeps_extent_orientation_and_interpolates_linearly() -> None:
    shape = (10, 12, 9)
    affine = _oblique_affine(spacing=(1.0, 1.0, 2.0))
    volume = Volume(_ramp(shape), affine, units="mu")
    coarse = volume.resample((3.0, 2.5, 2.0))
    # ceil(10/3) = 4, ceil(12/2.5) = 5, 9 unchanged
    assert coarse.shape == (4, 5, 9)
    assert coarse.units == "mu"
    assert coarse.data.dtype == np.float64
    np.testing.assert_allclose(coarse.spacing, [3.0, 2.5, 2.0])
    directions = coarse.world_from_index[:3, :3] / coarse.spacing
    np.testing.assert_allclose(directions, affine[:3, :3] / volume.spacing, atol=1e-12)
    np.testing.assert_allclose(coarse.center_world, volume.center_world, atol=1e-9)
    # The new voxel-edge box covers the old one, overhanging by less than half a new voxel.
    old_box = volume.world_to_index(coarse.bounds_world)
    extent_old = np.ptp(old_box, axis=0)
    assert np.all(extent_old >= np.array(shape) - 1e-9)
    assert np.all(extent_old < np.array(shape) + coarse.spacing / volume.spacing)
    # Values: the ramp at each new voxel centre, clamped to the old centre range near the border.
    centres = np.stack(np.meshgrid(*[np.arange(n) for n in coarse.shape], indexing="ij"), -1)
    source = np.clip(volume.world_to_index(coarse.index_to_world(centres)), 0,
                     np.array(shape) - 1)
    expected = 3.0 * source[..., 0] - 2.0 * source[..., 1] + 0.5 * source[..., 2] + 10.0
    np.testing.assert_allclose(coarse.data, expected, atol=1e-9)


def test_resample_labels_nearest_and_int_data_to_float32() -> None:
    labels = np.zeros((4, 4, 4), np.int16)
    labels[2:, :, :] = 5
    volume = Volume(np.zeros((4, 4, 4), np.int16), np.eye(4), labels)
    fine = volume.resample(0.5)
    assert fine.shape == (8, 8, 8)
    assert fine.data.dtype == np.float32
    assert fine.labels is not None
    assert fine.labels.dtype == np.int16
    # New centres at old index -0.25, 0.25, 0.75, ...: the boundary between 1 and 2 is at 1.5.
    np.testing.assert_array_equal(fine.labels[:, 0, 0], [0, 0, 0, 0, 5, 5, 5, 5])
    with pytest.raises(InputError, match="spacing_mm"):
        volume.resample((1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="spacing_mm"):
        volume.resample((1.0, 2.0))


def test_resample_to_grid_fills_outside() -> None:
    labels = np.ones((4, 4, 4), np.uint8)
    volume = Volume(_ramp((4, 4, 4)), np.eye(4), labels)
    shifted = np.eye(4)
    shifted[:3, 3] = (2.0, 0.0, 0.0)
    moved = volume.resample_to_grid((4, 4, 4), shifted, fill=-7.0)
    np.testing.assert_allclose(moved.data[:2], _ramp((4, 4, 4))[2:])
    np.testing.assert_array_equal(moved.data[2:], -7.0)
    assert moved.labels is not None
    np.testing.assert_array_equal(moved.labels[:2], 1)
    np.testing.assert_array_equal(moved.labels[2:], 0)
    with pytest.raises(InputError, match="at least one voxel"):
        volume.resample_to_grid((0, 4, 4), np.eye(4))
    with pytest.raises(InputError, match="not invertible"):
        volume.resample_to_grid((4, 4, 4), np.zeros((4, 4)) + np.diag([0, 0, 0, 1]))


def test_resample_to_grid_general_path_fills_outside() -> None:
    # A target grid turned 90 degrees about k and shifted: not axis-aligned, so every voxel is
    # sampled through map_coordinates. Source index of target (i, j, k) is (j + 2, 3 - i, k).
    source_from_target = np.array([[0, 1, 0, 2], [-1, 0, 0, 3], [0, 0, 1, 0], [0, 0, 0, 1]],
                                  float)
    labels = np.arange(5 * 4 * 3, dtype=np.int32).reshape(5, 4, 3)
    volume = Volume(_ramp((5, 4, 3)), np.diag([2.0, 2.0, 2.0, 1.0]), labels)
    target = volume.world_from_index @ source_from_target
    moved = volume.resample_to_grid((4, 4, 3), target, fill=-1.0)
    assert moved.labels is not None
    for i, j, k in itertools.product(range(4), range(4), range(3)):
        a, b = j + 2, 3 - i
        inside = 0 <= a < 5 and 0 <= b < 4
        expected = _ramp((5, 4, 3))[a, b, k] if inside else -1.0
        assert moved.data[i, j, k] == pytest.approx(expected, abs=1e-5)
        assert moved.labels[i, j, k] == (labels[a, b, k] if inside else 0)


def test_axis_aligned_and_general_sampling_agree() -> None:
    rng = np.random.default_rng(7)
    # Sizes and spacings chosen so that no target centre falls exactly half-way between two
    # source centres, where nearest-neighbour labels could round either way.
    volume = Volume(rng.normal(size=(9, 7, 7)), _oblique_affine(),
                    rng.integers(0, 5, size=(9, 7, 7)).astype(np.uint8))
    fast = volume.resample((0.55, 1.45, 3.1))
    assert fast.shape == (14, 6, 6)
    tilted = np.array(fast.world_from_index)
    tilted[:3, :3] = tilted[:3, :3] @ _rotation((1.0, 0.0, 0.0), 1e-9)  # off the fast path
    general = volume.resample_to_grid(fast.shape, tilted)
    np.testing.assert_allclose(fast.data, general.data, atol=1e-6)
    assert fast.labels is not None
    assert general.labels is not None
    np.testing.assert_array_equal(fast.labels, general.labels)


def test_downsample_block_mean_and_affine() -> None:
    affine = _oblique_affine()
    data = np.random.default_rng(3).integers(-1000, 2000, size=(9, 8, 6)).astype(np.int16)
    volume = Volume(data, affine)
    half = volume.downsample(2)
    assert half.shape == (4, 4, 3)
    assert half.data.dtype == np.float32
    expected = data[:8].astype(np.float64).reshape(4, 2, 4, 2, 3, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(half.data, expected, rtol=1e-6)
    np.testing.assert_allclose(half.spacing, 2 * volume.spacing)
    # Each new voxel centre is the centre of its 2x2x2 block.
    for new_index in itertools.product(range(4), range(4), range(3)):
        block_centre = 2 * np.array(new_index) + 0.5
        np.testing.assert_allclose(half.index_to_world(new_index),
                                   volume.index_to_world(block_centre), atol=1e-9)
    assert volume.downsample(1) is volume


def test_downsample_labels_majority_with_ties_to_smallest() -> None:
    labels = np.zeros((4, 2, 2), np.uint8)
    labels[0:2] = 9  # block 0: all 9
    labels[2] = 4  # block 1: four 4s and four 6s, a tie that the smaller value wins
    labels[3] = 6
    volume = Volume(np.zeros((4, 2, 2)), np.eye(4), labels)
    down = volume.downsample(2)
    assert down.labels is not None
    assert down.labels.dtype == np.uint8
    np.testing.assert_array_equal(down.labels.ravel(), [9, 4])
    labels[2, 0, 0] = 6  # now five 6s against three 4s
    down = Volume(np.zeros((4, 2, 2)), np.eye(4), labels).downsample(2)
    assert down.labels is not None
    np.testing.assert_array_equal(down.labels.ravel(), [9, 6])


def test_downsample_refuses_bad_factor() -> None:
    volume = Volume(np.zeros((4, 4, 2)), np.eye(4))
    with pytest.raises(InputError, match="at least 1"):
        volume.downsample(0)
    with pytest.raises(InputError, match="whole number"):
        volume.downsample(1.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="whole number, got True"):   # was taken as 1
        volume.downsample(True)
    with pytest.raises(InputError, match="shorter than the block size 3"):
        volume.downsample(3)


def test_repr_is_short() -> None:
    text = repr(Volume(np.zeros((300, 300, 300), np.int16), np.eye(4)))
    assert text == ("Volume(shape=(300, 300, 300), spacing_mm=(1, 1, 1), dtype=int16, "
                    "units='HU', labels=None)")
