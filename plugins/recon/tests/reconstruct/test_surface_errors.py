"""Surface errors: exact distances, the cheap screen's bounds, and the shift alignment's search."""

from __future__ import annotations

import numpy as np
import pytest
from regkit_recon.reconstruct.evaluate import surface_errors
from regkit_recon.reconstruct.mesh import Mesh, SurfaceIndex, extract_mesh, surface_distances

from regkit.errors import InputError, ShapeError

_RADIUS = 5.0


def _sphere(centre: np.ndarray, radius: float = _RADIUS, voxel: float = 0.5) -> Mesh:
    """A marching-cubes sphere in world mm (faces about a voxel across)."""
    n = int(np.ceil(2 * (radius + 2) / voxel))
    index = np.indices((n, n, n)).astype(np.float64) * voxel - (radius + 2)
    field = radius - np.sqrt((index ** 2).sum(axis=0))
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = np.asarray(centre) - (radius + 2)
    return extract_mesh(field, 0.0).transformed(affine)


def test_index_distances_equal_the_one_off_function_and_the_screen_bounds_them() -> None:
    sphere = _sphere(np.zeros(3))
    rng = np.random.default_rng(3)
    points = rng.normal(size=(400, 3)) * 6.0
    index = SurfaceIndex(sphere)
    exact = index.distances(points)
    assert exact == pytest.approx(surface_distances(points, sphere))
    # A polygonised sphere: within a tenth of a voxel of the round one.
    assert exact == pytest.approx(np.abs(np.linalg.norm(points, axis=1) - _RADIUS), abs=0.05)
    coarse = index.centroid_distances(points)
    face = float(np.linalg.norm(sphere.triangles - sphere.triangles.mean(axis=1, keepdims=True),
                                axis=2).max())
    assert np.all(coarse >= exact - 1e-9)
    assert np.all(coarse <= exact + face + 1e-9)
    capped = index.centroid_distances(points, cap_mm=2.0)
    assert np.all(capped <= 2.0)
    assert capped == pytest.approx(np.minimum(coarse, 2.0))
    with pytest.raises(ShapeError, match=r"\(N, 3\)"):
        index.distances(points[:, :2])
    with pytest.raises(InputError, match="no faces"):
        SurfaceIndex(Mesh(np.zeros((3, 3)), np.zeros((0, 3), dtype=np.int64)))


def _bones(shifts: list[float], direction: np.ndarray) -> tuple[dict[str, Mesh], dict[str, Mesh]]:
    """True spheres side by side; each predicted one moved by ``-shift`` along ``direction``."""
    truth, predicted = {}, {}
    for i, shift in enumerate(shifts):
        centre = np.array([20.0 * i, 0.0, 0.0])
        truth[f"b{i}"] = _sphere(centre)
        predicted[f"b{i}"] = _sphere(centre - shift * direction)
    return predicted, truth


def test_alignment_removes_a_common_offset() -> None:
    d = np.array([0.3, -0.2, 0.93])
    d /= np.linalg.norm(d)
    predicted, truth = _bones([7.3] * 5, d)
    errors = surface_errors(predicted, truth, d)
    assert errors["offset_mm"] == pytest.approx(7.3, abs=0.1)
    assert errors["median_assd_mm"] > 3.0
    assert errors["median_aligned_assd_mm"] < 0.1
    assert errors["median_aligned_hd95_mm"] < 0.2
    assert errors["missing"] == []


def test_alignment_finds_the_global_minimum_of_a_median_with_two_basins() -> None:
    # Seven bones wanting offsets -10, -9, -8, 5, 12, 12.5, 13 mm. The median of seven ASSDs is
    # lowest at the midpoint of the tightest four (5 ... 13: offset 9, four bones within 4 mm)
    # and has a second, shallower basin at the midpoint of -10 ... 5 (offset -2.5, 7.5 mm). (The
    # bounded scalar search used before stop 48 also finds the global basin here: its misses
    # were the sub-millimetre minima of real cases, which this layout does not reproduce.)
    d = np.array([0.0, 0.0, 1.0])
    shifts = [-10.0, -9.0, -8.0, 5.0, 12.0, 12.5, 13.0]
    predicted, truth = _bones(shifts, d)
    errors = surface_errors(predicted, truth, d)
    assert errors["offset_mm"] == pytest.approx(9.0, abs=0.3)
    # There the 4th-smallest ASSD is that of a bone 4 mm off; at the other basin, 7.5 mm off.
    four, seven = (surface_errors(*_bones([s], d), d, max_offset_mm=0.0)["median_assd_mm"]
                   for s in (4.0, 7.5))
    assert errors["median_aligned_assd_mm"] == pytest.approx(four, abs=0.3)
    assert four < seven - 1.0


def test_no_offset_is_kept_when_the_bones_are_already_in_place() -> None:
    d = np.array([1.0, 0.0, 0.0])
    predicted, truth = _bones([0.0] * 3, d)
    errors = surface_errors(predicted, truth, d)
    assert errors["offset_mm"] == 0.0
    assert errors["median_aligned_assd_mm"] == errors["median_assd_mm"]


def test_a_zero_range_skips_the_alignment() -> None:
    d = np.array([0.0, 1.0, 0.0])
    predicted, truth = _bones([3.0, 3.0], d)
    errors = surface_errors(predicted, truth, d, max_offset_mm=0.0)
    assert errors["offset_mm"] == 0.0
    assert errors["median_aligned_assd_mm"] == errors["median_assd_mm"] > 1.0
    assert surface_errors(predicted, truth, d, max_offset_mm=2.5)["offset_mm"] == \
        pytest.approx(2.5, abs=1e-9)      # the search stays inside its range
