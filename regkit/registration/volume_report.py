"""3D–3D outputs: the moving image resampled onto the fixed grid, and the PNG report.

The report of a registration shows mid-slices before and after, and the convergence curve, drawn by
:mod:`regkit.registration.report`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.errors import ShapeError
from regkit.registration._report_files import volume_report_files
from regkit.registration.results import Registration3D3DResult
from regkit.volume import Volume

__all__ = ["resample_moving", "save_report"]


def resample_moving(fixed: Volume, moving: Volume, fixed_from_moving: Any, *,
                    fill: float | None = None) -> Volume:
    """The moving image resampled onto the fixed grid under ``fixed_from_moving`` (trilinear).

    Args:
        fixed: Gives the target grid (its shape and ``world_from_index``).
        moving: The image to resample.
        fixed_from_moving: ``(4, 4)`` moving world mm to fixed world mm.
        fill: Value outside the moving image (default: its minimum, air for a CT).

    Returns:
        A float32 volume on the fixed grid, in the moving image's units.
    """
    m = np.asarray(fixed_from_moving, dtype=np.float64)
    if m.shape != (4, 4):
        raise ShapeError(f"fixed_from_moving must be 4x4, got {m.shape}")
    placed = Volume(np.asarray(moving.data, dtype=np.float32), m @ moving.world_from_index,
                    units=moving.units)
    value = float(moving.data.min()) if fill is None else float(fill)
    return placed.resample_to_grid(fixed.shape, fixed.world_from_index, fill=value)


# Report planes: (name, world axis of the normal, world direction down the rows, world direction
# along the columns). Radiological display: the patient's right on the viewer's left, superior
# (axial: anterior) at the top, anterior on the left of a sagittal slice.
# One (normal axis, down, across) per plane of VOLUME_PLANES (sagittal, coronal, axial), in order.
_PLANES = (
    (0, (0.0, 0.0, -1.0), (0.0, -1.0, 0.0)),
    (1, (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)),
    (2, (0.0, -1.0, 0.0), (-1.0, 0.0, 0.0)),
)
_REPORT_MAX_PIXELS = 512
_REPORT_MIN_PIXELS = 256


def _plane_grid(fixed: Volume, normal_axis: int, down: Sequence[float], across: Sequence[float]
                ) -> tuple[tuple[int, int, int], NDArray[np.float64]]:
    """A one-voxel-thick grid through the fixed image's centre, square pixels, world-aligned."""
    bounds = fixed.bounds_world
    lo, hi = bounds.min(axis=0), bounds.max(axis=0)
    d, a = np.asarray(down), np.asarray(across)
    row_axis, col_axis = int(np.argmax(np.abs(d))), int(np.argmax(np.abs(a)))
    extent = hi - lo
    longest = float(max(extent[row_axis], extent[col_axis]))
    # The finest spacing, but at least _REPORT_MIN_PIXELS and at most _REPORT_MAX_PIXELS across.
    pixel = min(max(float(fixed.spacing.min()), longest / _REPORT_MAX_PIXELS),
                longest / _REPORT_MIN_PIXELS)
    rows = max(2, int(extent[row_axis] / pixel))
    cols = max(2, int(extent[col_axis] / pixel))
    normal = np.zeros(3)
    normal[normal_axis] = 1.0
    affine = np.eye(4)
    affine[:3, 0] = d * pixel
    affine[:3, 1] = a * pixel
    affine[:3, 2] = normal * pixel
    centre = fixed.center_world
    affine[:3, 3] = centre - d * pixel * (rows - 1) / 2.0 - a * pixel * (cols - 1) / 2.0
    return (rows, cols, 1), affine


def save_report(directory: str | os.PathLike[str], fixed: Volume, moving: Volume,
                result: Registration3D3DResult, *,
                before: Any = None) -> list[Path]:
    """PNGs showing a 3D–3D registration: three mid-slices before and after, and convergence.

    For each orthogonal plane through the fixed image's centre (``sagittal.png``,
    ``coronal.png``, ``axial.png``): a checkerboard of fixed and moving before, the same after,
    then the fixed image with the moving image's edges in magenta (before) and green (after).
    ``convergence.png`` plots the best score per level against evaluations.

    Args:
        directory: Created if missing.
        fixed: The fixed image of the registration.
        moving: The moving image of the registration.
        result: The registration result.
        before: ``(4, 4)`` ``fixed_from_moving`` shown as "before" (default: identity, the
            images as given).

    Returns:
        The files written.
    """
    from regkit.registration.report import (
        GREEN,
        MAGENTA,
        checkerboard,
        edge_overlay,
        save_convergence,
        save_side_by_side,
    )

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    start = np.eye(4) if before is None else np.asarray(before, dtype=np.float64)
    written = []
    planes = volume_report_files(out)[:len(_PLANES)]            # the last is the convergence plot
    for path, (normal_axis, down, across) in zip(planes, _PLANES, strict=True):
        shape, affine = _plane_grid(fixed, normal_axis, down, across)
        fixed_slice = fixed.resample_to_grid(shape, affine, fill=float(fixed.data.min()))
        grid = Volume(np.zeros(shape, np.float32), affine)
        images = []
        slices = [resample_moving(grid, moving, m).data[..., 0]
                  for m in (start, result.fixed_from_moving)]
        f2d = fixed_slice.data[..., 0]
        images += [checkerboard(f2d, s) for s in slices]
        images += [edge_overlay(f2d, s, color) for s, color in zip(slices, (MAGENTA, GREEN),
                                                                    strict=True)]
        save_side_by_side(path, images)
        written.append(path)
    written += save_convergence(out, result)
    return written
