"""Small PNG charts drawn with Pillow (no plotting library is a dependency)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

__all__ = ["line_chart"]

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75)]


def line_chart(path: str | os.PathLike[str],
               panels: Sequence[tuple[str, Sequence[float], dict[str, Sequence[float]], bool]],
               *, width: int = 520, height: int = 300) -> None:
    """Write panels of line charts side by side into one PNG (atomically).

    Args:
        path: The PNG file.
        panels: ``(title, x, {name: y}, log_y)`` per panel; non-finite values are skipped.
        width: Width of one panel in pixels.
        height: Height of one panel in pixels.
    """
    from PIL import Image, ImageDraw

    from regkit.io.png import write_png

    canvas = Image.new("RGB", (width * len(panels), height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for p, (title, xs, series, log_y) in enumerate(panels):
        x0, y0, x1, y1 = p * width + 56, 24, (p + 1) * width - 12, height - 30
        draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
        draw.text((x0, 6), title, fill=(0, 0, 0))
        x = np.asarray(xs, dtype=np.float64)
        ys = {k: np.asarray(v, dtype=np.float64) for k, v in series.items()}
        vals = np.concatenate([v[np.isfinite(v) & ((v > 0) if log_y else True)]
                               for v in ys.values()] or [np.zeros(0)])
        if x.size == 0 or vals.size == 0:
            continue
        f = (lambda v: np.log10(v)) if log_y else (lambda v: v)
        lo, hi = float(f(vals).min()), float(f(vals).max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        xmin, xmax = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1
        for tick in np.linspace(lo, hi, 5):
            ty = y1 - (tick - lo) / (hi - lo) * (y1 - y0)
            label = f"{10 ** tick:.3g}" if log_y else f"{tick:.3g}"
            draw.line([x0, ty, x0 + 4, ty], fill=(0, 0, 0))
            draw.text((p * width + 2, ty - 6), label, fill=(0, 0, 0))
        draw.text((x0, y1 + 6), f"{xmin:g}", fill=(0, 0, 0))
        draw.text((x1 - 40, y1 + 6), f"{xmax:g} steps", fill=(0, 0, 0))
        for c, (name, y) in enumerate(ys.items()):
            colour = _COLOURS[c % len(_COLOURS)]
            pts = [(x0 + (xv - xmin) / (xmax - xmin) * (x1 - x0),
                    y1 - (float(f(yv)) - lo) / (hi - lo) * (y1 - y0))
                   for xv, yv in zip(x, y, strict=False)
                   if math.isfinite(yv) and (yv > 0 or not log_y)]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            elif pts:
                draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2],
                             fill=colour)
            draw.text((x1 - 110, y0 + 6 + 12 * c), name, fill=colour)
    write_png(path, np.asarray(canvas))
