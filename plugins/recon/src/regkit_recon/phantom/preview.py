"""A quick look at a phantom: PA and lateral sum projections and two slices, tiled into a PNG."""

from __future__ import annotations

import os

import numpy as np

from regkit import Volume
from regkit.io.png import montage, to_uint8, write_png

__all__ = ["phantom_preview", "write_preview"]


def _pad(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.uint8)
    out[:image.shape[0], :image.shape[1]] = image
    return out


def phantom_preview(volume: Volume) -> np.ndarray:
    """Four uint8 panels side by side, fingers at the top, for a hand volume of this plugin.

    Panels, left to right: the PA sum projection of attenuation (looking along world +y, the
    thumb, +x, to the right), the lateral sum projection (looking along −x, dorsum to the left),
    the coronal slice through the middle of the hand's depth (HU, bone window), and the label map
    on that slice.

    Args:
        volume: A phantom CT in HU whose index axes follow world x, y, z (labels optional).

    Returns:
        (H, W) uint8 image.
    """
    mu = volume.to_mu().data
    # Rows: world z ascending from the top (the fingers point to −z, so they come first).
    pa = to_uint8(mu.sum(axis=1).T)
    lateral = to_uint8(mu.sum(axis=0).T)
    bone = np.asarray(volume.labels if volume.labels is not None else (volume.data > 150)) > 0
    depth = bone.sum(axis=(0, 2))
    # The slice through the most bone voxels: it cuts the carpus and the metacarpals.
    j = int(np.argmax(depth)) if depth.any() else volume.shape[1] // 2
    slice_hu = to_uint8(np.asarray(volume.data[:, j, :], dtype=np.float64).T, (-200.0, 1600.0))
    panels = [pa, lateral, slice_hu]
    if volume.labels is not None:
        lab = np.asarray(volume.labels[:, j, :]).T.astype(np.int64)
        panels.append(np.where(lab > 0, 60 + (lab * 37) % 196, 0).astype(np.uint8))
    height = max(p.shape[0] for p in panels)
    width = max(p.shape[1] for p in panels)
    return montage([_pad(p, (height, width)) for p in panels], columns=len(panels), pad=4)


def write_preview(volume: Volume, path: str | os.PathLike[str]) -> None:
    """Write :func:`phantom_preview` of ``volume`` as a PNG (atomically)."""
    write_png(path, phantom_preview(volume))
