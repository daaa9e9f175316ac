"""3D–3D registration of two volumes (CT to CT, same or cross modality): rigid or affine.

:func:`register_3d3d` finds ``fixed_from_moving``, the transform that maps a point of the moving
image's RAS+ world (mm) to the fixed image's world, by maximising an image similarity metric over a
multi-resolution pyramid: CMA-ES searching wide, then a batched quadratic-model polish (any
optimizer of :data:`regkit.optim.optimizers` per level).

Convention:
    **Search parameters.** The search is relative to an initial transform ``init``
    (``fixed_from_moving`` at the start) and turns about a pivot ``c`` in the fixed world (mm)::

        fixed_from_moving(p) = P(p) @ init,      P(p): x ↦ L(p) · (x − c) + c + t

    with ``p = (rx, ry, rz, tx, ty, tz)`` for ``transform="rigid"`` (``L = R(r)``, ``r`` a rotation
    vector in radians, ``t`` in mm: :meth:`~regkit.optim.ParamSpec.rigid6`) and the 12 coordinates
    of :meth:`~regkit.optim.ParamSpec.affine12` for ``"affine"``
    (``L = R(r) @ H(h) @ diag(exp(s))``, see :func:`affine_from_params`). The pivot is
    ``init · m``, with ``m`` the centroid of the moving image's foreground (its masked voxels above
    the foreground threshold): rotations turn the moving anatomy about its own centre, so that a
    rotation barely moves it as a whole and the rotation and translation coordinates decouple.

    Worked example: with ``init = I`` and a moving foreground centred at (0, 0, 100) mm, the
    parameters ``(0, 0, π/2, 10, 0, 0)`` turn the moving image a quarter turn about the vertical
    axis through (0, 0, 100) (so that point stays put) and then shift it 10 mm to the right.

    **Where the metric is computed.** On a grid of the fixed image (see *Pyramid*), over the voxels
    where (a) the resampled moving image has data (the resampler's in-bounds mask), (b) the fixed
    mask is set, and (c) the moving mask, resampled with the same transform and thresholded at 0.5,
    is set. The **overlap fraction** of a candidate is the volume (mm³) of those voxels divided by
    the smaller of the fixed region (the fixed grid's masked voxels) and the moving region (the
    moving image's masked voxels, or its whole box). A candidate whose overlap fraction is below
    ``min_overlap`` is not scored by the metric, whose value on a sliver of overlap can be
    spuriously good: it gets the loss ``loss(empty_score) + (1 + d) · max(1, |loss(empty_score)|)``
    with ``d = (min_overlap − overlap) / min_overlap``, worse than any real score of the metrics
    shipped (NCC, NMI, MI, GC, SSD), finite, and growing as the overlap shrinks so that CMA-ES is
    pulled back towards the overlap.

    **Pyramid.** Level ``ℓ`` works at the spacing ``s = shrink_ℓ · base``, with ``base`` the larger
    of the two images' geometric-mean voxel spacings. Each image is brought to the spacing
    ``max(own spacing, s)`` per axis (no axis is ever upsampled): a block mean over whole voxels,
    a Gaussian of ``σ = 0.5`` target voxels, then trilinear resampling (the level's anti-aliasing).
    A level with ``shrink = 1`` keeps both images on their own grids. On the rigid levels it
    smooths them in place by a Gaussian of ``fine_sigma_voxels`` of their own voxels (0.8 for
    NCC-like metrics, none for mutual information; see :class:`Register3D3DOptions`) and leaves
    unscored the points within the filter's reach, ``int(3 σ + 0.5)`` voxels, of either
    image's box, where the smoothing mixed in the box's edge (the overlap fraction's regions
    lose that border too). The metric is computed on every ``k``-th voxel of the fixed level
    image, less that border (``k`` the least stride leaving at most ``max_voxels``): fine
    levels sample the images at fewer points, as elastix samples 2048 random points, rather
    than resampling them to a coarser grid, whose interpolation blurs each point differently.
    The moving level image is what the renderer resamples, the **whole population in one
    batched call** (B = CMA-ES's popsize, or the
    quadratic model's design of 28 poses; ``max_batch`` splits it where memory is short).

    **Defaults** (:data:`DEFAULT_RIGID_LEVELS`, :data:`DEFAULT_AFFINE_LEVELS`) were chosen from
    measurements: see docs/decisions/registration-3d3d-levels.md.

Example:
    >>> from regkit.io.nifti import load_nifti
    >>> fixed, moving = load_nifti("a.nii.gz"), load_nifti("b.nii.gz")  # doctest: +SKIP
    >>> result = register_3d3d(fixed, moving, metric="nmi", seed=1)       # doctest: +SKIP
    >>> result.fixed_from_moving                                          # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from regkit.errors import InputError, ShapeError
from regkit.geometry.transforms import nearest_rotation, rotvec_to_matrix
from regkit.metrics import Metric, get_metric
from regkit.optim import ParamSpec, coerce_options, optimizers
from regkit.registration import engine, pose_error
from regkit.registration._volume_inputs import as_volume as _as_volume
from regkit.registration._volume_inputs import check_mask as _check_mask
from regkit.registration._volume_inputs import check_variance as _check_variance
from regkit.registration.engine import Level
from regkit.registration.levels import (
    DEFAULT_THREADS,
    LevelOptions,
    Progress,
    ProgressCallback,
)
from regkit.registration.levels import at_spacing as _at_spacing
from regkit.registration.levels import at_spacing_within as _at_spacing_within
from regkit.registration.results import Registration3D3DResult
from regkit.registration.volume_init import initial_candidates as _initial_candidates
from regkit.registration.volume_init import initial_transform
from regkit.registration.volume_report import resample_moving, save_report
from regkit.render.base import Renderer
from regkit.utils.checks import is_real, is_whole
from regkit.volume import Volume

__all__ = [
    "DEFAULT_AFFINE_LEVELS",
    "DEFAULT_RIGID_LEVELS",
    "LINEAR_METRICS",
    "LevelOptions",
    "Progress",
    "Register3D3DOptions",
    "affine_from_params",
    "initial_transform",
    "mean_target_error",
    "register_3d3d",
    "resample_moving",
    "save_report",
]

TransformKind = Literal["rigid", "affine"]
InitKind = Literal["identity", "center", "moments"]

# Largest moving level image handed to a renderer: bounds its memory (the torch backend keeps
# four copies, 128 MB in float32) and keeps the torch backend on its packed fast path (at most
# 2**24 voxels). See docs/decisions/registration-3d3d-levels.md.
_MAX_MOVING_VOXELS = 1 << 23

LINEAR_METRICS: frozenset[str] = frozenset({"ncc", "masked_ncc", "lncc", "ssd", "gc", "gncc"})
"""Metrics that compare intensities through a linear relation, where the intensities that
smoothing mixes along an edge stay on it: ``fine_sigma_voxels=None`` smooths their finest levels
by 0.8 voxel, and leaves the others' (mutual information's) as they are."""
_FINE_SIGMA_LINEAR = 0.8
_FINE_SIGMA_OTHER = 0.0
_TRUNCATE = 3.0  # the in-place Gaussian's reach, in σ


# ------------------------------------------------------------------------------------ options


DEFAULT_RIGID_LEVELS: tuple[LevelOptions, ...] = (
    LevelOptions(shrink=4.0, max_voxels=8192, method="cmaes",
                 options={"popsize": 20, "max_evaluations": 600, "restarts": 2,
                          "tol_x": 0.01, "tol_fun": 1e-5},
                 rot_step_deg=15.0, trans_step_mm=15.0),
    LevelOptions(shrink=2.0, max_voxels=16384, method="quadratic",
                 options={"radius": 0.5, "design": "minimal", "max_evaluations": 150,
                          "tol_x": 0.12, "tol_fun": 1e-7},
                 rot_step_deg=2.0, trans_step_mm=2.0),
    LevelOptions(shrink=1.0, max_voxels=40000, method="quadratic",
                 options={"radius": 0.5, "design": "minimal", "max_evaluations": 200,
                          "tol_x": 0.12, "tol_fun": 1e-8},
                 rot_step_deg=0.5, trans_step_mm=0.5),
)
"""The rigid pyramid: 3 levels at 4, 2 and 1 times the base spacing.

Level 0 searches wide (CMA-ES, σ = 15° and 15 mm, popsize 20, IPOP restarts if it converges
early); levels 1 and 2 polish with the batched quadratic-model trust region
(:mod:`regkit.optim.quadratic`: designs of 28 poses scored in one call, first radius 1° and
1 mm, then 0.25° and 0.25 mm; the 2D–3D pyramid's finest level uses the same settings). In the
benchmark (30 pairs each) registrations took 0.33 s (ncc) and 0.57 s (mattes_mi) against
itk-elastix's 0.73 and 0.80 s in the same run, at a median mTRE of 0.051 and 0.121 mm; with
CMA-ES on those levels (popsize 10, 200 and 400 evaluations) they had taken 0.99 and 1.63 s
against elastix's 0.96 and 1.03 s (0.051 and 0.137 mm).

The finest level scores the images on their own grids (smoothed in place, see
``fine_sigma_voxels``) on every 4th voxel (``max_voxels=40000``: stride 4 on a 128³ image),
since resampling them to a coarser grid there biased the optimum (median mTRE 0.13 mm on the
benchmark's pairs against 0.46–0.50 mm with a trilinear grid).
Stride 5 was faster, but its median moved between 0.043 and 0.080 mm with the lattice's phase
(stride 4: 0.045–0.051 mm). See docs/decisions/registration-3d3d-levels.md.
"""

DEFAULT_AFFINE_LEVELS: tuple[LevelOptions, ...] = (
    LevelOptions(shrink=2.0, max_voxels=32768, method="cmaes",
                 options={"popsize": 14, "max_evaluations": 700, "tol_x": 0.01,
                          "tol_fun": 1e-6},
                 rot_step_deg=1.0, trans_step_mm=1.0, log_scale_step=0.02, shear_step=0.02),
    LevelOptions(shrink=1.0, max_voxels=32768, method="cmaes",
                 options={"popsize": 14, "max_evaluations": 500, "tol_x": 0.01,
                          "tol_fun": 1e-7},
                 rot_step_deg=0.5, trans_step_mm=0.5, log_scale_step=0.005, shear_step=0.005),
)
"""The affine refinement run after the rigid pyramid when ``transform="affine"``."""


@dataclass(frozen=True)
class Register3D3DOptions:
    """Options of :func:`register_3d3d`; an unknown key is an error.

    Attributes:
        levels: The rigid pyramid, coarsest first.
        affine_levels: Affine refinement levels run after ``levels`` when
            ``transform="affine"`` (they start from the rigid result).
        min_overlap: Smallest overlap fraction (see the module docstring) a candidate needs to be
            scored by the metric, in ``(0, 1]`` (default 0.5): below it, mutual information can
            prefer a partial overlap far off to the truth. See
            docs/decisions/registration-3d3d-overlap.md.
        rot_range_deg: Search bound on each rotation coordinate about the initial transform,
            degrees.
        trans_range_mm: Search bound on each translation coordinate, mm.
        log_scale_range: Search bound on each log-scale (affine).
        shear_range: Search bound on each shear (affine).
        foreground_threshold: Intensity above which a voxel is foreground for the centre and
            moments initialisations and the pivot; None: -500 for volumes in HU, else the
            voxels that differ from the image's border median (its background) by more than a
            quarter of its 1–99 percentile range.
        max_batch: Most candidates resampled in one call (None: the whole population).
        threads: torch's intra-op threads while the registration runs (restored after); None
            leaves torch's setting alone. Default 1: each call works on at most a few hundred
            thousand voxels, where thread start-up and synchronisation cost as much as they save
            (far more on a loaded machine). See docs/decisions/registration-3d3d-levels.md.
        fine_sigma_voxels: Gaussian σ, in each image's own voxels, by which both images are
            smoothed at the rigid levels with ``shrink = 1`` (coarser levels are smoothed by
            the pyramid; the affine refinement keeps the images as they are); 0 scores them as
            they are. Points within ``int(3 σ + 0.5)`` voxels (the filter's reach, at most a
            quarter of the axis) of either image's box are not scored there, since the
            smoothing mixes the box's edge into them. None (default): 0.8 for the metrics
            that compare intensities through a linear relation (:data:`LINEAR_METRICS`: ncc,
            ssd, gc, ...), 0 for the others (nmi, mattes_mi): the intensities that smoothing
            mixes along an edge fall off a non-monotonic joint histogram's ridges (mattes_mi
            0.137 → 0.211 mm at σ 0.8; nmi 0.21 → 0.29 mm at 0.4). Measured on the benchmark's
            pairs: ncc's median mTRE 0.118 → 0.051 mm (p90 0.18 → 0.074). See
            docs/decisions/registration-3d3d-levels.md.
    """

    levels: tuple[LevelOptions, ...] = DEFAULT_RIGID_LEVELS
    affine_levels: tuple[LevelOptions, ...] = DEFAULT_AFFINE_LEVELS
    min_overlap: float = 0.5
    rot_range_deg: float = 90.0
    trans_range_mm: float = 100.0
    log_scale_range: float = 0.25
    shear_range: float = 0.25
    foreground_threshold: float | None = None
    max_batch: int | None = None
    threads: int | None = DEFAULT_THREADS
    fine_sigma_voxels: float | None = None

    def __post_init__(self) -> None:
        for key in ("levels", "affine_levels"):
            levels = tuple(getattr(self, key))
            if key == "levels" and not levels:
                raise InputError("needs at least one level", key=key)
            for level in levels:
                if not isinstance(level, LevelOptions):
                    raise InputError(f"levels must be LevelOptions, got {type(level).__name__}",
                                     key=key)
                if level.method not in optimizers:
                    raise InputError(f"method '{level.method}' is not a derivative-free "
                                     f"optimizer; known: {', '.join(optimizers.names())}", key=key)
            object.__setattr__(self, key, levels)
        if not (isinstance(self.min_overlap, int | float) and 0 < self.min_overlap <= 1):
            raise InputError(f"must lie in (0, 1], got {self.min_overlap!r}", key="min_overlap")
        for key in ("rot_range_deg", "trans_range_mm", "log_scale_range", "shear_range"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InputError(f"must be a finite number > 0, got {value!r}", key=key)
        if self.rot_range_deg > 180:
            raise InputError(f"must be at most 180, got {self.rot_range_deg}",
                             key="rot_range_deg")
        value = self.fine_sigma_voxels
        if value is not None and not (is_real(value) and math.isfinite(value) and 0 <= value <= 4):
            raise InputError(f"must be None or a number in [0, 4], got {value!r}",
                             key="fine_sigma_voxels")
        if self.foreground_threshold is not None and not math.isfinite(self.foreground_threshold):
            raise InputError("must be finite or None", key="foreground_threshold")
        for key in ("max_batch", "threads"):
            value = getattr(self, key)
            if value is not None and (not is_whole(value) or value < 1):
                raise InputError(f"must be None or an integer >= 1, got {value!r}", key=key)


# ---------------------------------------------------------------------------- transform models


def affine_from_params(params: Any, center: Any = None) -> Any:
    """12-vector affines ``(..., 12)`` of :meth:`ParamSpec.affine12` to ``(..., 4, 4)`` matrices.

    Convention:
        ``p = (rx, ry, rz, tx, ty, tz, sx, sy, sz, hxy, hxz, hyz)``; the linear part is
        ``L = R(r) @ H @ diag(exp(s))`` with ``R(r)`` the rotation of the rotation vector ``r``
        (radians) and ``H = [[1, hxy, hxz], [0, 1, hyz], [0, 0, 1]]``: scale first, then shear,
        then rotate. With a ``center`` c (mm) the transform is ``x ↦ L (x − c) + c + t``, else
        ``x ↦ L x + t``. Zero scales and shears give :func:`rigid_from_params` of the first six.

        Example: ``(0, 0, 0, 0, 0, 0, log 2, 0, 0, 0.5, 0, 0)`` maps (1, 1, 0) to (2.5, 1, 0):
        x doubles to 2, then the shear adds 0.5 · y.

    Args:
        params: ``(..., 12)`` numpy array or torch tensor (float32 or float64).
        center: Optional ``(..., 3)`` pivot, mm.

    Returns:
        ``(..., 4, 4)`` of the input's kind, dtype and device (torch keeps the autograd graph).

    Raises:
        ShapeError: ``params`` is not ``(..., 12)`` or ``center`` not ``(..., 3)``.
    """
    was_numpy = not isinstance(params, torch.Tensor)
    p = params if isinstance(params, torch.Tensor) else torch.as_tensor(
        np.asarray(params, dtype=np.float64))
    if p.ndim == 0 or p.shape[-1] != 12:
        raise ShapeError(f"affine parameters must have shape (..., 12), got {tuple(p.shape)}")
    rot = rotvec_to_matrix(p[..., 0:3])
    scales = torch.exp(p[..., 6:9])
    shear = torch.zeros(*p.shape[:-1], 3, 3, dtype=p.dtype, device=p.device)
    shear[..., 0, 0] = 1.0
    shear[..., 1, 1] = 1.0
    shear[..., 2, 2] = 1.0
    shear[..., 0, 1] = p[..., 9]
    shear[..., 0, 2] = p[..., 10]
    shear[..., 1, 2] = p[..., 11]
    linear = rot @ (shear * scales[..., None, :])  # H @ diag(s) scales H's columns
    offset = p[..., 3:6]
    if center is not None:
        c = center if isinstance(center, torch.Tensor) else torch.as_tensor(
            np.asarray(center, dtype=np.float64))
        c = c.to(dtype=p.dtype, device=p.device)
        if c.shape[-1] != 3:
            raise ShapeError(f"center must have shape (..., 3), got {tuple(c.shape)}")
        offset = offset + c - (linear @ c[..., None])[..., 0]
    out = torch.zeros(*linear.shape[:-2], 4, 4, dtype=p.dtype, device=p.device)
    out[..., :3, :3] = linear
    out[..., :3, 3] = offset
    out[..., 3, 3] = 1.0
    return out.numpy() if was_numpy else out


def _rigid_matrices(params: np.ndarray, pivot: np.ndarray) -> np.ndarray:
    full = np.zeros((params.shape[0], 12))
    full[:, :6] = params
    return np.asarray(affine_from_params(full, pivot))


def _affine_matrices(params: np.ndarray, pivot: np.ndarray) -> np.ndarray:
    return np.asarray(affine_from_params(params, pivot))


@dataclass(frozen=True)
class _Model:
    """A transform family: its parameter specification at a level and its matrices."""

    name: str
    size: int
    matrices: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def spec(self, level: LevelOptions, opts: Register3D3DOptions) -> ParamSpec:
        if self.size == 6:
            return ParamSpec.rigid6(level.rot_step_deg, level.trans_step_mm,
                                    rot_bound_deg=opts.rot_range_deg,
                                    trans_bound_mm=opts.trans_range_mm)
        return ParamSpec.affine12(level.rot_step_deg, level.trans_step_mm,
                                  level.log_scale_step, level.shear_step,
                                  rot_bound_deg=opts.rot_range_deg,
                                  trans_bound_mm=opts.trans_range_mm,
                                  log_scale_bound=opts.log_scale_range,
                                  shear_bound=opts.shear_range)


_RIGID = _Model("rigid", 6, _rigid_matrices)
_AFFINE = _Model("affine", 12, _affine_matrices)
# What each transform kind runs: (model, which option holds its levels), in order.
_STAGES: dict[str, tuple[tuple[_Model, str], ...]] = {
    "rigid": ((_RIGID, "levels"),),
    "affine": ((_RIGID, "levels"), (_AFFINE, "affine_levels")),
}


# ----------------------------------------------------------------------------- image helpers


def _coarsened(volume: Volume, max_voxels: int) -> Volume:
    """Every ``s``-th voxel of ``volume`` on each axis.

    ``s`` is the least stride keeping at most ``max_voxels`` voxels; the kept voxels are centred in
    the grid.

    The values are the volume's own, not interpolated: a metric grid whose points fall between
    the image's voxels samples it with a blur that changes from point to point, and that biased
    the optimum by up to 0.5 mm in the measurements (see
    docs/decisions/registration-3d3d-levels.md).
    """
    shape = np.asarray(volume.shape)
    if np.prod(shape) <= max_voxels:
        return volume
    stride = 2
    while np.prod(-(-shape // stride)) > max_voxels:
        stride += 1
    counts = -(-shape // stride)
    counts = np.where(counts * stride - stride + 1 > shape, counts - 1, counts)
    counts = np.maximum(counts, 1)
    start = (shape - 1 - (counts - 1) * stride) // 2
    box = tuple(slice(int(a), int(a + (n - 1) * stride + 1), stride)
                for a, n in zip(start, counts, strict=True))
    new_from_old = np.diag([float(stride)] * 3 + [1.0])
    new_from_old[:3, 3] = start
    return Volume(np.ascontiguousarray(volume.data[box]), volume.world_from_index @ new_from_old,
                  units=volume.units)


def _smoothed(volume: Volume, sigma_voxels: float) -> Volume:
    """``volume`` smoothed by a Gaussian of ``sigma_voxels`` of its own voxels (0: as it is)."""
    if sigma_voxels <= 0:
        return volume
    from scipy.ndimage import gaussian_filter

    data = gaussian_filter(np.asarray(volume.data, dtype=np.float32), sigma_voxels,
                           mode="nearest", truncate=_TRUNCATE)
    return Volume(data, volume.world_from_index, units="other")


def _border(shape: tuple[int, ...], sigma_voxels: float) -> tuple[int, int, int]:
    """Voxels to leave unscored at each end of each axis after a smoothing of ``sigma_voxels``.

    The reach of :func:`_smoothed`'s filter, ``int(3 σ + 0.5)`` voxels (scipy's radius at
    ``truncate=3``), but never more than a quarter of the axis: a thin image keeps its middle.
    """
    width = int(_TRUNCATE * sigma_voxels + 0.5) if sigma_voxels > 0 else 0
    a, b, c = (min(width, (int(n) - 1) // 4) for n in shape)
    return a, b, c


def _cropped(volume: Volume, border: tuple[int, int, int]) -> Volume:
    """``volume`` without ``border`` voxels at each end of each axis."""
    if not any(border):
        return volume
    box = tuple(slice(b, n - b) for b, n in zip(border, volume.shape, strict=True))
    shift = np.eye(4)
    shift[:3, 3] = border
    return Volume(np.ascontiguousarray(volume.data[box]), volume.world_from_index @ shift,
                  units=volume.units)


def _moving_level(moving: Volume, spacing: float) -> tuple[Volume, bool]:
    """The moving image at the level's spacing, coarser still (``True``) beyond the voxel cap."""
    level, used = _at_spacing_within(moving, spacing, _MAX_MOVING_VOXELS)
    return level, used != spacing


def _moving_region_mm3(moving: Volume, mask: NDArray[np.bool_] | None,
                       level_shape: tuple[int, int, int], border: tuple[int, int, int],
                       capped: bool) -> float:
    """The moving region (mm³) that can be scored: its box, or its mask, less the border.

    ``border`` is in the voxels of the level image (shape ``level_shape``), which is the moving
    image's own grid unless it was capped. A mask on that grid is counted on the inner box;
    otherwise the region shrinks by the fraction of the level image's box that the border keeps
    (exact for the box itself).
    """
    if not any(border):
        return _region_mm3(moving, mask)
    if mask is not None and not capped:
        inner = tuple(slice(b, n - b) for b, n in zip(border, moving.shape, strict=True))
        return _region_mm3(moving, mask[inner])
    kept = np.prod([n - 2 * b for b, n in zip(border, level_shape, strict=True)])
    return _region_mm3(moving, mask) * float(kept) / float(np.prod(level_shape))


def _mask_on_grid(mask: NDArray[np.bool_], source: Volume, grid: Volume) -> NDArray[np.bool_]:
    """``mask`` (on ``source``'s grid) on ``grid``'s voxels, by nearest neighbour."""
    carrier = Volume(np.zeros(source.shape, dtype=np.uint8), source.world_from_index,
                     labels=mask.astype(np.uint8), units="other")
    moved = carrier.resample_to_grid(grid.shape, grid.world_from_index)
    assert moved.labels is not None
    return moved.labels > 0


def _mask_volume(mask: NDArray[np.bool_], volume: Volume) -> Volume:
    return Volume(mask.astype(np.float32), volume.world_from_index, units="other")


# ------------------------------------------------------------------------------- the objective


@dataclass(eq=False)
class _Level(Level):
    """One pyramid level's images, renderers and metric: scores batches of transforms.

    Its parameters are those of ``model`` about ``pivot``, applied after ``start`` (the
    module's convention); :meth:`matrix_losses` scores transforms directly.
    """

    grid: Volume                       # the metric grid (fixed level image, coarsened)
    fixed_values: torch.Tensor          # (I, J, K) float32
    fixed_mask: torch.Tensor | None     # (I, J, K) bool
    renderer: Renderer                  # bound to the moving level image
    mask_renderer: Renderer | None      # bound to the moving mask level image (0/1 float)
    metric: Metric
    min_overlap: float
    region_mm3: float                   # min(fixed region, moving region), mm³
    max_batch: int | None
    spacing_mm: NDArray[np.float64]     # spacing of the moving level image
    spec: ParamSpec = field(default_factory=lambda: ParamSpec.rigid6())
    model: _Model | None = None
    origin: NDArray[np.float64] = field(default_factory=lambda: np.eye(4))  # init transform
    pivot: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    overlap: float = float("nan")       # at the level's result (set by finish)
    sigma_voxels: float = 0.0           # the in-place smoothing of both images (shrink 1)
    no_overlap: str | None = None       # the error raised when the result barely overlaps

    @property
    def voxel_mm3(self) -> float:
        return float(abs(np.linalg.det(self.grid.world_from_index[:3, :3])))

    def _chunk(self, matrices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        shape = self.grid.shape
        affine = self.grid.world_from_index
        res = self.renderer.resample(shape, affine, matrices, fill=0.0)
        mask = res.mask
        if self.fixed_mask is not None:
            mask = mask & self.fixed_mask
        if self.mask_renderer is not None:
            moved = self.mask_renderer.resample(shape, affine, matrices, fill=0.0)
            mask = mask & (moved.values > 0.5)
        with torch.no_grad():
            score = self.metric(self.fixed_values, res.values, mask)
        overlap = mask.flatten(1).sum(dim=1).to(torch.float64) * self.voxel_mm3 / self.region_mm3
        return score.to(torch.float64), overlap.clamp(max=1.0)

    def scores(self, matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Metric scores ``(B,)`` (the metric's own sense) and overlap fractions ``(B,)``."""
        step = matrices.shape[0] if self.max_batch is None else self.max_batch
        parts = [self._chunk(matrices[i:i + step]) for i in range(0, matrices.shape[0], step)]
        score = torch.cat([p[0] for p in parts]).numpy()
        overlap = torch.cat([p[1] for p in parts]).numpy()
        return score, overlap

    def matrix_losses(self, matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values to minimise ``(B,)`` (penalised where the overlap is too small), and overlaps."""
        score, overlap = self.scores(matrices)
        loss = -score if self.metric.higher_is_better else score.copy()
        empty = float(self.metric.empty_score)
        empty_loss = -empty if self.metric.higher_is_better else empty
        low = overlap < self.min_overlap
        if low.any():
            deficit = (self.min_overlap - overlap[low]) / self.min_overlap
            loss[low] = empty_loss + (1.0 + deficit) * max(1.0, abs(empty_loss))
        return loss, overlap

    def transforms(self, params: NDArray[np.float64]) -> NDArray[np.float64]:
        """``(λ, 4, 4)`` ``fixed_from_moving`` of ``(λ, n)`` parameters."""
        assert self.model is not None
        return self.model.matrices(params, self.pivot) @ self.origin

    def losses(self, params: NDArray[np.float64]) -> NDArray[np.float64]:
        return self.matrix_losses(self.transforms(params))[0]

    def finish(self, x: NDArray[np.float64], index: int) -> tuple[float, dict[str, Any]]:  # noqa: ARG002 - override
        score, overlap = self.scores(self.transforms(x[None]))
        self.overlap = float(overlap[0])
        if self.no_overlap is not None and self.overlap < self.min_overlap:
            raise InputError(self.no_overlap, key="moving")
        return float(score[0]), {"spacing_mm": np.round(self.spacing_mm, 4).tolist(),
                                 "grid": list(self.grid.shape),
                                 "sigma_voxels": self.sigma_voxels}


def _base_spacing(fixed: Volume, moving: Volume) -> float:
    return float(max(np.exp(np.log(fixed.spacing).mean()), np.exp(np.log(moving.spacing).mean())))


def _region_mm3(volume: Volume, mask: NDArray[np.bool_] | None) -> float:
    voxel = float(abs(np.linalg.det(volume.world_from_index[:3, :3])))
    count = float(np.prod(volume.shape)) if mask is None else float(np.count_nonzero(mask))
    return voxel * count


def _build_level(level: LevelOptions, base: float, fixed: Volume, moving: Volume,
                 fixed_mask: NDArray[np.bool_] | None, moving_mask: NDArray[np.bool_] | None,
                 metric: Metric, opts: Register3D3DOptions, backend: str | None,
                 fine_sigma: float = 0.0) -> _Level:
    from regkit.render.select import make_renderer

    # shrink 1 keeps both images on their own grids, smoothed in place alike (fine_sigma):
    # resampling them to a common grid, or smoothing only one of them, biases the optimum
    # (measured: see docs/decisions/registration-3d3d-levels.md).
    spacing = level.shrink * base if level.shrink > 1 else 0.0
    sigma = fine_sigma if spacing == 0.0 else 0.0
    # The metric grid is strided from the smoothed fixed image without its border, so that
    # the points its box's edge was smoothed into are never scored and the budget of points
    # goes to those that are.
    fixed_level = _smoothed(_at_spacing(fixed, spacing), sigma)
    grid = _coarsened(_cropped(fixed_level, _border(fixed_level.shape, sigma)), level.max_voxels)
    grid_mask = None if fixed_mask is None else _mask_on_grid(fixed_mask, fixed, grid)
    if grid_mask is not None and not grid_mask.any():
        raise InputError(f"the fixed mask vanishes on the {grid.shape} grid of a pyramid level "
                         f"(spacing {np.round(grid.spacing, 2).tolist()} mm): it is thinner than "
                         "a voxel there; use a larger mask or finer levels", key="fixed_mask")
    moving_level, capped = _moving_level(moving, spacing)
    # A moving image too large for the renderer is already coarsened and smoothed by the
    # pyramid, by more than `sigma` of its own voxels: it is not smoothed again.
    level_shape = moving_level.shape
    border = _border(level_shape, sigma)
    moving_level = _cropped(_smoothed(moving_level, 0.0 if capped else sigma), border)
    name = backend
    renderer = make_renderer(moving_level, backend=name)
    mask_renderer = None
    if moving_mask is not None:
        mask_renderer = make_renderer(_at_spacing(_mask_volume(moving_mask, moving), spacing),
                                      backend=name)
    fixed_region = float(abs(np.linalg.det(grid.world_from_index[:3, :3]))) * (
        float(np.prod(grid.shape)) if grid_mask is None else float(np.count_nonzero(grid_mask)))
    region = min(fixed_region,
                 _moving_region_mm3(moving, moving_mask, level_shape, border, capped))
    values = torch.from_numpy(np.array(grid.data, dtype=np.float32))
    return _Level(grid=grid, fixed_values=values,
                  fixed_mask=None if grid_mask is None else torch.from_numpy(grid_mask),
                  renderer=renderer, mask_renderer=mask_renderer, metric=metric,
                  min_overlap=float(opts.min_overlap), region_mm3=region,
                  max_batch=opts.max_batch, spacing_mm=moving_level.spacing,
                  sigma_voxels=sigma)


# ----------------------------------------------------------------------- the entry point


def register_3d3d(fixed: Volume, moving: Volume, *, transform: TransformKind = "rigid",
                  metric: str = "ncc", metric_options: Mapping[str, Any] | None = None,
                  fixed_mask: Any = None, moving_mask: Any = None,
                  init: InitKind | Any = "center", seed: int | None = engine.DEFAULT_SEED,
                  options: Register3D3DOptions | Mapping[str, Any] | None = None,
                  backend: str | None = None,
                  progress: ProgressCallback | None = None) -> Registration3D3DResult:
    """Register ``moving`` to ``fixed``: find ``fixed_from_moving`` (moving world mm → fixed).

    Args:
        fixed: The reference volume; the metric is computed on (a coarsening of) its grid.
        moving: The volume to align; may have another grid, spacing, orientation and field of
            view (a partial overlap is fine).
        transform: ``"rigid"`` (6 DoF) or ``"affine"`` (12 DoF: the rigid pyramid, then an
            affine refinement, see :func:`affine_from_params`).
        metric: A metric name of :func:`regkit.metrics.get_metric` that takes 3-D images:
            ``"ncc"`` (the default, for the same modality), ``"nmi"`` or ``"mattes_mi"`` across
            modalities, ``"ssd"``, ``"lncc"``, ...
        metric_options: The metric's options (``{"bins": 32}``); ``check_finite`` defaults to
            False here, since the engine feeds it finite images.
        fixed_mask: Optional ``(I, J, K)`` mask on the fixed grid (bool, or numbers: non-zero /
            > 0.5 is in): only these voxels are scored.
        moving_mask: Optional mask on the moving grid: only voxels that map into it are scored.
        init: ``"center"`` (default), ``"moments"``, ``"identity"`` or a ``(4, 4)``
            ``fixed_from_moving`` to start from; see :func:`initial_transform`.
        seed: Seed of every random draw (default
            :data:`~regkit.registration.engine.DEFAULT_SEED`; None: a fresh one, reported in
            ``extras["seed"]``). The same seed gives the same result.
        options: :class:`Register3D3DOptions` or a dict of its fields (levels, budgets, ranges).
        backend: Renderer backend that resamples the moving image (``"torch"``, ``"gl"``); None
            applies :func:`regkit.render.select.make_renderer`'s rule (OpenGL where an EGL
            context can be made): ``"gl"`` resamples a batch faster than ``"torch"``, whose
            resampling loops over the batch. See docs/decisions/registration-3d3d-levels.md.
        progress: Called with a :class:`Progress` after every optimizer iteration and at every
            level's end.

    Returns:
        :class:`~regkit.registration.results.Registration3D3DResult` with ``fixed_from_moving``,
        ``metric``, ``final_score`` (the metric at the result on the finest level, the metric's
        own sense), ``seconds``, ``evaluations``, ``history`` (one
        :class:`~regkit.registration.results.ConvergencePoint` per iteration; ``best`` is the
        level's best so far) and ``extras``: ``transform``, ``init``, ``seed``, ``pivot_mm``,
        ``fine_sigma_voxels`` (the smoothing used at the rigid ``shrink = 1`` levels),
        ``initial_fixed_from_moving``, ``overlap`` (at the result), ``levels`` (per level: stage,
        spacing, grid, smoothing ``sigma_voxels``, method, evaluations, seconds, score, stop
        reasons) and ``stop_reasons``
        (those of the last level).

    Raises:
        InputError: bad options, an unknown transform or init, a non-rigid ``init`` matrix for
            a rigid registration, a metric that does not take 3-D images, a constant image,
            masks that select nothing, or volumes that do not overlap enough anywhere in the
            search range.
        ShapeError: a mask that is not on its image's grid.
        UnknownNameError: an unknown metric or optimizer name (the message lists the known).
    """
    t_start = time.perf_counter()
    fixed = _as_volume(fixed, "fixed")
    moving = _as_volume(moving, "moving")
    stages = _STAGES.get(transform)
    if stages is None:
        raise InputError(f"must be one of {', '.join(_STAGES)}, got {transform!r}",
                         key="transform")
    opts = coerce_options(Register3D3DOptions, options, "registration")
    metric_opts = {"check_finite": False, **dict(metric_options or {})}
    scorer = get_metric(metric, **metric_opts)
    if 3 not in scorer.spatial_dims:
        raise InputError(f"metric '{metric}' does not take 3-D images", key="metric")
    fm = _check_mask(fixed_mask, fixed, "fixed_mask")
    mm = _check_mask(moving_mask, moving, "moving_mask")
    _check_variance(fixed, fm, "fixed")
    _check_variance(moving, mm, "moving")
    seed = engine.check_seed(seed)
    with engine.torch_threads(opts.threads):
        return _register(fixed, moving, fm, mm, stages, scorer, metric, init, seed, opts,
                         backend, progress, t_start)


_INIT_RIGID_ATOL = 1e-4
"""How far a rigid registration's initial matrix may lie from rigid (each entry of its rotation
block from the nearest rotation's): a rotation written to 4 decimals, or in float32, is read as
that rotation."""


def _rigid_start(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """A rigid registration's initial matrix, snapped onto the nearest rotation.

    The rigid model moves around this start: a scale or a reflection left in it would stay in
    the result, which would then not be rigid.

    Raises:
        InputError: a matrix farther than :data:`_INIT_RIGID_ATOL` from rigid (key ``init``).
    """
    nearest, distance = nearest_rotation(matrix[:3, :3])
    reflection = bool(np.linalg.det(nearest) < 0)
    if reflection or distance > _INIT_RIGID_ATOL:
        what = ("holds a reflection" if reflection
                else f"lies {float(distance):.1e} from the nearest rotation (a scale or a shear)")
        raise InputError(f"a rigid registration needs a rigid initial transform: this one's "
                         f"rotation block {what}, over {_INIT_RIGID_ATOL:g}; give "
                         "transform='affine' to start from an affine one", key="init")
    out = matrix.copy()
    out[:3, :3] = nearest
    return out


class _Problem:
    """The 3D–3D problem for the engine: its stages' levels, from the chosen initial transform."""

    def __init__(self, fixed: Volume, moving: Volume, fm: NDArray[np.bool_] | None,
                 mm: NDArray[np.bool_] | None, plan: list[tuple[_Model, LevelOptions]],
                 scorer: Metric, metric: str, init: Any, opts: Register3D3DOptions,
                 backend: str | None):
        self.fixed, self.moving, self.fm, self.mm = fixed, moving, fm, mm
        self.models = [model for model, _ in plan]
        self.scorer, self.metric, self.opts, self.backend = scorer, metric, opts, backend
        self.higher_is_better = scorer.higher_is_better
        self.candidates, self.centroid = _initial_candidates(fixed, moving, init, fm, mm,
                                                             opts.foreground_threshold)
        self.init_name = init if isinstance(init, str) else "matrix"
        if not isinstance(init, str) and all(m is _RIGID for m in self.models):
            self.candidates = [_rigid_start(self.candidates[0])]
        self.base = _base_spacing(fixed, moving)
        sigma = opts.fine_sigma_voxels
        if sigma is None:
            sigma = _FINE_SIGMA_LINEAR if metric in LINEAR_METRICS else _FINE_SIGMA_OTHER
        self.fine_sigma = float(sigma)
        self.start = self.candidates[0]
        self.pivot = (self.start @ np.append(self.centroid, 1.0))[:3]

    def level(self, index: int, options: LevelOptions) -> _Level:
        # The affine refinement keeps its images as they are: smoothing them doubled the
        # example's affine mTRE (docs/decisions/registration-3d3d-levels.md).
        sigma = self.fine_sigma if self.models[index] is _RIGID else 0.0
        lv = _build_level(options, self.base, self.fixed, self.moving, self.fm, self.mm,
                          self.scorer, self.opts, self.backend, sigma)
        if index == 0 and len(self.candidates) > 1:  # moments: screen every candidate at once
            losses, _ = lv.matrix_losses(np.stack(self.candidates))
            lv.setup_evaluations = len(self.candidates)
            self.start = self.candidates[int(np.argmin(losses))]
            self.pivot = (self.start @ np.append(self.centroid, 1.0))[:3]
        model = self.models[index]
        lv.model, lv.stage, lv.spec = model, model.name, model.spec(options, self.opts)
        lv.origin, lv.pivot, lv.higher_is_better = self.start, self.pivot, self.higher_is_better
        if index == 0:
            lv.no_overlap = (
                f"the fixed and moving volumes do not overlap by at least "
                f"{self.opts.min_overlap:.0%} anywhere the search reached within "
                f"±{self.opts.trans_range_mm:g} mm and ±{self.opts.rot_range_deg:g}° of the "
                f"initial transform (init={self.init_name}): check their world coordinates, or "
                "give an initial transform")
        return lv


def _register(fixed: Volume, moving: Volume, fm: NDArray[np.bool_] | None,
              mm: NDArray[np.bool_] | None, stages: tuple[tuple[_Model, str], ...],
              scorer: Metric, metric: str, init: Any, seed: int, opts: Register3D3DOptions,
              backend: str | None, progress: ProgressCallback | None,
              t_start: float) -> Registration3D3DResult:
    """The pyramid of :func:`register_3d3d`, on checked inputs."""
    plan = [(model, level) for model, key in stages for level in getattr(opts, key)]
    problem = _Problem(fixed, moving, fm, mm, plan, scorer, metric, init, opts, backend)
    done = engine.run(problem, [level for _, level in plan], seed=seed, progress=progress)
    last = done.level
    assert isinstance(last, _Level)
    final = last.transforms(done.x[None])[0]
    return Registration3D3DResult(
        fixed_from_moving=final, metric=metric, final_score=done.score,
        seconds=time.perf_counter() - t_start, evaluations=done.evaluations,
        history=done.history,
        extras={
            "transform": last.stage if len(stages) == 1 else "affine",
            "init": problem.init_name,
            "seed": done.seed,
            "pivot_mm": problem.pivot.tolist(),
            "initial_fixed_from_moving": problem.start.tolist(),
            "overlap": last.overlap,
            "levels": list(done.levels),
            "stop_reasons": done.stop_reasons,
            "fine_sigma_voxels": problem.fine_sigma,
        })


# --------------------------------------------------------------------------------- evaluation


def mean_target_error(fixed_from_moving_est: Any, fixed_from_moving_true: Any,
                      points_moving: Any) -> float:
    """The mTRE of ``fixed_from_moving`` in mm.

    The same as :func:`regkit.registration.pose_error.mean_target_error`, for 4 × 4 transforms.

    Args:
        fixed_from_moving_est: ``(4, 4)`` estimated transform.
        fixed_from_moving_true: ``(4, 4)`` true transform.
        points_moving: ``(N, 3)`` target points in the moving world, mm (bone voxel centres,
            landmarks), N >= 1.
    """
    est = np.asarray(fixed_from_moving_est, dtype=np.float64)
    true = np.asarray(fixed_from_moving_true, dtype=np.float64)
    if est.shape != (4, 4) or true.shape != (4, 4):
        raise ShapeError(f"transforms must be 4x4, got {est.shape} and {true.shape}")
    return pose_error.mean_target_error(est, true, points_moving)
