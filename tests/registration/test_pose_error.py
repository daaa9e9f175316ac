"""Pose error figures against closed forms: mTRE, its depth / in-plane split, and mPD."""

from __future__ import annotations

import numpy as np
import pytest

from regkit.errors import InputError, ShapeError
from regkit.geometry.camera import Camera
from regkit.registration.pose_error import (
    mean_projection_distance,
    mean_target_error,
    target_error_split,
)


def _camera(shift: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Camera:
    k = np.array([[1000.0, 0.0, 64.0], [0.0, 1000.0, 64.0], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, 3] = np.array([0.0, 0.0, 800.0]) + np.asarray(shift)
    return Camera(k, pose, 128, 128, pixel_spacing_mm=(1.0, 1.0))


def test_a_pure_shift_gives_its_length_and_its_split() -> None:
    pts = np.random.default_rng(0).normal(scale=30.0, size=(50, 3))
    a, b = _camera((3.0, 4.0, 0.0)), _camera()
    assert mean_target_error(a.camera_from_world, b.camera_from_world, pts) == \
        pytest.approx(5.0)
    depth, plane = target_error_split(_camera((0, 0, 2.0)).camera_from_world,
                                      b.camera_from_world, pts)
    assert depth == pytest.approx(2.0)
    assert plane == pytest.approx(0.0, abs=1e-12)
    # views: the mean over views
    both = np.stack([a.camera_from_world, b.camera_from_world])
    assert mean_target_error(both, np.stack([b.camera_from_world] * 2), pts) == \
        pytest.approx(2.5)


def test_projection_distance_is_the_magnified_shift() -> None:
    pts = np.array([[0.0, 0.0, 0.0], [10.0, -5.0, 0.0]])   # at depth 800 mm
    # a lateral shift dx at depth z moves a projection by f·dx/z pixels of 1 mm
    assert mean_projection_distance(_camera((2.0, 0.0, 0.0)), _camera(), pts) == \
        pytest.approx(1000.0 * 2.0 / 800.0)
    # a shift along the view at the central point moves nothing
    assert mean_projection_distance(_camera((0.0, 0.0, 5.0)), _camera(), pts[:1]) == \
        pytest.approx(0.0, abs=1e-9)


def test_bad_input_is_named() -> None:
    with pytest.raises(ShapeError, match="points"):
        mean_target_error(np.eye(4), np.eye(4), np.zeros((0, 3)))
    with pytest.raises(ShapeError, match="equal in shape"):
        mean_target_error(np.eye(4), np.eye(3), np.zeros((1, 3)))
    with pytest.raises(InputError, match="NaN"):
        mean_target_error(np.eye(4), np.eye(4), np.full((1, 3), np.nan))
    bare = Camera(_camera().intrinsic, _camera().camera_from_world, 128, 128)
    with pytest.raises(InputError, match="pixel_spacing_mm"):
        mean_projection_distance(bare, bare, np.zeros((1, 3)))
