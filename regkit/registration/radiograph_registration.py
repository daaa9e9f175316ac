"""2D–3D registration: a CT to one or several X-ray radiographs, one rigid correction for all views.

:func:`register_2d3d` finds ``world_correction``, the rigid transform of the CT's RAS+ world (mm)
that makes digitally reconstructed radiographs (DRRs) of the CT match the radiographs, so that for
every view ``camera_from_world_refined = camera_from_world_input @ world_correction``
(docs/CONVENTIONS.md). The views' relative geometry is known and kept: they share the correction.

Convention:
    **Search parameters.** The correction turns the CT about a pivot ``c`` (world mm) and shifts
    it::

        world_correction(p): x ↦ R(r) · (x − c) + c + t,      p = (rx, ry, rz, tx, ty, tz)

    with ``r`` a rotation vector in radians and ``t`` in mm (:meth:`~regkit.optim.ParamSpec.rigid6`,
    :func:`~regkit.geometry.transforms.rigid_from_params` with ``center=c``). The pivot is the
    centre of the CT's voxel grid, or with ``bones`` the centroid of those bones' voxels: a
    rotation then barely moves the anatomy being matched as a whole, so rotation and translation
    decouple (a rotation about the world origin, hundreds of mm away, would also shift it).

    Worked example: a CT centred at ``c = (0, 0, −160)`` mm and ``p = (0, 0, π/18, 5, 0, 0)``: the
    CT is turned 10° about the vertical (S) axis through ``c`` (so ``c`` stays put) and shifted
    5 mm towards the patient's right (+x in RAS+); ``c`` maps to ``(5, 0, −160)``. The refined
    cameras are ``camera_from_world @ world_correction``: each sees the CT as the input camera
    would see it turned and shifted so.

    **Objective.** For each view, the DRR (line integrals of μ, 1/mm · mm) of the candidate is
    compared with the radiograph by the metric, both smoothed by a Gaussian of ``smooth_px``
    level pixels (normalised by the view's mask weights), and the scores of the views are
    averaged. A
    candidate population of λ poses and V views is rendered in **one batched call** of
    ``B = λ · V`` views (one call per detector size when the views differ in size). Where
    ``bones`` is given, each view is first cropped to the bones' projected box (see
    ``bone_roi_margin``), a second batched render draws the DRR of those bones only
    (``renderer.drr(bones=...)``), and the metric counts only the pixels where they project
    in that candidate's pose, dilated by ``bone_margin_px`` level pixels (and within the view's
    mask): the neighbours' pixels are ignored. The DRR scored there is of the whole CT, since
    the radiograph shows the bone over soft tissue and overlapping structures: measured on the
    shipped crop (T9, 80² detector), gncc of the bones-only DRR inside the footprint was 0.04
    at the true pose and 0.07 at a start 6° and 10 mm off (no signal); of the whole DRR, 0.99
    against 0.78.

    **Masks.** Per view, the caller's ``image_masks`` (True or weight > 0 counts) and, unless
    ``mask_flat`` is off, the radiograph's *flat* pixels removed: pixels whose 3×3
    neighbourhood is exactly constant (a collimator's zero or constant border, burnt-in
    padding), dilated by 2 pixels so that the collimator's edge, which no DRR shows, is not
    scored either.

    **Pyramid.** Level ``ℓ`` (:class:`~regkit.registration.levels.LevelOptions`) renders the CT
    smoothed and resampled to ``shrink · base`` mm (``base`` = the CT's geometric-mean voxel
    spacing; :func:`~regkit.registration.levels.at_spacing`) on each view's detector binned by
    the least whole factor ``f`` that leaves at most ``max_voxels`` pixels
    (:meth:`Camera.downsample`; the radiograph is averaged over the same ``f × f`` blocks). Each
    level starts from the previous level's result. CMA-ES searches wide on coarse levels; Powell
    or a gradient method (Adam, L-BFGS through the differentiable torch renderer, w.r.t. the
    six parameters) refines on fine ones.

    **Defaults** (:data:`DEFAULT_LEVELS`, metric ``gncc``) were chosen from measurements
    documented with those constants.

Example:
    >>> result = register_2d3d(ct, [camera], [radiograph], seed=1)  # doctest: +SKIP
    >>> result.world_correction, result.cameras[0].camera_from_world  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from regkit.errors import InputError, ShapeError
from regkit.geometry.camera import Camera
from regkit.geometry.transforms import rigid_from_params
from regkit.io.radiograph import Radiograph, to_line_integral
from regkit.metrics import Metric, get_metric
from regkit.optim import ParamSpec, gradient_methods, optimizers
from regkit.registration import engine
from regkit.registration.engine import Level
from regkit.registration.levels import (
    DEFAULT_THREADS,
    LevelOptions,
    ProgressCallback,
    at_spacing,
    coerce_options,
)
from regkit.registration.pose_error import mean_target_error
from regkit.registration.results import Registration2D3DResult, cameras_from_correction
from regkit.render.base import Renderer, Views, bone_key
from regkit.volume import Volume

__all__ = [
    "DEFAULT_LEVELS",
    "Register2D3DOptions",
    "correction_from_params",
    "mean_target_error_2d3d",
    "register_2d3d",
    "save_report",
]

# Largest level volume handed to a renderer: bounds memory and stays clear of the torch
# backend's path for volumes over 2**24 voxels (see volume_registration's _MAX_MOVING_VOXELS).
_MAX_LEVEL_VOXELS = 1 << 23
# Flat-pixel detection: a 3x3 neighbourhood whose range is at most this fraction of the image's
# value range counts as exactly constant.
_FLAT_RTOL = 1e-7
# Pixels of dilation around flat (collimated) regions, at full resolution.
_FLAT_MARGIN_PX = 2


DEFAULT_LEVELS: tuple[LevelOptions, ...] = (
    LevelOptions(shrink=4.0, max_voxels=32 * 32, method="cmaes",
                 options={"popsize": 16, "max_evaluations": 800, "restarts": 2,
                          "tol_x": 0.01, "tol_fun": 1e-5},
                 rot_step_deg=8.0, trans_step_mm=15.0),
    LevelOptions(shrink=2.0, max_voxels=64 * 64, method="cmaes",
                 options={"popsize": 10, "max_evaluations": 200, "tol_x": 0.01,
                          "tol_fun": 1e-6},
                 rot_step_deg=2.0, trans_step_mm=3.0),
    LevelOptions(shrink=1.0, max_voxels=128 * 128, method="quadratic",
                 options={"radius": 0.5, "design": "minimal", "max_evaluations": 200,
                          "tol_x": 0.12, "tol_fun": 1e-8},
                 rot_step_deg=0.5, trans_step_mm=1.0),
)
"""The 2D–3D pyramid: detectors of at most 32², 64² and 128² pixels, CT at 4, 2, 1 × its spacing.

Level 0 searches wide (CMA-ES, σ = 8° and 15 mm, popsize 16, IPOP restarts), level 1 narrows
(CMA-ES, σ = 2° and 3 mm), level 2 polishes with the batched quadratic-model trust region
(:mod:`regkit.optim.quadratic`: designs of 28 poses rendered in one call, first radius 0.25°
and 0.5 mm) on the CT as it is (capped at 2²³ voxels); levels 1 and 2 fit the bone weight
(``fit_bone_weight``).

Measured on polychromatic radiographs (``benchmarks/precision_2d3d.py``: the whole chest CT, a
256² AP view made by a 70 kVp two-material model with beam hardening, 5 % scatter, 10⁴ photons,
1 px blur; starts up to 15° and 30 mm; 14 cases, 2 cores with a niced job beside):

* Powell at level 2 (120 evaluations, the previous default), no bone fit: median mTRE 0.66 mm,
  worst 1.13, 13/14 under 1 mm, 8.9 s.
* The quadratic model at level 2, no bone fit: median 0.46, worst 0.53 mm, 7.1 s: it reaches
  the objective's optimum along the nearly flat depth direction where Powell stopped short.
* Both (designs of 43 poses, ``tol_x`` 0.12: 4–5 designs): median 0.32, worst 0.38 mm, 14/14
  under 1 mm, about 14 s (the bone part is a second render). ``tol_x`` 0.06: the same to
  0.01 mm, one design more. The minimal design (28 poses, these defaults): the same figures to
  0.01 mm with 112–196 evaluations at level 2 instead of 172–301. Powell with the bone fit:
  median 0.36, worst 0.96 mm, 11.8 s.
* What is left is the objective's own bias, the same in every case (the same radiograph):
  +0.17 mm down the image and 0.26 mm towards the source. It follows the radiograph's blur:
  re-registered from the truth, radiographs with 0, 1 and 2 px of detector blur ended 1.1 mm
  towards the source, 0.3 mm, and 2.0 mm away from it (``smooth_px`` 0.75: 0.9, 0.15 and
  2.3 mm), so a single view's depth is only as good as the blur model. Fitting a change of blur
  per candidate (a Laplacian term) or choosing the DRR's blur that scores best at each level's
  start both made it worse.

Earlier measurements on the monochromatic benchmark (``benchmarks/test_bench_2d3d.py``: the
radiograph rendered with bone weighted 1.5×, 5 % scatter, Poisson noise at 10⁴ photons,
σ = 1 px blur; starts up to 15° and 30 mm), 10 cases each, on the 2 shared cores (load 2–3, so
times run long), OpenGL renders, 1 torch thread, with Powell at level 2:

* Level 2: Powell, 120 evaluations, ``tol_x`` 0.02 (the previous default), 8 cases on an idle
  but slow VM (nanodrr's 256² DRR took 2.2 s there against 1.2 s on the machine of the
  renderer benchmark's first run): median mTRE 0.28 mm, worst 0.41 mm, median 9.3 s.
* Level 2 with 60 evaluations and ``tol_x`` 0.05 (the earlier default), same VM: 20 cases,
  20/20 within 1 mm, median 0.40 mm (p90 0.87 mm), 7.2 s; on the 3 cases nanodrr's Adam
  registration also ran, 0.59, 0.33 and 0.60 mm against its 0.43, 0.43 and 0.46 mm: the
  polish stopped short. With 90 evaluations and ``tol_x`` 0.02: median 0.43 mm, 8.2 s.
  CMA-ES at level 2 (popsize 8, 120 evaluations, σ = 0.3° and 0.6 mm): median 0.64 mm, worst
  1.7 mm, 8.5 s. Earlier, on the shared cores at load 2–3, the 60-evaluation level 2 gave
  10/10 within 1 mm, median 0.55 mm, 8.2 s (level 0 1.4–3.1 s, level 1 2.1–4.3 s, level 2
  3.3–5.5 s).
* Level 1 with 300 evaluations and level 2 Powell with 120 evaluations: 10/10 at 1 mm, median
  0.20 mm but 14 s (level 2 alone 5.7–10 s, about 50 ms per 128² render of the CT).
* Level 2 on 85² (``max_voxels`` 96², 100 evaluations): median 0.40 mm, 9/10 within 2 mm (one
  level-0 miss at 4.9 mm), 11.7 s: coarser pixels save less than they cost in accuracy.
* Biplane (AP and lateral, 4 cases): median mTRE 0.20 mm, 20 s (twice the renders).
* Threads: 1 or 2 torch threads made no difference beyond the load's noise (4 cases: median
  10.3 and 9.8 s at load 2.5–2.8): the renders are OpenGL's (llvmpipe takes both cores
  anyway); torch only smooths and scores 32²–128² images. Hence ``threads=1``, as in 3D–3D.
* Metric: on the shipped crop (80² detector) the optimum over depth moved 1.2–1.4 mm for gncc
  and gc with a 0.7 px blur of the radiograph and no smoothing; 0.02–0.15 mm (gncc) with
  ``smooth_px=1``, which gncc keeps with twice gc's curvature. Plain ncc was unbiased but
  10× flatter (a poor search landscape); lncc (9 px patches) moved 4 mm.
"""


@dataclass(frozen=True)
class Register2D3DOptions:
    """Options of :func:`register_2d3d`; an unknown key is an error.

    Attributes:
        levels: The pyramid, coarsest first (see the module docstring for what ``shrink`` and
            ``max_voxels`` mean here). A level's ``method`` may be a derivative-free optimizer
            or a gradient method (``"adam"``, ``"lbfgs"``: rendered by the torch backend with
            gradients w.r.t. the pose).
        rot_range_deg: Search bound on each rotation coordinate, degrees, in ``(0, 180]``.
        trans_range_mm: Search bound on each translation coordinate, mm.
        starts: Random starts screened in one batched call at level 0 (uniform within
            ``±start_spread`` level-0 steps of the origin, the origin included); the best
            becomes CMA-ES's start. 0: start from the input cameras. For wide searches:
            from starts up to 30° and 60 mm (6 benchmark-style cases, whole CT), 5/6 ended
            within 2 mm with 0 starts and 6/6 with 64 (medians 0.62 and 0.73 mm, 9.9 and
            7.5 s); within the 15° / 30 mm of the defaults' measurements 0 was enough.
        start_spread: Half-width of the screened box, in level-0 steps.
        bone_margin_px: Dilation, in level pixels, of the bones' projected footprint that
            the metric counts when ``bones`` is given.
        bone_roi_margin_mm: With ``bones``, each view is cropped to the bones' projected box
            at the initial pose, widened on every side by this many mm at the bones' depth
            (so the pyramid's pixels go to the bone, and the bone stays in view within that
            distance of its start). A margin of 30 % of the box instead lost a vertebra of the
            whole CT 10 mm off its start out of a 20-pixel-tall crop.
        smooth_px: σ, in level pixels, of a Gaussian applied to both the radiograph and every
            DRR before the metric (0: none). A radiograph is blurrier than a DRR (focal spot,
            detector, scatter); a gradient metric then prefers a wrong magnification, i.e. a
            wrong depth: on the crop at 80², a radiograph blurred by 0.7 px moved gncc's
            optimum 1.2 mm in depth. Smoothing both makes their blurs more alike.
        mask_partial_rays: Score only the pixels whose ray, at the candidate's pose, crosses
            the CT's whole depth: it enters and leaves the voxel box through the two faces
            across the viewing direction (eroded by one level pixel). A ray leaving through a
            side face sees less than the patient: where the CT's field of view ends inside the
            body, its DRR has an edge no radiograph shows, and with a smoothed CT (coarse
            levels) that edge moved the depth optimum by 3–4 mm on the shipped crop at level 1
            (64², CT at 2x); with this mask, 0.1–0.6 mm, but at level 0 (32²) -7 mm, and whole
            single-view registrations of the crop were no better (3 starts: 1.0, 6.0, 3.3 mm
            against 6.5, 2.5, 2.1 mm without). Off by default until measured further; the
            benchmark's whole CT, whose box ends mostly in air, does not need it. Ignored for
            a view where fewer than a quarter of the pixels would remain.
        mask_flat: Leave the radiographs' flat (collimated, padded) pixels out of the metric.
        fit_bone_weight: At every level but the first, fit the weight of the CT's bone
            against its soft tissue to each radiograph, per candidate
            (:func:`_fit_bone_weight`: closed form on the images' edges, a second render of
            the bone part): a radiograph is not a DRR, and its bone contrast depends on the
            spectrum and the detector, not on the CT's HU-to-μ mapping; the bias it leaves
            lies mostly along the view, which one radiograph barely fixes. The first level,
            which captures, keeps the DRR as it is: a free weight there flattened the
            landscape far from the truth (the shipped crop's single view ended 8 mm off).
            Measured in :data:`DEFAULT_LEVELS`.
        bone_threshold_hu: HU above which the CT's μ counts as bone for ``fit_bone_weight``
            (the μ above that of this HU is the bone part).
        mu_water: μ of water (1/mm) for a CT in HU (docs/CONVENTIONS.md: 0.02).
        max_batch: Most views rendered in one call (None: the whole population times views).
        threads: torch's intra-op threads while the registration runs (restored after); None
            leaves torch alone.
    """

    levels: tuple[LevelOptions, ...] = DEFAULT_LEVELS
    rot_range_deg: float = 45.0
    trans_range_mm: float = 100.0
    starts: int = 0
    start_spread: float = 2.0
    bone_margin_px: int = 2
    bone_roi_margin_mm: float = 30.0
    smooth_px: float = 1.0
    mask_flat: bool = True
    mask_partial_rays: bool = False
    fit_bone_weight: bool = True
    bone_threshold_hu: float = 150.0
    mu_water: float = 0.02
    max_batch: int | None = None
    threads: int | None = DEFAULT_THREADS

    def __post_init__(self) -> None:
        levels = tuple(self.levels)
        if not levels:
            raise InputError("needs at least one level", key="levels")
        for level in levels:
            if not isinstance(level, LevelOptions):
                raise InputError(f"levels must be LevelOptions, got {type(level).__name__}",
                                 key="levels")
        object.__setattr__(self, "levels", levels)
        for key in ("rot_range_deg", "trans_range_mm", "start_spread", "mu_water",
                    "bone_roi_margin_mm"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value <= 0:
                raise InputError(f"must be a finite number > 0, got {value!r}", key=key)
        if self.rot_range_deg > 180:
            raise InputError(f"must be at most 180, got {self.rot_range_deg}",
                             key="rot_range_deg")
        if isinstance(self.smooth_px, bool) or not isinstance(self.smooth_px, int | float) \
                or not math.isfinite(self.smooth_px) or self.smooth_px < 0:
            raise InputError(f"must be a finite number >= 0, got {self.smooth_px!r}",
                             key="smooth_px")
        for key, low in (("starts", 0), ("bone_margin_px", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"must be an integer >= {low}, got {value!r}", key=key)
        if isinstance(self.bone_threshold_hu, bool) \
                or not isinstance(self.bone_threshold_hu, int | float) \
                or not math.isfinite(self.bone_threshold_hu):
            raise InputError(f"must be a finite number, got {self.bone_threshold_hu!r}",
                             key="bone_threshold_hu")
        for key in ("mask_flat", "mask_partial_rays", "fit_bone_weight"):
            if not isinstance(getattr(self, key), bool):
                raise InputError(f"must be True or False, got {getattr(self, key)!r}", key=key)
        for key in ("max_batch", "threads"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise InputError(f"must be None or an integer >= 1, got {value!r}", key=key)


# --------------------------------------------------------------------------------- the pose


def correction_from_params(params: Any, pivot: Any) -> Any:
    """``(..., 6)`` search parameters to ``(..., 4, 4)`` world corrections about ``pivot``.

    ``x ↦ R(r) (x − c) + c + t`` (see the module docstring); numpy in, numpy out; a torch tensor
    keeps its graph.
    """
    return rigid_from_params(params, pivot)


def mean_target_error_2d3d(camera_from_world_est: Any, camera_from_world_true: Any,
                           points_world: Any) -> float:
    """mTRE of camera poses, mm: :func:`regkit.registration.pose_error.mean_target_error`.

    Args:
        camera_from_world_est: ``(4, 4)`` estimated pose of one view (or ``(V, 4, 4)``: the
            mean over views).
        camera_from_world_true: The true pose(s), same shape.
        points_world: ``(N, 3)`` target points (bone voxel centres), world mm, N >= 1.
    """
    return mean_target_error(camera_from_world_est, camera_from_world_true, points_world)


# ---------------------------------------------------------------------------- input checks


def _check_volume(volume: Any, mu_water: float) -> Volume:
    if not isinstance(volume, Volume):
        raise InputError(f"must be a regkit Volume, got {type(volume).__name__}", key="volume")
    if volume.units not in ("HU", "mu"):
        raise InputError(f"must be in 'HU' or 'mu', got units {volume.units!r}", key="volume")
    mu = volume.to_mu(mu_water) if volume.units == "HU" else volume
    if float(mu.data.max()) - float(mu.data.min()) <= 0:
        raise InputError("the CT is constant: no DRR of it can be registered", key="volume")
    return mu


def _check_cameras(cameras: Any) -> list[Camera]:
    if isinstance(cameras, Camera):
        cameras = [cameras]
    try:
        cams = list(cameras)
    except TypeError:
        raise InputError(f"must be a sequence of Camera, got {type(cameras).__name__}",
                         key="cameras") from None
    if not cams:
        raise InputError("needs at least one camera", key="cameras")
    for i, c in enumerate(cams):
        if not isinstance(c, Camera):
            raise InputError(f"must be a Camera, got {type(c).__name__}", key=f"cameras[{i}]")
    return cams


def _check_images(images: Any, cameras: list[Camera], kind: str) -> list[NDArray[np.float32]]:
    if kind not in ("line-integral", "transmitted"):
        raise InputError(f"must be 'line-integral' or 'transmitted', got {kind!r}",
                         key="image_kind")
    if isinstance(images, np.ndarray | Radiograph):
        images = [images]
    try:
        items = list(images)
    except TypeError:
        raise InputError(f"must be a sequence of arrays or Radiographs, got "
                         f"{type(images).__name__}", key="images") from None
    if len(items) != len(cameras):
        raise InputError(f"{len(items)} image(s) for {len(cameras)} camera(s): give one "
                         "image per camera, in the same order", key="images")
    out = []
    for i, (item, cam) in enumerate(zip(items, cameras, strict=True)):
        key = f"images[{i}]"
        if isinstance(item, Radiograph):
            values = np.array(item.image, dtype=np.float32)   # already line integrals
        else:
            raw = np.asarray(item)
            if raw.ndim != 2:
                raise ShapeError(f"{key} must be a 2-D image (H, W), got shape {raw.shape}")
            if raw.size == 0:
                raise InputError("is empty (0 pixels)", key=key)
            try:
                values = np.array(to_line_integral(raw, kind), dtype=np.float32)  # type: ignore[arg-type]
            except InputError as err:
                raise InputError(err.reason, key=key) from None
        if values.shape != (cam.height, cam.width):
            raise ShapeError(f"{key} is {values.shape[1]} x {values.shape[0]} pixels (width x "
                             f"height) but camera {i}'s detector is {cam.width} x {cam.height}")
        out.append(values)
    return out


def _check_masks(masks: Any, images: list[NDArray[np.float32]]) -> list[NDArray[np.float32] | None]:
    if masks is None:
        return [None] * len(images)
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    items = list(masks)
    if len(items) != len(images):
        raise InputError(f"{len(items)} mask(s) for {len(images)} image(s): give one per "
                         "image (None for none)", key="image_masks")
    out: list[NDArray[np.float32] | None] = []
    for i, (m, img) in enumerate(zip(items, images, strict=True)):
        key = f"image_masks[{i}]"
        if m is None:
            out.append(None)
            continue
        a = np.asarray(m)
        if a.shape != img.shape:
            raise ShapeError(f"{key} has shape {a.shape} but its image has shape {img.shape}")
        if a.dtype == np.bool_:
            w = a.astype(np.float32)
        elif np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                raise InputError("holds NaN or infinite values", key=key)
            w = (a != 0).astype(np.float32) if np.issubdtype(a.dtype, np.integer) \
                else np.clip(a, 0.0, 1.0).astype(np.float32)
        else:
            raise InputError(f"must be boolean or numeric, got dtype {a.dtype}", key=key)
        if not (w > 0).any():
            raise InputError("selects no pixel", key=key)
        out.append(w)
    return out


def _check_variance(images: list[NDArray[np.float32]],
                    weights: list[NDArray[np.float32] | None]) -> None:
    for i, (img, w) in enumerate(zip(images, weights, strict=True)):
        values = img if w is None else img[w > 0]
        lo, hi = float(values.min()), float(values.max())
        if hi - lo <= 1e-6 * max(1.0, abs(lo), abs(hi)):
            where = " inside its mask" if w is not None else ""
            raise InputError(f"the image is constant ({lo:g}){where}: a zero-variance image "
                             "cannot be registered", key=f"images[{i}]")


def _check_bones(bones: Any, volume: Volume) -> tuple[int, ...] | None:
    if bones is None:
        return None
    key = bone_key(bones)
    if volume.labels is None:
        raise InputError("bones were given but the volume has no label map (load it with "
                         "labels=...)", key="bones")
    present = set(np.unique(volume.labels).tolist())
    missing = [b for b in key if b not in present]
    if missing:
        shown = sorted(present - {0})
        listing = ", ".join(str(v) for v in shown[:30]) + (" ..." if len(shown) > 30 else "")
        raise InputError(f"label(s) {missing} not in the volume's label map (present: "
                         f"{listing})", key="bones")
    return key


def _flat_mask(image: NDArray[np.float32]) -> NDArray[np.float32] | None:
    """Weights that drop the flat (exactly constant 3×3) pixels and a margin; None: none flat."""
    from scipy.ndimage import binary_dilation, maximum_filter, minimum_filter

    span = float(image.max() - image.min())
    local = maximum_filter(image, size=3, mode="nearest") - minimum_filter(image, size=3,
                                                                           mode="nearest")
    flat = local <= _FLAT_RTOL * max(span, 1e-30)
    if not flat.any():
        return None
    flat = binary_dilation(flat, iterations=_FLAT_MARGIN_PX)
    if flat.mean() > 0.9:   # nearly everything flat: a synthetic image; do not mask
        return None
    return (~flat).astype(np.float32)


# ------------------------------------------------------------------------------- the levels


def _blocks(a: NDArray[np.float32], factor: int) -> NDArray[np.float64]:
    h, w = a.shape[0] // factor, a.shape[1] // factor
    return a[:h * factor, :w * factor].astype(np.float64).reshape(h, factor, w, factor)


def _bin(image: NDArray[np.float32], factor: int, weight: NDArray[np.float32] | None = None
         ) -> NDArray[np.float32]:
    """Mean over ``factor × factor`` pixel blocks (a remainder dropped, as Camera.downsample);
    with ``weight``, the weighted mean (a block with no weight keeps its plain mean)."""
    if factor == 1:
        return image
    if weight is None:
        return _blocks(image, factor).mean(axis=(1, 3)).astype(np.float32)
    w = _blocks(weight, factor)
    total = w.sum(axis=(1, 3))
    num = (_blocks(image, factor) * w).sum(axis=(1, 3))
    plain = _blocks(image, factor).mean(axis=(1, 3))
    return np.where(total > 0, num / np.maximum(total, 1e-12), plain).astype(np.float32)


def _bin_weight(weight: NDArray[np.float32], factor: int) -> NDArray[np.float32]:
    """A block's weight is its least pixel weight: a block half under a collimator is out."""
    if factor == 1:
        return weight
    return _blocks(weight, factor).min(axis=(1, 3)).astype(np.float32)


def _smooth(images: torch.Tensor, sigma: float, weight: torch.Tensor | None = None
            ) -> torch.Tensor:
    """``(B, H, W)`` images blurred by a Gaussian of ``sigma`` pixels (separable, edges
    replicated); differentiable; ``sigma = 0`` returns them as they are.

    With ``weight`` (B, H, W), a normalised convolution ``G * (w·x) / G * w``: pixels of zero
    weight (a collimator's border) do not bleed into their neighbours. The radiograph and the
    DRRs must be smoothed with the same weights: smoothing only the radiograph this way made
    masked registrations fail (a single view with 10 columns and 8 rows masked: 31.9 mm; both
    alike: 0.21 mm).
    """
    if sigma <= 0:
        return images
    if weight is not None:
        num = _smooth(images * weight, sigma)
        den = _smooth(weight, sigma)
        return torch.where(den > 1e-6, num / den.clamp(min=1e-6), images)
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = images[:, None]
    out = torch.nn.functional.pad(out, (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1))
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[:, 0]


# Bounds of the fitted bone weight (1: the CT's own HU-to-μ mapping).
_BONE_WEIGHT_RANGE = (0.25, 5.0)


def _fit_bone_weight(fixed: torch.Tensor, drr: torch.Tensor, bone: torch.Tensor,
                     weight: torch.Tensor | None) -> torch.Tensor:
    """The DRR with its bone part re-weighted to match the radiograph's edges best.

    ``drr`` is ``S + B`` (soft tissue and ``bone`` = B, the CT's μ above ``bone_threshold_hu``);
    the radiograph's Sobel derivatives are fitted by those of ``p·drr + q·B`` in weighted least
    squares over both axes (closed form, per image), and ``drr + (q/p)·B`` returned: bone then
    weighs ``w = 1 + q/p`` against soft tissue, clamped to :data:`_BONE_WEIGHT_RANGE`. (A third
    term fitting a change of blur, ``r·Δdrr``, was tried and doubled the bias.) A radiograph
    made with another HU-to-μ mapping or spectrum than the renderer's (bone weighing 3.6×
    water per mm under a 70 kVp beam, against 2.5× in the DRR) otherwise moves a gradient
    metric's optimum, mostly along the view. Differentiable; ``(B, H, W)`` in and out.
    """
    from regkit.metrics._ops import erode, sobel

    bases = [drr, bone]
    grads = [sobel(x) for x in bases]
    gf = sobel(fixed)
    w = None if weight is None else erode(weight)   # as the gradient metrics weigh pixels

    def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        total = sum((x * y if w is None else x * y * w) for x, y in zip(a, b, strict=True))
        assert isinstance(total, torch.Tensor)
        return total.flatten(1).sum(dim=1).to(torch.float64)

    k = len(bases)
    gram = torch.stack([torch.stack([dot(grads[i], grads[j]) for j in range(k)], dim=-1)
                        for i in range(k)], dim=-2)                        # (B, k, k)
    rhs = torch.stack([dot(grads[i], gf) for i in range(k)], dim=-1)      # (B, k)
    scale = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(1e-30).sqrt()
    norm = gram / (scale[:, :, None] * scale[:, None, :]) \
        + 1e-9 * torch.eye(k, dtype=gram.dtype)
    coef = torch.linalg.solve(norm, (rhs / scale)[..., None])[..., 0] / scale
    p = coef[:, 0]
    ok = torch.isfinite(coef).all(dim=1) & (p > 0)
    p = torch.where(ok, p, torch.ones_like(p))
    lo, hi = _BONE_WEIGHT_RANGE
    ratio = torch.where(ok, coef[:, 1] / p, torch.zeros_like(p)).clamp(lo - 1.0, hi - 1.0)
    return drr + ratio.to(drr.dtype)[:, None, None] * bone


def _detector_factor(cam: Camera, max_pixels: int) -> int:
    f = 1
    while (cam.width // f) * (cam.height // f) > max_pixels and min(cam.width, cam.height) // (
            f + 1) >= 3:
        f += 1
    return f


@dataclass
class _Group:
    """The views of one level that share a detector size."""

    views: list[int]
    intrinsic: NDArray[np.float64]          # (V, 3, 3)
    camera_from_world: NDArray[np.float64]  # (V, 4, 4)
    height: int
    width: int
    fixed: torch.Tensor                     # (V, H, W) float32, smoothed
    weight: torch.Tensor | None             # (V, H, W) float32 weights or None


@dataclass
class _Box:
    """The CT's voxel-edge box, for the pixels whose rays cross its whole depth."""

    index_from_world: torch.Tensor   # (4, 4) float64
    upper: torch.Tensor              # (3,) n - 0.5 per axis (the lower bound is -0.5)
    spacing: torch.Tensor            # (3,) mm per index step

    def full_depth(self, k: torch.Tensor, poses: torch.Tensor, height: int, width: int
                   ) -> torch.Tensor:
        """``(B, H, W)`` float 0/1: rays entering and leaving through the faces across the
        index axis each view looks most along, eroded by one pixel; all ones for a view where
        under a quarter remain."""
        from regkit.geometry.camera import pixel_rays

        with torch.no_grad():
            origin, direction = pixel_rays(k, poses.detach(), height, width)
            m = self.index_from_world[:3, :3]
            o = origin @ m.T + self.index_from_world[:3, 3]              # (B, 3)
            d = direction @ m.T                                          # (B, H, W, 3)
            safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
            t1 = (-0.5 - o[:, None, None, :]) / safe
            t2 = (self.upper - o[:, None, None, :]) / safe
            near, far = torch.minimum(t1, t2), torch.maximum(t1, t2)
            t_in, enter = near.max(dim=-1)
            t_out, leave = far.min(dim=-1)
            axis = (d.mean(dim=(1, 2)).abs() * self.spacing).argmax(dim=-1)[:, None, None]
            full = (enter == axis) & (leave == axis) & (t_in < t_out)
            out = -torch.nn.functional.max_pool2d(-full[:, None].to(torch.float32), 3,
                                                  stride=1, padding=1)[:, 0]
            keep = out.flatten(1).mean(dim=1) >= 0.25
            return torch.where(keep[:, None, None], out, torch.ones_like(out))


@dataclass(eq=False)
class _Level(Level):
    """One pyramid level: a renderer on the level CT, the binned views and the metric; its
    parameters are the six of :func:`correction_from_params` about ``pivot``."""

    renderer: Renderer
    groups: list[_Group]
    n_views: int
    metric: Metric
    bones: tuple[int, ...] | None
    bone_margin_px: int
    max_batch: int | None
    factors: list[int]
    spacing_mm: NDArray[np.float64]
    smooth_px: float
    box: _Box | None = None
    bone_renderer: Renderer | None = None
    spec: ParamSpec = field(default_factory=lambda: ParamSpec.rigid6())
    pivot: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))

    def _group_scores(self, g: _Group, corrections: torch.Tensor) -> torch.Tensor:
        """``(λ, V_g)`` scores of the group's views under ``(λ, 4, 4)`` float64 corrections."""
        lam, nv = corrections.shape[0], len(g.views)
        t = torch.as_tensor(g.camera_from_world, dtype=corrections.dtype)
        poses = (t[None] @ corrections[:, None]).reshape(lam * nv, 4, 4)
        k = torch.as_tensor(g.intrinsic).repeat(lam, 1, 1)
        chunk = lam * nv if self.max_batch is None else self.max_batch
        parts, feet, bone_parts = [], [], []
        for a in range(0, lam * nv, chunk):
            views = Views(k[a:a + chunk], poses[a:a + chunk], g.height, g.width)
            parts.append(self.renderer.drr(views))
            if self.bone_renderer is not None:
                bone_parts.append(self.bone_renderer.drr(views))
            if self.bones is not None:
                with torch.no_grad():
                    feet.append(self._footprint(self.renderer.drr(views, bones=self.bones)))
        drr = torch.cat(parts).to(torch.float32)
        foot = torch.cat(feet) if feet else None
        if self.box is not None:
            full = self.box.full_depth(k, poses, g.height, g.width)
            foot = full if foot is None else foot * full
        fixed = g.fixed.repeat(lam, 1, 1)
        weight = None if g.weight is None else g.weight.repeat(lam, 1, 1)
        drr = _smooth(drr, self.smooth_px, weight)   # as the radiograph was (see build)
        scored = weight if foot is None else (foot if weight is None else weight * foot)
        if bone_parts:   # fitted on the pixels the metric scores
            bone = _smooth(torch.cat(bone_parts).to(torch.float32), self.smooth_px, weight)
            drr = _fit_bone_weight(fixed, drr, bone, scored)
        weight = scored
        return self.metric(fixed, drr, weight).reshape(lam, nv).to(torch.float64)

    def _footprint(self, drr: torch.Tensor) -> torch.Tensor:
        """Where the bones project in each DRR, dilated by ``bone_margin_px`` (float 0/1)."""
        d = drr.detach()
        peak = d.flatten(1).amax(dim=1).clamp(min=1e-12)
        hit = (d > 1e-3 * peak[:, None, None]).to(torch.float32)
        r = self.bone_margin_px
        if r > 0:
            hit = torch.nn.functional.max_pool2d(hit[:, None], 2 * r + 1, stride=1,
                                                 padding=r)[:, 0]
        return hit

    def scores(self, corrections: torch.Tensor) -> torch.Tensor:
        """``(λ,)`` mean score over views (the metric's own sense) of ``(λ, 4, 4)`` corrections."""
        total = torch.zeros(corrections.shape[0], dtype=torch.float64)
        for g in self.groups:
            total = total + self._group_scores(g, corrections).sum(dim=1)
        return total / self.n_views

    def corrections(self, params: Any) -> Any:
        """``(..., 6)`` parameters to ``(..., 4, 4)`` world corrections (numpy or torch)."""
        if isinstance(params, torch.Tensor):
            return correction_from_params(params, torch.as_tensor(self.pivot,
                                                                  dtype=params.dtype))
        return np.asarray(correction_from_params(params, self.pivot))

    def losses(self, params: NDArray[np.float64]) -> NDArray[np.float64]:
        with torch.no_grad():
            s = self.scores(torch.as_tensor(self.corrections(params), dtype=torch.float64))
        values = s.numpy()
        return -values if self.higher_is_better else values

    def loss(self, params: torch.Tensor) -> torch.Tensor:
        sign = -1.0 if self.higher_is_better else 1.0
        return sign * self.scores(self.corrections(params)[None])[0]

    def finish(self, x: NDArray[np.float64], index: int) -> tuple[float, dict[str, Any]]:
        score = self.score_from_loss(float(self.losses(x[None])[0]))
        return score, {"detector_factors": self.factors,
                       "spacing_mm": np.round(self.spacing_mm, 4).tolist()}


class _LevelBuilder:
    """Builds levels, caching the level CTs and renderers by (spacing, backend)."""

    def __init__(self, mu: Volume, cameras: list[Camera], images: list[NDArray[np.float32]],
                 weights: list[NDArray[np.float32] | None], metric: Metric,
                 bones: tuple[int, ...] | None, opts: Register2D3DOptions,
                 backend: str | None):
        self.mu = mu
        self.cameras = cameras
        self.images = images
        self.weights = weights
        self.metric = metric
        self.bones = bones
        self.opts = opts
        self.backend = backend
        self.base = float(np.exp(np.log(mu.spacing).mean()))
        self._volumes: dict[float, Volume] = {}
        self._bone_volumes: dict[float, Volume] = {}
        self._excess: Volume | None = None
        self._renderers: dict[tuple[bool, float, str], Renderer] = {}

    def _box(self) -> _Box:
        """The CT's box (the input grid; every level covers the same extent)."""
        return _Box(index_from_world=torch.as_tensor(self.mu.index_from_world,
                                                     dtype=torch.float64),
                    upper=torch.as_tensor(np.asarray(self.mu.shape, np.float64) - 0.5),
                    spacing=torch.as_tensor(self.mu.spacing, dtype=torch.float64))

    def _spacing(self, shrink: float) -> float:
        """The level's CT spacing (0: as it is), coarsened to stay within the voxel cap."""
        spacing = shrink * self.base if shrink > 1 else 0.0
        level = at_spacing(self.mu, spacing)
        count = float(np.prod(level.shape))
        if count > _MAX_LEVEL_VOXELS:
            coarser = float(np.exp(np.log(level.spacing).mean())) * \
                (count / _MAX_LEVEL_VOXELS) ** (1.0 / 3.0)
            spacing = max(spacing, coarser)
        return spacing

    def bone_volume(self, shrink: float) -> Volume:
        """The CT's μ above that of ``bone_threshold_hu``, at the level's spacing: the part of
        the DRR whose weight :func:`_fit_bone_weight` fits (the rest is soft tissue)."""
        if shrink not in self._bone_volumes:
            if self._excess is None:
                mu_t = self.opts.mu_water * (1.0 + self.opts.bone_threshold_hu / 1000.0)
                self._excess = Volume(np.maximum(np.asarray(self.mu.data, np.float32) - mu_t,
                                                 0.0), self.mu.world_from_index, units="mu")
            level = at_spacing(self._excess, self._spacing(shrink))
            self._bone_volumes[shrink] = Volume(level.data, level.world_from_index, units="mu")
        return self._bone_volumes[shrink]

    def volume(self, shrink: float) -> Volume:
        if shrink not in self._volumes:
            level = at_spacing(self.mu, self._spacing(shrink))
            level = Volume(level.data, level.world_from_index, units="mu")
            if self.bones is not None:
                assert self.mu.labels is not None
                carrier = Volume(np.zeros(self.mu.shape, np.uint8), self.mu.world_from_index,
                                 labels=self.mu.labels, units="other")
                moved = carrier.resample_to_grid(level.shape, level.world_from_index)
                level = level.with_labels(moved.labels)
            self._volumes[shrink] = level
        return self._volumes[shrink]

    def renderer(self, shrink: float, gradient: bool, bone: bool = False) -> Renderer:
        """The level's renderer of the CT (or, with ``bone``, of its bone part)."""
        from regkit.render.select import make_renderer

        name = "torch" if gradient else (self.backend or "")
        key = (bone, shrink, name)
        if key not in self._renderers:
            volume = self.bone_volume(shrink) if bone else self.volume(shrink)
            self._renderers[key] = make_renderer(volume, backend=name or None)
        return self._renderers[key]

    def build(self, level: LevelOptions, fit_bone: bool = False) -> _Level:
        gradient = level.method in gradient_methods
        renderer = self.renderer(level.shrink, gradient)
        by_size: dict[tuple[int, int], list[int]] = {}
        factors, cams, fixed, weights = [], [], [], []
        for i, cam in enumerate(self.cameras):
            f = _detector_factor(cam, level.max_voxels)
            factors.append(f)
            c = cam.downsample(f) if f > 1 else cam
            cams.append(c)
            mask = self.weights[i]
            fixed.append(_bin(self.images[i], f, mask))
            weights.append(None if mask is None else _bin_weight(mask, f))
            by_size.setdefault((c.height, c.width), []).append(i)
        groups = []
        for (h, w), members in by_size.items():
            ws = [weights[i] for i in members]
            weight = None
            if any(x is not None for x in ws):
                weight = torch.from_numpy(np.stack([np.ones((h, w), np.float32) if x is None
                                                    else x for x in ws]))
            groups.append(_Group(
                views=members,
                intrinsic=np.stack([cams[i].intrinsic for i in members]),
                camera_from_world=np.stack([cams[i].camera_from_world for i in members]),
                height=h, width=w,
                fixed=_smooth(torch.from_numpy(np.stack([fixed[i] for i in members])),
                              self.opts.smooth_px, weight),
                weight=weight))
        return _Level(renderer=renderer, groups=groups, n_views=len(self.cameras),
                      metric=self.metric, bones=self.bones,
                      bone_margin_px=self.opts.bone_margin_px, max_batch=self.opts.max_batch,
                      factors=factors, spacing_mm=self.volume(level.shrink).spacing,
                      smooth_px=self.opts.smooth_px,
                      box=self._box() if self.opts.mask_partial_rays else None,
                      bone_renderer=self.renderer(level.shrink, gradient, bone=True)
                      if fit_bone else None)


# ----------------------------------------------------------------------- the entry point


def _pivot(mu: Volume, bones: tuple[int, ...] | None) -> NDArray[np.float64]:
    if bones is None:
        return np.asarray(mu.center_world, dtype=np.float64)
    assert mu.labels is not None
    index = np.argwhere(np.isin(mu.labels, bones)).astype(np.float64)
    return np.asarray(mu.index_to_world(index).mean(axis=0), dtype=np.float64)


def register_2d3d(volume: Volume, cameras: Sequence[Camera], images: Sequence[Any], *,
                  image_kind: str = "line-integral", bones: Sequence[int] | None = None,
                  image_masks: Sequence[Any] | None = None, metric: str = "gncc",
                  optimizer: str = "cmaes", seed: int | None = engine.DEFAULT_SEED,
                  options: Register2D3DOptions | Mapping[str, Any] | None = None,
                  backend: str | None = None,
                  progress: ProgressCallback | None = None) -> Registration2D3DResult:
    """Register a CT to one or several radiographs: one rigid ``world_correction`` for all views.

    Args:
        volume: The CT (:class:`~regkit.volume.Volume` in HU, converted to μ = μ_water (1 +
            HU/1000), or in ``"mu"``), with a label map when ``bones`` is given.
        cameras: One :class:`~regkit.geometry.camera.Camera` per image: the initial poses, with
            the views' known relative geometry.
        images: One radiograph per camera, in the same order: ``(H, W)`` arrays (of
            ``image_kind``) matching the camera's detector, or
            :class:`~regkit.io.radiograph.Radiograph` objects (already line integrals).
        image_kind: What the arrays hold: ``"line-integral"`` (bone bright) or
            ``"transmitted"`` (detector intensity, converted by
            :func:`~regkit.io.radiograph.to_line_integral` with I0 = the brightest pixel).
        bones: Register these labelled bones only: the metric counts only the pixels where
            they project (their own DRR, dilated), so neighbours are ignored; the views are
            cropped to them and the pivot is their centroid. One view fixes a single bone's
            position across the view, not along it: on the whole CT (T9, 256² AP, starts
            7–10 mm off) the projection error fell to 0.8–2.8 px but the depth stayed 15–21 mm
            off. Register single bones from two or more views.
        image_masks: One mask per image (None for none): ``(H, W)`` bool or weights in [0, 1];
            only the pixels inside count.
        metric: A 2-D metric name of :func:`regkit.metrics.get_metric` (default ``"gncc"``,
            gradient-magnitude NCC: see :data:`DEFAULT_LEVELS` for why).
        optimizer: The method of the first (widest) level: ``"cmaes"`` (default) or another
            registered derivative-free method; later levels keep their own.
        seed: Seed of every random draw (default
            :data:`~regkit.registration.engine.DEFAULT_SEED`; None: a fresh one, reported in
            ``extras["seed"]``). The same seed gives the same result.
        options: :class:`Register2D3DOptions` or a dict of its fields.
        backend: Renderer for the derivative-free levels (``"gl"``, ``"torch"``); None applies
            :func:`regkit.render.select.make_renderer`'s rule (OpenGL where an EGL context can
            be made). Gradient levels always use ``"torch"``.
        progress: Called with a :class:`~regkit.registration.levels.Progress` after every
            optimizer iteration and at every level's end.

    Returns:
        :class:`~regkit.registration.results.Registration2D3DResult`: the refined ``cameras``,
        ``world_correction``, ``metric``, ``final_score`` (mean over views at the finest level,
        the metric's own sense), ``seconds``, ``evaluations``, ``history`` and ``extras``
        (``seed``, ``pivot_mm``, ``params`` (the 6 search parameters, rad and mm), ``bones``,
        ``levels`` (per level: method, detector factors, spacing, evaluations, seconds, score,
        stop reasons) and ``stop_reasons`` of the last level).

    Raises:
        InputError: bad options; images and cameras of different counts; an image with NaN or
            infinite pixels, empty or constant; an unknown image kind; bones not in the label
            map or without one; a metric that does not take 2-D images.
        ShapeError: an image or mask whose shape differs from its camera's detector.
        UnknownNameError: an unknown metric or optimizer name.
    """
    t_start = time.perf_counter()
    opts = coerce_options(Register2D3DOptions, options, "registration")
    mu = _check_volume(volume, opts.mu_water)
    cams = _check_cameras(cameras)
    imgs = _check_images(images, cams, image_kind)
    user_masks = _check_masks(image_masks, imgs)
    _check_variance(imgs, user_masks)
    bone_labels = _check_bones(bones, mu)
    scorer = get_metric(metric, check_finite=False)
    if 2 not in scorer.spatial_dims:
        raise InputError(f"metric '{metric}' does not take 2-D images", key="metric")
    levels = _with_optimizer(list(opts.levels), optimizer)
    seed = engine.check_seed(seed)
    weights: list[NDArray[np.float32] | None] = []
    for img, m in zip(imgs, user_masks, strict=True):
        flat = _flat_mask(img) if opts.mask_flat else None
        if flat is not None and m is not None:
            flat = flat * m
        weights.append(m if flat is None else flat)
    work_cams, work_imgs, work_weights = cams, imgs, weights
    if bone_labels is not None:
        work_cams, work_imgs, work_weights = _bone_rois(mu, bone_labels, cams, imgs, weights,
                                                        opts.bone_roi_margin_mm)
    with engine.torch_threads(opts.threads):
        builder = _LevelBuilder(mu, work_cams, work_imgs, work_weights, scorer, bone_labels,
                                opts, backend)
        return _register(builder, cams, levels, metric, seed, opts, progress, t_start)


def _bone_rois(mu: Volume, bones: tuple[int, ...], cams: list[Camera],
               images: list[NDArray[np.float32]], weights: list[NDArray[np.float32] | None],
               margin_mm: float) -> tuple[list[Camera], list[NDArray[np.float32]],
                                          list[NDArray[np.float32] | None]]:
    """Each view cropped to the bones' projected box at the initial pose, widened by
    ``margin_mm`` at the bones' depth on each side: the pyramid's pixels then go to the bone."""
    assert mu.labels is not None
    index = np.argwhere(np.isin(mu.labels, bones))
    lo, hi = index.min(axis=0) - 0.5, index.max(axis=0) + 0.5
    corners = np.array([[a[0], b[1], c[2]] for a in (lo, hi) for b in (lo, hi) for c in (lo, hi)],
                       dtype=np.float64)
    world = mu.index_to_world(corners)
    centroid = mu.index_to_world(index.mean(axis=0))
    out_c, out_i, out_w = [], [], []
    for cam, img, w in zip(cams, images, weights, strict=True):
        uv = cam.project(world)
        depth = float((cam.camera_from_world @ np.append(centroid, 1.0))[2])
        if not np.isfinite(uv).all() or depth <= 0:
            out_c.append(cam)
            out_i.append(img)
            out_w.append(w)
            continue
        margin = margin_mm * np.array(cam.focal_lengths) / depth   # pixels (u, v)
        u0, v0 = np.floor(uv.min(axis=0) - margin).astype(int)
        u1, v1 = np.ceil(uv.max(axis=0) + margin).astype(int)
        u0, v0 = max(0, int(u0)), max(0, int(v0))
        u1, v1 = min(cam.width, int(u1)), min(cam.height, int(v1))
        if u1 - u0 < 8 or v1 - v0 < 8:   # the bone is (nearly) off this detector: keep it all
            u0, v0, u1, v1 = 0, 0, cam.width, cam.height
        out_c.append(cam.crop(u0, v0, u1 - u0, v1 - v0))
        out_i.append(np.ascontiguousarray(img[v0:v1, u0:u1]))
        out_w.append(None if w is None else np.ascontiguousarray(w[v0:v1, u0:u1]))
    return out_c, out_i, out_w


def _with_optimizer(levels: list[LevelOptions], optimizer: str) -> list[LevelOptions]:
    """The levels with every CMA-ES level switched to ``optimizer`` (keeping the options the
    new method shares: budgets and tolerances)."""
    from dataclasses import fields as dc_fields

    if optimizer == "cmaes":
        return levels
    if optimizer in gradient_methods:
        from regkit.optim import GradientOptions

        known = {f.name for f in dc_fields(GradientOptions)}
    else:
        known = {f.name for f in dc_fields(optimizers.get(optimizer).options_type)}
    return [replace(lv, method=optimizer,
                    options={k: v for k, v in lv.options.items() if k in known})
            if lv.method == "cmaes" else lv for lv in levels]


class _Problem:
    """The 2D–3D problem for the engine: one rigid correction shared by all views."""

    def __init__(self, builder: _LevelBuilder, pivot: NDArray[np.float64], metric: str,
                 opts: Register2D3DOptions):
        self.builder, self.pivot, self.metric, self.opts = builder, pivot, metric, opts
        self.higher_is_better = builder.metric.higher_is_better

    def level(self, index: int, options: LevelOptions) -> _Level:
        # the first level captures: a free bone weight there flattens the landscape far from
        # the truth (the shipped crop's single view ended 8 mm off)
        lv = self.builder.build(options, fit_bone=self.opts.fit_bone_weight and index > 0)
        lv.pivot, lv.higher_is_better = self.pivot, self.higher_is_better
        lv.spec = ParamSpec.rigid6(options.rot_step_deg, options.trans_step_mm,
                                   rot_bound_deg=self.opts.rot_range_deg,
                                   trans_bound_mm=self.opts.trans_range_mm)
        return lv


def _register(builder: _LevelBuilder, cams: list[Camera], levels: list[LevelOptions],
              metric: str, seed: int, opts: Register2D3DOptions,
              progress: ProgressCallback | None, t_start: float) -> Registration2D3DResult:
    pivot = _pivot(builder.mu, builder.bones)
    done = engine.run(_Problem(builder, pivot, metric, opts), levels, seed=seed,
                      starts=opts.starts, start_spread=opts.start_spread, progress=progress)
    correction = np.asarray(correction_from_params(done.x, pivot), dtype=np.float64)
    return Registration2D3DResult(
        cameras=cameras_from_correction(cams, correction), world_correction=correction,
        metric=metric, final_score=done.score, seconds=time.perf_counter() - t_start,
        evaluations=done.evaluations, history=done.history,
        extras={
            "seed": done.seed,
            "pivot_mm": pivot.tolist(),
            "params": done.x.tolist(),
            "bones": None if builder.bones is None else list(builder.bones),
            "levels": list(done.levels),
            "stop_reasons": done.stop_reasons,
        })


# ----------------------------------------------------------------------------------- report


def save_report(directory: str | os.PathLike[str], volume: Volume, cameras: Sequence[Camera],
                images: Sequence[Any], result: Registration2D3DResult, *,
                image_kind: str = "line-integral", bones: Sequence[int] | None = None,
                backend: str | None = None) -> list[Path]:
    """PNGs showing a 2D–3D registration: per view, the DRR's edges over the radiograph.

    ``view_<i>.png``: the radiograph in grey with the edges of the DRR at the input cameras in
    magenta (left) and at the refined cameras in green (right). ``convergence.png``: the best
    score per level against evaluations.

    Args:
        directory: Created if missing.
        volume, cameras, images, image_kind, bones: As given to :func:`register_2d3d`.
        result: Its result.
        backend: Renderer backend for the DRRs (None: the default rule).

    Returns:
        The files written.
    """
    from regkit.registration.report import (
        GREEN,
        MAGENTA,
        convergence_plot,
        edge_overlay,
        save_side_by_side,
    )
    from regkit.render.select import make_renderer

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    mu = _check_volume(volume, 0.02)
    cams = _check_cameras(cameras)
    imgs = _check_images(images, cams, image_kind)
    labels = _check_bones(bones, mu)
    renderer = make_renderer(mu, backend=backend)
    written = []
    for i, (cam, img) in enumerate(zip(cams, imgs, strict=True)):
        panels = []
        for pose, color in ((cam.camera_from_world, MAGENTA),
                            (result.cameras[i].camera_from_world, GREEN)):
            with torch.no_grad():
                drr = renderer.drr(Views.from_cameras(cam.with_pose(pose)), bones=labels)[0]
            panels.append(edge_overlay(img, drr.cpu().numpy(), color))
        path = out / f"view_{i}.png"
        save_side_by_side(path, panels)
        written.append(path)
    if result.history:
        path = out / "convergence.png"
        convergence_plot(path, result.history, title=f"{result.metric} by level",
                         higher_is_better=get_metric(result.metric).higher_is_better)
        written.append(path)
    return written

