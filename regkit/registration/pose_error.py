"""Pose error figures (docs/CONVENTIONS.md, "Pose error figures"): mTRE and mPD, one home.

* **mTRE**: the mean over target points ``x`` of ``‖est · x − true · x‖`` in mm, for camera poses
  (2D–3D, ``camera_from_world``) and for ``fixed_from_moving`` (3D–3D) alike.
* **mPD**: the mean distance, in mm on the detector, between the projections of the same target
  points under the estimated and the true camera.

Both take one pose or a stack of views (the mean over views).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from regkit.errors import InputError, ShapeError
from regkit.geometry.camera import Camera

__all__ = ["mean_projection_distance", "mean_target_error", "target_error_split"]


def _points(points: Any) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] == 0:
        raise ShapeError(f"points must have shape (N, 3) with N >= 1, got {pts.shape}")
    if not np.isfinite(pts).all():
        raise InputError("the target points hold NaN or infinite values", key="points")
    return pts


def _poses(est: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(est, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if e.shape != t.shape or e.shape[-2:] != (4, 4) or e.ndim not in (2, 3):
        raise ShapeError(f"poses must be (4, 4) or (V, 4, 4) and equal in shape, got "
                         f"{e.shape} and {t.shape}")
    return e.reshape(-1, 4, 4), t.reshape(-1, 4, 4)


def mean_target_error(est: Any, true: Any, points: Any) -> float:
    """The mTRE in mm: the mean of ``‖est · x − true · x‖`` over ``points``.

    Args:
        est: ``(4, 4)`` estimated transform (``camera_from_world`` or ``fixed_from_moving``),
            or ``(V, 4, 4)`` views: the mean over views.
        true: The true transform(s), same shape.
        points: ``(N, 3)`` target points in the transforms' source frame (world, or the
            moving world), mm, N >= 1.
    """
    e, t = _poses(est, true)
    pts = _points(points)
    diff = e - t
    return float(np.mean([np.linalg.norm(pts @ d[:3, :3].T + d[:3, 3], axis=1).mean()
                          for d in diff]))


def target_error_split(est: Any, true: Any, points: Any) -> tuple[float, float]:
    """The mTRE of camera poses split into its mean along and across the viewing direction.

    Returns:
        ``(depth_mm, in_plane_mm)``: the means over points (and views) of ``|Δz|`` and of
        ``‖(Δx, Δy)‖`` in camera coordinates (z along the view). One radiograph fixes the
        in-plane part far better than the depth: this says where an error lies.
    """
    e, t = _poses(est, true)
    pts = _points(points)
    depth, plane = [], []
    for a, b in zip(e, t, strict=True):
        d = pts @ (a - b)[:3, :3].T + (a - b)[:3, 3]
        depth.append(np.abs(d[:, 2]).mean())
        plane.append(np.linalg.norm(d[:, :2], axis=1).mean())
    return float(np.mean(depth)), float(np.mean(plane))


def mean_projection_distance(est: Camera | Sequence[Camera], true: Camera | Sequence[Camera],
                             points: Any) -> float:
    """The mPD in mm on the detector: the mean distance between the projections of ``points``.

    Args:
        est: The estimated camera(s).
        true: The true camera(s), same count and detectors.
        points: ``(N, 3)`` target points, world mm.

    Raises:
        InputError: a camera without ``pixel_spacing_mm`` (pixels have no size in mm), or a
            point behind a camera.
    """
    es = [est] if isinstance(est, Camera) else list(est)
    ts = [true] if isinstance(true, Camera) else list(true)
    if len(es) != len(ts) or not es:
        raise ShapeError(f"needs as many estimated as true cameras (>= 1), got {len(es)} and "
                         f"{len(ts)}")
    pts = _points(points)
    out = []
    for a, b in zip(es, ts, strict=True):
        if b.pixel_spacing_mm is None:
            raise InputError("the true camera has no pixel_spacing_mm: the projection distance "
                             "in mm needs it", key="camera")
        ua, ub = a.project(pts), b.project(pts)
        if not (np.isfinite(ua).all() and np.isfinite(ub).all()):
            raise InputError("a target point lies behind a camera", key="points")
        out.append(np.linalg.norm((ua - ub) * np.asarray(b.pixel_spacing_mm), axis=1).mean())
    return float(np.mean(out))
