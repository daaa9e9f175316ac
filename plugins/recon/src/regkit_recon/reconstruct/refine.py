"""Refinement by re-projection: the reconstructed bones rendered by regkit and fitted by its engine.

Each bone's solid is voxelised (0.5 mm, partial volume from its field) into its own small μ volume,
and regkit's renderer projects it into every given view. Two fits, each a :class:`Problem` run by
the one registration engine (:func:`regkit.registration.engine.run`, CMA-ES):

* **Placement** (two or more views only, where depth is observable): first one *common depth
  offset* of the whole hand along the first view's central ray, then, when asked
  (``placement=True``), per bone a small translation (3 mm parameters, in the first view's
  camera axes). The score is the soft Dice between the bone's rendered silhouette
  (``1 − exp(−path / 1 mm)``) and the network's probability map of that bone, averaged over the
  views, plus a penalty on the fraction of the bone's volume that runs into the other bones.
  In one view the silhouettes fit by construction and depth is not observable, so this fit is
  skipped.
* **Thickness** (any number of views): per bone a thickness scale ``exp(k)`` about its
  mid-depth. Line integrals add up, so the hand's bone DRR is ``Σ_b exp(k_b) · D_b`` with ``D_b``
  each bone's rendered path length; the soft tissue is taken as what a wide Gaussian
  (σ = 6 px) keeps of the radiograph, and the score is the normalised cross-correlation of the
  high-passed model and radiograph over the collimated field, with a weak prior on ``k``.

Convention:
    Scores are reported higher-is-better (Dice, NCC); the engine minimises their negatives.
    Translations are world RAS+ mm.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.geometry.transforms import compose, translation
from regkit.optim import ParamSpec
from regkit.registration.engine import Level, LevelOptions, run

from .backproject import BoneSolid
from .mesh import Mesh

__all__ = ["RefineView", "Refinement", "refine", "reprojection_scores"]

Array = NDArray[np.float64]

_VOXEL_MM = 0.5
# The bones' renders march one voxel a step. Half-voxel steps cost a quarter more of the
# refinement's time on the demo pair; with them (and the longer offset search below) the 10 test
# pairs, refined and fused, came to a median 1.058 mm against 1.056 mm now, each pair within
# 0.08 mm (plugin README, *Refinement by re-projection*).
_STEP_MM = _VOXEL_MM
_SILHOUETTE_MM = 1.0
_HIGHPASS_PX = 6.0
_THICKNESS_PRIOR = 0.05
_COLLISION_WEIGHT = 2.0
_SHIFT_ACROSS_MM = 6.0
_OFFSET_MM = 40.0
# The common offset's Powell search after its 24-start screen: 20 evaluations find the demo
# pair's offset within 1e-4 mm of what 60 find, in under half the time.
_OFFSET_EVALUATIONS = 20
_SHIFT_DEPTH_MM = 25.0


@dataclass(frozen=True)
class RefineView:
    """One radiograph the refinement fits.

    Attributes:
        image: ``(H, W)`` line integrals.
        camera: Its camera.
        prob: ``[NB, H, W]`` the network's bone probabilities, in the order of ``labels``.
        labels: The bone labels of ``prob``'s first axis.
    """

    image: Array
    camera: Camera
    prob: Array
    labels: tuple[int, ...]

    def prob_of(self, label: int) -> Array | None:
        """The probability map of bone ``label`` (None when the model has no such bone)."""
        return self.prob[self.labels.index(label)] if label in self.labels else None


@dataclass
class Refinement:
    """What the refinement did.

    Attributes:
        solids: The refined solids.
        shifts: Bone name → world translation, mm.
        thickness: Bone name → thickness scale.
        offset_mm: The common depth offset along the first view's central ray (0 in one view).
        before, after: :func:`reprojection_scores` of the input and refined solids.
        seconds: Wall time.
        evaluations: Candidates the engine scored.
    """

    solids: list[BoneSolid]
    shifts: dict[str, list[float]] = field(default_factory=dict)
    thickness: dict[str, float] = field(default_factory=dict)
    offset_mm: float = 0.0
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    evaluations: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (without the solids)."""
        return {"offset_mm": round(self.offset_mm, 3), "evaluations": self.evaluations,
                "seconds": round(self.seconds, 2), "before": self.before, "after": self.after,
                "thickness": {k: round(v, 4) for k, v in self.thickness.items()},
                "shifts_mm": {k: [round(x, 3) for x in v] for k, v in self.shifts.items()}}


# ------------------------------------------------------------------------------ rendering


class _BoneRender:
    """One bone's μ volume and renderer; renders its path length in views moved by shifts."""

    def __init__(self, solid: BoneSolid, mesh: Mesh) -> None:
        from regkit import Volume
        from regkit.render import make_renderer

        lo = mesh.vertices.min(axis=0) - 2 * _VOXEL_MM
        hi = mesh.vertices.max(axis=0) + 2 * _VOXEL_MM
        shape = np.ceil((hi - lo) / _VOXEL_MM).astype(int) + 1
        index = np.indices(shape).reshape(3, -1).T
        world = index * _VOXEL_MM + lo
        occupancy = np.clip(solid.field(world) / _VOXEL_MM + 0.5, 0.0, 1.0)
        self.occupancy = occupancy.reshape(shape).astype(np.float32)
        affine = np.diag([_VOXEL_MM, _VOXEL_MM, _VOXEL_MM, 1.0])
        affine[:3, 3] = lo
        self.points = world[occupancy > 0.5]
        self.corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                                 for z in (lo[2], hi[2])])
        # μ = 1/mm inside: the DRR is the path length through the bone, mm.
        self.renderer = make_renderer(Volume(self.occupancy, affine, units="mu"),
                                      backend="torch", step_mm=_STEP_MM)

    def window(self, camera: Camera, extra: Array | None, shift: Array, reach_mm: float,
               along: Array, along_mm: float) -> tuple[int, int, int, int] | None:
        """``(u0, v0, u1, v1)``: where the moved bone and ``extra`` can show.

        The bone is moved by ``shift``, then by up to ``reach_mm`` any way and ``along_mm`` along
        the unit vector ``along``; ``extra`` is a probability map.
        """
        centre = self.corners.mean(axis=0)
        grown = self.corners + shift + np.sign(self.corners - centre) * reach_mm
        grown = np.concatenate([grown + along_mm * along, grown - along_mm * along])
        uv = camera.project(grown)
        margin = 3
        if not np.isfinite(uv).all():
            return None
        u0, v0 = np.floor(uv.min(axis=0)).astype(int) - margin
        u1, v1 = np.ceil(uv.max(axis=0)).astype(int) + margin
        if extra is not None and (extra > 0.1).any():
            rows, cols = np.nonzero(extra > 0.1)
            u0, u1 = min(u0, int(cols.min()) - margin), max(u1, int(cols.max()) + margin + 1)
            v0, v1 = min(v0, int(rows.min()) - margin), max(v1, int(rows.max()) + margin + 1)
        u0, v0 = max(u0, 0), max(v0, 0)
        u1, v1 = min(u1, camera.width), min(v1, camera.height)
        if u1 <= u0 or v1 <= v0:
            return None
        return int(u0), int(v0), int(u1), int(v1)

    def path(self, camera: Camera, shifts: Array, window: tuple[int, int, int, int]) -> Array:
        """``(λ, h, w)`` path length through the bone moved by each of ``shifts`` ``(λ, 3)``."""
        from regkit.render import Views

        u0, v0, u1, v1 = window
        crop = camera.crop(u0, v0, u1 - u0, v1 - v0)
        moves = np.atleast_2d(np.asarray(shifts, dtype=np.float64))
        # The bone moved by s: its point q shows where the camera sees q + s. A translation keeps
        # the pose rigid, so the poses are stacked as they are: a Camera each, with its rigidity
        # check, took a tenth of the refinement's time.
        poses = compose(crop.camera_from_world, translation(moves))
        intrinsic = np.repeat(crop.intrinsic[None], len(moves), axis=0)
        out = self.renderer.drr(Views(intrinsic, poses, crop.height, crop.width))
        return np.asarray(out.detach().cpu().numpy(), dtype=np.float64)

    def close(self) -> None:
        closer = getattr(self.renderer, "close", None)
        if closer is not None:
            closer()


def _soft_dice(silhouette: Array, prob: Array) -> Array:
    inter = (silhouette * prob).sum(axis=(-2, -1))
    total = silhouette.sum(axis=(-2, -1)) + prob.sum(axis=(-2, -1))
    return np.asarray(2.0 * inter / np.maximum(total, 1e-9))


def _silhouette(path: Array) -> Array:
    return np.asarray(1.0 - np.exp(-path / _SILHOUETTE_MM))


def _highpass(image: Array) -> Array:
    return np.asarray(image - ndimage.gaussian_filter(image, _HIGHPASS_PX, mode="nearest"))


def _ncc(a: Array, b: Array, mask: NDArray[np.bool_]) -> Array:
    """NCC of each of ``a`` ``(λ, P)`` with ``b`` ``(P,)`` over ``mask``."""
    x = a[:, mask]
    y = b[mask]
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean()
    return np.asarray((x @ y) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y), 1e-12))


def _field_mask(image: Array) -> NDArray[np.bool_]:
    """The collimated field of a line-integral radiograph, less any saturated (flat) air.

    The collimator cuts the primary beam outside a rectangle, so its shadow is a band along some
    sides whose every row (column) is brighter than the densest anatomy. A side's band is the
    run of rows (columns) from the edge whose median lies above the midpoint between the edge's
    median and the median of all rows (mostly air and hand); a side whose edge is not well above
    that has no band. Pixels flat at the image's floor (air clipped by a saturated detector)
    carry nothing either and are left out too.
    """
    finite = np.isfinite(image)
    values = image[finite]
    lo = float(np.percentile(values, 1.0))
    spread = float(np.percentile(values, 99.5)) - lo
    img = np.where(finite, image, lo)
    mask = finite & (img > lo + 1e-6 * max(abs(lo), 1.0))
    for axis in (0, 1):
        profile = np.median(img, axis=1 - axis)        # one value per row (axis 0) or column
        inner = float(np.median(profile))
        for from_end in (False, True):
            seq = profile[::-1] if from_end else profile
            if seq[0] - inner < 0.25 * spread:
                continue
            below = np.flatnonzero(seq <= 0.5 * (seq[0] + inner))
            n = int(below[0]) if below.size else seq.size
            band = slice(seq.size - n, None) if from_end else slice(0, n)
            if axis == 0:
                mask[band, :] = False
            else:
                mask[:, band] = False
    return np.asarray(mask, dtype=bool)


# ------------------------------------------------------------------------------ the problems


class _OffsetLevel(Level):
    """One common translation of every bone along the first view's central ray."""

    stage = "offset"
    higher_is_better = True

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.spec = ParamSpec(("offset",), ("mm",), (6.0,), (-_OFFSET_MM,), (_OFFSET_MM,))

    def losses(self, params: Array) -> Array:
        shifts = params[:, :1] * self.job.direction
        return -self.job.mean_dice(shifts, range(len(self.job.bones)), first_view=False)


class _ShiftLevel(Level):
    """One bone's translation, in the first view's camera axes.

    Across the image (x, y) and along its central ray (z, where one view knows least).
    """

    stage = "placement"
    higher_is_better = True

    def __init__(self, job: _Job, bone: int, base: Array) -> None:
        self.job, self.bone, self.base = job, bone, base
        self.world_from_view = job.views[0].camera.camera_from_world[:3, :3]    # rows: axes
        self.spec = ParamSpec(("tx", "ty", "tz"), ("mm", "mm", "mm"), (1.5, 1.5, 3.0),
                              (-_SHIFT_ACROSS_MM, -_SHIFT_ACROSS_MM, -_SHIFT_DEPTH_MM),
                              (_SHIFT_ACROSS_MM, _SHIFT_ACROSS_MM, _SHIFT_DEPTH_MM))

    def world(self, params: Array) -> Array:
        """World translations ``(λ, 3)`` of parameters ``(λ, 3)`` (added to the base)."""
        return self.base + np.atleast_2d(params) @ self.world_from_view

    def losses(self, params: Array) -> Array:
        shifts = self.world(params)
        dice = self.job.bone_dice(self.bone, shifts)
        return -(dice - _COLLISION_WEIGHT * self.job.collision(self.bone, shifts))


class _ThicknessLevel(Level):
    """Every bone's log thickness scale against the radiographs' bone contrast."""

    stage = "thickness"
    higher_is_better = True

    def __init__(self, job: _Job) -> None:
        self.job = job
        n = len(job.bones)
        self.spec = ParamSpec(tuple(f"k{i}" for i in range(n)), ("1",) * n, (0.1,) * n,
                              (-0.7,) * n, (0.7,) * n)

    def losses(self, params: Array) -> Array:
        return -(self.job.contrast_ncc(params) - _THICKNESS_PRIOR * (params ** 2).mean(axis=1))


@dataclass
class _Single:
    """A problem of one ready-made level (the engine asks a problem for its levels)."""

    made: Level
    metric: str = "score"
    higher_is_better: bool = True

    def level(self, index: int, options: LevelOptions) -> Level:
        del index, options
        return self.made


class _Job:
    """The bones, their renders and the views, shared by the fits."""

    def __init__(self, solids: Sequence[BoneSolid], meshes: Sequence[Mesh],
                 views: Sequence[RefineView]) -> None:
        self.solids = list(solids)
        self.views = list(views)
        self.bones = [_BoneRender(s, m) for s, m in zip(solids, meshes, strict=True)]
        first = views[0].camera
        self.direction = np.asarray(first.view_direction_world, dtype=np.float64)
        self.set_windows(np.zeros((len(self.bones), 3)), 0.0)
        self._occupied: tuple[Array, NDArray[np.bool_], Array] | None = None  # place_others

    def set_windows(self, shifts: Array, reach_mm: float, along_mm: float = 0.0) -> None:
        """Detector windows (and the probability maps cut to them) that hold each moved bone.

        Each bone is moved by its shift, then by up to ``reach_mm`` any way and ``along_mm`` along
        the first view's central ray.
        """
        self.windows: list[list[tuple[int, int, int, int] | None]] = []
        self.probs: list[list[Array | None]] = []
        for b, (bone, solid) in enumerate(zip(self.bones, self.solids, strict=True)):
            rows, probs = [], []
            for view in self.views:
                prob = view.prob_of(solid.label)
                win = bone.window(view.camera, prob, shifts[b], reach_mm, self.direction,
                                  along_mm)
                rows.append(win)
                probs.append(None if prob is None or win is None
                             else prob[win[1]:win[3], win[0]:win[2]])
            self.windows.append(rows)
            self.probs.append(probs)

    # -------------------------------------------------------------- silhouettes
    def bone_dice(self, b: int, shifts: Array, *, first_view: bool = True) -> Array:
        """``(λ,)`` mean soft Dice of bone ``b`` moved by ``shifts`` over the views."""
        total = np.zeros(len(shifts))
        count = 0
        for v, view in enumerate(self.views):
            if v == 0 and not first_view:
                continue
            win, prob = self.windows[b][v], self.probs[b][v]
            if win is None or prob is None:
                continue
            total += _soft_dice(_silhouette(self.bones[b].path(view.camera, shifts, win)), prob)
            count += 1
        return total / max(count, 1)

    def mean_dice(self, shifts: Array, bones: Any, *, first_view: bool = True) -> Array:
        """``(λ,)`` mean over ``bones`` of :meth:`bone_dice` (all moved alike)."""
        picked = list(bones)
        return np.mean([self.bone_dice(b, shifts, first_view=first_view) for b in picked],
                       axis=0)

    # -------------------------------------------------------------- collisions
    def _occupancy_index(self, shifts: Array, exclude: int
                         ) -> tuple[Array, NDArray[np.bool_], Array]:
        """A 1 mm grid of where the bones other than ``exclude`` lie, each moved by its shift."""
        pts = [b.points + shifts[i] for i, b in enumerate(self.bones)]
        lo = np.min([p.min(axis=0) for p in pts if len(p)], axis=0) - 40.0
        hi = np.max([p.max(axis=0) for p in pts if len(p)], axis=0) + 40.0
        shape = np.ceil((hi - lo) / 1.0).astype(int) + 1
        grid = np.zeros(shape, dtype=bool)
        for i, p in enumerate(pts):
            if i != exclude and len(p):
                idx = np.clip(np.rint((p - lo) / 1.0).astype(int), 0, shape - 1)
                grid[tuple(idx.T)] = True
        return lo, grid, shape

    def place_others(self, b: int, shifts: Array) -> None:
        """Put every bone but ``b`` where the fit has moved it, for :meth:`collision`."""
        self._occupied = self._occupancy_index(shifts, exclude=b)

    def collision(self, b: int, shifts: Array) -> Array:
        """``(λ,)`` fraction of bone ``b``'s volume inside the other bones.

        Bone ``b`` is moved by each of ``shifts``; the others are where :meth:`place_others` put
        them.
        """
        if self._occupied is None:
            raise RuntimeError("collision() needs place_others() first")
        lo, grid, shape = self._occupied
        pts = self.bones[b].points
        if len(pts) > 1500:
            pts = pts[:: len(pts) // 1500]
        out = np.zeros(len(shifts))
        for i, s in enumerate(shifts):
            idx = np.clip(np.rint((pts + s - lo) / 1.0).astype(int), 0, shape - 1)
            out[i] = float(grid[tuple(idx.T)].mean())
        return out

    # -------------------------------------------------------------- contrast
    def prepare_contrast(self, shifts: Array) -> None:
        """Render every bone's path length in every view (at its fitted place), high-passed."""
        self.contrast: list[tuple[Array, Array, NDArray[np.bool_]]] = []
        for v, view in enumerate(self.views):
            h, w = view.camera.height, view.camera.width
            layers = np.zeros((len(self.bones), h * w))
            for b, bone in enumerate(self.bones):
                win = self.windows[b][v]
                if win is None:
                    continue
                full = np.zeros((h, w))
                u0, v0, u1, v1 = win
                full[v0:v1, u0:u1] = bone.path(view.camera, shifts[b][None], win)[0]
                layers[b] = _highpass(full).ravel()
            mask = _field_mask(view.image)
            mask = ndimage.binary_erosion(mask, iterations=int(2 * _HIGHPASS_PX))
            self.contrast.append((layers, _highpass(view.image).ravel(), mask.ravel()))

    def contrast_ncc(self, k: Array) -> Array:
        """``(λ,)`` NCC of the high-passed bone model with the radiographs, mean over views."""
        scale = np.exp(k)
        return np.mean([_ncc(scale @ layers, image, mask)
                        for layers, image, mask in self.contrast], axis=0)

    def close(self) -> None:
        for bone in self.bones:
            bone.close()


def _engine(level: Level, seed: int, evaluations: int, popsize: int = 8) -> Any:
    options = LevelOptions(method="cmaes", options={"popsize": popsize,
                                                    "max_evaluations": evaluations})
    return run(_Single(level), [options], seed=seed)


def _line_search(level: Level, seed: int, starts: int) -> Any:
    """One parameter: screen ``starts`` values over ±6 first steps, then Powell's line search."""
    options = LevelOptions(method="powell", options={"max_evaluations": _OFFSET_EVALUATIONS})
    return run(_Single(level), [options], seed=seed, starts=starts, start_spread=6.0)


def reprojection_scores(job: _Job, shifts: Array, k: Array) -> dict[str, Any]:
    """Per view: the bones' mean silhouette Dice and the contrast NCC, at ``shifts`` and ``k``."""
    dice = []
    for v, view in enumerate(job.views):
        values = []
        for b in range(len(job.bones)):
            win, prob = job.windows[b][v], job.probs[b][v]
            if win is None or prob is None:
                continue
            path = job.bones[b].path(view.camera, shifts[b][None], win)
            values.append(float(_soft_dice(_silhouette(path), prob)[0]))
        dice.append(round(float(np.mean(values)), 4) if values else None)
    ncc = [round(float(_ncc((np.exp(k) @ layers)[None], image, mask)[0]), 4)
           for layers, image, mask in job.contrast]
    return {"silhouette_dice": dice, "contrast_ncc": ncc}


def refine(solids: Sequence[BoneSolid], meshes: Sequence[Mesh], views: Sequence[RefineView],
           *, seed: int = 0, placement: bool = False, thickness: bool = False,
           progress: Callable[[str], None] | None = None) -> Refinement:
    """Refine back-projected bones against their radiographs (see the module notes).

    Args:
        solids: The bones (from the first view).
        meshes: Their meshes.
        views: The radiographs, the first being the one the solids came from.
        seed: The engine's seed.
        placement: With two or more views, fit each bone's translation after the common
            offset (off here; :class:`~regkit_recon.reconstruct.hand.HandReconstructor` turns it
            on: with hand_v6 it lowers the biplane error, with hand_v1's segmentations it
            doubled it; with exact ones it helps a little).
        thickness: Fit the thickness scales.
        progress: Called with a line per stage.

    Raises:
        InputError: no views, or no bones.
    """
    if not views or not solids:
        raise InputError("refinement needs at least one view and one bone", key="views")
    start = time.perf_counter()
    say = progress or (lambda _line: None)
    job = _Job(solids, meshes, views)
    try:
        n = len(solids)
        shifts = np.zeros((n, 3))
        k = np.zeros(n)
        evaluations = 0
        offset = 0.0
        job.prepare_contrast(shifts)
        before = reprojection_scores(job, shifts, k)
        if len(views) > 1:
            job.set_windows(shifts, 0.0, _OFFSET_MM)
            result = _line_search(_OffsetLevel(job), seed, 24)
            offset = float(result.x[0])
            evaluations += result.evaluations
            shifts[:] = offset * job.direction
            say(f"common depth offset {offset:+.1f} mm")
            if placement:
                job.set_windows(shifts, _SHIFT_ACROSS_MM * math.sqrt(2.0), _SHIFT_DEPTH_MM)
                for b in range(n):
                    job.place_others(b, shifts)
                    level = _ShiftLevel(job, b, shifts[b].copy())
                    result = _engine(level, seed + 1 + b, 160)
                    shifts[b] = level.world(result.x)[0]
                    evaluations += result.evaluations
                say(f"placed {n} bones")
            job.set_windows(shifts, 0.0)
            job.prepare_contrast(shifts)
        if thickness:
            result = _engine(_ThicknessLevel(job), seed, 40 * n + 400, popsize=16)
            k = np.asarray(result.x, dtype=np.float64)
            evaluations += result.evaluations
            say("fitted the thickness scales")
        after = reprojection_scores(job, shifts, k)
    finally:
        job.close()
    refined = [s.moved(shifts[i], float(np.exp(k[i]))) for i, s in enumerate(solids)]
    return Refinement(
        solids=refined,
        shifts={s.name: [float(x) for x in shifts[i]] for i, s in enumerate(solids)},
        thickness={s.name: float(np.exp(k[i])) for i, s in enumerate(solids)},
        offset_mm=offset, before=before, after=after,
        seconds=time.perf_counter() - start, evaluations=evaluations)
