"""The kinematic chain: every bone's shape and its place in the world, for one pose.

Forearm -> carpus -> metacarpals -> phalanges. The radius and ulna are fixed in the forearm frame;
the carpus (the hand frame) turns about the centre of the capitate head by the wrist angles (and,
with a distal radius malunion, moves with the radius' distal fragment); the bases of metacarpals
2–5 are fixed in the carpus; the first metacarpal turns about a centre in the trapezium; each
phalanx turns about the centre of the head proximal to it. A malunited bone's distal fragment
carries everything distal to it.

How joint spaces are kept (``GAPS_MM``; they do not scale with the hand):
    * a ball joint (MCP, PIP, DIP, the thumb's CMC) is a head of radius ``a`` about the joint
      centre and a base cupped by the sphere of radius ``a + gap`` about the same centre; the
      distal bone turns about that centre, so the space stays ``gap`` wide whatever the angle;
    * the radiocarpal joint: the proximal carpal row lies inside a sphere about the wrist centre
      and the radius (and, farther out, the ulna) outside a larger one, so the wrist can turn;
    * between the carpals and the bases of metacarpals 2–5 (one rigid block), each neighbouring
      pair is separated by a plane or a sphere: one bone keeps to one side of it, offset by
      ``gap/2``, the other to the other side, which leaves a space exactly ``gap`` wide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from regkit_recon.phantom import anatomy as A
from regkit_recon.phantom._geometry import frame, rot_x, rot_y, rot_z, translation
from regkit_recon.phantom._sdf import (
    BlobBone,
    Capsule,
    Constraint,
    CylinderCut,
    Ellipsoid,
    Fracture,
    HalfSpace,
    Shape,
    SphereCut,
    SweptBone,
)
from regkit_recon.phantom.deformity import Deformity, RadiusMalunion, ShaftMalunion
from regkit_recon.phantom.pose import POSE_RANGES, HandPose

__all__ = ["PlacedBone", "Skeleton", "build_skeleton"]

Matrix = NDArray[np.float64]
Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class PlacedBone:
    """One bone: its implicit shape in its local frame and where that frame lies in the world.

    Attributes:
        label: Label number (see :mod:`regkit_recon.phantom.anatomy`).
        name: Bone name.
        shape: The implicit shape, in the local frame.
        world_from_local: 4×4, local frame to RAS+ world, mm. For a tubular bone: origin at the
            centre of its proximal end, +z along it distally, +x radial, +y dorsal. Carpals use the
            hand frame. For a fractured bone this is the proximal fragment's frame.
        world_from_distal: For a fractured bone, the frame of its distal fragment as it healed
            (``world_from_local @ moved_from_original``); otherwise None.
        length: Base-to-tip length of a tubular bone (before any shortening), mm; None for
            carpals.
    """

    label: int
    name: str
    shape: Shape
    world_from_local: Matrix
    world_from_distal: Matrix | None = None
    length: float | None = None

    @property
    def moving(self) -> Matrix:
        """The frame the bone's head moves with: the distal fragment's, if it is broken."""
        return self.world_from_local if self.world_from_distal is None else self.world_from_distal


@dataclass(frozen=True)
class Skeleton:
    """All 29 bones of one phantom, and the frames and points the soft tissue is built from.

    Attributes:
        bones: The bones, in label order.
        world_from_forearm, world_from_hand: 4×4 frames (see :mod:`~.anatomy`).
        rays: Ray (1..5) -> world points along it: ``base`` (metacarpal base), ``mcp``, ``pip``
            (for the thumb: its IP joint), ``dip`` (fingers only) and ``tip``.
        palmar: Ray (1..5) -> unit world vector towards the palm side of its proximal phalanx.
        forearm: World points of the radius and ulna axes at the proximal cut (``*_stub``) and at
            the wrist (``*_wrist``).
        stub_z: World z of the proximal cut through the forearm, mm.
    """

    bones: tuple[PlacedBone, ...]
    world_from_forearm: Matrix
    world_from_hand: Matrix
    rays: Mapping[int, Mapping[str, NDArray[np.float64]]]
    palmar: Mapping[int, NDArray[np.float64]]
    forearm: Mapping[str, NDArray[np.float64]]
    stub_z: float


def _point(matrix: Matrix, local: Sequence[float]) -> NDArray[np.float64]:
    return matrix[:3, :3] @ np.asarray(local, dtype=np.float64) + matrix[:3, 3]


def _vec3(values: Sequence[float] | NDArray[np.float64]) -> Vec3:
    return (float(values[0]), float(values[1]), float(values[2]))


def _euler(deg: Vec3) -> Matrix:
    """Rotation from (about x, about y, about z) degrees, applied z first: Rx @ Ry @ Rz."""
    ax, ay, az = (math.radians(v) for v in deg)
    return rot_x(ax) @ rot_y(ay) @ rot_z(az)


# ---------------------------------------------------------------------------- the carpal block


@dataclass(frozen=True)
class _Proxy:
    """A member of the carpal block as an ellipsoid, for placing the separators (hand frame)."""

    center: NDArray[np.float64]
    radii: NDArray[np.float64]
    rotation: Matrix
    axis: NDArray[np.float64] | None  # metacarpals: the shaft direction

    def support(self, direction: NDArray[np.float64]) -> float:
        """Distance from the centre to the surface along a unit direction."""
        return float(1.0 / np.linalg.norm((self.rotation.T @ direction) / self.radii))


def _separators(proxies: Mapping[str, _Proxy], gap: float, skip: set[frozenset[str]],
                curved: Mapping[frozenset[str], tuple[str, float]]
                ) -> dict[str, list[HalfSpace | SphereCut]]:
    """Cuts (hand frame) that keep neighbouring block members ``gap`` apart.

    For each pair close enough to touch, the separating surface crosses the line between their
    centres halfway along the gap (or overlap) that their proxy ellipsoids leave on it. It is a
    plane perpendicular to that line or, for a pair in ``curved``, a sphere of the given radius
    bulging into the concave member. One member keeps the surface offset by ``gap/2`` to its
    side and the other to the other side, so the space between them is exactly ``gap``.
    """
    names = list(proxies)
    out: dict[str, list[HalfSpace | SphereCut]] = {n: [] for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pair = frozenset((a, b))
            if pair in skip:
                continue
            pa, pb = proxies[a], proxies[b]
            delta = pb.center - pa.center
            distance = float(np.linalg.norm(delta))
            u = delta / distance
            ta, tb = pa.support(u), pb.support(-u)
            if ta + tb + 8.0 < distance:
                continue  # too far apart to need a separator
            middle = pa.center + u * (ta + 0.5 * (distance - ta - tb))
            if pair in curved:
                convex, radius = curved[pair]
                concave = b if convex == a else a
                towards = u if convex == a else -u  # from the convex member to the concave one
                centre = _vec3(middle - towards * radius)
                out[convex].append(SphereCut(centre, radius - 0.5 * gap, "inside"))
                out[concave].append(SphereCut(centre, radius + 0.5 * gap, "outside"))
                continue
            normal = u
            if pa.axis is not None and pb.axis is not None:
                # Two metacarpals: the plane holds their mean shaft direction, so that shafts
                # fanning apart are not cut farther out.
                axis = (pa.axis + pb.axis) / np.linalg.norm(pa.axis + pb.axis)
                normal = u - axis * float(u @ axis)
                normal = normal / np.linalg.norm(normal)
            offset = float(normal @ middle)
            out[a].append(HalfSpace(_vec3(normal), offset - 0.5 * gap))
            out[b].append(HalfSpace(_vec3(-normal), -offset - 0.5 * gap))
    return out


def _in_bone_frame(cut: HalfSpace | SphereCut, h_from_bone: Matrix) -> HalfSpace:
    """A hand-frame half-space expressed in a bone's local frame, as a cut of its base."""
    if not isinstance(cut, HalfSpace):
        raise TypeError("only planes separate the metacarpal bases")
    normal = np.asarray(cut.normal)
    return HalfSpace(_vec3(h_from_bone[:3, :3].T @ normal),
                     cut.offset - float(normal @ h_from_bone[:3, 3]), end="base")


# ------------------------------------------------------------------------------ tubular bones


def _swept(spec: A.LongBoneSpec, s: float, constraints: tuple[Constraint, ...],
           malunion: ShaftMalunion | None) -> SweptBone:
    shape = SweptBone(
        length=spec.length * s, base=(spec.base[0] * s, spec.base[1] * s),
        waist=(spec.waist[0] * s, spec.waist[1] * s), end=(spec.end[0] * s, spec.end[1] * s),
        flare_base=spec.flare_base, flare_end=spec.flare_end, head_radius=spec.head_radius * s,
        head_depth=spec.head_depth, base_round=1.2 * s, constraints=constraints,
        cortex_end=spec.cortex_end * s, cortex_mid=spec.cortex_mid * s)
    if malunion is None:
        return shape
    level = malunion.level * shape.length
    return replace(shape, fracture=Fracture(level, malunion.moved_from_original(level)))


def _place_long(name: str, world_from_local: Matrix, s: float,
                constraints: tuple[Constraint, ...], malunion: ShaftMalunion | None
                ) -> PlacedBone:
    shape = _swept(A.LONG_BONES[name], s, constraints, malunion)
    distal = None
    if shape.fracture is not None:
        distal = world_from_local @ shape.fracture.moved_from_original
    return PlacedBone(A.LABELS[name], name, shape, world_from_local, distal, shape.length)


def _child(parent: PlacedBone, abduction: float, flexion: float, gap: float, s: float
           ) -> tuple[Matrix, SphereCut]:
    """Frame of the bone articulating with ``parent``'s head, and the cup of its base."""
    shape = parent.shape
    if not isinstance(shape, SweptBone):
        raise TypeError(f"{parent.name} has no head to articulate with")
    cup_radius = shape.head_radius + gap
    offset = cup_radius - A.CUP_DEPTH_MM * s
    world = (parent.moving @ translation((0.0, 0.0, shape.head_center))
             @ frame(rot_y(abduction) @ rot_x(flexion)) @ translation((0.0, 0.0, offset)))
    return world, SphereCut((0.0, 0.0, -offset), cup_radius, "outside", end="base")


# ---------------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class _Forearm:
    radius: PlacedBone
    ulna: PlacedBone
    forearm_from_carpus_base: Matrix  # identity, or the radius fragment's malunion
    points: dict[str, NDArray[np.float64]]
    stub_z: float  # forearm frame


def _forearm(pose: HandPose, malunion: RadiusMalunion | None, world_from_forearm: Matrix
             ) -> _Forearm:
    s, g, r, u = pose.scale, A.GAPS_MM, A.RADIUS, A.ULNA
    radiocarpal = A.RADIOCARPAL_RADIUS * s
    tilt, incl = pose.radius_palmar_tilt, pose.radius_inclination
    rim_normal = np.array([-math.tan(incl), -math.tan(tilt), 1.0])
    rim_normal /= np.linalg.norm(rim_normal)
    cup = radiocarpal + 0.5 * g["radiocarpal"]
    rim_centre = -rim_normal * (cup - r.cup_depth * s)
    rim_z = float(rim_centre[2])
    stub_z = rim_z - r.stub * s
    z0 = stub_z - 6.0  # the bones run past the cut
    radius_origin = np.array([rim_centre[0], rim_centre[1], z0])
    radius_length = rim_z + 8.0 * s - z0
    ulna_origin = np.array([u.axis[0] * s, u.axis[1] * s, z0])
    ulna_head = u.head_radius * s
    cuts: tuple[Constraint, ...] = (
        HalfSpace(_vec3(rim_normal), float(rim_normal @ np.array([0.0, 0.0, rim_z - z0])),
                  end="head"),
        SphereCut(_vec3(-radius_origin), cup, "outside", end="head"),
        CylinderCut(_vec3(ulna_origin - radius_origin), (0.0, 0.0, 1.0), ulna_head + g["druj"],
                    end="head"),
    )
    radius_shape = SweptBone(
        length=radius_length, base=(r.base[0] * s, r.base[1] * s),
        waist=(r.waist[0] * s, r.waist[1] * s), end=(r.end[0] * s, r.end[1] * s),
        flare_base=0.05, flare_end=min(0.6, r.flare * s / (radius_length - r.plateau * s)),
        base_round=0.0, constraints=cuts, cortex_end=r.cortex_end * s,
        cortex_mid=r.cortex_mid * s, plateau=r.plateau * s,
        end_shift=(r.end_shift[0] * s, r.end_shift[1] * s))
    moved = np.eye(4)
    radius_distal = None
    world_from_radius = world_from_forearm @ translation(radius_origin)
    if malunion is not None:
        level = rim_z - malunion.level_mm - z0  # local z of the fracture
        half_x, half_y = radius_shape.half_widths(level)
        hinge = radius_origin + np.array([-0.8 * half_x, -0.8 * half_y, level])
        moved = (translation(hinge) @ frame(malunion.rotation_matrix(tilt, incl))
                 @ translation(-hinge))
        moved_local = translation(-radius_origin) @ moved @ translation(radius_origin)
        radius_shape = replace(radius_shape, fracture=Fracture(level, moved_local))
        radius_distal = world_from_radius @ moved_local
    radius = PlacedBone(A.LABELS["radius"], "radius", radius_shape, world_from_radius,
                        radius_distal, radius_length)
    ulna_length = u.dome_z * s - z0
    styloid = Capsule((-0.55 * ulna_head, 0.35 * ulna_head, ulna_length - 1.3 * ulna_head),
                      (-0.62 * ulna_head, 0.40 * ulna_head, ulna_length + 0.55 * ulna_head),
                      2.4 * s, 1.3 * s)
    ulna_shape = SweptBone(
        length=ulna_length, base=(u.base[0] * s, u.base[1] * s),
        waist=(u.waist[0] * s, u.waist[1] * s), end=(u.end[0] * s, u.end[1] * s),
        flare_base=0.05, flare_end=min(0.6, u.flare * s / ulna_length), head_radius=ulna_head,
        head_depth=0.95, base_round=0.0, lobes=(styloid,),
        constraints=(SphereCut(_vec3(-ulna_origin), radiocarpal + g["ulnocarpal"], "outside",
                               end="head"),),
        cortex_end=u.cortex_end * s, cortex_mid=u.cortex_mid * s)
    ulna = PlacedBone(A.LABELS["ulna"], "ulna", ulna_shape,
                      world_from_forearm @ translation(ulna_origin), None, ulna_length)
    points = {
        "radius_stub": _point(world_from_forearm, (radius_origin[0], radius_origin[1], stub_z)),
        "radius_wrist": _point(world_from_forearm, (radius_origin[0], radius_origin[1], rim_z)),
        "ulna_stub": _point(world_from_forearm, (ulna_origin[0], ulna_origin[1], stub_z)),
        "ulna_wrist": _point(world_from_forearm, (ulna_origin[0], ulna_origin[1], u.dome_z * s)),
    }
    return _Forearm(radius, ulna, moved, points, stub_z)


def _thumb_rotation(pose: HandPose) -> tuple[Matrix, NDArray[np.float64]]:
    """The first metacarpal's orientation in the hand frame, and its rest direction."""
    rest = A.THUMB_REST_DEG
    palmar = math.radians(rest["palmar_abduction"])
    pronation = math.radians(rest["pronation"])
    thumb = pose.thumb
    rotation = (rot_y(thumb.cmc_abduction) @ rot_x(palmar + thumb.cmc_opposition)
                @ rot_z(-(pronation + thumb.cmc_opposition)))
    middle = 0.5 * sum(POSE_RANGES["thumb_cmc_abduction_deg"])
    rest_axis = (rot_y(math.radians(middle)) @ rot_x(palmar))[:, 2]
    return rotation, rest_axis


def _carpus(pose: HandPose, world_from_hand: Matrix
            ) -> tuple[dict[str, PlacedBone], dict[str, Matrix],
                       dict[str, list[HalfSpace | SphereCut]], Matrix]:
    """The eight carpals, the hand-frame frames of metacarpals 2–5 and their base cuts."""
    s, g = pose.scale, A.GAPS_MM
    proxies: dict[str, _Proxy] = {}
    for name, spec in A.CARPALS.items():
        centre, radii, rot = spec.proxy if spec.proxy is not None else spec.lobes[0][:3]
        proxies[name] = _Proxy(np.asarray(centre) * s, np.asarray(radii) * s, _euler(rot), None)
    h_from_mc: dict[str, Matrix] = {}
    for name, (base, fan, palmar_tilt, roll) in A.METACARPAL_BASES.items():
        rotation = (rot_y(math.radians(fan)) @ rot_x(math.radians(palmar_tilt))
                    @ rot_z(math.radians(roll)))
        h_from_mc[name] = frame(rotation, np.asarray(base) * s)
        spec_mc = A.LONG_BONES[name]
        depth = 6.0 * s
        proxies[name] = _Proxy(_point(h_from_mc[name], (0.0, 0.0, depth)),
                               np.array([spec_mc.base[0] * s, spec_mc.base[1] * s, depth]),
                               rotation, rotation[:, 2].copy())
    curved = {frozenset(pair): (convex, radius * s)
              for pair, (convex, radius) in A.CURVED_JOINTS.items()}
    cuts = _separators(proxies, g["intercarpal"], {frozenset(("capitate", "lunate"))}, curved)

    radiocarpal = A.RADIOCARPAL_RADIUS * s
    thumb_rotation, rest_axis = _thumb_rotation(pose)
    cmc1_centre = np.asarray(A.CMC1_CENTER) * s
    bones: dict[str, PlacedBone] = {}
    for name, spec in A.CARPALS.items():
        lobes = tuple(Ellipsoid(_vec3(np.asarray(c) * s), _vec3(np.asarray(r) * s), _euler(rot),
                                n) for c, r, rot, n in spec.lobes)
        own: list[Constraint] = list(cuts[name])
        if spec.proximal_row:
            own.append(SphereCut((0.0, 0.0, 0.0), radiocarpal - 0.5 * g["radiocarpal"],
                                 "inside"))
        if name == "pisiform":  # clear of the ulna (outside radiocarpal + ulnocarpal)
            own.append(SphereCut((0.0, 0.0, 0.0),
                                 radiocarpal + g["ulnocarpal"] - g["intercarpal"], "inside"))
        if name == "lunate":  # the capitate head turns in the lunate's distal cup
            own.append(SphereCut((0.0, 0.0, 0.0),
                                 A.MIDCARPAL_RADIUS * s + 0.5 * g["intercarpal"], "outside"))
        if name == "trapezium":  # its distal surface is the first CMC joint's convex side
            away = -rest_axis
            own.append(SphereCut(_vec3(cmc1_centre),
                                 A.CMC1_RADIUS * s - 0.5 * g["cmc1"], "inside",
                                 unless_beyond=(_vec3(away), float(away @ cmc1_centre))))
        shape = BlobBone(lobes, tuple(own), cortex=0.6 * s)
        bones[name] = PlacedBone(A.LABELS[name], name, shape, world_from_hand)
    return bones, h_from_mc, cuts, thumb_rotation


def build_skeleton(pose: HandPose, deformities: Sequence[Deformity] = ()) -> Skeleton:
    """Place every bone for ``pose``, with the requested malunions.

    Args:
        pose: Size and joint angles.
        deformities: Validated deformities (at most one per bone).

    Returns:
        The :class:`Skeleton`.
    """
    s, g = pose.scale, A.GAPS_MM
    shaft = {d.bone: d for d in deformities if isinstance(d, ShaftMalunion)}
    radius_malunion = next((d for d in deformities if isinstance(d, RadiusMalunion)), None)
    world_from_forearm = A.WORLD_FROM_FOREARM.copy()

    forearm = _forearm(pose, radius_malunion, world_from_forearm)
    wrist = frame(rot_y(pose.wrist_deviation) @ rot_x(pose.wrist_flexion))
    world_from_hand = world_from_forearm @ forearm.forearm_from_carpus_base @ wrist
    bones, h_from_mc, cuts, thumb_rotation = _carpus(pose, world_from_hand)
    bones["radius"], bones["ulna"] = forearm.radius, forearm.ulna

    rays: dict[int, dict[str, NDArray[np.float64]]] = {}
    palmar: dict[int, NDArray[np.float64]] = {}
    cmc1_centre = np.asarray(A.CMC1_CENTER) * s
    for ray in range(1, 6):
        mc_name = f"metacarpal_{ray}"
        if ray == 1:
            cup = A.CMC1_RADIUS * s + 0.5 * g["cmc1"]
            offset = cup - A.CUP_DEPTH_MM * s
            h_from_bone = (translation(cmc1_centre) @ frame(thumb_rotation)
                           @ translation((0.0, 0.0, offset)))
            base_cuts: tuple[Constraint, ...] = (
                SphereCut((0.0, 0.0, -offset), cup, "outside", end="base"),)
        else:
            h_from_bone = h_from_mc[mc_name]
            base_cuts = tuple(_in_bone_frame(cut, h_from_bone) for cut in cuts[mc_name])
        parent = _place_long(mc_name, world_from_hand @ h_from_bone, s, base_cuts,
                             shaft.get(mc_name))
        bones[mc_name] = parent
        head = parent.shape.head_center if isinstance(parent.shape, SweptBone) else 0.0
        points = {"base": _point(parent.world_from_local, (0.0, 0.0, 0.0)),
                  "mcp": _point(parent.moving, (0.0, 0.0, head))}
        if ray == 1:
            chain = [("proximal_phalanx_1", pose.thumb.mcp_flexion, g["mcp"], "pip"),
                     ("distal_phalanx_1", pose.thumb.ip_flexion, g["pip"], "")]
            abduction = 0.0
        else:
            finger = pose.fingers[ray]
            chain = [(f"proximal_phalanx_{ray}", finger.mcp_flexion, g["mcp"], "pip"),
                     (f"middle_phalanx_{ray}", finger.pip_flexion, g["pip"], "dip"),
                     (f"distal_phalanx_{ray}", finger.dip_flexion, g["dip"], "")]
            abduction = finger.abduction
        for index, (name, flexion, gap, joint) in enumerate(chain):
            world, cup_cut = _child(parent, abduction if index == 0 else 0.0, flexion, gap, s)
            bone = _place_long(name, world, s, (cup_cut,), shaft.get(name))
            bones[name] = bone
            if index == 0:
                palmar[ray] = -world[:3, 1]
            assert isinstance(bone.shape, SweptBone)
            if joint:
                points[joint] = _point(bone.moving, (0.0, 0.0, bone.shape.head_center))
            else:
                points["tip"] = _point(bone.moving, (0.0, 0.0, bone.shape.length))
            parent = bone
        rays[ray] = points

    forearm_points = dict(forearm.points)
    ordered = tuple(sorted(bones.values(), key=lambda b: b.label))
    if len(ordered) != len(A.BONE_NAMES):
        raise RuntimeError(f"placed {len(ordered)} bones, expected {len(A.BONE_NAMES)}")
    stub = _point(world_from_forearm, (0.0, 0.0, forearm.stub_z))
    return Skeleton(ordered, world_from_forearm, world_from_hand,
                    MappingProxyType({k: MappingProxyType(v) for k, v in rays.items()}),
                    MappingProxyType(palmar), MappingProxyType(forearm_points), float(stub[2]))
