"""Cameras for tests: the conventions' example, an oblique view, the benchmarks' C-arm."""

from __future__ import annotations

from typing import Any

import numpy as np

from regkit.geometry.camera import Camera
from regkit.geometry.carm import camera_from_carm

__all__ = ["EXAMPLE_CAMERA_FROM_WORLD", "EXAMPLE_INTRINSIC", "bench_carm", "example_camera",
           "oblique_camera"]

EXAMPLE_INTRINSIC = np.array([[1275.0, 0.0, 128.0], [0.0, 1275.0, 128.0], [0.0, 0.0, 1.0]])
"""``K`` of the conventions' example: 1275 px focal length, principal point at the centre."""
EXAMPLE_INTRINSIC.flags.writeable = False
EXAMPLE_CAMERA_FROM_WORLD = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 850],
                                      [0, 0, 0, 1]])
"""``camera_from_world`` of the conventions' example: AP, source 850 mm posterior of the origin."""
EXAMPLE_CAMERA_FROM_WORLD.flags.writeable = False


def example_camera(spacing: tuple[float, float] | None = (0.8, 0.8)) -> Camera:
    """The conventions' example: AP view, source 850 mm posterior of the origin, 256 × 256."""
    return Camera(EXAMPLE_INTRINSIC, EXAMPLE_CAMERA_FROM_WORLD, 256, 256, spacing)


def oblique_camera(primary: float = 0.4, secondary: float = -0.25, width: int = 64,
                   height: int = 48) -> Camera:
    """A C-arm view with no zero or one in its matrices and a non-square detector (radians)."""
    return camera_from_carm(source_to_detector_mm=1000.0, source_to_isocenter_mm=700.0,
                            pixel_spacing_mm=(3.1, 2.7), width=width, height=height,
                            principal_offset_mm=(4.3, -7.9), primary_angle=primary,
                            secondary_angle=secondary, isocenter_world=(12.5, -30.25, 101.0))


def bench_carm(size: int, isocenter_world: Any, primary_angle: float = 0.0) -> Camera:
    """The 2D–3D benchmarks' C-arm at a ``size``² detector, turned by ``primary_angle`` (rad).

    Source 1020 mm from the detector and 850 mm from the isocentre; the detector is 256 pixels of
    0.8 mm a side, sampled here at ``size`` pixels.
    """
    return camera_from_carm(source_to_detector_mm=1020, source_to_isocenter_mm=850,
                            pixel_spacing_mm=0.8 * 256 / size, width=size, height=size,
                            primary_angle=primary_angle, isocenter_world=isocenter_world)
