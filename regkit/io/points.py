"""Point and pixel-coordinate files: ``.npy`` and ``.csv``.

A points file holds world points ``(N, 3)`` in mm (RAS+). CSV files have three numeric columns and
an optional header row (a first row with no number in it, such as ``x,y,z``).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from regkit.errors import FileFormatError, InputError
from regkit.utils.files import atomic_path, atomic_write_text

__all__ = ["read_points", "write_pixels"]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(p: Path, columns: int) -> np.ndarray:
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FileFormatError(f"cannot read CSV ({err})", source=p) from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if rows and not any(_is_number(c) for c in rows[0]):
        rows = rows[1:]  # a header: a first row with no number in it
    values = []
    for n, row in enumerate(rows, start=1):
        if len(row) != columns:
            raise InputError(f"row {n} has {len(row)} columns, expected {columns}", source=p)
        try:
            values.append([float(c) for c in row])
        except ValueError:
            raise InputError(f"row {n} holds a value that is not a number: {row}",
                             source=p) from None
    return np.asarray(values, dtype=np.float64).reshape(-1, columns)


def read_points(path: str | os.PathLike[str]) -> np.ndarray:
    """Read world points ``(N, 3)`` (float64, mm) from ``.npy`` or ``.csv``.

    Raises:
        FileFormatError: missing, unreadable or of an unknown kind.
        InputError: wrong shape, no points, or NaN / infinite values.
    """
    p = Path(path)
    if not p.is_file():
        raise FileFormatError("file not found", source=p)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise FileFormatError(f"not a readable .npy array ({err})", source=p) from None
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise InputError(f"points must be real numbers, got dtype {arr.dtype}", source=p)
        arr = arr.astype(np.float64)
    elif suffix == ".csv":
        arr = _read_csv(p, 3)
    else:
        raise FileFormatError(f"unknown points file type '{p.suffix}' (use .npy or .csv)",
                              source=p)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"points must have shape (N, 3), got {arr.shape}", source=p)
    if arr.shape[0] == 0:
        raise InputError("the file holds no points", source=p)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise InputError(f"point {int(np.argmax(bad))} holds NaN or an infinite value",
                         source=p)
    return arr


def write_pixels(path: str | os.PathLike[str], uv: np.ndarray) -> None:
    """Write pixel coordinates atomically.

    Args:
        path: ``.npy`` (any shape, float64) or ``.csv`` (only ``(N, 2)``: header ``u,v``).
        uv: ``(B, N, 2)`` or ``(N, 2)`` pixel coordinates ``(u, v)``.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        with atomic_path(p) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(uv, dtype=np.float64))
    elif suffix == ".csv":
        arr = np.asarray(uv, dtype=np.float64)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise InputError(f"CSV output holds one camera's (N, 2) pixels; got shape "
                             f"{arr.shape}: use .npy for several cameras", source=p)
        lines = ["u,v"] + [f"{u!r},{v!r}" for u, v in arr.tolist()]
        atomic_write_text(p, "\n".join(lines) + "\n")
    else:
        raise InputError(f"unknown output type '{p.suffix}' (use .npy or .csv)", source=p)
