"""The 3D–3D registration's initial transforms and the moving foreground's centroid.

The moving image is placed on the fixed one as it is (``"identity"``), by its foreground's centroid
(``"center"``) or also by its principal axes (``"moments"``: 25 candidates that the registration
scores); the search turns about the moving foreground's centroid.

Used by :func:`~regkit.registration.volume_registration.register_3d3d`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.errors import InputError
from regkit.registration._volume_inputs import check_mask
from regkit.volume import Volume

__all__ = ["initial_candidates", "initial_transform"]

# Foreground for the centre-of-mass and moments initialisations: CT voxels above -500 HU (the
# body and the table, not the air). For other units, see _foreground_rule.
_HU_FOREGROUND = -500.0
# Voxels used at most to estimate a centroid or a covariance (a regular subsample beyond that).
_MOMENT_VOXELS = 1 << 19

Foreground = Callable[[np.ndarray], np.ndarray]


def _foreground_rule(volume: Volume, explicit: float | None) -> Foreground:
    """Which voxel values count as foreground, as a function of an array of values.

    An explicit threshold ``t`` means ``value > t``; a CT in HU means above -500 HU; any other
    image means values that differ from the median of its border voxels (the background, e.g. the
    air around a body) by more than a quarter of its 1–99 percentile range: with intensities
    remapped in an unknown way, "unlike the background" is the one definition that holds for
    every remapping.
    """
    if explicit is not None or volume.units == "HU":
        threshold = float(explicit) if explicit is not None else _HU_FOREGROUND
        return lambda values: values > threshold
    data = volume.data
    border = np.concatenate([data[0].ravel(), data[-1].ravel(), data[:, 0].ravel(),
                             data[:, -1].ravel(), data[:, :, 0].ravel(), data[:, :, -1].ravel()])
    background = float(np.median(border))
    lo, hi = np.percentile(_subsample(data), [1.0, 99.0])
    radius = 0.25 * float(hi - lo)
    return lambda values: np.abs(values.astype(np.float64) - background) > radius


def _subsample(data: np.ndarray) -> np.ndarray:
    """A regular subsample of ``data`` with at most about :data:`_MOMENT_VOXELS` voxels."""
    step = max(1, math.ceil((data.size / _MOMENT_VOXELS) ** (1.0 / 3.0)))
    return np.asarray(data[::step, ::step, ::step])


def _moments(volume: Volume, mask: NDArray[np.bool_] | None, foreground: Foreground
             ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Centroid (3,) and covariance (3, 3) of the foreground's voxel centres, world mm.

    The foreground is the (masked) voxels that ``foreground`` accepts, on a regular subsample of
    at most about :data:`_MOMENT_VOXELS` voxels; when fewer than 10 qualify, every (masked) voxel
    counts, so that an image without a clear foreground still has a centre. The moments are taken in
    index space and carried to the world by the grid's affine (exact for an affine map).
    """
    step = max(1, math.ceil((volume.data.size / _MOMENT_VOXELS) ** (1.0 / 3.0)))
    sub = np.asarray(volume.data[::step, ::step, ::step])
    inside = np.ones(sub.shape, dtype=bool) if mask is None else mask[::step, ::step, ::step]
    keep = foreground(sub) & inside
    if np.count_nonzero(keep) < 10:
        keep = inside
    index = np.nonzero(keep)
    n = index[0].size
    coords = [np.asarray(a, dtype=np.float64) * step for a in index]
    mean = np.array([c.mean() for c in coords])
    centred = [c - m for c, m in zip(coords, mean, strict=True)]
    cov = np.array([[float(np.dot(a, b)) / max(1, n) for b in centred] for a in centred])
    linear = volume.world_from_index[:3, :3]
    centroid = linear @ mean + volume.world_from_index[:3, 3]
    return centroid, linear @ cov @ linear.T


def _signed_permutations() -> list[NDArray[np.float64]]:
    """The 24 proper rotations that map coordinate axes to coordinate axes (det +1)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            for row, (col, sign) in enumerate(zip(perm, signs, strict=True)):
                m[row, col] = sign
            if np.linalg.det(m) > 0:
                out.append(m)
    return out


def initial_transform(fixed: Volume, moving: Volume, init: str | Any = "center", *,
                      fixed_mask: Any = None, moving_mask: Any = None,
                      threshold: float | None = None) -> list[NDArray[np.float64]]:
    """Candidate initial ``fixed_from_moving`` transforms ``(4, 4)``, best guess first.

    * ``"identity"``: the images' world frames already agree: ``[I]``.
    * ``"center"``: the translation that brings the moving foreground's centroid onto the fixed
      foreground's centroid (foreground: voxels above -500 HU for CT, see
      :class:`~regkit.registration.volume_registration.Register3D3DOptions` for other images;
      within the masks when both images have one, else in the whole images, so that both
      centroids describe the same anatomy).
    * ``"moments"``: the centre translation combined with each of the 24 rotations that map the
      moving foreground's principal axes onto the fixed one's (every axis permutation and
      sign choice with determinant +1, since axes of similar extent may swap), preceded by the
      plain ``"center"`` transform;
      :func:`~regkit.registration.volume_registration.register_3d3d` scores all 25 in one batch
      and keeps the best.
    * a ``(4, 4)`` array: that transform, as given.

    Args:
        fixed: The fixed volume.
        moving: The moving volume.
        init: One of the names above or a ``(4, 4)`` matrix.
        fixed_mask: Optional mask on the fixed image's grid.
        moving_mask: Optional mask on the moving image's grid.
        threshold: Foreground threshold for both images (None: see
            :class:`~regkit.registration.volume_registration.Register3D3DOptions`).

    Raises:
        InputError: an unknown name, or a matrix that is not a finite invertible ``(4, 4)``
            affine.
    """
    fm = check_mask(fixed_mask, fixed, "fixed_mask")
    mm = check_mask(moving_mask, moving, "moving_mask")
    return initial_candidates(fixed, moving, init, fm, mm, threshold)[0]


def initial_candidates(fixed: Volume, moving: Volume, init: str | Any,
                       fixed_mask: NDArray[np.bool_] | None,
                       moving_mask: NDArray[np.bool_] | None, threshold: float | None
                       ) -> tuple[list[NDArray[np.float64]], NDArray[np.float64]]:
    """:func:`initial_transform`'s candidates, and the moving foreground's centroid (3,)."""
    moving_rule = _foreground_rule(moving, threshold)
    pivot_centre, cov_m = _moments(moving, moving_mask, moving_rule)
    c_m = pivot_centre
    # The centroids must describe the same anatomy: a mask on one image only would compare the
    # centre of a region of interest with the centre of a whole image.
    both = fixed_mask is not None and moving_mask is not None
    if moving_mask is not None and not both:
        c_m, cov_m = _moments(moving, None, moving_rule)
    if not isinstance(init, str):
        try:
            m = np.array(init, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"must be 'identity', 'center', 'moments' or a 4x4 matrix, got "
                             f"{type(init).__name__}", key="init") from None
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise InputError(f"an initial transform must be a finite 4x4 matrix, got shape "
                             f"{m.shape}", key="init")
        if not np.allclose(m[3], [0, 0, 0, 1]) or abs(np.linalg.det(m[:3, :3])) < 1e-9:
            raise InputError("an initial transform needs last row [0, 0, 0, 1] and an "
                             "invertible 3x3 part", key="init")
        return [m], pivot_centre
    maker = _INITIALISERS.get(init)
    if maker is None:
        raise InputError(f"must be one of {', '.join(sorted(_INITIALISERS))} or a 4x4 matrix, "
                         f"got {init!r}", key="init")
    if maker is _init_identity:
        return [np.eye(4)], pivot_centre
    c_f, cov_f = _moments(fixed, fixed_mask if both else None, _foreground_rule(fixed, threshold))
    return maker(c_f, cov_f, c_m, cov_m), pivot_centre


def _init_identity(*_: Any) -> list[NDArray[np.float64]]:
    return [np.eye(4)]


def _init_center(c_f: np.ndarray, _cov_f: np.ndarray, c_m: np.ndarray, _cov_m: np.ndarray
                 ) -> list[NDArray[np.float64]]:
    m = np.eye(4)
    m[:3, 3] = c_f - c_m
    return [m]


def _init_moments(c_f: np.ndarray, cov_f: np.ndarray, c_m: np.ndarray, cov_m: np.ndarray
                  ) -> list[NDArray[np.float64]]:
    _, axes_f = np.linalg.eigh(cov_f)   # columns: principal axes, ascending variance
    _, axes_m = np.linalg.eigh(cov_m)
    out = _init_center(c_f, cov_f, c_m, cov_m)
    for d in _signed_permutations():
        rot = axes_f @ d @ axes_m.T
        if np.linalg.det(rot) < 0:  # eigh may return a left-handed basis
            rot = axes_f @ (d * np.array([1.0, 1.0, -1.0])[:, None]) @ axes_m.T
            if np.linalg.det(rot) < 0:
                rot = -rot
        m = np.eye(4)
        m[:3, :3] = rot
        m[:3, 3] = c_f - rot @ c_m
        out.append(m)
    return out


_INITIALISERS: dict[str, Callable[..., list[NDArray[np.float64]]]] = {
    "identity": _init_identity,
    "center": _init_center,
    "moments": _init_moments,
}
