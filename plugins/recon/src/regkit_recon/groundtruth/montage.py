"""``montage.png``: one row per sample.

Each row: degraded radiograph, clean DRR, bone masks (one colour per bone), nearest front depth,
farthest back depth and total bone thickness along each ray.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from regkit.io.png import montage, to_uint8, write_png

__all__ = ["write_montage"]


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _mask_colours(hit: np.ndarray) -> np.ndarray:
    """``[NB, H, W]`` masks as one RGB image: a fixed colour per bone, black where none."""
    nb = hit.shape[0]
    hue = (np.arange(nb) * 0.618034) % 1.0
    palette = np.stack([np.abs(hue * 6 - 3) - 1, 2 - np.abs(hue * 6 - 2),
                        2 - np.abs(hue * 6 - 4)], axis=1).clip(0, 1) * 230 + 25
    which = np.argmax(hit, axis=0)
    out = palette[which].astype(np.uint8)
    out[~hit.any(axis=0)] = 0
    return out


def sample_tiles(sample: dict[str, Any]) -> list[np.ndarray]:
    """The six RGB tiles of one sample."""
    front, back = sample["front"], sample["back"]
    finite_front = np.where(np.isfinite(front), front, np.inf).min(axis=(0, 1))
    finite_back = np.where(np.isfinite(back), back, -np.inf).max(axis=(0, 1))
    near = np.where(np.isfinite(finite_front), finite_front, np.nan)
    far = np.where(np.isfinite(finite_back), finite_back, np.nan)
    thickness = np.nan_to_num(back - front, nan=0.0).sum(axis=(0, 1))
    image = sample["image"]
    window = None
    try:  # window the radiograph on its collimated field (the cut-off border is much brighter)
        left, right, top, bottom = json.loads(sample["meta"])["degrade"]["collimation_px"]
        field = image[top:image.shape[0] - bottom, left:image.shape[1] - right]
        if field.size:
            lo, hi = np.percentile(field, (0.5, 99.5))
            window = (float(lo), float(hi))
    except (KeyError, TypeError, ValueError):
        window = None
    return [_rgb(to_uint8(image, window)), _rgb(to_uint8(sample["image_clean"])),
            _mask_colours(sample["hit"]), _rgb(to_uint8(-near)), _rgb(to_uint8(far)),
            _rgb(to_uint8(thickness))]


def write_montage(path: str | os.PathLike[str], files: Sequence[str | os.PathLike[str]]) -> None:
    """Write the montage of the sample files ``files`` (all of one detector size)."""
    from regkit_recon.groundtruth.sample import read_sample

    tiles: list[np.ndarray] = []
    shapes = set()
    for f in files:
        sample = read_sample(f)
        shapes.add(sample["image"].shape)
        if len(shapes) > 1:
            break
        tiles.extend(sample_tiles(sample))
    if tiles:
        write_png(path, montage(tiles, columns=6))
