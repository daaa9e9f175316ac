"""The hand reconstructor: the bone network, back-projection, refinement and measurement.

Steps (timed in ``result.json``): the network predicts every bone's probability and front/back
depth in each radiograph (:func:`regkit_recon.net.predict.predict_with_plain`: with TTA, the
mean of the 8 flips and turns at two sizes, and the image's own member of them for the
not-a-hand check); the first view's depths are back-projected into closed solids
(:mod:`.backproject`); on request (``refine=True``) the solids are refined by re-projection
(:mod:`.refine`: with two or more views a common depth offset, then each bone's placement unless
``refine_placement=False``); with two or more views each bone is then triangulated from the
views and fused with the same bone back-projected from the others
(:func:`.backproject.fuse_views`, unless ``fuse_views=False``); the label volume is sampled from
the solids and measured
(:func:`regkit_recon.measure_hand.measure_hand`).

Refinement is off by default. In one view the silhouettes fit by construction and depth is not
observable, and fitting thickness to the bones' contrast was measured to make exact
reconstructions worse (uniform μ per bone does not hold; see the README). With two or more views,
the fusion (each bone triangulated from the views, their solids averaged) did better alone than
after refinement, in a fraction of the time (the plugin README has the figures).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.errors import InputError

from .backproject import BoneSolid, FusedSolid, Solid, backproject, fuse_views, label_volume
from .base import Progress, Reconstruction, Reconstructor, View, check_views, reconstructors
from .mesh import Mesh

__all__ = ["MIN_VOXEL_MM", "MIN_WHOLE_SHARE", "HandReconstructor"]

MIN_VOXEL_MM = 0.1
"""The finest label volume: a hand's bones span about 180 x 90 x 40 mm, 650 million voxels of
0.1 mm (3 GB with the solids' fields); the depth maps hold no finer detail."""

_FUSE_MARGIN_PX = 8
"""Detector pixels around each silhouette in the grids of solids that are fused: room for the views
to disagree before another view's window cuts the mean."""


MIN_WHOLE_SHARE = 0.5
"""The least median share of a seen bone's mask held by its largest connected piece before a
radiograph is refused. On 150 held-out phantom radiographs (seeds 303 and 404) in all their
variants (right, left, fingers up; 450 cases) the smallest median was 0.90 with hand_v9 (1st
percentile 0.98, 27-29 bones seen; hand_v8: 0.91, hand_v7: 0.89, hand_v6: 0.85); uniform noise, a
checkerboard and smoothed noise gave 0.38, 0.37 and 0.35 (hand_v8: 0.19, 0.36, 0.49; hand_v7:
0.21, 0.36, 0.47; hand_v6: 0.29, 0.35, 0.45; the network sees bones everywhere, in pieces), and
reconstructing noise took a minute and 390 MB to give a plausible-looking hand of 24 meshes."""

_WARN_WHOLE_SHARE = 0.75
"""Under this median share (and at or over :data:`MIN_WHOLE_SHARE`), a warning: no hand radiograph
of those 450 cases came under 0.89, while a transmitted image read as line integrals gave 0.52
with hand_v9 (17 of 29 bones seen, too many for the few-bones warning; hand_v8: 0.79 with 13)."""

_FEW_BONES = 0.5
"""Under this share of the bones seen, a warning: an inverted image (a transmitted image read as
line integrals) or an image of something else."""


def _whole_share(hit: NDArray[np.bool_]) -> float:
    """The median, over the bones seen, of the share of a bone's mask in its largest piece."""
    from scipy import ndimage

    shares = []
    for mask in hit:
        if mask.sum() < 5:
            continue
        box = ndimage.find_objects(mask.astype(np.uint8))[0]   # labelled within it: cheap on
        pieces, n = ndimage.label(mask[box])                   # a large detector
        sizes = np.bincount(pieces.ravel())[1:]
        shares.append(float(sizes.max() / sizes.sum()) if n else 0.0)
    return float(np.median(shares)) if shares else 1.0


def _check_predictions(views: Sequence[View], preds: Sequence[Any],
                       warn: Progress) -> None:
    """Refuse a radiograph whose bones the network finds only in pieces; warn of few or broken.

    A warning for fewer than half the bones seen, or for a median share under
    :data:`_WARN_WHOLE_SHARE`.

    Raises:
        InputError: a view whose :func:`_whole_share` is under :data:`MIN_WHOLE_SHARE`.
    """
    for v, (view, pred) in enumerate(zip(views, preds, strict=True)):
        which = view.name or f"radiograph {v + 1}"
        share = _whole_share(pred.hit)
        pieces = (f"a bone's largest piece holds a median {share:.0%} of its pixels; a hand "
                  "radiograph gives over 90 %")
        if share < MIN_WHOLE_SHARE:
            raise InputError(
                f"{which}: the network finds its bones only in scattered pieces ({pieces}): "
                "this does not look like a hand radiograph", key="image")
        if len(pred.seen) < _FEW_BONES * len(pred.bone_names):
            what = f"the network sees only {len(pred.seen)} of {len(pred.bone_names)} bones"
        elif share < _WARN_WHOLE_SHARE:
            what = f"the network finds its bones in pieces ({pieces})"
        else:
            continue
        warn(f"{which}: {what}; if the image shows a whole hand, check its kind (--image-kind, "
             "load_view(image_kind=...): a transmitted image read as line integrals is "
             "inverted)")


def _first_view_part(solid: Solid) -> BoneSolid:
    """The first view's own solid of a bone (of a fused one, its first part)."""
    if isinstance(solid, FusedSolid):
        return solid.parts[0]
    assert isinstance(solid, BoneSolid)
    return solid


def _refined_depths(depth: dict[str, NDArray[Any]], solids: Sequence[Solid],
                    shifts: dict[str, list[float]], thickness: dict[str, float],
                    names: Sequence[str], view: View) -> dict[str, NDArray[Any]]:
    """The first view's depth maps moved as refinement and triangulation moved each bone.

    Each bone's translation's component along each pixel's ray is added to both depths (and to
    ``last``, where the prediction has it), and the thickness scaled about the mid-depth of what
    the solid was built from: the first layer, or from the first entry to the last exit where
    the prediction has ``last`` (the in-plane part of a translation, a fraction of a pixel, is
    left out).
    """
    _, rays = view.camera.rays()
    front = depth["front"].astype(np.float64).copy()
    back = depth["back"].astype(np.float64).copy()
    last = depth["last"].astype(np.float64).copy() if "last" in depth else None
    for solid in solids:
        i = list(names).index(solid.name)
        along = rays @ np.asarray(shifts.get(solid.name, (0.0, 0.0, 0.0)))
        scale = thickness.get(solid.name, 1.0)
        centre = 0.5 * (front[i] + (back[i] if last is None else last[i][None]))
        front[i] = centre + along + (front[i] - centre) * scale
        back[i] = centre + along + (back[i] - centre) * scale
        if last is not None:
            last[i] = centre[0] + along + (last[i] - centre[0]) * scale
    out = {**depth, "front": front.astype(np.float32), "back": back.astype(np.float32)}
    if last is not None:
        out["last"] = last.astype(np.float32)
    return out


@reconstructors.register("hand")
class HandReconstructor(Reconstructor):
    """Hand bones from radiographs with the plugin's bone network.

    Args:
        model: A model file, a loaded model, or None for the shipped one.
        device: Where the network runs.
        tta: Average the network over the 8 flips and turns of each image at two sizes
            (default on: with hand_v6 on the test split the 8 lifted the Dice from 0.689 to
            0.701 and the biplane median absolute ASSD from 1.47 to 1.34 mm; the second size
            took hand_v9's from 0.761 to 0.765 and the single view's shift-aligned ASSD from
            1.67 to 1.60 mm; the 16 cost about 3.8 s more a radiograph on 2 cores than none;
            see the plugin README).
        threshold: A bone is seen where its probability exceeds this.
        voxel_mm: The label volume's voxel size, 0.1 to 0.5 mm (finer would take tens of GB
            for a hand, and the depth maps do not hold that detail).
        seed: The refinement engine's seed.
        refine_placement: When refining (``refine=True``) with two or more views, also fit
            each bone's translation after the common depth offset (default on: with hand_v6 and
            no fusion it lowered the biplane test's median
            absolute ASSD from 2.19 to 1.87 mm, better on 7 of 10 pairs, and the worst pair's
            from 3.34 mm (p008) to 2.45 mm (p003, which it worsened by 0.75 mm), for about 20 s
            more; with hand_v1 it doubled the error, see the plugin README).
        refine_thickness: Also fit per-bone thickness to the bones' contrast (off: it was
            measured to hurt).
        fuse_views: With two or more views, triangulate each bone from the views (the point
            nearest the rays through its solids' centroids), move each view's solid along its
            rays to that depth and fuse them (a weighted mean of their fields, each view's
            depths weighing a tenth of its outline;
            :func:`~.backproject.fuse_views`). Default on: see the plugin README for what it
            gained on the held-out pairs. The fused meshes are cut on a grid of
            ``min(0.4, voxel_mm)``. Bones only the other views see are added (triangulated
            where two of them see the bone, otherwise moved with that view's other bones) and
            named in ``result.json`` under ``bones_from_other_views``. The depth maps written
            are the first view's, moved with its bones.
    """

    name = "hand"

    def __init__(self, model: Any = None, *, device: str = "cpu", tta: bool = True,
                 threshold: float = 0.5, voxel_mm: float = 0.5, seed: int = 0,
                 refine_placement: bool = True, refine_thickness: bool = False,
                 fuse_views: bool = True) -> None:
        from regkit_recon.net.predict import resolve_model

        from ..phantom import anatomy

        if not MIN_VOXEL_MM <= voxel_mm <= 0.5:
            raise InputError(f"must lie in [{MIN_VOXEL_MM:g}, 0.5] mm, got {voxel_mm}",
                             key="voxel_mm")
        self.loaded = resolve_model(model, device=device)
        config = self.loaded.net.config
        table = {int(k): v for k, v in anatomy.BONE_NAMES.items() if k}
        foreign = [f"{b}:{n}" for b, n in zip(config.bones, config.bone_names, strict=True)
                   if table.get(int(b)) != n]
        if foreign:
            raise InputError(f"the model reconstructs bones that are not the hand's "
                             f"({', '.join(foreign[:4])}...)", key="model")
        self._names = {int(b): n for b, n in zip(config.bones, config.bone_names, strict=True)}
        if not isinstance(tta, bool):
            raise InputError(f"must be True or False, got {tta!r}", key="tta")
        self.device, self.tta, self.threshold = device, tta, threshold
        self.voxel_mm, self.seed = voxel_mm, seed
        self.refine_placement, self.refine_thickness = refine_placement, refine_thickness
        self.fuse_views = fuse_views

    def _solids(self, pred: Any, camera: Any, margin_px: int) -> list[BoneSolid]:
        """The bones' solids back-projected from one view's prediction."""
        front, back = pred.extent      # from the first entry to the last exit, where given
        return backproject(front, back, pred.prob, camera,
                           bones=[int(b) for b in pred.bones], names=list(pred.bone_names),
                           level=self.threshold, margin_px=margin_px)

    def _fuse(self, placed: Sequence[BoneSolid], meshes: Sequence[Mesh], views: Sequence[View],
              preds: Sequence[Any]) -> tuple[list[Solid], list[Mesh], int, list[str],
                                              list[str]]:
        """The placed first-view solids fused with the other views' (see ``fuse_views``).

        Returns the solids, their meshes, how many were fused (bones the first view does not
        give included), the names of the bones the other views add (after the first view's),
        and those lost. A bone whose fused mesh comes out empty keeps its first part's solid
        (the first view's, or for an added bone the first other view's), moved to its
        triangulated depth; one with no mesh at all is lost.
        """
        others = [self._solids(p, v.camera, _FUSE_MARGIN_PX)
                  for v, p in zip(views[1:], preds[1:], strict=True)]
        final: list[Solid] = []
        out_meshes: list[Mesh] = []
        fused = 0
        results = fuse_views(placed, others, voxel_mm=min(0.4, self.voxel_mm))
        added: list[str] = []
        lost: list[str] = []
        for index, after in enumerate(results):
            if index < len(placed) and after is placed[index]:
                final.append(after)
                out_meshes.append(meshes[index])
                continue
            if isinstance(after, FusedSolid):
                try:
                    out_meshes.append(after.mesh())
                    final.append(after)
                    fused += 1
                except InputError:     # nothing of the mean survives: the first view's, placed
                    after = after.parts[0]
            if not isinstance(after, FusedSolid):
                try:
                    out_meshes.append(after.mesh())
                    final.append(after)
                except InputError:     # nothing of it survives on its grid
                    lost.append(after.name)
                    continue
            if index >= len(placed):          # after the first view's: another view's bone
                added.append(after.name)
        return final, out_meshes, fused, added, lost

    @property
    def bone_names(self) -> dict[int, str]:
        """Label value → bone name of the network's bones."""
        return dict(self._names)

    def reconstruct(self, views: Sequence[View], *, refine: bool | None = None,
                    progress: Progress | None = None) -> Reconstruction:
        """Reconstruct the hand's bones from ``views`` (see :meth:`Reconstructor.reconstruct`)."""
        from regkit_recon.measure_hand import measure_hand
        from regkit_recon.net.predict import predict_with_plain

        from .refine import RefineView
        from .refine import refine as run_refine
        from .report import before_after_overlay, outline_overlay, project_silhouette

        views = check_views(views)
        say = progress or (lambda _line: None)
        warnings: list[str] = []

        def warn(text: str) -> None:      # said now, and kept in result.json
            warnings.append(text)
            say(f"warning: {text}")

        refine = bool(refine)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        # the check's threshold was set on the plain network's masks (TTA's are smoother, and
        # let smoothed noise through): it reads the identity's member of TTA's 8
        pairs = [predict_with_plain(v.image, v.camera, model=self.loaded, tta=self.tta,
                                    threshold=self.threshold, device=self.device)
                 for v in views]
        preds, plain = [p for p, _ in pairs], [q for _, q in pairs]
        timings["predict_s"] = time.perf_counter() - t
        _check_predictions(views, plain, warn)
        first = preds[0]
        say(f"network: {len(first.seen)} of {len(first.bone_names)} bones seen")

        t = time.perf_counter()
        fusing = len(views) > 1 and self.fuse_views
        solids = self._solids(first, views[0].camera, _FUSE_MARGIN_PX if fusing else 3)
        meshes, kept, dropped = [], [], []
        for solid in solids:
            try:
                meshes.append(solid.mesh())
                kept.append(solid)
            except InputError:                   # nothing of it survives on the grid
                dropped.append(solid.name)
        solids = kept
        if not solids:
            raise InputError("no bone was found in the radiograph", key="image")
        timings["backproject_s"] = time.perf_counter() - t
        say(f"back-projected {len(solids)} bones")

        refinement = None
        before_meshes = {s.name: m for s, m in zip(solids, meshes, strict=True)}
        if refine:
            rviews = [RefineView(v.image, v.camera, p.prob.astype(np.float64),
                                 tuple(int(b) for b in p.bones))
                      for v, p in zip(views, preds, strict=True)]
            refinement = run_refine(solids, meshes, rviews, seed=self.seed,
                                    placement=self.refine_placement,
                                    thickness=self.refine_thickness, progress=say)
            timings["refine_s"] = refinement.seconds
        placed = refinement.solids if refinement is not None else solids
        if refinement is not None:
            meshes = [s.mesh() for s in placed]
        final: list[Solid] = list(placed)
        fused = 0
        added: list[str] = []
        if fusing:
            t = time.perf_counter()
            final, meshes, fused, added, lost = self._fuse(placed, meshes, views, preds)
            # a first-view solid that came out empty may come back from the other views
            dropped = [n for n in dropped if n not in added] + lost
            timings["fuse_s"] = time.perf_counter() - t
            say(f"fused {fused} bones with the other views"
                + (f"; {len(added)} only they see" if added else ""))
            if fused < _FEW_BONES * len(placed):
                warn(f"the views agree on only {fused} of {len(placed)} bones (the rest keep the "
                     "first view's depth): check that each camera belongs to its image, and that "
                     "the views lie more than 10° apart")
        t = time.perf_counter()
        volume = label_volume(final, meshes, voxel_mm=self.voxel_mm)
        timings["labels_s"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            measurements = measure_hand(volume.labels, volume.world_from_index, self._names)
        except InputError as err:
            measurements = {"bones": {}, "error": str(err)}
            warn(f"the bones could not be measured: {err}")
        timings["measure_s"] = time.perf_counter() - t

        depth = first.to_arrays()
        shifts = {s.name: list(_first_view_part(s).shift_mm) for s in final
                  if s.name not in added}         # the first view's depth maps' own bones
        if refinement is not None or any(np.any(v) for v in shifts.values()):
            depth = _refined_depths(depth, [s for s in final if s.name in shifts], shifts,
                                    refinement.thickness if refinement is not None else {},
                                    first.bone_names, views[0])
        mesh_by_name: dict[str, Mesh] = {s.name: m for s, m in zip(final, meshes, strict=True)}
        overlays = {}
        for v, (view, pred) in enumerate(zip(views, preds, strict=True)):
            overlays[f"seen_{v}"] = outline_overlay(view.image, [m for m in pred.hit if m.any()])
            before = project_silhouette(before_meshes, view.camera)
            after = (project_silhouette(mesh_by_name, view.camera) if refine or fused or added
                     else before)
            overlays[f"reprojection_{v}"] = before_after_overlay(view.image, before, after)
        timings = {k: round(v, 3) for k, v in timings.items()}
        timings["total_s"] = round(sum(timings.values()), 3)
        result = {
            "reconstructor": self.name, "model": self.loaded.path or "(in memory)",
            "views": [{"name": v.name, "camera_source": v.camera_source,
                       "width": v.camera.width, "height": v.camera.height} for v in views],
            "bones": len(final), "bones_seen": first.seen, "bones_dropped": dropped,
            "offset_method": "; ".join(
                ([first.offset_method] if len(views) == 1 or (refinement is None and not fused)
                 else [])
                + (["multi-view re-projection: common depth offset"
                    + (", per-bone placement" if self.refine_placement else "")]
                   if refinement is not None and len(views) > 1 else [])
                + ([f"each bone triangulated from the views ({fused} fused)"] if fused else [])),
            "fused_bones": fused,
            "bones_from_other_views": added,
            "tta": self.tta,
            "refined": refinement is not None,
            "refinement": refinement.to_json() if refinement is not None else None,
            "timings": timings, "voxel_mm": self.voxel_mm,
            "mesh_frame": "STL files in LPS mm (3D Slicer's STL convention); labels in RAS+",
            "warnings": warnings,
        }
        return Reconstruction(labels=volume.labels, world_from_index=volume.world_from_index,
                              names=self.bone_names, meshes=mesh_by_name, depth=depth,
                              measurements=measurements, result=result, views=list(views),
                              overlays=overlays)
