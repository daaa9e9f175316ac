"""Pieces shared by the registration engine and its problems: levels, progress, options, resampling.

The 3D–3D problem (:mod:`regkit.registration.volume_registration`) and the 2D–3D engine
(:mod:`regkit.registration.radiograph_registration`) describe their pyramids with the same
:class:`LevelOptions`, report with the same :class:`Progress`, check their options dataclasses
with :func:`regkit.optim.coerce_options` and bring a volume to a level's spacing with
:func:`at_spacing`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.errors import InputError
from regkit.optim import gradient_methods, optimizers
from regkit.utils.blocks import block_reduce
from regkit.utils.checks import is_real
from regkit.volume import Volume

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_THREADS",
    "LevelOptions",
    "Progress",
    "ProgressCallback",
    "at_spacing",
    "at_spacing_within",
    "block_mean",
    "level_options",
]

# A pyramid axis is left alone when the level spacing exceeds its own by less than this factor.
_SPACING_SLACK = 1.01
# Gaussian of the pyramid, in target voxels (elastix's choice: half the shrink factor).
_PYRAMID_SIGMA = 0.5
# Bytes of float32 data reduced at a time by block_mean: bounds its temporaries (a fresh full-size
# copy of a 512 × 512 × 133 CT cost about 1 s of page faults on the benchmark machines).
_BLOCK_SLAB_BYTES = 16 << 20


DEFAULT_SEED = 0
"""The seed of every registration kind when none is given: runs repeat unless asked not to
(``seed=None`` draws a fresh one, reported in the record)."""

DEFAULT_THREADS = 1
"""torch's intra-op threads while a registration runs, for every kind: each call scores a batch
of small images or grids (≤ 10⁶ voxels), where fork/join costs more than it saves and a busy
core stalls the other (3D–3D on 2 cores: 2.4–3.2 s with 1 thread, 6.3–31 s with 2; 2D–3D: no
difference, its renders are OpenGL's)."""


@dataclass(frozen=True)
class LevelOptions:
    """One level of a registration pyramid: its resolution, its metric grid and its optimizer.

    Shared by the 3D–3D and the 2D–3D problems; each reads the resolution fields in its own
    terms, stated here.

    Attributes:
        shrink: Volume spacing at this level as a multiple of the base spacing, ``>= 1``; no
            axis is made finer than its own. 3D–3D: the base is the larger of the two images'
            geometric-mean spacings. 2D–3D: the CT's geometric-mean spacing (the CT is
            smoothed and resampled to it before rendering).
        max_voxels: The metric grid is coarsened until it has at most this many points. 3D–3D:
            voxels of the fixed level image. 2D–3D: pixels of each view's detector, binned by
            the least whole factor that leaves at most this many.
        method: A derivative-free optimizer registered in :data:`regkit.optim.optimizers`
            (``"cmaes"``, ``"quadratic"``, ``"powell"``, ``"nelder_mead"``), or a gradient method of
            :data:`regkit.optim.gradient_methods` (``"adam"``, ``"lbfgs"``) for an engine with a
            differentiable objective (2D–3D; the 3D–3D engine refuses them).
        options: That optimizer's options (a dict of its options dataclass fields, e.g.
            ``{"popsize": 12, "max_evaluations": 600, "restarts": 2}`` for CMA-ES,
            :class:`~regkit.optim.GradientOptions` fields for a gradient method); an unknown
            key is an error when the level runs. A ``seed`` left out is derived from the
            registration's seed.
        rot_step_deg: Initial step (CMA-ES standard deviation, Powell unit step; the unit of
            the quadratic model's ``radius``) of each rotation coordinate, degrees.
        trans_step_mm: Initial step of each translation coordinate, mm.
        log_scale_step: Initial step of each log-scale (affine levels only).
        shear_step: Initial step of each shear (affine levels only).
    """

    shrink: float = 1.0
    max_voxels: int = 32768
    method: str = "cmaes"
    options: Mapping[str, Any] = field(default_factory=dict)
    rot_step_deg: float = 2.0
    trans_step_mm: float = 2.0
    log_scale_step: float = 0.02
    shear_step: float = 0.02

    def __post_init__(self) -> None:
        for key in ("shrink", "rot_step_deg", "trans_step_mm", "log_scale_step", "shear_step"):
            value = getattr(self, key)
            if not is_real(value) \
                    or not math.isfinite(value) or value <= 0:
                raise InputError(f"must be a finite number > 0, got {value!r}", key=key)
        if self.shrink < 1:
            raise InputError(f"must be >= 1 (levels never upsample), got {self.shrink}",
                             key="shrink")
        if isinstance(self.max_voxels, bool) or not isinstance(self.max_voxels, int) \
                or self.max_voxels < 64:
            raise InputError(f"must be an integer >= 64, got {self.max_voxels!r}",
                             key="max_voxels")
        if not isinstance(self.options, Mapping):
            raise InputError(f"must be a mapping of optimizer options, got "
                             f"{type(self.options).__name__}", key="options")
        if self.method not in gradient_methods:
            optimizers.get(self.method)  # an unknown method fails here, listing the known ones
        object.__setattr__(self, "options", dict(self.options))


@dataclass(frozen=True)
class Progress:
    """What a registration's progress callback receives after every optimizer iteration.

    Attributes:
        level: 0-based index of the running level over all stages.
        levels: Number of levels in all.
        stage: 3D–3D: ``"rigid"`` or ``"affine"``; 2D–3D: ``"rigid"``.
        evaluations: Candidates scored so far, all levels.
        best_score: Best score of this level so far, in the metric's own sense (3D–3D: a
            candidate with too little overlap counts with its penalty, see that module).
        metric: The metric's name.
        higher_is_better: Which way the score improves.
    """

    level: int
    levels: int
    stage: str
    evaluations: int
    best_score: float
    metric: str
    higher_is_better: bool


ProgressCallback = Callable[[Progress], Any]


def level_options(level: LevelOptions, seed: int) -> Any:
    """The level's optimizer options with ``seed`` filled in where the method takes one."""
    if level.method in gradient_methods:
        return dict(level.options)
    options_type = optimizers.get(level.method).options_type
    opts = dict(level.options)
    if "seed" in {f.name for f in fields(options_type)} and opts.get("seed") is None:
        opts["seed"] = seed
    return opts


def block_mean(data: np.ndarray, factors: Sequence[int],
               transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Mean over blocks of ``factors`` voxels per axis (trailing partial blocks dropped), float32.

    ``transform``, when given, is applied voxel by voxel to the float32 data first (it must be
    elementwise: it usually sees slabs of the volume; with factors of 1 it sees the whole and
    the result is a full-size copy). The data are reduced slab by slab along the first axis, so
    a large CT never needs a full-size float64 (or transformed) copy: the result is the same,
    to the bit, as reducing the whole at once.
    """
    f = [int(k) for k in factors]

    def prepared(part: np.ndarray) -> np.ndarray:
        part = np.asarray(part, dtype=np.float32)
        return part if transform is None else np.asarray(transform(part), dtype=np.float32)

    if all(k == 1 for k in f):   # no block to average: no copy at a level on the CT's grid
        return prepared(data)
    arr = np.asarray(data)
    blocks = arr.shape[0] // f[0]
    per_block = f[0] * math.prod(arr.shape[1:]) * 4           # bytes of a float32 slab
    step = max(1, _BLOCK_SLAB_BYTES // max(per_block, 1))
    out: np.ndarray | None = None
    for b in range(0, blocks, step):
        part = block_reduce(prepared(arr[b * f[0]:min(b + step, blocks) * f[0]]), f, "mean",
                            np.float64)
        if out is None:
            out = np.empty((blocks, *part.shape[1:]), dtype=np.float32)
        out[b:b + part.shape[0]] = part
    if out is None:   # fewer elements than one block along the first axis
        return block_reduce(prepared(arr), f, "mean", np.float64).astype(np.float32)
    return out


def _plan(volume: Volume, spacing_mm: float
          ) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.float64],
                     NDArray[np.float64], tuple[int, ...]]:
    """What :func:`at_spacing` does, without doing it.

    Returns the shrinking axes, block factors, block spacing, final spacing and final shape.
    """
    native = volume.spacing
    target = np.maximum(native, spacing_mm)
    shrinking = target > native * _SPACING_SLACK
    shape = np.asarray(volume.shape, dtype=np.int64)
    if not shrinking.any():
        return shrinking, np.ones(3, np.int64), native, native, volume.shape
    factors = np.where(shrinking, np.maximum(1, np.floor(target / native + 1e-6)), 1).astype(int)
    if min(s // f for s, f in zip(volume.shape, factors, strict=True)) < 1:
        factors = np.minimum(factors, shape)
    block_spacing = native * factors
    final = np.where(target > block_spacing * _SPACING_SLACK, target, block_spacing)
    blocked = shape // factors
    if np.allclose(final, block_spacing):
        return shrinking, factors, block_spacing, block_spacing, tuple(int(n) for n in blocked)
    ratio = final / block_spacing            # as Volume.resample sizes its grid
    out = np.maximum(1, np.ceil(blocked / ratio - 1e-6)).astype(int)
    return shrinking, factors, block_spacing, final, tuple(int(n) for n in out)


def at_spacing(volume: Volume, spacing_mm: float,
               transform: Callable[[np.ndarray], np.ndarray] | None = None, *,
               smooth: bool = True) -> Volume:
    """``volume`` smoothed and resampled to ``max(own spacing, spacing_mm)`` on every axis.

    A block mean over whole voxels, then a Gaussian of σ = 0.5 target voxels on the axes that
    shrink, then trilinear resampling to the target spacing (same centre and extent). Axes whose
    spacing is already within 1 % of the target are left untouched. float32, units ``"other"``.
    ``transform``: an elementwise function of the float32 values applied before all that (as
    :func:`block_mean` applies it, slab by slab). ``smooth=False`` leaves the Gaussian out:
    the block mean and the resampling only, a sharper level (and more aliased) for a DRR that
    models the detector's blur itself.
    """
    from scipy.ndimage import gaussian_filter

    shrinking, factors, block_spacing, final, _ = _plan(volume, spacing_mm)
    if not shrinking.any():
        return Volume(block_mean(volume.data, [1, 1, 1], transform), volume.world_from_index,
                      units="other")
    data = block_mean(volume.data, factors.tolist(), transform)
    old_from_new = np.diag([*factors.astype(np.float64), 1.0])
    old_from_new[:3, 3] = (factors - 1) / 2.0
    affine = volume.world_from_index @ old_from_new
    target = np.maximum(volume.spacing, spacing_mm)
    if smooth:
        sigma = np.where(shrinking, _PYRAMID_SIGMA * target / block_spacing, 0.0)
        data = gaussian_filter(data, sigma=sigma.tolist(), mode="nearest", truncate=3.0)
    blocked = Volume(data, affine, units="other")
    if np.allclose(final, block_spacing):
        return blocked
    return blocked.resample(final)


def _level_spacing_within(volume: Volume, spacing_mm: float, max_voxels: int) -> float:
    """The spacing :func:`at_spacing_within` makes its level at (without making it)."""
    *_, final, shape = _plan(volume, spacing_mm)
    count = float(np.prod(shape))
    if count <= max_voxels:
        return spacing_mm
    spacing = float(np.exp(np.log(final).mean())) * (count / max_voxels) ** (1.0 / 3.0)
    return max(spacing_mm, spacing)


def at_spacing_within(volume: Volume, spacing_mm: float, max_voxels: int,
                      transform: Callable[[np.ndarray], np.ndarray] | None = None, *,
                      smooth: bool = True) -> tuple[Volume, float]:
    """:func:`at_spacing`, coarser still where that level would exceed ``max_voxels`` voxels.

    The coarser spacing scales the level's geometric-mean spacing by the cube root of its excess
    voxel count. Returns the level and the spacing it was made at (``spacing_mm`` unless
    coarsened); ``transform`` and ``smooth`` as in :func:`at_spacing`.
    """
    spacing = _level_spacing_within(volume, spacing_mm, max_voxels)
    return at_spacing(volume, spacing, transform, smooth=smooth), spacing
