"""Small rigid-geometry helpers for the phantom: rotations and 4×4 frames.

Convention:
    Matrices act on column vectors. ``rot_x(a)`` turns +y towards +z by ``a`` radians (right-hand
    rule about +x); ``rot_y`` turns +z towards +x; ``rot_z`` turns +x towards +y. A frame
    ``parent_from_child`` maps a point given in the child frame to the parent frame, and
    ``a_from_c = a_from_b @ b_from_c``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["frame", "invert", "rot_x", "rot_y", "rot_z", "transform_points", "translation"]

Matrix = NDArray[np.float64]


def rot_x(angle: float) -> Matrix:
    """3×3 rotation by ``angle`` radians about +x."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle: float) -> Matrix:
    """3×3 rotation by ``angle`` radians about +y."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(angle: float) -> Matrix:
    """3×3 rotation by ``angle`` radians about +z."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def frame(rotation: ArrayLike | None = None, origin: ArrayLike | None = None) -> Matrix:
    """4×4 rigid ``parent_from_child``: a 3×3 rotation and the child origin (parent mm)."""
    matrix = np.eye(4)
    if rotation is not None:
        matrix[:3, :3] = np.asarray(rotation, dtype=np.float64)
    if origin is not None:
        matrix[:3, 3] = np.asarray(origin, dtype=np.float64)
    return matrix


def translation(offset: ArrayLike) -> Matrix:
    """4×4 translation by ``offset`` (3,), mm."""
    return frame(None, offset)


def invert(matrix: Matrix) -> Matrix:
    """Inverse of a 4×4 rigid frame (rotation transposed, no general inverse needed)."""
    rotation = matrix[:3, :3]
    out = np.eye(4)
    out[:3, :3] = rotation.T
    out[:3, 3] = -rotation.T @ matrix[:3, 3]
    return out


def transform_points(matrix: Matrix, points: ArrayLike) -> Matrix:
    """Apply a 4×4 frame to points (..., 3)."""
    array = np.asarray(points, dtype=np.float64)
    return array @ matrix[:3, :3].T + matrix[:3, 3]
