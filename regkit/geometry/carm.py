"""Cameras from C-arm parameters.

Convention:
    The patient lies in the world frame (RAS+, mm). At zero angles the C-arm takes an
    **anteroposterior** view: the source is posterior, the detector anterior, and the beam runs
    along +y (R→A axis). The image is the one the detector records, seen from the source: columns
    run towards the patient's right (+x), rows towards the feet (−z). That is the camera
    ``[[1,0,0,·],[0,0,−1,·],[0,1,0,·]]`` of the conventions' example.

    * **Primary angle** (radians; LAO positive, RAO negative) turns the C-arm about the patient's
      long axis: LAO moves the detector towards the patient's left (−x). It is a rotation by the
      angle about world +z (superior) through the isocentre.
    * **Secondary angle** (radians; cranial positive, caudal negative) tilts the detector towards
      the head (+z). It is a rotation by the angle about world +x (right), applied before the
      primary.

    So ``world_from_camera_rotation = R_z(primary) · R_x(secondary) · R_AP``, and the direction
    from source to detector is ``(−sin p · cos s, cos p · cos s, sin s)``. These are the senses of
    DICOM's Positioner Primary and Secondary Angle, which are in degrees.

    Worked example: primary = +90° (LAO 90) puts the source at the patient's right and the detector
    at their left: the beam runs along −x.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.utils.checks import is_real

__all__ = ["camera_from_carm"]

# Rows of camera_from_world's rotation in the AP view: camera x, y, z in world.
_R_CAMERA_FROM_WORLD_AP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _floats(name: str, value: Any) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"must be numbers, got {value!r}", key=name) from None


def _positive(name: str, value: Any) -> float:
    arr = _floats(name, value)
    if arr.shape != ():
        raise InputError(f"must be one number, got {value!r}", key=name)
    v = float(arr)
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"must be positive and finite, got {value!r}", key=name)
    return v


def camera_from_carm(
    *,
    source_to_detector_mm: float,
    source_to_isocenter_mm: float,
    pixel_spacing_mm: float | Sequence[float],
    width: int,
    height: int,
    principal_offset_mm: Sequence[float] = (0.0, 0.0),
    primary_angle: float = 0.0,
    secondary_angle: float = 0.0,
    isocenter_world: Sequence[float] | NDArray[np.float64] = (0.0, 0.0, 0.0),
) -> Camera:
    """Build a camera from C-arm parameters (angles in radians; see the module's convention).

    Args:
        source_to_detector_mm: Source-to-image distance (SID), mm.
        source_to_isocenter_mm: Source-to-isocentre distance, mm; less than the SID.
        pixel_spacing_mm: Detector pixel size, one number or ``(x, y)`` (column, row), mm/px.
        width: Detector width in pixels.
        height: Detector height in pixels.
        principal_offset_mm: Where the central ray meets the detector, relative to the detector
            centre, ``(x, y)`` in mm along columns and rows.
        primary_angle: LAO (+) / RAO (−), radians.
        secondary_angle: cranial (+) / caudal (−), radians.
        isocenter_world: The point the C-arm turns about, world mm.

    Returns:
        The camera, with ``pixel_spacing_mm`` set.
    """
    sdd = _positive("source_to_detector_mm", source_to_detector_mm)
    sid = _positive("source_to_isocenter_mm", source_to_isocenter_mm)
    if sid >= sdd:
        raise InputError(f"the isocentre ({sid:g} mm) must lie between the source and the "
                         f"detector ({sdd:g} mm)", key="source_to_isocenter_mm")
    spacing = _floats("pixel_spacing_mm", pixel_spacing_mm)
    if spacing.shape not in ((), (1,), (2,)):
        raise InputError(f"must be one number or two (x, y), got {pixel_spacing_mm!r}",
                         key="pixel_spacing_mm")
    spacing = np.broadcast_to(spacing, (2,))
    sx = _positive("pixel_spacing_mm", spacing[0])
    sy = _positive("pixel_spacing_mm", spacing[1])
    off = _floats("principal_offset_mm", principal_offset_mm)
    iso = _floats("isocenter_world", isocenter_world)
    for name, n in (("width", width), ("height", height)):
        if not is_real(n) or not float(n).is_integer() \
                or n <= 0:
            raise InputError(f"must be a positive whole number of pixels, got {n!r}", key=name)
    if off.shape != (2,) or not np.isfinite(off).all():
        raise InputError("must be two finite numbers (x, y) in mm", key="principal_offset_mm")
    if iso.shape != (3,) or not np.isfinite(iso).all():
        raise InputError("must be three finite numbers in mm", key="isocenter_world")
    angles = []
    for name, a in (("primary_angle", primary_angle), ("secondary_angle", secondary_angle)):
        v = _floats(name, a)
        if v.shape != () or not math.isfinite(float(v)):
            raise InputError(f"must be one finite number (radians), got {a!r}", key=name)
        angles.append(float(v))

    k = np.array([
        [sdd / sx, 0.0, width / 2.0 + off[0] / sx],
        [0.0, sdd / sy, height / 2.0 + off[1] / sy],
        [0.0, 0.0, 1.0],
    ])
    world_from_camera_rot = _rz(angles[0]) @ _rx(angles[1]) @ _R_CAMERA_FROM_WORLD_AP.T
    view_dir = world_from_camera_rot[:, 2]
    source = iso - sid * view_dir
    camera_from_world = np.eye(4)
    camera_from_world[:3, :3] = world_from_camera_rot.T
    camera_from_world[:3, 3] = -world_from_camera_rot.T @ source
    return Camera(k, camera_from_world, width, height, (sx, sy))
