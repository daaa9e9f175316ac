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
    averaged. A candidate population of λ poses and V views is rendered in **one batched call**
    of ``B = λ · V`` views (one call per detector size when the views differ in size). Where
    ``bones`` is given, each view is first cropped to the bones' projected box (see
    ``bone_roi_margin_mm``), a second batched render draws the DRR of those bones only
    (``renderer.drr(bones=...)``), and the metric counts only the pixels where they project
    in that candidate's pose, dilated by ``bone_margin_px`` level pixels (and within the view's
    mask): the neighbours' pixels are ignored. The DRR scored there is of the whole CT, since
    the radiograph shows the bone over soft tissue and overlapping structures (a bones-only
    DRR gave no signal). See docs/decisions/registration-2d3d-bones.md.

    **Masks.** Per view, the caller's ``image_masks`` (True or weight > 0 counts) and, unless
    ``mask_flat`` is off, the radiograph's *flat* pixels removed: pixels whose 3×3
    neighbourhood is exactly constant (a collimator's zero or constant border, burnt-in
    padding), dilated by 2 pixels so that the collimator's edge, which no DRR shows, is not
    scored either.

    **Two or more views** (the defaults; the intensity map and the scatter removal can be asked
    for with one view too, the zoom cannot): at the start of every level but the first, each
    radiograph is mapped to the DRR at the level's starting pose by an increasing polynomial
    (a cubic where that is increasing), after its scatter (a fraction of its primary spread by
    a wide kernel, fitted per view with the primary's shape) is estimated and removed in its
    transmitted domain (``intensity_degree``, ``scatter_sigma``; the last level then runs
    twice more, refitting both where the pass before ended); and each view gets a free zoom
    of its image about its principal point (``view_zoom``: ``6 + V`` parameters, the zooms as
    ``log s``, reported in ``extras["view_zoom"]`` and not applied to the result's cameras).
    A view's distance from its source then comes from the other views' detectors rather than
    from its own apparent magnification, which blur and scatter bias. On the polychromatic
    biplane benchmark the median mTRE went from 0.55 to 0.17 mm, and to 0.094 mm with the
    scatter model and the repeated last level (2026-12-05, 14 cases). One view keeps all three
    off: they made its depth worse. See docs/decisions/registration-2d3d-depth-bias.md.

    **The detector's blur** (``detector_blur_px``, off by default): every DRR can be blurred
    in the transmitted domain, as a detector blurs, by a given σ or one estimated at the start
    of every level but the first (the last level then runs twice); in one view the
    radiographs are then mapped to the DRR as well, and past the first level the level CTs
    leave out the pyramid's Gaussian. In one view the depth comes from the apparent
    magnification, which an unmodelled blur moves by about 1 mm per pixel: on the
    polychromatic single-view benchmark the estimate took the median mTRE from 0.30 to
    0.165 mm, but on a small crop of one vertebra it was unreliable, so it is asked for, not
    assumed. ``full_detector`` adds a last level at the full detector (σ carried into it from
    the level before when estimated; one design and its model's step): 0.129 mm with the
    estimate in 8.4 s for the whole ``register-2d3d`` command (stop 32; 9.8 s with the two
    designs before it, same machine), 0.113 mm with σ known.

    **Pyramid.** Level ``ℓ`` (:class:`~regkit.registration.levels.LevelOptions`) renders the CT
    smoothed and resampled to ``shrink · base`` mm (``base`` = the CT's geometric-mean voxel
    spacing; :func:`~regkit.registration.levels.at_spacing`) on each view's detector binned by
    the least whole factor ``f`` that leaves at most ``max_voxels`` pixels
    (:meth:`Camera.downsample`; the radiograph is averaged over the same ``f × f`` blocks). Each
    level starts from the previous level's result. CMA-ES searches wide on coarse levels; the
    batched quadratic model (the default), Powell or a gradient method (Adam, L-BFGS through
    the differentiable torch renderer, w.r.t. the six parameters) refines on fine ones.

    **Defaults** (:data:`DEFAULT_LEVELS`, metric ``gncc``) were chosen from measurements: see
    docs/decisions/registration-2d3d-levels.md.

Example:
    >>> result = register_2d3d(ct, [camera], [radiograph], seed=1)  # doctest: +SKIP
    >>> result.world_correction, result.cameras[0].camera_from_world  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.geometry.transforms import rigid_from_params
from regkit.metrics import Metric, get_metric
from regkit.optim import ParamSpec, QuadraticOptions, coerce_options, gradient_methods, optimizers
from regkit.registration import engine
from regkit.registration._radiograph_images import (
    DETECTOR_BLUR_GRID_PX as _DETECTOR_BLUR_GRID_PX,
)
from regkit.registration._radiograph_images import bin_image as _bin
from regkit.registration._radiograph_images import bin_weight as _bin_weight
from regkit.registration._radiograph_images import bone_rois as _bone_rois
from regkit.registration._radiograph_images import detector_blur as _detector_blur
from regkit.registration._radiograph_images import detector_blur_part as _detector_blur_part
from regkit.registration._radiograph_images import detector_factor as _detector_factor
from regkit.registration._radiograph_images import fit_bone_weight as _fit_bone_weight
from regkit.registration._radiograph_images import (
    joint_bone_weight_ratio as _joint_bone_weight_ratio,
)
from regkit.registration._radiograph_images import match_intensities as _match_intensities
from regkit.registration._radiograph_images import smooth as _smooth
from regkit.registration._radiograph_inputs import check_bones as _check_bones
from regkit.registration._radiograph_inputs import check_cameras as _check_cameras
from regkit.registration._radiograph_inputs import check_images as _check_images
from regkit.registration._radiograph_inputs import check_in_view
from regkit.registration._radiograph_inputs import check_masks as _check_masks
from regkit.registration._radiograph_inputs import check_variance as _check_variance
from regkit.registration._radiograph_inputs import check_volume_source as _check_volume_source
from regkit.registration._radiograph_inputs import flat_mask as _flat_mask
from regkit.registration.engine import Level
from regkit.registration.levels import (
    DEFAULT_THREADS,
    LevelOptions,
    ProgressCallback,
    at_spacing,
    at_spacing_within,
)
from regkit.registration.pose_error import mean_target_error
from regkit.registration.radiograph_report import save_report
from regkit.registration.results import Registration2D3DResult, cameras_from_correction
from regkit.render.base import Renderer, Views
from regkit.utils.checks import is_real, is_whole
from regkit.volume import Volume

__all__ = [
    "DEFAULT_LEVELS",
    "Register2D3DOptions",
    "correction_from_params",
    "mean_target_error_2d3d",
    "register_2d3d",
    "save_report",
]

# Largest level volume handed to a renderer: bounds its memory (the same cap as
# volume_registration's _MAX_MOVING_VOXELS).
_MAX_LEVEL_VOXELS = 1 << 23
# The most pixels per view of the level ``full_detector`` adds: a 256² view costs about 2 s more on
# 2 cores; a clinical 2-3k² radiograph is binned to 512² rather than rendered 100 times over.
_FULL_DETECTOR_MAX_PIXELS = 512 * 512


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
(:mod:`regkit.optim.quadratic`: designs of 28 poses rendered in one call, 45 with two views'
zooms, first radius 0.25° and 0.5 mm) on the CT as it is (capped at 2²³ voxels); levels 1
and 2 fit the bone weight (``fit_bone_weight``).

Why: on polychromatic radiographs (``benchmarks/precision_2d3d.py``, 14 cases) this polish with
the bone fit gave a median mTRE of 0.32 mm (worst 0.38 mm), where the previous default, Powell
without the bone fit, gave 0.66 mm (worst 1.13). See docs/decisions/registration-2d3d-levels.md.
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
            becomes CMA-ES's start. 0 (default): start from the input cameras, enough within
            15° and 30 mm; from up to 30° and 60 mm off, 64 starts ended 6/6 cases within 2 mm
            (0 starts: 5/6). See docs/decisions/registration-2d3d-levels.md.
        start_spread: Half-width of the screened box, in level-0 steps.
        bone_margin_px: Dilation, in level pixels, of the bones' projected footprint that
            the metric counts when ``bones`` is given.
        bone_roi_margin_mm: With ``bones``, each view is cropped to the bones' projected box
            at the initial pose, widened on every side by this many mm at the bones' depth
            (default 30): the pyramid's pixels go to the bone, and the bone stays in view
            within that distance of its start (a margin in % of the box lost a vertebra). See
            docs/decisions/registration-2d3d-bones.md.
        smooth_px: σ, in level pixels, of a Gaussian applied to both the radiograph and every
            DRR before the metric (default 1; 0: none). A radiograph is blurrier than a DRR,
            and a gradient metric then prefers a wrong magnification, i.e. a wrong depth;
            smoothing both makes their blurs more alike. See
            docs/decisions/registration-2d3d-depth-bias.md.
        mask_flat: Leave the radiographs' flat (collimated, padded) pixels out of the metric.
        fit_bone_weight: At every level but the first, fit the weight of the CT's bone
            against its soft tissue to the radiographs, on the images' edges (once at the
            level's start:
            :func:`~regkit.registration._radiograph_images.joint_bone_weight_ratio`; per
            candidate: the closed form of
            :func:`~regkit.registration._radiograph_images.fit_bone_weight`); default True.
            A radiograph's bone contrast depends on its spectrum and detector, not on the CT's
            HU-to-μ mapping. The first level, which captures, keeps the DRR as it is. See
            docs/decisions/registration-2d3d-bones.md.
        bone_weight_per_candidate: Fit that weight for every candidate pose, to each view
            (a second render of the bone part per candidate), instead of once at each level's
            start, to all views together, rendering the level's CT with its bone so weighted
            (default False, recorded as ``bone_weight`` in the levels' facts). Once per level
            was as precise on the polychromatic benchmark (single view, 6 cases: median mTRE
            0.305 against 0.31 mm; AP + lateral, 4 cases: 0.184 against 0.175 mm) in half
            the time (single view: 3.5 against 7.3 s on cases 0–5, minutes apart).
        bone_threshold_hu: HU above which the CT's μ counts as bone for ``fit_bone_weight``
            (the μ above that of this HU is the bone part).
        mu_water: μ of water (1/mm) for a CT in HU (docs/CONVENTIONS.md: 0.02).
        intensity_degree: At the start of every level but the first, map each radiograph
            through the increasing polynomial of at most this degree that best fits it to the
            DRR at the level's starting pose
            (:func:`~regkit.registration._radiograph_images.fit_intensity_map`). A
            radiograph's line integrals are a concave function of the CT's (beam hardening);
            mapped, thick and thin parts weigh as in the DRR. 0: off. None (default): 3 with
            two or more views, or with one whose detector blur is modelled
            (``detector_blur_px``); 0 otherwise (see below).
        scatter_sigma: With ``intensity_degree``, first remove each radiograph's scatter:
            its transmitted image is modelled, at the level's starting pose, as a primary
            (a non-negative sum of exponentials of the DRR, a spectrum's energies) plus a
            fraction ``k`` of that primary blurred by a Gaussian (a scatter kernel), fitted
            by least squares
            (:func:`~regkit.registration._radiograph_images.scatter_estimate`), for kernels
            of 1–3 times this σ as a fraction of the detector's larger side; the kernel
            whose removal, mapped, agrees best with the DRR's gradients is kept (``k``, the
            kernel's σ in pixels, ``veil_fraction`` and ``scatter_domain`` recorded in the
            levels' facts), and the scatter is subtracted before the map is fitted. The
            last level then runs again and once more as a second pass (see
            ``detector_blur_px``), each refitting the scatter where the pass before ended:
            the first fit is biased by how far off the level's start was. 0: off. None
            (default): 0.06 with two or more views, 0 with one.
        view_zoom: Give each view a free zoom of its image about its principal point, at
            every level but the first (one parameter per view, reported in
            ``extras["view_zoom"]``, not applied to the result's cameras): each view's pose
            along its own view then comes from the other views' detectors, not from its own
            apparent magnification, which blur and scatter bias (and a calibration error of
            the source-to-detector distance or the pixel size would). Needs two or more
            views. None (default): on with two or more views.

            Why these defaults: on the polychromatic AP + lateral benchmark the three together
            took the median mTRE from 0.55 to 0.17 mm (scatter was the cause: without it in
            the radiographs, 0.21 mm), and with heavier scatter one case from 1.57 to 0.37 mm;
            on an oblique pair and on monochromatic radiographs they changed little; on the
            small shipped crop at 80², with or without scatter, they cost 0.02–0.17 mm; a
            biplane registration takes about 1.5× as long (28 s against 19 s, back to back).
            The scatter fitted with the primary (2026-12-05) then took the biplane benchmark
            from 0.177 to 0.094 mm (14 cases, worst 0.304 → 0.133), heavier scatter from
            0.42 / 0.47 to 0.37 / 0.47 mm, at twice the time (32 s against 16 s, one
            machine).
            In a single view without the detector blur modelled, the intensity map and the
            veil removal made the depth worse (cases 0–2: mTRE 0.28–0.38 → 0.74–0.87 mm),
            because what they remove had offset the depth bias of the radiograph's blur; with
            the blur modelled (``detector_blur_px``) the map is on in one view too. See
            docs/decisions/registration-2d3d-depth-bias.md.
        detector_blur_px: σ, in the radiographs' detector pixels, of the blur of a detector
            (and focal spot) applied to every DRR in the transmitted domain,
            ``−log(G_σ * e^{−DRR})``
            (:func:`~regkit.registration._radiograph_images.detector_blur`). A detector blurs
            the transmitted intensity, so an edge moves towards its brighter side, and a
            gradient metric reads an unmodelled blur as a change of magnification: in one view
            about 1 mm of depth per pixel of blur. ``"estimate"``: at the start of every level
            but the first, the σ of
            :data:`~regkit.registration._radiograph_images.DETECTOR_BLUR_GRID_PX` (0–3 px in
            steps of 0.125) whose DRR, mapped and bone-weighted as the level then does, scores
            best at the level's start (the vertex of the parabola through it and its
            neighbours; recorded as ``detector_blur_px`` in the levels' facts); the first
            level, which captures, renders unblurred (with ``bone_weight_per_candidate`` the
            estimate still fits one bone weight for all views). The last level then runs a
            second time from its answer (half its steps; a quadratic polish
            also halves its radius and stops after two designs and the last model's step),
            re-estimating σ, the map and
            the bone weight there, since the first estimate is biased by how far off the
            level's start was; the result's ``levels`` hold that extra level. A number fixes
            σ at every level. 0 or None (default): off. In one view the blur model, estimated
            or given, turns the intensity map on (``intensity_degree``). Past the first level
            the level CTs leave out the pyramid's Gaussian (``at_spacing(smooth=False)``,
            recorded as ``pyramid_gaussian: false``): its blur moves no edge, and the estimate
            took it for part of the detector's (0.88–0.94 px for the true 1.0 with it,
            0.94–0.99 px without). The bone weight is fitted to the bone part as it changes
            the blurred DRR, to first order
            (:func:`~regkit.registration._radiograph_images.detector_blur_part`). Measured (see
            docs/decisions/registration-2d3d-depth-bias.md): on the polychromatic single-view
            benchmark (the whole chest CT, 14 cases, radiographs blurred by 1 px) the estimate
            took the median mTRE from 0.30 to 0.165 mm (depth 0.24 → 0.09 mm, worst 0.40 →
            0.27 mm; 0.25 mm with one pass and the Gaussian), 5.0 s against 4.2 s; wide starts
            0.17 mm (worst 0.42); on the shipped crop at 80² (DRRs blurred in the transmitted
            domain by 1.0 / 1.5 / 2.0 px) it estimated 0.98 / 1.52 / 2.05 px and ended 0.25 /
            0.09 / 0.68 mm off against 6.2 / 11.2 / 21.1 mm without. But on a crop of one
            vertebra (64²) it was unreliable (1.5–4.5 mm against 0.2–3.4 mm without, by the
            radiograph's blur), and with two views (AP + lateral, 4 cases) it made the median
            worse, 0.18 → 0.27 mm, where each view's zoom already takes up its magnification;
            so it is off by default.
        full_detector: Add a last level at each view's full detector where the last level
            bins it (up to 512² pixels a view: a larger detector is binned to fit): the last
            level's method and CT, half its steps, and for a quadratic polish half its radius
            and one design followed by its model's step (``final_step``; the blur estimate's
            second pass runs before it, at the binned detector), and the last level's first
            pass, a quadratic polish, stops sooner (its ``tol_x`` doubled).
            With an estimated blur this level takes σ from the level before rather than
            estimating it: at the full detector the level CT's voxels are large against a
            pixel and the estimate leans low (0.76–0.80 px for the true 1.0). In-plane
            precision follows the detector's resolution (0.13 mm at the default 128² against
            0.07 mm at 256²), so this is what reaches the finest poses, at about 2 s more
            per 256² view on 2 cores (1.9 s for the level, 32 renders; 2–3 s with two
            designs before stop 32; the cost grows with the pixels). Measured on the polychromatic
            benchmark (256², radiographs blurred by 1 px; see
            docs/decisions/registration-2d3d-depth-bias.md), single view, 14 cases, stop 30
            (two designs at the full level): with ``detector_blur_px=1.0`` (the blur known) a
            median mTRE of 0.114 mm (worst 0.182), with ``"estimate"`` 0.129 mm (worst 0.195;
            7.5 s in one process; wide starts, 8 cases: 0.130 mm, worst 0.194); stop 32 (one
            design and its step): 0.113 mm (worst 0.185) and 0.129 mm (worst 0.190; wide
            starts 0.129 mm, worst 0.194), against 0.165 mm with the estimate alone
            and 0.221 mm with no blur model; the whole ``register-2d3d`` command took 8.5 and
            9.6 s (stop 30, two designs at the full level; with one design and its step, stop
            32: 8.4 s against 9.8 s, same machine, the same median). AP + lateral with the
            defaults, 4 cases (stop 29, before the doubled ``tol_x``): 0.146 mm in 26 s
            against 0.18 mm in 16 s. Default False.
        ray_step_voxels: The renders' largest step along a ray, in units of the level CT's
            smallest voxel spacing (the renderers' own default is 0.5). None (default): 1 with
            one view, 0.5 with two or more. On the polychromatic benchmark's single view (14
            cases) one voxel gave the same median mTRE as half a voxel (0.315 against 0.32 mm,
            worst 0.37 against 0.40; cases 0–3 back to back: 8.0 against 9.0 s): a render
            costs half, and the DRRs differ by under 0.1 % of their range. With AP +
            lateral, where the error is smaller, the coarser quadrature showed: median 0.200
            against 0.175 mm (4 cases). See docs/decisions/registration-2d3d-levels.md.
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
    fit_bone_weight: bool = True
    bone_weight_per_candidate: bool = False
    bone_threshold_hu: float = 150.0
    mu_water: float = 0.02
    ray_step_voxels: float | None = None
    max_batch: int | None = None
    threads: int | None = DEFAULT_THREADS
    intensity_degree: int | None = None
    scatter_sigma: float | None = None
    view_zoom: bool | None = None
    detector_blur_px: float | str | None = None
    full_detector: bool = False

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
            if not is_real(value) \
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
            if not is_whole(value) or value < low:
                raise InputError(f"must be an integer >= {low}, got {value!r}", key=key)
        if isinstance(self.bone_threshold_hu, bool) \
                or not isinstance(self.bone_threshold_hu, int | float) \
                or not math.isfinite(self.bone_threshold_hu):
            raise InputError(f"must be a finite number, got {self.bone_threshold_hu!r}",
                             key="bone_threshold_hu")
        for key in ("mask_flat", "fit_bone_weight", "bone_weight_per_candidate",
                    "full_detector"):
            if not isinstance(getattr(self, key), bool):
                raise InputError(f"must be True or False, got {getattr(self, key)!r}", key=key)
        for key in ("max_batch", "threads"):
            value = getattr(self, key)
            if value is not None and (not is_whole(value)
                                      or value < 1):
                raise InputError(f"must be None or an integer >= 1, got {value!r}", key=key)
        self._check_corrections()

    def _check_corrections(self) -> None:
        """The options that :meth:`for_views` resolves (and the ray step, resolved there too)."""
        step = self.ray_step_voxels
        if step is not None and (not is_real(step) or not math.isfinite(step) or step <= 0):
            raise InputError(f"must be None or a finite number > 0, got {step!r}",
                             key="ray_step_voxels")
        if self.intensity_degree is not None and (not is_whole(self.intensity_degree)
                                                  or not 0 <= self.intensity_degree <= 5):
            raise InputError(f"must be None or an integer in [0, 5], got "
                             f"{self.intensity_degree!r}", key="intensity_degree")
        if self.scatter_sigma is not None and (
                not is_real(self.scatter_sigma) or not math.isfinite(self.scatter_sigma)
                or not 0 <= self.scatter_sigma <= 1):
            raise InputError(f"must be None or a number in [0, 1], got {self.scatter_sigma!r}",
                             key="scatter_sigma")
        blur = self.detector_blur_px
        if blur is not None and blur != "estimate" and (
                isinstance(blur, str) or not is_real(blur) or not math.isfinite(blur)
                or not 0 <= blur <= 10):
            raise InputError(f"must be None, 'estimate' or a number of detector pixels in "
                             f"[0, 10], got {blur!r}", key="detector_blur_px")
        if self.view_zoom is not None and not isinstance(self.view_zoom, bool):
            raise InputError(f"must be None, True or False, got {self.view_zoom!r}",
                             key="view_zoom")

    def for_views(self, n_views: int) -> Register2D3DOptions:
        """These options with the per-view-count defaults filled in for ``n_views`` views.

        ``intensity_degree``, ``scatter_sigma``, ``view_zoom``, ``ray_step_voxels`` and
        ``detector_blur_px`` are set
        where they are None (see the attributes).

        Raises:
            InputError: ``view_zoom`` asked for one view (its zoom and its depth are then one
                unknown); ``scatter_sigma`` asked without the intensity map (degree 0).
        """
        multi = n_views > 1
        if self.view_zoom and not multi:
            raise InputError("view_zoom needs two or more views: in one view the zoom and the "
                             "distance from the source are one unknown", key="view_zoom")
        blur = 0.0 if self.detector_blur_px is None else self.detector_blur_px
        degree = (3 if multi or blur != 0 else 0) if self.intensity_degree is None \
            else self.intensity_degree
        if degree == 0 and self.scatter_sigma:
            raise InputError("the scatter removal runs within the intensity map: it needs "
                             "intensity_degree >= 1", key="scatter_sigma")
        sigma = (0.06 if multi and degree else 0.0) if self.scatter_sigma is None \
            else self.scatter_sigma
        step = (0.5 if multi else 1.0) if self.ray_step_voxels is None else self.ray_step_voxels
        return replace(self, intensity_degree=degree, scatter_sigma=sigma, detector_blur_px=blur,
                       view_zoom=multi if self.view_zoom is None else self.view_zoom,
                       ray_step_voxels=step)


# --------------------------------------------------------------------------------- the pose


def correction_from_params(params: Any, pivot: Any) -> Any:
    """``(..., 6)`` search parameters to ``(..., 4, 4)`` world corrections about ``pivot``.

    ``x ↦ R(r) (x − c) + c + t`` (see the module docstring); numpy in, numpy out; a torch tensor
    keeps its graph.
    """
    return rigid_from_params(params, pivot)


def mean_target_error_2d3d(camera_from_world_est: Any, camera_from_world_true: Any,
                           points_world: Any) -> float:
    """The mTRE of camera poses, mm: :func:`regkit.registration.pose_error.mean_target_error`.

    Args:
        camera_from_world_est: ``(4, 4)`` estimated pose of one view (or ``(V, 4, 4)``: the
            mean over views).
        camera_from_world_true: The true pose(s), same shape.
        points_world: ``(N, 3)`` target points (bone voxel centres), world mm, N >= 1.
    """
    return mean_target_error(camera_from_world_est, camera_from_world_true, points_world)


# ------------------------------------------------------------------------------- the levels


@dataclass
class _Group:
    """The views of one level that share a detector size."""

    views: list[int]
    intrinsic: NDArray[np.float64]          # (V, 3, 3)
    camera_from_world: NDArray[np.float64]  # (V, 4, 4)
    height: int
    width: int
    fixed: torch.Tensor                     # (V, H, W) float32, smoothed
    raw: torch.Tensor                       # (V, H, W) float32, binned, not smoothed
    weight: torch.Tensor | None             # (V, H, W) float32 weights or None


@dataclass(eq=False)
class _Level(Level):
    """One pyramid level: a renderer on the level CT, the binned views and the metric.

    Its parameters are the six of :func:`correction_from_params` about ``pivot``, followed at
    levels with ``view_zoom`` by one log zoom per view.
    """

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
    bone_renderer: Renderer | None = None
    intensity_degree: int = 0
    scatter_sigma: float = 0.0
    intensity_maps: list[dict[str, Any]] | None = None
    weighted_renderer: Callable[[float], Renderer] | None = None
    bone_weight: float | None = None
    blur_px: float = 0.0
    estimate_blur: bool = False
    blur_scores: list[float | None] | None = None
    sharp_ct: bool = False
    blur_from: int | None = None
    spec: ParamSpec = field(default_factory=lambda: ParamSpec.rigid6())
    pivot: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))

    def _group_scores(self, g: _Group, corrections: torch.Tensor,
                      zooms: torch.Tensor | None = None) -> torch.Tensor:
        """``(λ, V_g)`` scores of the group's views under ``(λ, 4, 4)`` float64 corrections.

        ``zooms``: ``(λ, V)`` factors of every view's image about its principal point (None: 1).
        """
        lam, nv = corrections.shape[0], len(g.views)
        k, poses = self._cameras(g, corrections, zooms)
        chunk = lam * nv if self.max_batch is None else self.max_batch
        parts, feet, bone_parts = [], [], []
        for a in range(0, lam * nv, chunk):
            views = Views(k[a:a + chunk], poses[a:a + chunk], g.height, g.width)
            drr_part = self.renderer.drr(views)
            parts.append(self._blurred(drr_part, g))
            if self.bone_renderer is not None:
                bone_parts.append(self._blurred_part(drr_part, self.bone_renderer.drr(views), g))
            if self.bones is not None:
                with torch.no_grad():
                    feet.append(self._footprint(self.renderer.drr(views, bones=self.bones)))
        drr = torch.cat(parts).to(torch.float32)
        foot = torch.cat(feet) if feet else None
        fixed = g.fixed.repeat(lam, 1, 1)
        weight = None if g.weight is None else g.weight.repeat(lam, 1, 1)
        drr = _smooth(drr, self.smooth_px, weight)   # as the radiograph was (see build)
        scored = weight if foot is None else (foot if weight is None else weight * foot)
        if bone_parts:   # fitted on the pixels the metric scores
            bone = _smooth(torch.cat(bone_parts).to(torch.float32), self.smooth_px, weight)
            drr = _fit_bone_weight(fixed, drr, bone, scored)
        weight = scored
        return self.metric(fixed, drr, weight).reshape(lam, nv).to(torch.float64)

    def _blurred(self, drr: torch.Tensor, g: _Group, blur_px: float | None = None
                 ) -> torch.Tensor:
        """The group's DRRs blurred as its detector blurs, in the transmitted domain; float32.

        ``blur_px``: σ in detector pixels (None: the level's).
        """
        return _detector_blur(drr.to(torch.float32), self._level_sigma(g, blur_px))

    def _blurred_part(self, drr: torch.Tensor, part: torch.Tensor, g: _Group,
                      blur_px: float | None = None) -> torch.Tensor:
        """A part of the DRRs (their bone) as it changes their blurred whole, to first order.

        See :func:`~regkit.registration._radiograph_images.detector_blur_part`; float32.
        """
        return _detector_blur_part(drr, part.to(torch.float32), self._level_sigma(g, blur_px))

    def _level_sigma(self, g: _Group, blur_px: float | None) -> float:
        """The detector blur's σ in the group's level pixels (its views share one binning)."""
        return (self.blur_px if blur_px is None else blur_px) / self.factors[g.views[0]]

    def _scored(self, g: _Group, views: Views) -> torch.Tensor | None:
        """The pixels the metric counts in the group's views (as in :meth:`_group_scores`).

        Its weights, times the bones' footprint where only bones are registered.
        """
        if self.bones is None:
            return g.weight
        foot = self._footprint(self.renderer.drr(views, bones=self.bones))
        return foot if g.weight is None else g.weight * foot

    def _mapped(self, g: _Group, drr: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """The group's radiographs mapped to its (blurred) DRRs and smoothed, and the maps."""
        mapped, facts = _match_intensities(g.raw, drr, g.weight, self.intensity_degree,
                                           self.smooth_px,
                                           self.scatter_sigma * max(g.height, g.width))
        return _smooth(mapped, self.smooth_px, g.weight), facts

    def _bone_fit_part(self, g: _Group, fixed: torch.Tensor, blurred: torch.Tensor,
                       whole: torch.Tensor, bone: torch.Tensor, scored: torch.Tensor | None,
                       blur_px: float | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One group's share of the bone weight's fit.

        What :func:`~regkit.registration._radiograph_images.joint_bone_weight_ratio` takes: the
        radiographs, the blurred DRRs (``blurred``, of ``whole`` by ``blur_px``) and their bone
        part (both smoothed), the scored pixels.
        """
        return (fixed, _smooth(blurred, self.smooth_px, g.weight),
                _smooth(self._blurred_part(whole, bone, g, blur_px), self.smooth_px, g.weight),
                scored)

    @staticmethod
    def _cameras(g: _Group, corrections: torch.Tensor,
                 zooms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's views under ``(λ, 4, 4)`` corrections and ``(λ, V)`` zooms (None: 1).

        ``(λ·V_g, 3, 3)`` intrinsics and ``(λ·V_g, 4, 4)`` poses, candidate-major.
        """
        lam, nv = corrections.shape[0], len(g.views)
        t = torch.as_tensor(g.camera_from_world, dtype=corrections.dtype)
        poses = (t[None] @ corrections[:, None]).reshape(lam * nv, 4, 4)
        k = torch.as_tensor(g.intrinsic, dtype=corrections.dtype).repeat(lam, 1, 1)
        if zooms is not None:
            k = _zoomed(k, zooms[:, g.views].reshape(lam * nv))
        return k, poses

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

    def scores(self, corrections: torch.Tensor,
               zooms: torch.Tensor | None = None) -> torch.Tensor:
        """``(λ,)`` mean score over views (the metric's own sense) of ``(λ, 4, 4)`` corrections."""
        total = torch.zeros(corrections.shape[0], dtype=torch.float64)
        for g in self.groups:
            total = total + self._group_scores(g, corrections, zooms).sum(dim=1)
        return total / self.n_views

    def zooms(self, params: Any) -> torch.Tensor | None:
        """``(λ, V)`` view zooms ``exp(params[:, 6:])`` of ``(λ, 6 + V)`` parameters, or None."""
        if params.shape[-1] == 6:
            return None
        return torch.exp(torch.as_tensor(params[..., 6:], dtype=torch.float64))

    def corrections(self, params: Any) -> Any:
        """``(..., 6 [+ V])`` parameters to ``(..., 4, 4)`` world corrections (numpy or torch).

        The views' zooms, if any, are left out (:meth:`zooms`).
        """
        if isinstance(params, torch.Tensor):
            return correction_from_params(params[..., :6],
                                          torch.as_tensor(self.pivot, dtype=params.dtype))
        return np.asarray(correction_from_params(np.asarray(params)[..., :6], self.pivot))

    def losses(self, params: NDArray[np.float64]) -> NDArray[np.float64]:
        with torch.no_grad():
            s = self.scores(torch.as_tensor(self.corrections(params), dtype=torch.float64),
                            self.zooms(params))
        values = s.numpy()
        return -values if self.higher_is_better else values

    def loss(self, params: torch.Tensor) -> torch.Tensor:
        sign = -1.0 if self.higher_is_better else 1.0
        zooms = self.zooms(params[None])
        return sign * self.scores(self.corrections(params)[None], zooms)[0]

    def prepare(self, x: NDArray[np.float64]) -> int:
        """What the level fits once, at its start ``x``, before its search; evaluations used.

        First each radiograph's intensities are mapped to the DRR (:meth:`_map_intensities`),
        then the bone weight is fitted to all views (:meth:`_weigh_bone`), each where asked.
        Both render each view group in one call, whatever ``max_batch`` (one image per view).
        """
        return self._estimate_blur(x) + self._map_intensities(x) + self._weigh_bone(x)

    def _estimate_blur(self, x: NDArray[np.float64]) -> int:
        """Estimate the detector's blur at ``x``: the σ that scores best there; evaluations used.

        For each σ of :data:`~regkit.registration._radiograph_images.DETECTOR_BLUR_GRID_PX`
        (detector pixels) the DRRs at ``x`` (rendered once, with their bone part) are blurred,
        the radiographs mapped to them and the bone weight fitted, as the level would with that
        σ, and scored; the level's σ is the vertex of the parabola through the best σ and its
        two neighbours (the best σ itself at the grid's ends). The grid is searched coarse to
        fine: every :data:`_BLUR_GRID_STRIDE`-th σ first, then the σ within a stride of the
        best of those (13 of the 25 with the default grid; the same answer as the whole grid
        where the scores have one peak, which they had in every estimate measured). The
        σ not scored are None in :attr:`blur_scores`.
        """
        if not self.estimate_blur:
            return 0
        correction = torch.as_tensor(self.corrections(x[None]), dtype=torch.float64)
        zooms = self.zooms(x[None])
        grid = _DETECTOR_BLUR_GRID_PX
        scores: list[float | None] = [None] * len(grid)
        with torch.no_grad():
            rendered = []
            for g in self.groups:
                k, poses = self._cameras(g, correction, zooms)
                views = Views(k, poses, g.height, g.width)
                drr = self.renderer.drr(views).to(torch.float32)
                bone = (None if self.bone_renderer is None
                        else self.bone_renderer.drr(views).to(torch.float32))
                rendered.append((g, drr, bone, self._scored(g, views)))

            def score(blur: float) -> float:
                parts, prepared = [], []
                for g, drr, bone, scored in rendered:
                    fixed, blurred = g.fixed, self._blurred(drr, g, blur)
                    if self.intensity_degree > 0:
                        fixed, _ = self._mapped(g, blurred)
                    if bone is not None:
                        parts.append(self._bone_fit_part(g, fixed, blurred, drr, bone, scored,
                                                         blur))
                    prepared.append((g, drr, bone, fixed, scored))
                ratio = _joint_bone_weight_ratio(parts) if parts else 0.0
                total = 0.0
                for g, drr, bone, fixed, scored in prepared:
                    full = drr if bone is None else drr + ratio * bone
                    image = _smooth(self._blurred(full, g, blur), self.smooth_px, g.weight)
                    total += float(self.metric(fixed, image, scored).sum())
                return total / self.n_views

            sign = 1.0 if self.higher_is_better else -1.0
            for i in _coarse_to_fine(len(grid), _BLUR_GRID_STRIDE, scores, sign):
                scores[i] = score(grid[i])
        values = sign * np.asarray([np.nan if v is None else v for v in scores])
        self.blur_px = _best_on_grid(np.asarray(grid, dtype=np.float64), values)
        self.blur_scores = [None if v is None else round(v, 6) for v in scores]
        return sum(v is not None for v in scores)

    def _weigh_bone(self, x: NDArray[np.float64]) -> int:
        """Fit the bone weight at ``x`` and render the rest of the level with it.

        One bone weight for all views
        (:func:`~regkit.registration._radiograph_images.joint_bone_weight_ratio`),
        fitted on the DRR and its bone part at ``x`` (one evaluation); the level's renderer
        becomes that of the CT with its bone so weighted, and the per-candidate fit stops.
        """
        if self.bone_renderer is None or self.weighted_renderer is None:
            return 0
        correction = torch.as_tensor(self.corrections(x[None]), dtype=torch.float64)
        zooms = self.zooms(x[None])
        parts = []
        with torch.no_grad():
            for g in self.groups:
                k, poses = self._cameras(g, correction, zooms)
                views = Views(k, poses, g.height, g.width)
                whole = self.renderer.drr(views)
                parts.append(self._bone_fit_part(g, g.fixed, self._blurred(whole, g), whole,
                                                 self.bone_renderer.drr(views),
                                                 self._scored(g, views)))
            ratio = _joint_bone_weight_ratio(parts)
        self.renderer = self.weighted_renderer(ratio)
        self.bone_renderer = None
        self.bone_weight = 1.0 + ratio
        return 1

    def _map_intensities(self, x: NDArray[np.float64]) -> int:
        """Map each radiograph's intensities to the DRR at the level's start ``x``.

        See :func:`~regkit.registration._radiograph_images.match_intensities`; one DRR per
        view (counted as one evaluation). The level's radiographs are replaced by the mapped
        ones for its whole search.
        """
        if self.intensity_degree <= 0:
            return 0
        maps: list[dict[str, Any]] = [{} for _ in range(self.n_views)]
        correction = torch.as_tensor(self.corrections(x[None]), dtype=torch.float64)
        zooms = self.zooms(x[None])
        with torch.no_grad():
            for g in self.groups:
                k, poses = self._cameras(g, correction, zooms)
                drr = self._blurred(self.renderer.drr(Views(k, poses, g.height, g.width)), g)
                g.fixed, facts = self._mapped(g, drr)
                for v, fact in zip(g.views, facts, strict=True):
                    maps[v] = fact
        self.intensity_maps = maps
        return 1

    def finish(self, x: NDArray[np.float64], index: int) -> tuple[float, dict[str, Any]]:  # noqa: ARG002 - override
        score = self.score_from_loss(float(self.losses(x[None])[0]))
        facts: dict[str, Any] = {"detector_factors": self.factors,
                                 "spacing_mm": np.round(self.spacing_mm, 4).tolist()}
        if self.intensity_maps is not None:
            facts["intensity_maps"] = self.intensity_maps
        if self.bone_weight is not None:
            facts["bone_weight"] = round(self.bone_weight, 4)
        if self.blur_px or self.estimate_blur or self.blur_from is not None:
            facts["detector_blur_px"] = round(self.blur_px, 4)
        if self.blur_scores is not None:
            facts["detector_blur_scores"] = self.blur_scores
        if self.sharp_ct:
            facts["pyramid_gaussian"] = False
        if self.blur_from is not None:
            facts["detector_blur_from_level"] = self.blur_from
        return score, facts


def _best_index(values: NDArray[np.float64]) -> int:
    """The index of the largest value, a NaN never winning (the first index where all are)."""
    return int(np.argmax(np.where(np.isfinite(values), values, -np.inf)))


def _best_on_grid(grid: NDArray[np.float64], values: NDArray[np.float64]) -> float:
    """Where ``values`` (higher is better) on an increasing ``grid`` peak: a parabola's vertex.

    The vertex of the parabola through the best point and its two neighbours (unequal spacing
    allowed), kept between those neighbours; the best point itself at the grid's ends; the
    grid's first point where no value is finite.
    """
    finite = np.isfinite(values)
    if not finite.any():
        return float(grid[0])
    i = _best_index(values)
    best = float(grid[i])
    if 0 < i < len(grid) - 1 and finite[i - 1] and finite[i + 1]:
        (a, b, c), (fa, fb, fc) = grid[i - 1:i + 2], values[i - 1:i + 2]
        den = (b - a) * (fb - fc) - (b - c) * (fb - fa)
        if den != 0:
            num = (b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)
            best = float(np.clip(b - 0.5 * num / den, a, c))
    return best


# The blur estimate's coarse pass scores every third σ of the grid (0.375 px apart).
_BLUR_GRID_STRIDE = 3


def _coarse_to_fine(n: int, stride: int, scores: list[float | None],
                    sign: float) -> Iterator[int]:
    """Indices of an ``n``-point grid to score, coarse to fine; ``scores`` is filled between.

    First every ``stride``-th index and the last; then, around the best of those (``sign``
    times the score, higher is better; a NaN never wins), every index within ``stride - 1``
    of it. The caller stores each index's score in ``scores`` before taking the next index.
    """
    coarse = sorted({*range(0, n, stride), n - 1})
    yield from coarse
    best = coarse[_best_index(np.asarray([np.nan if scores[i] is None else sign * scores[i]
                                          for i in coarse], dtype=np.float64))]
    for i in range(max(0, best - stride + 1), min(n, best + stride)):
        if scores[i] is None:
            yield i


def _zoomed(k: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` intrinsics whose images are zoomed by ``(B,)`` factors.

    About their principal points: ``u' = c + s (u − c)``.
    """
    a = torch.zeros_like(k)
    a[:, 0, 0] = zoom
    a[:, 1, 1] = zoom
    a[:, 0, 2] = (1 - zoom) * k[:, 0, 2]
    a[:, 1, 2] = (1 - zoom) * k[:, 1, 2]
    a[:, 2, 2] = 1
    return a @ k


class _LevelBuilder:
    """Builds levels, caching the level CTs and renderers by (spacing, sharpness, backend).

    A ``sharp`` level CT leaves out the pyramid's Gaussian (``at_spacing(smooth=False)``): where
    the DRRs model the detector's blur, the level's own blur would otherwise be taken for part
    of it (see :meth:`_Problem.level`).
    """

    def __init__(self, ct: Volume, cameras: list[Camera], images: list[NDArray[np.float32]],
                 weights: list[NDArray[np.float32] | None], metric: Metric,
                 bones: tuple[int, ...] | None, opts: Register2D3DOptions,
                 backend: str | None,
                 to_mu: Callable[[NDArray[np.float32]], NDArray[np.float32]] | None = None):
        self.ct = ct          # the CT as given: in μ, or in HU with ``to_mu`` to convert
        self.to_mu = to_mu
        self.cameras = cameras
        self.images = images
        self.weights = weights
        self.metric = metric
        self.bones = bones
        self.opts = opts
        self.backend = backend
        self.base = float(np.exp(np.log(ct.spacing).mean()))
        self._volumes: dict[tuple[float, bool], Volume] = {}
        self._mu_levels: dict[tuple[float, bool], tuple[Volume, float]] = {}
        self._bone_volumes: dict[tuple[float, bool], Volume] = {}
        self._renderers: dict[tuple[bool, float, bool, str], Renderer] = {}

    def _mu_level(self, shrink: float, sharp: bool = False) -> tuple[Volume, float]:
        """The CT's μ at the level's spacing, and that spacing; computed once per level.

        The spacing is 0 (the CT as it is) at ``shrink = 1``, coarsened to stay within the
        renderer's voxel cap.
        """
        key = (shrink, sharp)
        if key not in self._mu_levels:
            spacing = shrink * self.base if shrink > 1 else 0.0
            self._mu_levels[key] = at_spacing_within(self.ct, spacing, _MAX_LEVEL_VOXELS,
                                                     transform=self.to_mu, smooth=not sharp)
        return self._mu_levels[key]

    def bone_volume(self, shrink: float, sharp: bool = False) -> Volume:
        """The CT's μ above that of ``bone_threshold_hu``, at the level's spacing.

        It is the part of the DRR whose weight
        :func:`~regkit.registration._radiograph_images.fit_bone_weight` fits (the rest is soft
        tissue).
        """
        key = (shrink, sharp)
        if key not in self._bone_volumes:
            mu_t = np.float32(self.opts.mu_water * (1.0 + self.opts.bone_threshold_hu / 1000.0))

            def excess(values: NDArray[np.float32]) -> NDArray[np.float32]:
                mu = values if self.to_mu is None else self.to_mu(values)
                out = np.subtract(mu, mu_t, dtype=np.float32)
                return np.maximum(out, np.float32(0.0), out=out)

            # Made slab by slab from μ (at_spacing's transform): no full-size copy of the CT.
            level = at_spacing(self.ct, self._mu_level(shrink, sharp)[1], transform=excess,
                               smooth=not sharp)
            self._bone_volumes[key] = Volume(level.data, level.world_from_index, units="mu")
        return self._bone_volumes[key]

    def volume(self, shrink: float, sharp: bool = False) -> Volume:
        key = (shrink, sharp)
        if key not in self._volumes:
            level = self._mu_level(shrink, sharp)[0]
            level = Volume(level.data, level.world_from_index, units="mu")
            if self.bones is not None:
                assert self.ct.labels is not None
                carrier = Volume(np.zeros(self.ct.shape, np.uint8), self.ct.world_from_index,
                                 labels=self.ct.labels, units="other")
                moved = carrier.resample_to_grid(level.shape, level.world_from_index)
                level = level.with_labels(moved.labels)
            self._volumes[key] = level
        return self._volumes[key]

    def _make_renderer(self, volume: Volume, gradient: bool) -> Renderer:
        """A renderer of a level volume: torch for gradient levels, rays of ``ray_step_voxels``."""
        from regkit.render.select import make_renderer

        step = (self.opts.ray_step_voxels or 0.5) * float(np.min(volume.spacing))
        return make_renderer(volume, backend="torch" if gradient else (self.backend or None),
                             step_mm=step)

    def renderer(self, shrink: float, gradient: bool, bone: bool = False,
                 sharp: bool = False) -> Renderer:
        """The level's renderer of the CT (or, with ``bone``, of its bone part)."""
        key = (bone, shrink, sharp, "torch" if gradient else (self.backend or ""))
        if key not in self._renderers:
            volume = self.bone_volume(shrink, sharp) if bone else self.volume(shrink, sharp)
            self._renderers[key] = self._make_renderer(volume, gradient)
        return self._renderers[key]

    def weighted_renderer(self, shrink: float, gradient: bool, sharp: bool,
                          ratio: float) -> Renderer:
        """A renderer of the level's CT with its bone part weighted ``1 + ratio``.

        The CT's μ plus ``ratio`` times :meth:`bone_volume` (labels kept); not cached, one per
        level that asks.
        """
        level = self.volume(shrink, sharp)
        data = np.asarray(level.data, np.float32) + np.float32(ratio) * \
            np.asarray(self.bone_volume(shrink, sharp).data, np.float32)
        return self._make_renderer(level.with_data(data), gradient)

    def build(self, level: LevelOptions, fit_bone: bool = False, sharp: bool = False) -> _Level:
        gradient = level.method in gradient_methods
        renderer = self.renderer(level.shrink, gradient, sharp=sharp)
        by_size: dict[tuple[int, int, int], list[int]] = {}
        factors, cams, fixed, weights = [], [], [], []
        for i, cam in enumerate(self.cameras):
            f = _detector_factor(cam, level.max_voxels)
            factors.append(f)
            c = cam.downsample(f) if f > 1 else cam
            cams.append(c)
            mask = self.weights[i]
            fixed.append(_bin(self.images[i], f, mask))
            weights.append(None if mask is None else _bin_weight(mask, f))
            by_size.setdefault((c.height, c.width, f), []).append(i)   # one binning per group
        groups = []
        for (h, w, _), members in by_size.items():
            ws = [weights[i] for i in members]
            weight = None
            if any(x is not None for x in ws):
                weight = torch.from_numpy(np.stack([np.ones((h, w), np.float32) if x is None
                                                    else x for x in ws]))
            raw = torch.from_numpy(np.stack([fixed[i] for i in members]))
            groups.append(_Group(
                views=members,
                intrinsic=np.stack([cams[i].intrinsic for i in members]),
                camera_from_world=np.stack([cams[i].camera_from_world for i in members]),
                height=h, width=w,
                fixed=_smooth(raw, self.opts.smooth_px, weight), raw=raw, weight=weight))
        return _Level(renderer=renderer, groups=groups, n_views=len(self.cameras),
                      metric=self.metric, bones=self.bones,
                      bone_margin_px=self.opts.bone_margin_px, max_batch=self.opts.max_batch,
                      factors=factors, spacing_mm=self.volume(level.shrink, sharp).spacing,
                      smooth_px=self.opts.smooth_px, sharp_ct=sharp,
                      bone_renderer=self.renderer(level.shrink, gradient, bone=True,
                                                  sharp=sharp) if fit_bone else None,
                      weighted_renderer=None if self.opts.bone_weight_per_candidate
                      else partial(self.weighted_renderer, level.shrink, gradient, sharp))


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
            position across the view, not along it (its depth stayed 15–21 mm off): register
            single bones from two or more views. See docs/decisions/registration-2d3d-bones.md.
        image_masks: One mask per image (None for none): ``(H, W)`` bool or weights in [0, 1];
            only the pixels inside count.
        metric: A 2-D metric name of :func:`regkit.metrics.get_metric` (default ``"gncc"``,
            gradient-magnitude NCC: with ``smooth_px`` little depth bias and a steep optimum;
            see docs/decisions/registration-2d3d-levels.md).
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
        the metric's own sense, on the level's CT with its fitted bone weight; with two or
        more views, of the mapped radiographs and the zoomed views: not reproducible from the
        cameras alone), ``seconds``,
        ``evaluations``, ``history`` and ``extras`` (``seed``, ``pivot_mm``, ``params`` (the 6
        search parameters, rad and mm), ``view_zoom`` (per view, or None), the resolved
        ``intensity_degree``, ``scatter_sigma`` (applied at levels after the first),
        ``ray_step_voxels``, ``detector_blur_px`` and ``full_detector``,
        ``bones``, ``levels`` (per level: method, detector factors, spacing, evaluations,
        seconds, score, stop reasons and, where fitted, ``intensity_maps``,
        ``bone_weight`` and ``detector_blur_px`` with, where estimated,
        ``detector_blur_scores``, the score of each σ of the grid (None where the coarse-to-fine
        search did not score it), or, where carried,
        ``detector_blur_from_level``; ``pyramid_gaussian: false`` where the level CT was made
        without the pyramid's Gaussian) and ``stop_reasons`` of the last level).

    Raises:
        InputError: bad options; images and cameras of different counts; an image with NaN or
            infinite pixels, empty or constant; an unknown image kind; bones not in the label
            map or without one; a metric that does not take 2-D images.
        ShapeError: an image or mask whose shape differs from its camera's detector.
        UnknownNameError: an unknown metric or optimizer name.
    """
    t_start = time.perf_counter()
    opts = coerce_options(Register2D3DOptions, options, "registration")
    mu, to_mu = _check_volume_source(volume, opts.mu_water)
    cams = _check_cameras(cameras)
    opts = opts.for_views(len(cams))
    imgs = _check_images(images, cams, image_kind)
    user_masks = _check_masks(image_masks, imgs)
    _check_variance(imgs, user_masks)
    bone_labels = _check_bones(bones, mu)
    check_in_view(mu, cams)
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
    levels, carry_from = _final_levels(levels, opts, work_cams)
    with engine.torch_threads(opts.threads):
        builder = _LevelBuilder(mu, work_cams, work_imgs, work_weights, scorer, bone_labels,
                                opts, backend, to_mu=to_mu)
        return _register(builder, cams, levels, metric, seed, opts, progress, t_start,
                         carry_from)


def _with_optimizer(levels: list[LevelOptions], optimizer: str) -> list[LevelOptions]:
    """The levels with every CMA-ES level switched to ``optimizer``.

    The options the new method shares are kept: budgets and tolerances.
    """
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


def _final_levels(levels: list[LevelOptions], opts: Register2D3DOptions,
                  cameras: list[Camera]) -> tuple[list[LevelOptions], int | None]:
    """The pyramid with the levels the options add after it, and where σ is carried.

    An estimated blur adds the last level's second pass (:func:`_second_pass`); the scatter
    removal adds the whole last level once more and then that pass, each refitting the
    scatter, the maps and the bone weight where the pass before ended;
    ``full_detector`` then adds that pass's settings at the full detector, where the last level
    bins any view, binned only as far as :data:`_FULL_DETECTOR_MAX_PIXELS` needs, and the last
    level's first pass polishes less (:func:`_before_full_detector`). Returns the levels and the
    index of the full-detector level when it carries an estimated σ from the level before (else
    None).
    """
    last = levels[-1]
    out = list(levels)
    estimate = opts.detector_blur_px == "estimate"
    pixels = min(max(c.height * c.width for c in cameras), _FULL_DETECTOR_MAX_PIXELS)
    full = opts.full_detector and pixels > last.max_voxels \
        and any(_detector_factor(c, last.max_voxels) > 1 for c in cameras)
    if full:
        out[-1] = _before_full_detector(last)
    refit = (opts.scatter_sigma or 0.0) > 0
    if refit:
        out.append(last)
    if estimate or refit:
        out.append(_second_pass(last))
    if not full:
        return out, None
    out.append(_full_detector_pass(last, pixels))
    return out, (len(out) - 1 if estimate else None)


def _before_full_detector(level: LevelOptions) -> LevelOptions:
    """The last binned level's first pass when the full-detector level follows it.

    A quadratic polish doubles its ``tol_x`` (the default's or the one given): it stops about
    one halving of its trust region sooner, since the passes after it polish the same pose
    further. Other methods are left as they are. Measured with ``detector_blur_px="estimate"``
    at stop 30 (two designs at the full level), single view, 14 cases: a median mTRE of
    0.129 mm (worst 0.195) with 112 evaluations at
    this level (median), against 0.126 mm (worst 0.199) with 140; wide starts, cases 0–5: no
    case worse than 0.20 mm. Running the
    estimate's second pass with one design instead of two as well lost depth on wide starts
    (0.21 → 0.40 mm on one case), so that pass is left whole. See
    docs/decisions/registration-2d3d-depth-bias.md.
    """
    tol_x = dict(level.options).get("tol_x", QuadraticOptions.tol_x)
    if level.method != "quadratic" or not is_real(tol_x) or not math.isfinite(tol_x) \
            or tol_x <= 0:
        return level   # a bad tol_x is left for the optimizer's own check to name
    return replace(level, options={**level.options, "tol_x": 2 * float(tol_x)})


def _second_pass(level: LevelOptions) -> LevelOptions:
    """The last level once more, from the pass before's answer (blur estimate, scatter).

    Its start re-estimates σ or the scatter (and refits the map and the bone weight) at a pose
    the first pass has already polished: the first estimate, made at the level's start, is
    biased by how far off that start is. Half the first pass's steps; a quadratic polish also
    halves its radius (which counts in steps, so its first trust region, and ``tol_x`` with it,
    is a quarter of the first pass's in mm and degrees) and stops after two designs and the
    last model's step (``final_step``: one more evaluation, which scores that model's answer
    rather than leave the best design point). Other methods keep their options (and budgets).
    """
    options = dict(level.options)
    if level.method == "quadratic":
        options["radius"] = float(options.get("radius", 1.0)) / 2
        options["max_iterations"] = 2
        options["final_step"] = True
        options.pop("max_evaluations", None)
    return replace(level, options=options, rot_step_deg=level.rot_step_deg / 2,
                   trans_step_mm=level.trans_step_mm / 2)


def _full_detector_pass(level: LevelOptions, pixels: int) -> LevelOptions:
    """The level ``full_detector`` adds: :func:`_second_pass` at ``pixels`` a view, one design.

    A quadratic polish there stops after one design and its model's step (``final_step``):
    at the full detector a candidate costs four times a binned one, and the second design of
    two rarely beat its own centre, the first model's step. Measured with
    ``detector_blur_px="estimate"``, one view, 14 cases: median mTRE 0.129 mm (worst 0.190)
    with 32 evaluations at the level in 1.9 s, against 0.129 mm (worst 0.196) with 59 in 3.5 s
    for two designs; wide starts (8 cases) 0.129 mm (worst 0.194) against 0.128 mm (0.194);
    σ known (1 px) 0.113 mm (worst 0.185) both. See
    docs/decisions/registration-2d3d-depth-bias.md.
    """
    out = replace(_second_pass(level), max_voxels=pixels)
    if out.method == "quadratic":
        out = replace(out, options={**out.options, "max_iterations": 1})
    return out


class _Problem:
    """The 2D–3D problem for the engine: one rigid correction shared by all views."""

    def __init__(self, builder: _LevelBuilder, pivot: NDArray[np.float64], metric: str,
                 opts: Register2D3DOptions, carry_from: int | None = None):
        self.builder, self.pivot, self.metric, self.opts = builder, pivot, metric, opts
        self.higher_is_better = builder.metric.higher_is_better
        self.carry_from = carry_from          # the level that takes σ from the one before
        self._previous: _Level | None = None

    def level(self, index: int, options: LevelOptions) -> _Level:
        # the first level captures: a free bone weight there flattens the landscape far from
        # the truth (the shipped crop's single view ended 8 mm off)
        blur = self.opts.detector_blur_px
        # with the detector's blur modelled, past the first level the level CT leaves out the
        # pyramid's Gaussian: a linear blur the estimate would take for part of the
        # detector's (σ 0.88-0.94 px for the true 1.0 with it, 0.94-0.99 without); the
        # first level keeps it, as capture needs it (without: one wide start in 8 lost)
        sharp = index > 0 and (blur == "estimate" or bool(blur))
        lv = self.builder.build(options, fit_bone=self.opts.fit_bone_weight and index > 0,
                                sharp=sharp)
        lv.pivot, lv.higher_is_better = self.pivot, self.higher_is_better
        lv.spec = ParamSpec.rigid6(options.rot_step_deg, options.trans_step_mm,
                                   rot_bound_deg=self.opts.rot_range_deg,
                                   trans_bound_mm=self.opts.trans_range_mm)
        if blur is not None and blur != "estimate":
            lv.blur_px = float(blur)
        if index > 0:
            lv.intensity_degree = int(self.opts.intensity_degree or 0)
            lv.scatter_sigma = float(self.opts.scatter_sigma or 0.0)
            lv.estimate_blur = blur == "estimate"
            if index == self.carry_from and self._previous is not None:
                lv.estimate_blur = False
                lv.blur_px = self._previous.blur_px
                lv.blur_from = index - 1
            if self.opts.view_zoom:
                # a shift of one step along a view changes its magnification by step / distance
                near = min(float(np.linalg.norm(c.source_world - self.pivot))
                           for c in self.builder.cameras)
                lv.spec = _with_zooms(lv.spec, lv.n_views, options.trans_step_mm / near)
        # kept only for the level that carries its σ: a level holds its renderers' copies
        self._previous = lv if index + 1 == self.carry_from else None
        return lv


def _with_zooms(spec: ParamSpec, n_views: int, step: float) -> ParamSpec:
    """``spec`` followed by one log-zoom per view (first step ``step``, bounds ±0.1)."""
    names = tuple(f"log_zoom{v}" for v in range(n_views))
    lo = spec.lower or (-math.inf,) * spec.size
    hi = spec.upper or (math.inf,) * spec.size
    return ParamSpec(spec.names + names, spec.units + ("1",) * n_views,
                     spec.scales + (step,) * n_views, lo + (-0.1,) * n_views,
                     hi + (0.1,) * n_views)


def _register(builder: _LevelBuilder, cams: list[Camera], levels: list[LevelOptions],
              metric: str, seed: int, opts: Register2D3DOptions,
              progress: ProgressCallback | None, t_start: float,
              carry_from: int | None = None) -> Registration2D3DResult:
    pivot = _pivot(builder.ct, builder.bones)
    done = engine.run(_Problem(builder, pivot, metric, opts, carry_from), levels, seed=seed,
                      starts=opts.starts, start_spread=opts.start_spread, progress=progress)
    correction = np.asarray(correction_from_params(done.x[:6], pivot), dtype=np.float64)
    return Registration2D3DResult(
        cameras=cameras_from_correction(cams, correction), world_correction=correction,
        metric=metric, final_score=done.score, seconds=time.perf_counter() - t_start,
        evaluations=done.evaluations, history=done.history,
        extras={
            "seed": done.seed,
            "pivot_mm": pivot.tolist(),
            "params": done.x[:6].tolist(),
            "view_zoom": np.exp(done.x[6:]).tolist() if done.x.size > 6 else None,
            "intensity_degree": opts.intensity_degree,
            "ray_step_voxels": opts.ray_step_voxels,
            "scatter_sigma": opts.scatter_sigma,
            "detector_blur_px": opts.detector_blur_px,
            "full_detector": opts.full_detector,
            "bones": None if builder.bones is None else list(builder.bones),
            "levels": list(done.levels),
            "stop_reasons": done.stop_reasons,
        })
