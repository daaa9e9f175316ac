"""ITK transform files (``.tfm``, "Insight Transform File V1.0") for 3D–3D registration results.

Convention:
    regkit's ``fixed_from_moving`` maps a point of the moving image's RAS+ world (mm) to the fixed
    image's world. ITK's resampling runs the other way: ``sitk.Resample(moving, fixed, T)`` (and
    Slicer, ANTs, elastix) asks the transform, for every point of the OUTPUT (fixed) grid, where to
    read the INPUT (moving) image. So a ``.tfm`` meant to resample the moving image onto the fixed
    image holds ``moving_from_fixed``, and in ITK's LPS world (x to the patient's Left, y
    Posterior, z Superior), not RAS. With ``F = diag(-1, -1, 1, 1)`` (RAS ↔ LPS, its own inverse)::

        T_lps = F @ inv(fixed_from_moving) @ F          (written by write_itk_transform)
        fixed_from_moving = inv(F @ T_lps @ F)          (read back by read_itk_transform)

    The file holds ``T_lps`` as ``AffineTransform_double_3_3``: ``Parameters`` are its 3×3 matrix
    row by row then its translation (12 numbers), ``FixedParameters`` the centre of rotation
    ``c``, which regkit writes as ``0 0 0``; ITK maps ``p ↦ A (p − c) + c + t``.

    Worked example: a moving image shifted 10 mm to the patient's right relative to the fixed one
    is aligned by ``fixed_from_moving`` = translation (−10, 0, 0) in RAS. Its inverse is
    translation (+10, 0, 0) RAS, i.e. (−10, 0, 0) in LPS, so the file reads
    ``Parameters: 1 0 0 0 1 0 0 0 1 -10 0 0``: to fill a fixed voxel at LPS point p, ITK reads the
    moving image at p − (10, 0, 0) LPS.

Numbers are written with 17 significant digits, so a write/read round trip returns the matrix to
about 1e-15 relative (the two inversions are the only rounding).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.errors import FileFormatError, InputError, ShapeError
from regkit.geometry.frames import LPS_FROM_RAS
from regkit.utils.files import atomic_write_text

__all__ = ["LPS_FROM_RAS", "read_itk_transform", "write_itk_transform"]

_HEADER = "#Insight Transform File V1.0"
# Transform types read as a 3-D affine "matrix + translation" with a centre in FixedParameters.
_AFFINE_TYPES = (
    "AffineTransform_double_3_3",
    "AffineTransform_float_3_3",
    "MatrixOffsetTransformBase_double_3_3",
    "MatrixOffsetTransformBase_float_3_3",
)


def _check_affine(matrix: Any, key: str) -> NDArray[np.float64]:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ShapeError(f"{key} must be a 4x4 matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise InputError("holds non-finite values", key=key)
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], rtol=0.0, atol=1e-12):
        raise InputError(f"last row must be [0, 0, 0, 1], got {m[3].tolist()}", key=key)
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise InputError("is singular (its 3x3 part has determinant 0)", key=key)
    return m


def write_itk_transform(path: str | os.PathLike[str], fixed_from_moving: Any) -> None:
    """Write ``fixed_from_moving`` as an ITK ``.tfm`` that resamples moving onto fixed (atomic).

    Args:
        path: Output file (``.tfm`` or ``.txt``; ITK reads both).
        fixed_from_moving: ``(4, 4)`` rigid or affine, moving RAS world mm to fixed RAS world mm.

    Raises:
        ShapeError: not a 4x4 matrix.
        InputError: non-finite, singular, or a last row other than ``[0, 0, 0, 1]``.
    """
    m = _check_affine(fixed_from_moving, "fixed_from_moving")
    t_lps = LPS_FROM_RAS @ np.linalg.inv(m) @ LPS_FROM_RAS
    numbers = [*t_lps[:3, :3].ravel().tolist(), *t_lps[:3, 3].tolist()]
    text = "\n".join([
        _HEADER,
        "#Transform 0",
        "Transform: AffineTransform_double_3_3",
        "Parameters: " + " ".join(f"{v:.17g}" for v in numbers),
        "FixedParameters: 0 0 0",
        "",
    ])
    atomic_write_text(path, text)


def _numbers(text: str, count: int, source: Path, line: int, key: str) -> list[float]:
    parts = text.split()
    if len(parts) != count:
        raise FileFormatError(f"line {line}: '{key}' needs {count} numbers, got {len(parts)}",
                              source=source)
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise FileFormatError(f"line {line}: '{key}' holds something that is not a number: "
                              f"{text.strip()!r}", source=source) from None
    if not all(math.isfinite(v) for v in values):
        raise FileFormatError(f"line {line}: '{key}' holds non-finite numbers", source=source)
    return values


def read_itk_transform(path: str | os.PathLike[str]) -> NDArray[np.float64]:
    """Read a one-transform ITK ``.tfm`` (affine, 3-D) as regkit's ``fixed_from_moving``.

    The inverse of :func:`write_itk_transform`: the file's transform is taken as ITK's resampling
    transform (fixed LPS point to moving LPS point, ``p ↦ A (p − c) + c + t`` with the centre
    ``c`` from ``FixedParameters``), so ``fixed_from_moving = inv(F @ T_lps @ F)``.

    Args:
        path: The file.

    Returns:
        ``(4, 4)`` float64 ``fixed_from_moving`` (RAS, mm).

    Raises:
        FileFormatError: a missing file, a wrong header, a composite or non-affine transform, a
            missing or malformed line, a singular matrix. The message names the line.
    """
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileFormatError("no such file", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"cannot be read as text ({exc})", source=source) from None
    if not lines or lines[0].strip() != _HEADER:
        first = lines[0].strip() if lines else "(empty file)"
        raise FileFormatError(f"line 1: expected '{_HEADER}', got {first!r}", source=source)
    fields: dict[str, tuple[int, str]] = {}
    transforms = 0
    for number, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("#Transform"):
                transforms += 1
                if transforms > 1:
                    raise FileFormatError(f"line {number}: holds more than one transform; only "
                                          "a single affine transform is supported",
                                          source=source)
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise FileFormatError(f"line {number}: expected 'Key: value', got {line!r}",
                                  source=source)
        key = key.strip()
        if key in fields:
            raise FileFormatError(f"line {number}: '{key}' given twice", source=source)
        fields[key] = (number, value.strip())
    for key in ("Transform", "Parameters", "FixedParameters"):
        if key not in fields:
            raise FileFormatError(f"line {len(lines) + 1}: missing '{key}:' line", source=source)
    line_t, kind = fields["Transform"]
    if kind not in _AFFINE_TYPES:
        raise FileFormatError(f"line {line_t}: transform type {kind!r} is not supported; "
                              f"expected one of {', '.join(_AFFINE_TYPES)}", source=source)
    line_p, params = fields["Parameters"]
    values = _numbers(params, 12, source, line_p, "Parameters")
    line_f, fixed = fields["FixedParameters"]
    centre = np.asarray(_numbers(fixed, 3, source, line_f, "FixedParameters"))
    t_lps = np.eye(4)
    t_lps[:3, :3] = np.asarray(values[:9]).reshape(3, 3)
    t_lps[:3, 3] = np.asarray(values[9:]) + centre - t_lps[:3, :3] @ centre
    if abs(np.linalg.det(t_lps[:3, :3])) < 1e-12:
        raise FileFormatError(f"line {line_p}: the matrix is singular", source=source)
    return np.asarray(np.linalg.inv(LPS_FROM_RAS @ t_lps @ LPS_FROM_RAS), dtype=np.float64)
