"""Geometry: rigid transforms, rotation parameterisations, patient frames and X-ray cameras.

Importing ``regkit.geometry`` is light (the frames of :mod:`regkit.geometry.frames` need numpy
only); the camera names load their modules, and torch, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regkit.lazy import lazy_exports

if TYPE_CHECKING:
    from regkit.geometry.camera import (
        Camera,
        load_cameras,
        pixel_rays,
        project_points,
        save_cameras,
    )
    from regkit.geometry.carm import camera_from_carm

__all__ = [
    "Camera",
    "camera_from_carm",
    "load_cameras",
    "pixel_rays",
    "project_points",
    "save_cameras",
]

_LAZY = {
    "Camera": "regkit.geometry.camera",
    "load_cameras": "regkit.geometry.camera",
    "pixel_rays": "regkit.geometry.camera",
    "project_points": "regkit.geometry.camera",
    "save_cameras": "regkit.geometry.camera",
    "camera_from_carm": "regkit.geometry.carm",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
