"""The sampling plan both renderer backends share (part of the sampling model).

Each view is marched across the planes perpendicular to one index axis, with a whole number of
cells over the volume's extent along it. :func:`choose_axes` picks that axis and count from the
view's rays; the PyTorch and OpenGL backends both call it, so they always sample the same points.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["CELL_PARTS", "MAX_CELLS_PER_VOXEL", "TINY_DIRECTION", "choose_axes"]

TINY_DIRECTION = 1e-12  # voxels per mm: below this a ray counts as parallel to a slab
MAX_CELLS_PER_VOXEL = 4096
CELL_PARTS = 32  # cells per voxel are rounded up to a multiple of 1/CELL_PARTS


def choose_axes(d: Any, shape: tuple[int, int, int],
                step_mm: float) -> list[tuple[int, int]]:
    """The marching axis and number of cells for each view.

    For each axis the cells per voxel is the least multiple of 1/32 that keeps every ray's step
    at or under ``step_mm`` (the rounding lets similar views share a plan, hence a batch); the
    axis chosen is the one that needs the fewest cells.

    Args:
        d: ``(B, P, 3)`` directions (numpy or torch) in index space (voxels per mm) of rays
            that bound the view's.
        shape: Volume shape ``(I, J, K)``.
        step_mm: Largest allowed step along a ray, mm.

    Returns:
        ``[(axis, n_cells)]`` per view.
    """
    if isinstance(d, torch.Tensor):
        d = d.detach().to(torch.float64).cpu().numpy()
    dmin = np.abs(np.asarray(d, dtype=np.float64)).min(axis=1)  # (B, 3)
    out = []
    for row in dmin:
        best: tuple[int, int] | None = None
        for a in range(3):
            if row[a] <= TINY_DIRECTION:
                continue
            # A cell spans 1/m voxels along a, i.e. 1 / (m · |d_a|) mm along the ray.
            parts = math.ceil(CELL_PARTS / (step_mm * row[a]) * (1.0 - 1e-9))
            if parts > CELL_PARTS * MAX_CELLS_PER_VOXEL:
                continue
            cells = max(1, math.ceil(parts * shape[a] / CELL_PARTS))
            if best is None or cells < best[1]:
                best = (a, cells)
        if best is None:  # cannot happen for unit directions: some component is ≥ 1/√3
            a = int(np.argmax(row))
            best = (a, MAX_CELLS_PER_VOXEL * shape[a])
        out.append(best)
    return out


def border_pixels(width: int, height: int) -> np.ndarray:
    """``(1, N, 2)`` float64 centres ``(u, v)`` of a detector's outermost pixels.

    Their rays bound a view's, so both backends choose a view's plan (:func:`choose_axes`) from
    them: a pixel's value then never depends on a roi or on the other views of a batch.
    """
    u = np.arange(width) + 0.5
    v = np.arange(height) + 0.5
    edges = [np.stack([u, np.full_like(u, 0.5)], axis=-1),
             np.stack([u, np.full_like(u, height - 0.5)], axis=-1),
             np.stack([np.full_like(v, 0.5), v], axis=-1),
             np.stack([np.full_like(v, width - 0.5), v], axis=-1)]
    return np.concatenate(edges)[None]
