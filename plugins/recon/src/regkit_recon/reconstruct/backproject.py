"""Back-projection: per-bone front and back depths along known rays → closed solids, meshes, labels.

Each bone becomes a signed field on its camera's *frustum grid*: detector pixels (upsampled) across,
distance from the source along each pixel's ray in depth. A point at pixel ``(u, v)`` and distance
``t`` from the source lies inside the bone when it is inside the bone's silhouette and inside one
of the ray's depth intervals ``[front_l, back_l]``:

    F(u, v, t) = min( s(u, v),  max_l ( half_l(u, v) − |t − mid_l(u, v)| ) )       (mm, > 0 inside)

with ``s`` the signed distance to the silhouette's outline (mm at the bone, + inside),
``mid = (front + back) / 2`` and ``half = (back − front) / 2``. Outside the silhouette (and outside
where a second layer exists) ``mid`` and ``half`` are carried over from the nearest pixel that has
them, ``half`` decreasing with that distance, so ``F`` is continuous and its zero set is a closed
surface: where a ray grazes a bone its interval shrinks to nothing, and where the network's interval
stays thick up to the outline the silhouette closes the solid (never an open sheet). Depth outliers
(a pixel more than ``spike_mm`` from its 3 × 3 neighbours' median) are replaced by that median
first, so a stray pixel cannot raise a spike.

The mesh is marching cubes on ``F`` sampled on the grid (vertices mapped to world through the rays),
and the label volume samples the same ``F`` at each voxel centre (projected into the camera), so
the two describe one solid. Where two bones' solids overlap a voxel goes to the bone it lies deeper
inside.

Convention:
    Depths are mm along each pixel's ray from the source (as in the prediction file); the grid's
    pixel coordinate ``u`` runs over ``[0, W)`` with pixel ``c`` covering ``[c, c + 1)``; the world
    is RAS+ mm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from regkit.errors import InputError, ShapeError
from regkit.geometry.camera import Camera, pixel_rays

from .mesh import Mesh, extract_mesh

__all__ = ["DEPTH_WEIGHT", "BoneSolid", "FusedSolid", "LabelVolume", "Solid", "backproject",
           "backproject_bone", "fuse_views", "label_volume"]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class BoneSolid:
    """One bone's closed solid on its camera's frustum grid.

    Attributes:
        label, name: The bone.
        camera: The view the depths were given in.
        origin: ``(u0, v0)`` detector pixel of the window's first pixel.
        upsample: Grid cells per detector pixel across.
        inside: ``(h, w)`` signed distance to the silhouette outline, mm at the bone, + inside.
        mid, half: ``(L, h, w)`` mid-depth and half-thickness of each layer, mm (extended).
        depth_range: ``(t0, t1)``: the grid's extent along the rays, mm from the source.
        step_mm: Grid step along the rays.
        shift_mm: A world translation applied to the whole solid (by refinement), mm.
    """

    label: int
    name: str
    camera: Camera
    origin: tuple[int, int]
    upsample: int
    inside: Array
    mid: Array
    half: Array
    depth_range: tuple[float, float]
    step_mm: float
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def moved(self, shift_mm: NDArray[np.float64] | None = None,
              thickness_scale: float = 1.0) -> BoneSolid:
        """The solid translated by ``shift_mm`` and with every layer's thickness scaled.

        ``shift_mm`` is in world axes, added to the current shift; each thickness is scaled by
        ``thickness_scale`` about its mid-depth.
        """
        shift = np.asarray(self.shift_mm) + (0.0 if shift_mm is None else np.asarray(shift_mm))
        scale = float(thickness_scale)
        if not scale > 0:
            raise InputError(f"a thickness scale must be > 0, got {scale}", key="thickness")
        grow = max(scale - 1.0, 0.0) * float(np.max(self.half, initial=0.0))
        t0, t1 = self.depth_range
        return replace(self, half=self.half * scale, depth_range=(t0 - grow, t1 + grow),
                       shift_mm=(float(shift[0]), float(shift[1]), float(shift[2])))

    # -------------------------------------------------------------- the field
    def _depths(self) -> Array:
        t0, t1 = self.depth_range
        n = math.ceil((t1 - t0) / self.step_mm) + 1
        return np.asarray(t0 + self.step_mm * np.arange(n), dtype=np.float64)

    def grid_field(self) -> Array:
        """``F`` on the grid, ``(h, w, n)`` (rows, columns, depths), mm, + inside."""
        t = self._depths()
        slab = self.half[..., None] - np.abs(t - self.mid[..., None])
        return np.asarray(np.minimum(self.inside[..., None], slab.max(axis=0)), dtype=np.float64)

    def field(self, points: Array) -> Array:
        """``F`` at world points ``(N, 3)``: the same field, interpolated across.

        It is −inf outside the window.
        """
        inside, slab = self.terms(points)
        return np.minimum(inside, slab)

    def upper_bound(self, points: Array) -> Array:
        """The field itself (its slope is bounded: :meth:`max_slope`)."""
        return self.field(points)

    def terms(self, points: Array) -> tuple[Array, Array]:
        """The field's two terms at world points ``(N, 3)``: ``(s, max_l slab_l)``, mm.

        ``s`` says how far inside the silhouette a point lies (across the rays), the slab how
        far inside a depth interval (along them); ``F`` is their minimum. Both are −inf outside
        the window.
        """
        p = np.asarray(points, dtype=np.float64) - np.asarray(self.shift_mm)
        uv = self.camera.project(p)
        t = np.linalg.norm(p - self.camera.source_world, axis=1)
        col = (uv[:, 0] - self.origin[0]) * self.upsample - 0.5
        row = (uv[:, 1] - self.origin[1]) * self.upsample - 0.5
        h, w = self.inside.shape
        ok = np.isfinite(col) & (col >= 0) & (col <= w - 1) & (row >= 0) & (row <= h - 1)
        inside = np.full(len(p), -np.inf)
        slab = np.full(len(p), -np.inf)
        if not ok.any():
            return inside, slab
        coords = np.stack([row[ok], col[ok]])
        inside[ok] = ndimage.map_coordinates(self.inside, coords, order=1)
        layers = np.full(int(ok.sum()), -np.inf)
        for mid, half in zip(self.mid, self.half, strict=True):
            m = ndimage.map_coordinates(mid, coords, order=1)
            hh = ndimage.map_coordinates(half, coords, order=1)
            layers = np.maximum(layers, hh - np.abs(t[ok] - m))
        slab[ok] = layers
        return inside, slab

    def max_slope(self) -> float:
        """The steepest change of the field on its grid, mm per mm (at least 1)."""
        sdd = self.camera.source_to_detector_mm or 1.0
        spacing = self.camera.pixel_spacing_mm or (1.0, 1.0)
        t = 0.5 * (self.depth_range[0] + self.depth_range[1])
        across = (spacing[1] * t / sdd / self.upsample, spacing[0] * t / sdd / self.upsample)
        slopes = [1.0]
        for arr in (self.inside, *self.mid, *self.half):
            gy, gx = np.gradient(arr, *across)
            slopes.append(float(np.max(np.hypot(gx, gy))))
        return min(max(slopes), 50.0)

    def world_points(self, grid_points: Array) -> Array:
        """World RAS+ mm of fractional grid indices ``(N, 3)`` as (row, column, depth index)."""
        g = np.asarray(grid_points, dtype=np.float64)
        u = self.origin[0] + (g[:, 1] + 0.5) / self.upsample
        v = self.origin[1] + (g[:, 0] + 0.5) / self.upsample
        t = self.depth_range[0] + self.step_mm * g[:, 2]
        source, d_world = pixel_rays(self.camera.intrinsic, self.camera.camera_from_world, 0, 0,
                                     pixels=np.column_stack([u, v]))
        return source + t[:, None] * d_world + np.asarray(self.shift_mm)

    def bounds(self) -> tuple[Array, Array]:
        """World RAS+ corners ``(lo, hi)`` of a box holding the whole grid (the solid included)."""
        h, w = self.inside.shape
        n = len(self._depths())
        corners = np.array([[r, c, k] for r in (0, h - 1) for c in (0, w - 1)
                            for k in (0, n - 1)], dtype=np.float64)
        world = self.world_points(corners)
        # a shell of constant distance bulges past its corners by t·(1 − cos θ): well under this
        return world.min(axis=0) - 1.0, world.max(axis=0) + 1.0

    def centroid(self) -> Array:
        """World RAS+ centre of the solid's volume (the mean of its inside grid cells)."""
        inside = np.argwhere(self.grid_field() > 0)
        if not len(inside):
            raise InputError(f"bone {self.name!r} has no inside cell on its grid", key="bones")
        # the cells' volumes grow as t², under 1 % across a bone at ~1 m: not weighted
        return np.asarray(self.world_points(inside.astype(np.float64)).mean(axis=0))

    def mesh(self) -> Mesh:
        """The bone's closed surface in world RAS+ mm (faces wound outwards)."""
        grid_mesh = extract_mesh(self.grid_field(), 0.0)
        mesh = Mesh(self.world_points(grid_mesh.vertices), grid_mesh.faces)
        if mesh.volume < 0:
            mesh = Mesh(mesh.vertices, mesh.faces[:, ::-1].copy())
        return mesh


# ------------------------------------------------------------------------------ building


def _clean_mask(mask: NDArray[np.bool_], keep_fraction: float) -> NDArray[np.bool_]:
    """The mask's largest connected piece and any piece at least ``keep_fraction`` of it.

    Holes are filled.
    """
    parts, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(parts.ravel())[1:]
        keep = np.flatnonzero(sizes >= keep_fraction * sizes.max()) + 1
        mask = np.isin(parts, keep)
    return np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)


def _despike(depth: Array, valid: NDArray[np.bool_], spike_mm: float) -> Array:
    """Replace depths more than ``spike_mm`` from their 3 × 3 neighbours' median by that median."""
    filled = np.where(valid, depth, np.nan)
    padded = np.pad(filled, 1, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(windows.reshape(*depth.shape, 9), axis=-1)
    spike = valid & (np.abs(depth - median) > spike_mm) & np.isfinite(median)
    return np.where(spike, median, depth)


def _extend(values: Array, valid: NDArray[np.bool_]) -> tuple[Array, Array]:
    """``values`` carried to every pixel from the nearest valid one, and that distance (px)."""
    distance, index = ndimage.distance_transform_edt(~valid, return_indices=True)
    return values[tuple(index)], distance


def _upsample(image: Array, factor: int, shape: tuple[int, int]) -> Array:
    """Bilinear resampling onto a grid ``factor`` times finer (cell centres aligned)."""
    if factor == 1:
        return image
    rows = (np.arange(shape[0]) + 0.5) / factor - 0.5
    cols = (np.arange(shape[1]) + 0.5) / factor - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(image, np.stack([rr, cc]), order=1, mode="nearest")


def backproject_bone(front: Array, back: Array, silhouette: Array, camera: Camera, *,
                     label: int, name: str, upsample: int = 2, step_mm: float = 0.25,
                     spike_mm: float = 3.0, keep_fraction: float = 0.25,
                     margin_px: int = 3, level: float = 0.5) -> BoneSolid | None:
    """One bone's solid from its depth layers in one view.

    Args:
        front: ``(L, H, W)`` (or ``(H, W)``) mm along each pixel's ray from the source, NaN
            where the ray does not cross that layer.
        back: ``(L, H, W)`` (or ``(H, W)``) mm along each pixel's ray from the source, NaN
            where the ray does not cross that layer.
        silhouette: ``(H, W)``: where the bone is seen: a probability in [0, 1] (its ``level``
            contour is the outline, found to a fraction of a pixel) or a boolean mask.
        camera: The view (with ``pixel_spacing_mm``, or the pixel footprint is unknown).
        label: The bone's label value.
        name: The bone's name.
        upsample: Grid cells per detector pixel across.
        step_mm: Grid step along the rays, mm.
        spike_mm: Depth outlier threshold (see the module notes).
        keep_fraction: Silhouette pieces smaller than this fraction of the largest are dropped.
        margin_px: Detector pixels of margin around the silhouette in the grid's window.
        level: The silhouette's threshold (a probability).

    Returns:
        The solid, or None when the bone is not seen (no silhouette pixel with a depth).

    Raises:
        ShapeError: arrays that do not match each other or the camera.
    """
    f = np.asarray(front, dtype=np.float64)
    b = np.asarray(back, dtype=np.float64)
    if f.ndim == 2:
        f, b = f[None], b[None]
    sil = np.asarray(silhouette)
    shape = (camera.height, camera.width)
    if f.shape != b.shape or f.ndim != 3 or f.shape[1:] != shape or sil.shape != shape:
        raise ShapeError(f"bone {name!r}: front {f.shape}, back {b.shape} and silhouette "
                         f"{sil.shape} must be (L, H, W) and (H, W) with (H, W) = {shape}, the "
                         "camera's detector")
    if not 0.0 < level < 1.0:
        raise InputError(f"must lie strictly between 0 and 1, got {level}", key="level")
    # The silhouette's level mapped to 0.5 (piecewise linearly), so one contour is used below.
    raw = sil.astype(np.float64)
    soft = np.where(raw <= level, 0.5 * raw / level, 0.5 + 0.5 * (raw - level) / (1.0 - level))
    valid = np.isfinite(f) & np.isfinite(b) & (b >= f)
    mask = _clean_mask((soft > 0.5) & valid[0], keep_fraction)
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask)
    v0 = max(int(rows.min()) - margin_px, 0)
    v1 = min(int(rows.max()) + margin_px + 1, shape[0])
    u0 = max(int(cols.min()) - margin_px, 0)
    u1 = min(int(cols.max()) + margin_px + 1, shape[1])
    window = (slice(v0, v1), slice(u0, u1))
    fine_shape = ((v1 - v0) * upsample, (u1 - u0) * upsample)

    # Silhouette: the 0.5 contour of the (upsampled) soft map, as a signed distance in mm.
    # What the clean-up kept (holes filled) is inside, what it dropped outside.
    soft_w = np.where(mask[window], np.maximum(soft[window], 0.51),
                      np.minimum(soft[window], 0.49))
    fine = _upsample(soft_w, upsample, fine_shape) > 0.5
    if not fine.any():
        return None
    spacing = camera.pixel_spacing_mm
    sdd = camera.source_to_detector_mm
    if spacing is None or sdd is None:
        raise InputError("the camera has no pixel_spacing_mm, so depths cannot be placed",
                         key="pixel_spacing_mm")
    # Signed distance to the outline in detector mm (rows, columns may differ in spacing).
    cell = (spacing[1] / upsample, spacing[0] / upsample)
    det_mm = ndimage.distance_transform_edt(fine, sampling=cell) \
        - ndimage.distance_transform_edt(~fine, sampling=cell)
    det_mm = det_mm - 0.5 * min(cell) * np.sign(det_mm)           # to the cell's edge

    mids, halves = [], []
    first_mid = None
    for layer in range(f.shape[0]):
        ok = (valid[layer] & mask)[window]
        if not ok.any():
            continue
        fl = _despike(f[layer][window], ok, spike_mm)
        # At least one grid step thick, so that every seen bone has a surface to cut.
        bl = np.maximum(_despike(b[layer][window], ok, spike_mm), fl + 2.0 * step_mm)
        mid_w, dist = _extend(0.5 * (fl + bl), ok)
        half_w, _ = _extend(0.5 * (bl - fl), ok)
        if first_mid is None:
            first_mid = float(np.median(0.5 * (fl + bl)[ok]))
            pixel_mm = 0.5 * (spacing[0] + spacing[1]) * first_mid / sdd
        else:
            # A deeper layer exists only where it does; beyond, its interval closes at a rate
            # of one pixel footprint per pixel, keeping the field continuous.
            half_w = half_w - dist * pixel_mm
        mids.append(_upsample(mid_w, upsample, fine_shape))
        halves.append(_upsample(half_w, upsample, fine_shape))
    if first_mid is None:
        return None
    inside = det_mm * first_mid / sdd
    mid = np.stack(mids)
    half = np.stack(halves)
    lo = float(np.min((mid - np.maximum(half, 0))[:, fine]))
    hi = float(np.max((mid + np.maximum(half, 0))[:, fine]))
    pad = 3 * step_mm
    return BoneSolid(label=int(label), name=str(name), camera=camera, origin=(u0, v0),
                     upsample=int(upsample), inside=inside, mid=mid, half=half,
                     depth_range=(lo - pad, hi + pad), step_mm=float(step_mm))


def backproject(front: Array, back: Array, silhouettes: Array, camera: Camera, *,
                bones: Sequence[int], names: Sequence[str], **options: float) -> list[BoneSolid]:
    """Every seen bone's solid from ``[NB, L, H, W]`` depths and ``[NB, H, W]`` silhouettes.

    See :func:`backproject_bone` for the options; bones not seen are left out.
    """
    f = np.asarray(front)
    if f.ndim == 3:
        f = f[:, None]
    b = np.asarray(back)
    if b.ndim == 3:
        b = b[:, None]
    s = np.asarray(silhouettes)
    if not (len(f) == len(b) == len(s) == len(bones) == len(names)):
        raise ShapeError(f"{len(bones)} bones, but front, back and silhouettes hold {len(f)}, "
                         f"{len(b)} and {len(s)}")
    solids = []
    for i, (label, name) in enumerate(zip(bones, names, strict=True)):
        solid = backproject_bone(f[i], b[i], s[i], camera, label=int(label), name=str(name),
                                 **options)  # type: ignore[arg-type]
        if solid is not None:
            solids.append(solid)
    return solids


class Solid(Protocol):
    """What the label volume and the meshes need of a bone's solid (one view's, or fused)."""

    @property
    def label(self) -> int:
        """The bone's label value."""

    @property
    def name(self) -> str:
        """The bone's name."""

    def field(self, points: Array) -> Array:
        """The signed field at world points ``(N, 3)``: mm, + inside."""

    def upper_bound(self, points: Array) -> Array:
        """A bound never below the field, changing by at most :meth:`max_slope` per mm."""

    def max_slope(self) -> float:
        """An upper bound of :meth:`upper_bound`'s change, mm per mm."""

    def mesh(self) -> Mesh:
        """The closed surface in world RAS+ mm."""


_FAR_MM = 20.0
"""A view's field is floored here in a fusion: outside its window it says "outside", no more."""

DEPTH_WEIGHT = 0.1
"""The weight of a view's depths against its outline in a fusion (see :class:`FusedSolid`)."""


def _check_depth_weight(value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise InputError(f"must lie in (0, 1], got {value}", key="depth_weight")


@dataclass(frozen=True)
class FusedSolid:
    """One bone seen in several views: a weighted mean of its solids' fields.

    Each view's field measures, in mm, how far a point lies inside its solid across (the
    silhouette) and along that view's own rays (the depth interval). One view's depths err mostly
    along its rays, where another view at an angle sees the bone's outline; the mean puts the
    surface between what the views say, so each view's error along its rays is pulled towards the
    other's silhouette (and depths). Each field is floored at ``−20 mm`` and the mean is −inf
    wherever a view's field is (outside its window), so the fused solid lies inside every view's
    window and the field has no plateau at a window's edge.

    Each view's depths are trusted less than its outline. Each view's field is
    ``min(s, slab)``: how far inside its silhouette a point lies (across its rays), or how far
    inside its depth interval (along them), whichever is less. The mean weighs a view's field by 1
    where the silhouette term is the one in force and by ``depth_weight`` where the slab term is.
    Where one view's depth meets another's outline, the surface then lies nearer to where the
    outline puts it: at ``s₂ = −depth_weight · slab₁``, not ``s₂ = −slab₁``. Where all the views'
    depths (or all their outlines) meet, the weights cancel out. The network's depths err by
    about 2 mm along the rays; a weight of 0.1 measured best on validation pairs (plugin
    README, *Fusion weights*). With exact depths the plain mean (``depth_weight=1``) does a
    little better.

    Attributes:
        parts: The bone's solids, one per view, placed in one world (the first view's first).
        voxel_mm: The world grid the mesh is cut on.
        depth_weight: The weight of a view's field where its slab term is in force, in (0, 1].
    """

    parts: tuple[BoneSolid, ...]
    voxel_mm: float = 0.4
    depth_weight: float = DEPTH_WEIGHT

    def __post_init__(self) -> None:
        if not self.parts:
            raise InputError("a fused solid needs at least one view's solid", key="parts")
        if len({p.label for p in self.parts}) != 1:
            raise InputError(f"cannot fuse different bones: {[p.name for p in self.parts]}",
                             key="parts")
        if not self.voxel_mm > 0:
            raise InputError(f"must be > 0, got {self.voxel_mm}", key="voxel_mm")
        _check_depth_weight(self.depth_weight)

    @property
    def label(self) -> int:
        """The bone's label value."""
        return self.parts[0].label

    @property
    def name(self) -> str:
        """The bone's name."""
        return self.parts[0].name

    def field(self, points: Array) -> Array:
        """The weighted mean of the views' fields at world points ``(N, 3)``.

        Each view's field is floored at −20 mm and weighs 1 where its silhouette term is in force,
        ``depth_weight`` where its slab term is. The mean is −inf where any view's field is
        (outside that view's window).
        """
        total = np.zeros(len(points))
        weights = np.zeros(len(points))
        seen = np.ones(len(points), dtype=bool)
        for part in self.parts:
            inside, slab = part.terms(points)
            value = np.minimum(inside, slab)
            seen &= np.isfinite(value)
            weight = np.where(inside <= slab, 1.0, self.depth_weight)
            total += weight * np.maximum(value, -_FAR_MM)
            weights += weight
        return np.where(seen, total / weights, -np.inf)

    def upper_bound(self, points: Array) -> Array:
        """The largest of the views' (floored) fields: never below :meth:`field`.

        The weights jump where a view's term in force changes, so the mean's own slope is not
        bounded; this bound's is (:meth:`max_slope`), so it tells where the solid cannot reach.
        """
        best = np.full(len(points), -np.inf)
        seen = np.ones(len(points), dtype=bool)
        for part in self.parts:
            value = part.field(points)
            seen &= np.isfinite(value)
            best = np.maximum(best, np.maximum(value, -_FAR_MM))
        return np.where(seen, best, -np.inf)

    def max_slope(self) -> float:
        """The steepest change of :meth:`upper_bound`, mm per mm: the steepest of the views'."""
        return max(p.max_slope() for p in self.parts)

    def bounds(self) -> tuple[Array, Array]:
        """A world box ``(lo, hi)`` holding the solid: where every view's grid overlaps."""
        boxes = [p.bounds() for p in self.parts]
        lo = np.max([b[0] for b in boxes], axis=0)
        hi = np.min([b[1] for b in boxes], axis=0)
        if (hi <= lo).any():
            raise InputError(f"bone {self.name!r}: its views' solids do not overlap",
                             key="bones")
        return lo, hi

    def mesh(self) -> Mesh:
        """The fused closed surface in world RAS+ mm, cut on a ``voxel_mm`` world grid."""
        lo, hi = self.bounds()
        shape = np.ceil((hi - lo) / self.voxel_mm).astype(np.int64) + 1
        value = _sample_field(self, np.zeros(3, np.int64), shape, lo, self.voxel_mm)
        value[~np.isfinite(value)] = -self.voxel_mm     # far from the surface: outside
        grid_mesh = extract_mesh(value, 0.0)
        return Mesh(lo + self.voxel_mm * grid_mesh.vertices, grid_mesh.faces)


def _triangulate(parts: Sequence[BoneSolid], views: Sequence[int], *, voxel_mm: float,
                 max_miss_mm: float, cos_min: float, depth_weight: float
                 ) -> tuple[FusedSolid, dict[int, float]] | None:
    """One bone's solids (from ``views``) triangulated and fused, with each view's move (mm).

    The first solid's view is the reference: another view less than ``acos(cos_min)`` from it
    is left out. None where fewer than two views are left, or the rays miss (see
    :func:`fuse_views`).
    """
    centres = np.stack([p.centroid() for p in parts])
    sources = np.stack([np.asarray(p.camera.source_world, dtype=np.float64) for p in parts])
    rays = centres - sources
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    use = np.r_[True, np.abs(rays[1:] @ rays[0]) <= cos_min]   # views at an angle to the first
    if use.sum() < 2:
        return None
    parts = [p for p, u in zip(parts, use, strict=True) if u]
    views = [v for v, u in zip(views, use, strict=True) if u]
    centres, sources, rays = centres[use], sources[use], rays[use]
    across = np.eye(3)[None] - rays[:, :, None] * rays[:, None, :]      # (V, 3, 3)
    point = np.linalg.solve(across.sum(axis=0), np.einsum("vij,vj->i", across, sources))
    miss = np.linalg.norm(np.einsum("vij,vj->vi", across, point - sources), axis=1)
    if miss.max() > max_miss_mm:
        return None
    along = np.einsum("vi,vi->v", point - centres, rays)   # each view's move along its ray
    moved = tuple(p.moved(float(t) * d) for p, t, d in zip(parts, along, rays, strict=True))
    moves = {v: float(t) for v, t in zip(views, along, strict=True)}
    return FusedSolid(moved, voxel_mm, depth_weight), moves


def _moved_along(solid: BoneSolid, correction_mm: float) -> BoneSolid:
    """The solid moved by ``correction_mm`` along its view's ray through its centroid."""
    ray = solid.centroid() - np.asarray(solid.camera.source_world, dtype=np.float64)
    return solid.moved(correction_mm * ray / np.linalg.norm(ray))


def fuse_views(first: Sequence[BoneSolid], others: Sequence[Sequence[BoneSolid]], *,
               voxel_mm: float = 0.4, max_miss_mm: float = 6.0,
               min_angle_deg: float = 10.0, others_only: bool = True,
               depth_weight: float = DEPTH_WEIGHT) -> list[BoneSolid | FusedSolid]:
    """Each bone of the first view fused with the same bone seen in the other views.

    Each view fixes a bone across its rays but barely along them (one view's depths carry an
    unknown offset). So, per bone, the point nearest to the rays from each view's source through
    its solid's centroid is found (least squares; the views' triangulation of the bone), each
    view's solid is moved along its own ray until its centroid lies at that point's depth, and the
    views' fields are averaged, each view's depths weighing ``depth_weight`` of its outline
    (:class:`FusedSolid`).

    Another view whose ray is less than ``min_angle_deg`` from the first view's is left out of
    that bone (it cannot triangulate). A bone keeps the first view's solid where no other view
    is left, or where the triangulated point lies more than ``max_miss_mm`` from any view's ray
    (with two views: rays more than twice that apart, 12 mm by default, where the views disagree
    on which bone it is, or where; 3 mm measured worse on the held-out pairs, 1.56 against
    1.47 mm, see the plugin README). That solid is moved along the first view's rays by the
    median of the triangulated bones' corrections, so that the whole hand stays together.

    With ``others_only`` (the default), bones the first view does not see but other views do
    follow, in label order: triangulated and fused the same way where two or more of those views
    see them (the first of them as the reference), otherwise the solid of the first of those
    views that triangulated other bones, moved along its rays by the median correction of that
    view's triangulated bones. One that no view's correction can place is left out.

    Args:
        first: The first view's solids.
        others: Per other view, its solids (any order; matched by label).
        voxel_mm: The fused meshes' grid.
        max_miss_mm: The largest distance from the triangulated point to any view's ray.
        min_angle_deg: The smallest angle between the reference view's ray and another's that
            is used.
        others_only: Add the bones only the other views see (after the first view's).
        depth_weight: The weight of each view's depths against its outline in the fused field
            (see :class:`FusedSolid`).

    Returns:
        One solid per bone of ``first``, in its order, then (with ``others_only``) the bones only
        the other views see.
    """
    cos_min = math.cos(math.radians(min_angle_deg))
    _check_depth_weight(depth_weight)   # here too: a weight no bone gets to use is refused
    options = {"voxel_mm": voxel_mm, "max_miss_mm": max_miss_mm, "cos_min": cos_min,
               "depth_weight": depth_weight}
    corrections: dict[int, list[float]] = {}     # per view (0: the first), mm along its rays

    def triangulated(parts: list[BoneSolid], views: list[int]) -> FusedSolid | None:
        if len(parts) < 2:
            return None
        found = _triangulate(parts, views, **options)
        if found is None:
            return None
        for view, along in found[1].items():
            corrections.setdefault(view, []).append(along)
        return found[0]

    def in_others(label: int) -> tuple[list[BoneSolid], list[int]]:
        """The bone's solid in each other view that sees it, and those views' numbers."""
        found = [(s, k) for k, view in enumerate(others, start=1)
                 for s in [s for s in view if s.label == label][:1]]
        return [s for s, _ in found], [k for _, k in found]

    fused: list[FusedSolid | None] = []
    for solid in first:
        parts, views = in_others(solid.label)
        fused.append(triangulated([solid, *parts], [0, *views]))
    extra: list[tuple[list[BoneSolid], list[int], FusedSolid | None]] = []
    if others_only:
        seen = {s.label for s in first}
        for label in sorted({s.label for view in others for s in view} - seen):
            parts, views = in_others(label)
            extra.append((parts, views, triangulated(parts, views)))

    # A bone the views could not triangulate moves with the others: by their median correction.
    common = {view: float(np.median(values)) for view, values in corrections.items()}
    out: list[BoneSolid | FusedSolid] = []
    for solid, result in zip(first, fused, strict=True):
        shift = common.get(0)
        out.append(result if result is not None
                   else _moved_along(solid, shift) if shift else solid)
    for parts, views, result in extra:
        if result is not None:
            out.append(result)
            continue
        # the first of its views whose other bones were triangulated places it
        placing = [(p, common[v]) for p, v in zip(parts, views, strict=True) if v in common]
        if placing:
            out.append(_moved_along(*placing[0]))
    return out


def _sample_field(solid: Solid, a: NDArray[np.int64], z: NDArray[np.int64],
                  lo: NDArray[np.float64], voxel_mm: float, coarse: int = 4
                  ) -> NDArray[np.float32]:
    """The solid's field at the voxel centres of the box ``[a, z)``, in blocks near the solid.

    It is evaluated only in the ``coarse``³ blocks whose centre lies within reach of the solid: the
    field's upper bound (:meth:`Solid.upper_bound`, for one view's solid the field itself) changes
    by at most its steepest slope on the grid (:meth:`BoneSolid.max_slope`) per mm, so a block
    whose centre's bound lies further outside than that times its half-diagonal holds no inside
    voxel, nor one next to the surface; elsewhere −inf.
    """
    shape = tuple(int(n) for n in z - a)
    out = np.full(shape, -np.inf, dtype=np.float32)
    blocks = [np.arange(0, n, coarse) for n in shape]
    bi, bj, bk = np.meshgrid(*blocks, indexing="ij")
    starts = np.column_stack([bi.ravel(), bj.ravel(), bk.ravel()])
    centres = (a + starts + 0.5 * (np.minimum(starts + coarse, shape) - starts) - 0.5)
    reach = 1.5 * solid.max_slope() * math.sqrt(3.0) * 0.5 * coarse * voxel_mm + voxel_mm
    near = solid.upper_bound(centres * voxel_mm + lo) > -reach
    offsets = np.stack(np.meshgrid(*(np.arange(coarse),) * 3, indexing="ij"), -1).reshape(-1, 3)
    idx = (starts[near][:, None, :] + offsets[None]).reshape(-1, 3)
    idx = idx[(idx < np.asarray(shape)).all(axis=1)]
    if len(idx):
        out[tuple(idx.T)] = solid.field((idx + a) * voxel_mm + lo)
    return out


@dataclass(frozen=True)
class LabelVolume:
    """A uint8 label map ``(I, J, K)`` on an axis-aligned RAS+ grid."""

    labels: NDArray[np.uint8]
    world_from_index: Array


def label_volume(solids: Sequence[Solid], meshes: Sequence[Mesh], *, voxel_mm: float = 0.5,
                 margin_mm: float = 1.5) -> LabelVolume:
    """The label map of the solids on a RAS+ grid of ``voxel_mm`` covering every mesh.

    A voxel gets the label of the solid whose field is largest at its centre, where that is
    positive (the same field the meshes were cut from).
    """
    if not solids:
        raise InputError("no bone to put in a label volume", key="bones")
    if not 0 < voxel_mm <= 0.5:
        raise InputError(f"voxel_mm must lie in (0, 0.5], got {voxel_mm}", key="voxel_mm")
    lo = np.min([m.vertices.min(axis=0) for m in meshes], axis=0) - margin_mm
    hi = np.max([m.vertices.max(axis=0) for m in meshes], axis=0) + margin_mm
    shape = tuple(int(n) for n in np.ceil((hi - lo) / voxel_mm).astype(int) + 1)
    affine = np.eye(4)
    affine[:3, :3] *= voxel_mm
    affine[:3, 3] = lo
    labels = np.zeros(shape, dtype=np.uint8)
    best = np.zeros(shape, dtype=np.float32)
    for solid, mesh in zip(solids, meshes, strict=True):
        a = np.floor((mesh.vertices.min(axis=0) - lo) / voxel_mm).astype(int) - 1
        z = np.ceil((mesh.vertices.max(axis=0) - lo) / voxel_mm).astype(int) + 2
        a = np.maximum(a, 0)
        z = np.minimum(z, shape)
        value = _sample_field(solid, a, z, lo, voxel_mm)
        box = (slice(a[0], z[0]), slice(a[1], z[1]), slice(a[2], z[2]))
        win = (value > 0) & (value > best[box])
        labels[box][win] = solid.label
        best[box][win] = value[win]
    return LabelVolume(labels, affine)
