"""PNG reports for registrations: overlays before and after, and convergence curves.

People would rather look than read: a registration run with ``--report DIR`` leaves images that
show at a glance whether it worked.

* :func:`edge_overlay`: the fixed image in grey with the moving image's edges drawn over it in
  colour (magenta before, green after, by convention of the callers).
* :func:`checkerboard`: tiles taken alternately from the fixed and the moving image; a good
  alignment makes edges run straight across tile borders.
* :func:`convergence_plot`: the best score so far against evaluations, level boundaries marked;
  :func:`save_convergence` writes it for a registration result.

Everything is drawn with Pillow; no plotting library is needed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from regkit.errors import InputError, ShapeError
from regkit.io.png import to_uint8, write_png
from regkit.registration._report_files import CONVERGENCE_FILE
from regkit.registration.results import (
    ConvergencePoint,
    Registration2D3DResult,
    Registration3D3DResult,
)

__all__ = ["checkerboard", "convergence_plot", "edge_overlay", "edges", "save_convergence",
           "save_side_by_side"]

MAGENTA = (255, 0, 255)
GREEN = (0, 230, 0)


def _check_pair(fixed: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(fixed, dtype=np.float64)
    m = np.asarray(moving, dtype=np.float64)
    if f.ndim != 2 or f.shape != m.shape:
        raise ShapeError(f"report images must be 2-D and equal in shape, got {f.shape} and "
                         f"{m.shape}")
    return f, m


def edges(image: np.ndarray, quantile: float = 0.9) -> np.ndarray:
    """Boolean edge map: Sobel magnitude above its ``quantile`` over the finite pixels."""
    a = np.nan_to_num(np.asarray(image, dtype=np.float64))
    gx = np.zeros_like(a)
    gy = np.zeros_like(a)
    # Sobel on the interior; borders stay 0.
    gx[1:-1, 1:-1] = (a[:-2, 2:] + 2 * a[1:-1, 2:] + a[2:, 2:]
                      - a[:-2, :-2] - 2 * a[1:-1, :-2] - a[2:, :-2])
    gy[1:-1, 1:-1] = (a[2:, :-2] + 2 * a[2:, 1:-1] + a[2:, 2:]
                      - a[:-2, :-2] - 2 * a[:-2, 1:-1] - a[:-2, 2:])
    mag = np.hypot(gx, gy)
    if not mag.any():
        return np.zeros(a.shape, dtype=bool)
    return mag > np.quantile(mag, quantile)


def edge_overlay(fixed: np.ndarray, moving: np.ndarray,
                 color: tuple[int, int, int] = GREEN) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``fixed`` in grey, ``moving``'s edges in ``color``."""
    f, m = _check_pair(fixed, moving)
    grey = to_uint8(f)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[edges(m)] = color
    return rgb


def checkerboard(fixed: np.ndarray, moving: np.ndarray, tiles: int = 8) -> np.ndarray:
    """``(H, W)`` uint8 checkerboard of the two images, each windowed on its own."""
    f, m = _check_pair(fixed, moving)
    if tiles < 1:
        raise InputError(f"tiles must be positive, got {tiles}")
    h, w = f.shape
    rows = (np.arange(h) * tiles // h)[:, None]
    cols = (np.arange(w) * tiles // w)[None, :]
    return np.where((rows + cols) % 2 == 0, to_uint8(f), to_uint8(m))


def save_side_by_side(path: str | os.PathLike[str], images: Sequence[np.ndarray],
                      pad: int = 4) -> None:
    """Write RGB or grey uint8 images of equal height side by side, with a black gap."""
    rgb = [im if im.ndim == 3 else np.repeat(im[..., None], 3, axis=2) for im in images]
    if not rgb or len({im.shape[0] for im in rgb}) != 1:
        raise ShapeError("side-by-side images must share one height")
    gap = np.zeros((rgb[0].shape[0], pad, 3), dtype=np.uint8)
    parts: list[np.ndarray] = []
    for im in rgb:
        parts += [im, gap]
    write_png(path, np.concatenate(parts[:-1], axis=1))


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def convergence_plot(path: str | os.PathLike[str], history: Sequence[ConvergencePoint], *,
                     title: str = "convergence", higher_is_better: bool = True,
                     size: tuple[int, int] = (640, 400)) -> None:
    """Plot the best score so far (line) and each iteration's best (dots) against evaluations.

    Pyramid levels are shaded alternately and labelled. Written atomically.
    """
    from PIL import Image, ImageDraw

    if not history:
        raise InputError("no convergence history to plot")
    width, height = size
    left, right, top, bottom = 70, 20, 30, 45
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    ev = np.array([p.evaluations for p in history], dtype=np.float64)
    best = np.array([p.best for p in history], dtype=np.float64)
    cur = np.array([p.current for p in history], dtype=np.float64)
    levels = np.array([p.level for p in history])
    finite = np.isfinite(np.concatenate([best, cur]))
    values = np.concatenate([best, cur])[finite]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    x_max = max(float(ev.max()), 1.0)

    def px(e: float, v: float) -> tuple[float, float]:
        x = left + (width - left - right) * e / x_max
        y = top + (height - top - bottom) * (hi - v) / (hi - lo)
        return x, y

    # level bands
    for level in np.unique(levels):
        sel = ev[levels == level]
        x0 = px(float(sel.min()) if level != levels.min() else 0.0, lo)[0]
        x1 = px(float(sel.max()), lo)[0]
        if level % 2:
            draw.rectangle([x0, top, x1, height - bottom], fill=(240, 240, 250))
        draw.text((x0 + 3, top + 2), f"level {int(level)}", fill=(90, 90, 120))
    # axes, ticks
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for t in _nice_ticks(lo, hi):
        _, y = px(0.0, t)
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((4, y - 6), f"{t:.4g}", fill=(0, 0, 0))
    for t in _nice_ticks(0.0, x_max):
        x, _ = px(t, lo)
        draw.line([x, height - bottom, x, height - bottom + 4], fill=(0, 0, 0))
        draw.text((x - 10, height - bottom + 6), f"{int(t)}", fill=(0, 0, 0))
    draw.text((width // 2 - 40, height - 18), "evaluations", fill=(0, 0, 0))
    sense = "higher is better" if higher_is_better else "lower is better"
    draw.text((left, 8), f"{title} ({sense})", fill=(0, 0, 0))
    # data
    for e, v in zip(ev, cur, strict=True):
        if math.isfinite(v):
            x, y = px(float(e), float(v))
            draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(150, 150, 150))
    pts = [px(float(e), float(v)) for e, v in zip(ev, best, strict=True) if math.isfinite(v)]
    if len(pts) > 1:
        draw.line(pts, fill=(200, 30, 30), width=2)
    write_png(path, np.asarray(img))




def save_convergence(directory: str | os.PathLike[str],
                     result: Registration2D3DResult | Registration3D3DResult) -> list[Path]:
    """``convergence.png`` in ``directory``: :func:`convergence_plot` of ``result``'s history.

    Titled by its metric; nothing when it has no history.

    Returns:
        The file written (an empty list when none was).
    """
    from regkit.metrics import get_metric

    if not result.history:
        return []
    path = Path(directory) / CONVERGENCE_FILE
    convergence_plot(path, result.history, title=f"{result.metric} by level",
                     higher_is_better=get_metric(result.metric).higher_is_better)
    return [path]
