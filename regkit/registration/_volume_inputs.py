"""Input checks of the 3D–3D registration: the volumes and their masks.

Each is refused with a message that names the argument.

Used by :func:`~regkit.registration.volume_registration.register_3d3d` and
:func:`~regkit.registration.volume_init.initial_transform`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.errors import InputError, ShapeError
from regkit.volume import Volume

__all__ = ["as_volume", "check_mask", "check_variance", "refuse_constant"]


def check_mask(mask: Any, volume: Volume, key: str) -> NDArray[np.bool_] | None:
    """A user mask as a boolean array on ``volume``'s grid, or a clear error."""
    if mask is None:
        return None
    if isinstance(mask, Volume):
        raise InputError("give the mask as an array on the image's grid (e.g. volume.labels "
                         "> 0), not as a Volume", key=key)
    array = np.asarray(mask)
    if array.shape != volume.shape:
        raise ShapeError(f"{key} has shape {array.shape} but its image has shape "
                         f"{volume.shape}; a mask must lie on its image's grid")
    if array.dtype != np.bool_:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise InputError(f"must be boolean or numeric, got dtype {array.dtype}", key=key)
        if not np.isfinite(array).all():
            raise InputError("holds NaN or infinite values", key=key)
        array = array > 0.5 if np.issubdtype(array.dtype, np.floating) else array != 0
    if not array.any():
        raise InputError("selects no voxel", key=key)
    return array


MIN_VOXELS_PER_AXIS = 4
"""The fewest voxels a registered volume may have along each axis (a slice is not a volume)."""


def check_variance(volume: Volume, mask: NDArray[np.bool_] | None, key: str) -> None:
    """Refuse a volume that is constant (inside its mask, where it has one) or too small.

    Too small: fewer than :data:`MIN_VOXELS_PER_AXIS` voxels along an axis.
    """
    if min(volume.shape[:3]) < MIN_VOXELS_PER_AXIS:
        raise InputError(f"has shape {tuple(volume.shape[:3])}: a volume to register needs at "
                         f"least {MIN_VOXELS_PER_AXIS} voxels along each axis", key=key)
    refuse_constant(volume.data if mask is None else volume.data[mask], mask is not None, key)


def refuse_constant(values: Any, masked: bool, key: str) -> None:
    """Refuse values (an image's, or those inside its mask) that are all the same.

    Args:
        values: The image's values, or those of its masked part.
        masked: Whether ``values`` are those inside a mask (said in the message).
        key: The input that holds them, for the error.
    """
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi - lo <= 1e-6 * max(1.0, abs(lo), abs(hi)):
        where = " inside its mask" if masked else ""
        raise InputError(f"the image is constant ({lo:g}){where}: a zero-variance image cannot "
                         "be registered", key=key)


def as_volume(value: Any, key: str) -> Volume:
    """``value`` if it is a Volume, else a clear error naming ``key``."""
    if not isinstance(value, Volume):
        raise InputError(f"must be a regkit Volume, got {type(value).__name__}", key=key)
    return value
