"""Answers computed apart from regkit's renderers, to check them against."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["trilinear_crossings"]


def trilinear_crossings(mask: np.ndarray, index_from_world: np.ndarray, origin: np.ndarray,
                        direction: np.ndarray, t_min: float, t_max: float, step: float = 0.01
                        ) -> tuple[list[float], list[float]]:
    """Entries and exits of the 0.5 level set of a mask's trilinear field along one ray.

    A plain march in steps of ``step`` mm from ``t_min`` to ``t_max`` (mm from ``origin`` along
    the unit ``direction``), each sign change refined by 40 bisections. Beyond the grid the field
    is zero, interpolated, so a bone cut by the grid's face closes half a voxel out, as the
    conventions' trilinear field does. Written apart from regkit's renderers on purpose.

    Returns:
        The entry distances and the exit distances (mm), in order along the ray.
    """
    def field(t: np.ndarray) -> np.ndarray:
        points = origin[None] + t[:, None] * direction[None]
        index = points @ index_from_world[:3, :3].T + index_from_world[:3, 3]
        values = ndimage.map_coordinates(mask, index.T, order=1, mode="grid-constant", cval=0.0)
        return values - 0.5

    ts = np.arange(t_min, t_max, step)
    f = field(ts)
    entries: list[float] = []
    exits: list[float] = []
    for i in np.flatnonzero(np.sign(f[:-1]) != np.sign(f[1:])):
        lo, hi = ts[i], ts[i + 1]
        rising = f[i] < f[i + 1]
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if (field(np.array([mid]))[0] > 0) == rising:
                hi = mid
            else:
                lo = mid
        (entries if rising else exits).append(float(0.5 * (lo + hi)))
    return entries, exits
