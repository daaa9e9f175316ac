"""Geometry: rigid transforms, rotation parameterisations and X-ray cameras."""

from regkit.geometry.camera import Camera, load_cameras, pixel_rays, project_points, save_cameras
from regkit.geometry.carm import camera_from_carm

__all__ = [
    "Camera",
    "camera_from_carm",
    "load_cameras",
    "pixel_rays",
    "project_points",
    "save_cameras",
]
