"""Behavioural tests of regkit.geometry.carm: C-arm angles and distances to a camera."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.geometry.carm import camera_from_carm
from regkit.testing.cameras import EXAMPLE_CAMERA_FROM_WORLD, EXAMPLE_INTRINSIC

BASE: dict[str, Any] = {
    "source_to_detector_mm": 1020.0,
    "source_to_isocenter_mm": 850.0,
    "pixel_spacing_mm": 0.8,
    "width": 256,
    "height": 256,
}


def carm(**overrides: Any) -> Camera:
    return camera_from_carm(**{**BASE, **overrides})


def test_zero_angles_is_the_conventions_example() -> None:
    cam = carm()
    np.testing.assert_array_equal(cam.intrinsic, EXAMPLE_INTRINSIC)
    np.testing.assert_array_equal(cam.camera_from_world, EXAMPLE_CAMERA_FROM_WORLD)
    assert (cam.width, cam.height) == (256, 256)
    assert cam.pixel_spacing_mm == (0.8, 0.8)
    assert cam.source_to_detector_mm == pytest.approx(1020.0, rel=1e-12)
    np.testing.assert_allclose(cam.source_world, [0.0, -850.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(cam.view_direction_world, [0.0, 1.0, 0.0], atol=0)


def test_lao_90_source_at_patients_right() -> None:
    cam = carm(primary_angle=math.pi / 2)
    np.testing.assert_allclose(cam.source_world, [850.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(cam.view_direction_world, [-1.0, 0.0, 0.0], atol=1e-12)
    # the C-arm turns about the long axis: image rows still run towards the feet
    below = cam.project([[0.0, 0.0, -10.0]])
    assert below[0, 1] > cam.principal_point[1]
    assert below[0, 0] == pytest.approx(cam.principal_point[0], abs=1e-9)


def test_rao_90_source_at_patients_left() -> None:
    cam = carm(primary_angle=-math.pi / 2)
    np.testing.assert_allclose(cam.source_world, [-850.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(cam.view_direction_world, [1.0, 0.0, 0.0], atol=1e-12)


def test_small_lao_moves_detector_towards_patients_left() -> None:
    """LAO: the detector (and beam) swings towards −x, the source towards +x."""
    cam = carm(primary_angle=math.radians(20))
    assert cam.view_direction_world[0] < 0
    assert cam.source_world[0] > 0
    assert cam.view_direction_world[1] > 0  # still mostly anterior


def test_cranial_30() -> None:
    cam = carm(secondary_angle=math.radians(30))
    np.testing.assert_allclose(cam.view_direction_world,
                               [0.0, math.cos(math.radians(30)), 0.5], atol=1e-12)
    # the source moves caudal (feet), the detector towards the head
    assert cam.source_world[2] == pytest.approx(-850.0 * 0.5, abs=1e-9)
    caudal = carm(secondary_angle=-math.radians(30))
    assert caudal.view_direction_world[2] == pytest.approx(-0.5, abs=1e-12)


angles = st.floats(-math.pi, math.pi)
tilts = st.floats(-1.4, 1.4)
coords = st.floats(-200.0, 200.0)


@settings(max_examples=40, deadline=None)
@given(p=angles, s=tilts, iso=st.tuples(coords, coords, coords),
       sid=st.floats(300.0, 1000.0), extra=st.floats(10.0, 800.0),
       spacing=st.tuples(st.floats(0.1, 2.0), st.floats(0.1, 2.0)))
def test_isocentre_on_the_central_ray(p: float, s: float, iso: tuple[float, float, float],
                                      sid: float, extra: float,
                                      spacing: tuple[float, float]) -> None:
    cam = camera_from_carm(source_to_detector_mm=sid + extra, source_to_isocenter_mm=sid,
                           pixel_spacing_mm=spacing, width=200, height=150, primary_angle=p,
                           secondary_angle=s, isocenter_world=iso)
    np.testing.assert_allclose(cam.project([iso]), [cam.principal_point], atol=1e-7)
    assert np.linalg.norm(cam.source_world - np.array(iso)) == pytest.approx(sid, rel=1e-12)
    # the documented direction formula
    np.testing.assert_allclose(cam.view_direction_world,
                               [-math.sin(p) * math.cos(s), math.cos(p) * math.cos(s),
                                math.sin(s)], atol=1e-12)
    # the source lies behind the isocentre along the view direction
    np.testing.assert_allclose(cam.source_world + sid * cam.view_direction_world, iso,
                               atol=1e-9)
    assert cam.source_to_detector_mm == pytest.approx(sid + extra, rel=1e-12)
    # magnification at the isocentre: 1 mm along the image's column axis is SDD / SID / sx px
    col_axis = cam.camera_from_world[0, :3]
    moved = cam.project([np.array(iso) + col_axis])
    assert moved[0, 0] - cam.principal_point[0] == pytest.approx(
        (sid + extra) / sid / spacing[0], rel=1e-9)
    assert moved[0, 1] == pytest.approx(cam.principal_point[1], abs=1e-7)
    # a proper rigid pose whatever the angles
    assert np.linalg.det(cam.camera_from_world[:3, :3]) == pytest.approx(1.0, abs=1e-12)


def test_principal_offset() -> None:
    cam = carm(pixel_spacing_mm=(0.8, 0.5), principal_offset_mm=(8.0, -4.0), width=300,
               height=200)
    # cx = W/2 + 8 / 0.8, cy = H/2 − 4 / 0.5
    assert cam.principal_point == pytest.approx((160.0, 92.0), abs=1e-12)
    assert cam.focal_lengths == pytest.approx((1275.0, 2040.0), rel=1e-12)
    assert cam.pixel_spacing_mm == (0.8, 0.5)
    # the offset moves the detector, not the source or the beam
    ref = carm(pixel_spacing_mm=(0.8, 0.5), width=300, height=200)
    np.testing.assert_array_equal(cam.camera_from_world, ref.camera_from_world)
    pts = np.array([[10.0, 20.0, -30.0], [-5.0, 0.0, 7.0]])
    shift = np.array([10.0, -8.0])
    np.testing.assert_allclose(cam.project(pts), ref.project(pts) + shift, atol=1e-9)


def test_source_to_detector_property() -> None:
    for sdd, spacing in [(1020.0, 0.8), (1234.5, 0.139), (900.0, (0.3, 0.7))]:
        cam = carm(source_to_detector_mm=sdd, pixel_spacing_mm=spacing)
        assert cam.source_to_detector_mm == pytest.approx(sdd, rel=1e-12)


def test_isocentre_shift_moves_the_source_with_it() -> None:
    ref = carm(primary_angle=0.4, secondary_angle=0.2)
    moved = carm(primary_angle=0.4, secondary_angle=0.2, isocenter_world=(10.0, -20.0, 30.0))
    shift = np.array([10.0, -20.0, 30.0])
    np.testing.assert_allclose(moved.source_world, ref.source_world + shift, atol=1e-9)
    np.testing.assert_allclose(moved.camera_from_world[:3, :3], ref.camera_from_world[:3, :3],
                               atol=0)


@pytest.mark.parametrize(("overrides", "key"), [
    ({"source_to_isocenter_mm": 1020.0}, "source_to_isocenter_mm"),
    ({"source_to_isocenter_mm": 1500.0}, "source_to_isocenter_mm"),
    ({"source_to_isocenter_mm": 0.0}, "source_to_isocenter_mm"),
    ({"source_to_isocenter_mm": math.nan}, "source_to_isocenter_mm"),
    ({"source_to_detector_mm": -1020.0}, "source_to_detector_mm"),
    ({"source_to_detector_mm": math.inf}, "source_to_detector_mm"),
    ({"pixel_spacing_mm": -0.8}, "pixel_spacing_mm"),
    ({"pixel_spacing_mm": 0.0}, "pixel_spacing_mm"),
    ({"pixel_spacing_mm": (0.8, -0.8)}, "pixel_spacing_mm"),
    ({"pixel_spacing_mm": (0.8, math.nan)}, "pixel_spacing_mm"),
    ({"pixel_spacing_mm": (0.8, 0.8, 0.8)}, "pixel_spacing_mm"),
    ({"pixel_spacing_mm": "fine"}, "pixel_spacing_mm"),
    ({"primary_angle": math.nan}, "primary_angle"),
    ({"secondary_angle": math.nan}, "secondary_angle"),
    ({"primary_angle": math.inf}, "primary_angle"),
    ({"principal_offset_mm": (1.0, 2.0, 3.0)}, "principal_offset_mm"),
    ({"principal_offset_mm": (1.0, math.nan)}, "principal_offset_mm"),
    ({"isocenter_world": (0.0, 0.0)}, "isocenter_world"),
    ({"isocenter_world": (0.0, math.nan, 0.0)}, "isocenter_world"),
    ({"width": 0}, "width"),
    ({"width": "256"}, "width"),
    ({"height": -3}, "height"),
    ({"height": 2.5}, "height"),
])
def test_bad_inputs(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(InputError) as info:
        carm(**overrides)
    assert key in str(info.value)
