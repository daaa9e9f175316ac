"""Signed-distance-like implicit shapes for the phantom's bones, evaluated on float32 arrays.

Every shape here is a function of points in its own local frame (mm) that is negative inside,
positive outside and close to the Euclidean distance to the surface within a few millimetres of it
(exact for planes and spheres, first-order accurate for ellipsoids and swept ellipses). That is what
the cortical shell needs: a voxel belongs to the cortex when its value lies between ``-thickness``
and 0.

Convention:
    A long bone's local frame has its origin at the centre of its proximal end, +z along the bone
    towards its distal end, +x towards the radial (thumb) side and +y towards the dorsum (the back
    of the hand), so that (x, y, z) is right-handed. Carpal bones use the hand frame of
    :mod:`regkit_recon.phantom.anatomy`, which has the same axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BlobBone",
    "Capsule",
    "Constraint",
    "CylinderCut",
    "Ellipsoid",
    "Fracture",
    "HalfSpace",
    "Shape",
    "SphereCut",
    "SweptBone",
    "smooth_max",
    "smooth_min",
]

F32 = NDArray[np.float32]
Matrix = NDArray[np.float64]


def smooth_min(a: F32, b: F32, k: float) -> F32:
    """Polynomial smooth minimum of two distance fields; blends over a band of width ``k`` mm."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * (k * 0.25)


def smooth_max(a: F32, b: F32, k: float) -> F32:
    """Polynomial smooth maximum (rounds the edge where two cuts meet)."""
    return -smooth_min(-a, -b, k)


def _local(points: tuple[F32, F32, F32], rotation: Matrix, center: Sequence[float]
           ) -> tuple[F32, F32, F32]:
    """Points expressed in a primitive's own axes: ``rotation.T @ (p - center)``."""
    x, y, z = (points[0] - center[0], points[1] - center[1], points[2] - center[2])
    r = rotation.astype(np.float32)
    return (r[0, 0] * x + r[1, 0] * y + r[2, 0] * z,
            r[0, 1] * x + r[1, 1] * y + r[2, 1] * z,
            r[0, 2] * x + r[1, 2] * y + r[2, 2] * z)


@dataclass(frozen=True)
class Ellipsoid:
    """A superellipsoid: ``(|u/a|^n + |v/b|^n + |w/c|^n)^(1/n) = 1`` in its own axes.

    Attributes:
        center: Centre (3,), mm, in the owner's frame.
        radii: Semi-axes (a, b, c), mm, along the primitive's own x, y, z.
        rotation: 3×3 ``owner_from_primitive`` rotation.
        exponent: n; 2 is an ellipsoid, larger values are boxier.
    """

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    rotation: Matrix = field(default_factory=lambda: np.eye(3))
    exponent: float = 2.0

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        u, v, w = _local((x, y, z), self.rotation, self.center)
        a, b, c = self.radii
        n = self.exponent
        au, av, aw = np.abs(u) / a, np.abs(v) / b, np.abs(w) / c
        # rho is homogeneous of degree 1, so |grad rho| depends on the direction only and the
        # first-order distance (rho - 1) / |grad rho| is well defined everywhere but the centre.
        if n == 2.0:
            rho = np.sqrt(au * au + av * av + aw * aw)
            # |grad rho| = |(u/a², v/b², w/c²)| / rho
            scaled = np.sqrt((au / a) ** 2 + (av / b) ** 2 + (aw / c) ** 2)
            ratio = rho / np.maximum(scaled, 1e-12)
        else:
            pu, pv, pw = au ** (n - 1.0), av ** (n - 1.0), aw ** (n - 1.0)
            rho = (pu * au + pv * av + pw * aw) ** (1.0 / n)
            grad = np.maximum(rho, 1e-6) ** (1.0 - n) * np.sqrt(
                (pu / a) ** 2 + (pv / b) ** 2 + (pw / c) ** 2)
            ratio = 1.0 / np.maximum(grad, 1e-12)
        small, large = float(min(self.radii)), float(max(self.radii))
        ratio = np.where(rho < 1e-6, small, np.clip(ratio, small * 0.5, large))
        dist = (rho - 1.0) * ratio
        return np.maximum(dist, -small).astype(np.float32, copy=False)

    def extent(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Axis-aligned box (lo, hi) in the owner's frame that holds the primitive."""
        half = np.abs(self.rotation) @ np.asarray(self.radii, dtype=np.float64)
        center = np.asarray(self.center, dtype=np.float64)
        return center - half, center + half


@dataclass(frozen=True)
class Capsule:
    """A round cone: the points within ``r(t)`` of the segment a→b, r linear from ra to rb."""

    a: tuple[float, float, float]
    b: tuple[float, float, float]
    ra: float
    rb: float

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        a = np.asarray(self.a, dtype=np.float32)
        d = np.asarray(self.b, dtype=np.float32) - a
        length2 = float(d @ d)
        px, py, pz = x - a[0], y - a[1], z - a[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / length2, 0.0, 1.0)
        qx, qy, qz = px - t * d[0], py - t * d[1], pz - t * d[2]
        return (np.sqrt(qx * qx + qy * qy + qz * qz) - (self.ra + (self.rb - self.ra) * t)
                ).astype(np.float32, copy=False)

    def extent(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Axis-aligned box (lo, hi) that holds the capsule."""
        ends = np.array([self.a, self.b], dtype=np.float64)
        r = max(self.ra, self.rb)
        return ends.min(axis=0) - r, ends.max(axis=0) + r


@dataclass(frozen=True)
class HalfSpace:
    """Keep the side ``normal · p <= offset``: an exact signed distance (``normal`` is unit)."""

    normal: tuple[float, float, float]
    offset: float
    end: Literal["base", "head"] = "base"

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        n = self.normal
        return (n[0] * x + n[1] * y + n[2] * z - self.offset).astype(np.float32, copy=False)


@dataclass(frozen=True)
class SphereCut:
    """Keep the points inside (or outside) a sphere: an exact signed distance.

    ``keep="inside"`` with ``unless_beyond`` set keeps, in addition, every point on the far side of
    that plane (unit normal, offset): the sphere then shapes only one end of the bone.
    """

    center: tuple[float, float, float]
    radius: float
    keep: Literal["inside", "outside"]
    end: Literal["base", "head"] = "base"
    unless_beyond: tuple[tuple[float, float, float], float] | None = None

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        c = self.center
        dist = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
        value = dist - self.radius if self.keep == "inside" else self.radius - dist
        if self.unless_beyond is not None:
            n, offset = self.unless_beyond
            value = np.minimum(value, offset - (n[0] * x + n[1] * y + n[2] * z))
        return value.astype(np.float32, copy=False)


@dataclass(frozen=True)
class CylinderCut:
    """Keep the points farther than ``radius`` from a line.

    The line goes through ``point`` along ``direction`` (unit).
    """

    point: tuple[float, float, float]
    direction: tuple[float, float, float]
    radius: float
    end: Literal["base", "head"] = "head"

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        p, d = self.point, self.direction
        px, py, pz = x - p[0], y - p[1], z - p[2]
        t = px * d[0] + py * d[1] + pz * d[2]
        qx, qy, qz = px - t * d[0], py - t * d[1], pz - t * d[2]
        return (self.radius - np.sqrt(qx * qx + qy * qy + qz * qz)).astype(np.float32, copy=False)


Constraint = HalfSpace | SphereCut | CylinderCut


@dataclass(frozen=True)
class Fracture:
    """A healed (malunited) fracture of a swept bone.

    Attributes:
        level: Distance of the fracture plane from the proximal end, mm (local z).
        moved_from_original: 4×4 (local frame) that carries the distal fragment from where it was
            grown to where it healed.
    """

    level: float
    moved_from_original: Matrix


@dataclass(frozen=True)
class SweptBone:
    """A long bone: an elliptical cross-section swept along local z, with flared ends.

    The half-widths follow ``r(t) = waist + (base - waist)·max(0, 1 - t/τb)² + (end - waist)·
    max(0, 1 - (1 - t)/τe)²`` with ``t = z / length``: narrow at mid-shaft, flaring to the base
    and to the head. The distal end is a spheroid head (radii ``head_radius`` radially and
    axially, ``head_radius·head_depth`` dorsopalmarly) centred ``head_radius`` proximal to the tip,
    or, without a head, the shaft simply ends at ``length``. ``t`` runs from 0 at the base to 1 at
    the head's centre (without a head: ``plateau`` mm short of the end, the width staying at
    ``end`` beyond), so the neck is as wide as the head. The proximal end is a plane at z = 0
    with its rim rounded over ``base_round`` mm.

    Attributes:
        length: Base-to-tip length, mm.
        base, waist, end: Half-widths (radial, dorsal) at the base, mid-shaft and distal end, mm.
        flare_base, flare_end: τb and τe, fractions of the length over which the ends flare.
        head_radius: Spheroid head radius, mm, or 0 for no head.
        head_depth: Dorsopalmar radius of the head as a fraction of ``head_radius``.
        base_round: Rounding of the base rim, mm.
        constraints: Cuts applied to the grown shape (joint cups, separators between neighbours).
        lobes: Extra primitives joined to the bone (a styloid process), in the local frame.
        fracture: A malunion, or None.
        cortex_end, cortex_mid: Cortical thickness at the ends and at mid-shaft, mm.
        plateau: Without a head, the distal length over which the width stays at ``end``, mm.
        end_shift: How far the cross-section's centre moves off the axis (radial, dorsal) as the
            distal end flares, mm (the distal radius widens mostly towards the ulna).
    """

    length: float
    base: tuple[float, float]
    waist: tuple[float, float]
    end: tuple[float, float]
    flare_base: float = 0.4
    flare_end: float = 0.4
    head_radius: float = 0.0
    head_depth: float = 1.0
    base_round: float = 1.0
    constraints: tuple[Constraint, ...] = ()
    lobes: tuple[Ellipsoid | Capsule, ...] = ()
    fracture: Fracture | None = None
    cortex_end: float = 0.5
    cortex_mid: float = 1.5
    plateau: float = 0.0
    end_shift: tuple[float, float] = (0.0, 0.0)

    @property
    def head_center(self) -> float:
        """Local z of the head's centre (the joint centre of the next bone), mm."""
        return self.length - self.head_radius

    @property
    def _full_width_at(self) -> float:
        """Local z where the flare reaches ``end``.

        That is the head's centre, or ``plateau`` mm short of the distal end.
        """
        if self.head_radius > 0:
            return self.head_center
        return self.length - self.plateau

    def _profile(self, z: F32) -> tuple[F32, F32, F32]:
        """Half-widths (radial, dorsal) at local z, and the distal flare's weight (0..1)."""
        t = np.clip(z / self._full_width_at, 0.0, 1.0)
        wb = np.maximum(1.0 - t / self.flare_base, 0.0) ** 2
        we = np.maximum(1.0 - (1.0 - t) / self.flare_end, 0.0) ** 2
        (bx, by), (mx, my), (ex, ey) = self.base, self.waist, self.end
        rx = mx + (bx - mx) * wb + (ex - mx) * we
        ry = my + (by - my) * wb + (ey - my) * we
        return rx, ry, we

    def half_widths(self, z: float) -> tuple[float, float]:
        """(radial, dorsal) half-widths of the shaft at local ``z``, mm."""
        rx, ry, _ = self._profile(np.asarray(z, dtype=np.float32))
        return float(rx), float(ry)

    def _grown(self, x: F32, y: F32, z: F32, end: Literal["base", "head"] | None) -> F32:
        """The unbroken bone, with the constraints of ``end`` (None: all of them)."""
        rx, ry, we = self._profile(z)
        ux, uy = x / rx, y / ry
        if self.end_shift != (0.0, 0.0):
            ux = (x - self.end_shift[0] * we) / rx
            uy = (y - self.end_shift[1] * we) / ry
        rho = np.sqrt(ux * ux + uy * uy)
        safe = np.maximum(rho, 1e-6)
        cx, cy = ux / safe, uy / safe
        inv = (cx / rx) ** 2 + (cy / ry) ** 2
        inv = np.where(rho < 1e-6, 1.0 / (rx * rx), inv)
        radial = (rho - 1.0) / np.sqrt(inv)
        top = self.head_center if self.head_radius > 0 else self.length
        shaft = smooth_max(radial, -z, self.base_round)
        shaft = np.maximum(shaft, z - top)
        if self.head_radius > 0:
            a = self.head_radius
            head = Ellipsoid((0.0, 0.0, top), (a, a * self.head_depth, a)).sdf(x, y, z)
            shaft = np.minimum(shaft, head)
        for lobe in self.lobes:
            shaft = np.minimum(shaft, lobe.sdf(x, y, z))
        for cut in self.constraints:
            if end is None or cut.end == end:
                shaft = np.maximum(shaft, cut.sdf(x, y, z))
        return shaft

    def mid_weight(self, z: F32) -> F32:
        """1 at mid-shaft, falling to 0 at both ends: drives cortical thickness and density."""
        t = np.clip(z / self.length, 0.0, 1.0)
        return (np.sin(np.pi * t) ** 2).astype(np.float32, copy=False)

    def evaluate(self, x: F32, y: F32, z: F32) -> tuple[F32, F32]:
        """Signed distance (mm) and mid-shaft weight at local points (any broadcastable shape)."""
        if self.fracture is None:
            return self._grown(x, y, z, None), self.mid_weight(z)
        level = self.fracture.level
        proximal = np.maximum(self._grown(x, y, z, "base"), z - level)
        back = np.linalg.inv(self.fracture.moved_from_original).astype(np.float32)
        ox = back[0, 0] * x + back[0, 1] * y + back[0, 2] * z + back[0, 3]
        oy = back[1, 0] * x + back[1, 1] * y + back[1, 2] * z + back[1, 3]
        oz = back[2, 0] * x + back[2, 1] * y + back[2, 2] * z + back[2, 3]
        distal = np.maximum(self._grown(ox, oy, oz, "head"), level - oz)
        sdf = np.minimum(proximal, distal)
        weight = np.where(proximal <= distal, self.mid_weight(z), self.mid_weight(oz))
        return sdf, weight

    def extent(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Axis-aligned box (lo, hi) in the local frame that holds the bone (fragments too)."""
        half = np.array([max(self.base[0], self.waist[0], self.end[0], self.head_radius),
                         max(self.base[1], self.waist[1], self.end[1],
                             self.head_radius * self.head_depth), 0.0])
        lo = np.array([-half[0], -half[1], 0.0]) - 1.0
        hi = np.array([half[0], half[1], self.length]) + 1.0
        for lobe in self.lobes:
            l_lo, l_hi = lobe.extent()
            lo, hi = np.minimum(lo, l_lo - 1.0), np.maximum(hi, l_hi + 1.0)
        if self.fracture is not None:
            corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                                for c in (self.fracture.level, hi[2])])
            moved = corners @ self.fracture.moved_from_original[:3, :3].T \
                + self.fracture.moved_from_original[:3, 3]
            lo, hi = np.minimum(lo, moved.min(axis=0)), np.maximum(hi, moved.max(axis=0))
        return lo, hi


@dataclass(frozen=True)
class BlobBone:
    """A carpal bone: superellipsoid lobes joined together, then cut by its joint separators."""

    lobes: tuple[Ellipsoid, ...]
    constraints: tuple[Constraint, ...] = ()
    cortex: float = 0.6
    blend: float = 1.5

    def evaluate(self, x: F32, y: F32, z: F32) -> tuple[F32, F32]:
        """Signed distance (mm) and a zero mid-shaft weight (carpals have no shaft)."""
        sdf = self.lobes[0].sdf(x, y, z)
        for lobe in self.lobes[1:]:
            sdf = smooth_min(sdf, lobe.sdf(x, y, z), self.blend)
        for cut in self.constraints:
            sdf = np.maximum(sdf, cut.sdf(x, y, z))
        return sdf, np.zeros_like(sdf)

    def extent(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Axis-aligned box (lo, hi) that holds every lobe."""
        boxes = [lobe.extent() for lobe in self.lobes]
        lo = np.min([b[0] for b in boxes], axis=0) - 1.0
        hi = np.max([b[1] for b in boxes], axis=0) + 1.0
        return lo, hi


Shape = SweptBone | BlobBone
