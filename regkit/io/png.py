"""PNG previews: arrays windowed to 8-bit grayscale, tiled into montages, written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from regkit.errors import InputError, ShapeError
from regkit.utils.files import atomic_path

__all__ = ["montage", "to_uint8", "write_png"]


def to_uint8(image: np.ndarray, window: tuple[float, float] | None = None, *,
             percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Window a 2-D float image to uint8; NaN and infinities become 0 (black).

    Args:
        image: ``(H, W)`` values.
        window: ``(low, high)`` mapped to 0 and 255; by default the given percentiles of the
            finite values.
        percentiles: The default window, in percent.
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ShapeError(f"a PNG preview needs a 2-D image, got shape {a.shape}")
    finite = np.isfinite(a)
    if window is None:
        if finite.any():
            lo, hi = np.percentile(a[finite], percentiles)
        else:
            lo, hi = 0.0, 1.0
    else:
        lo, hi = float(window[0]), float(window[1])
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.clip((np.where(finite, a, lo) - lo) * scale, 0, 255)
    out[~finite] = 0
    return np.round(out).astype(np.uint8)


def montage(images: Sequence[np.ndarray], columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile equal-sized uint8 images ``(H, W)`` or ``(H, W, 3)`` row by row, with a black gap."""
    if not images:
        raise InputError("no images to tile")
    shape = images[0].shape
    if any(im.shape != shape for im in images):
        raise ShapeError(f"montage images must share one shape, got {[im.shape for im in images]}")
    n = len(images)
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w = shape[:2]
    out = np.zeros((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, *shape[2:]),
                   dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = im
    return out


def write_png(path: str | os.PathLike[str], image: np.ndarray,
              window: tuple[float, float] | None = None) -> None:
    """Write a PNG atomically: uint8 ``(H, W)`` or ``(H, W, 3)`` as is, anything else windowed."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = to_uint8(a, window)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ShapeError(f"PNG output needs (H, W) or (H, W, 3), got {a.shape}")
    with atomic_path(path) as tmp:
        Image.fromarray(a).save(tmp, format="PNG")
