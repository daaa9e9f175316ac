"""The hand phantom's bone table, reference dimensions and frames.

Label numbers (fixed; ``labels.csv`` lists them too):

====== ===================== ====== ===================== ====== =====================
label  name                  label  name                  label  name
====== ===================== ====== ===================== ====== =====================
1      radius                11     metacarpal_1          21     middle_phalanx_2
2      ulna                  12     metacarpal_2          22     middle_phalanx_3
3      scaphoid              13     metacarpal_3          23     middle_phalanx_4
4      lunate                14     metacarpal_4          24     middle_phalanx_5
5      triquetrum            15     metacarpal_5          25     distal_phalanx_1
6      pisiform              16     proximal_phalanx_1    26     distal_phalanx_2
7      trapezium             17     proximal_phalanx_2    27     distal_phalanx_3
8      trapezoid             18     proximal_phalanx_3    28     distal_phalanx_4
9      capitate              19     proximal_phalanx_4    29     distal_phalanx_5
10     hamate                20     proximal_phalanx_5
====== ===================== ====== ===================== ====== =====================

Rays are numbered 1 (thumb) to 5 (little finger); the thumb has no middle phalanx.

Sources of the proportions (reference adult, scale 1):
    Long-bone lengths are representative adult means, rounded to the millimetre, chosen to match
    the radiographic proportion tables of Buryanov & Kotiuk ("Proportions of hand segments",
    Int. J. Morphol. 28(3), 2010), who measured the segments of each ray on hand radiographs
    and reported their ratios. Two of their regularities hold exactly in the table below: for
    each finger the middle and distal phalanges together are as long as the proximal phalanx
    (also reported by Miller et al., J. Nat. Sci. Med. 4, 2021), and the metacarpals rank
    2 > 3 > 4 > 5 > 1. The metacarpal lengths agree within a millimetre with CT means of
    adults (index 67.7, long 66.1, ring 58.0, small 52.3 mm; Arch. Bone Jt. Surg. 2024).
    Widths follow the same sources' orders of magnitude (metacarpal shafts 7–9 mm wide, heads
    12–14 mm; phalanges flatter dorsopalmarly than wide). Every cross-section is a little wider
    than deep, as most are in life; :func:`regkit_recon.measure.measure_fracture` relies on it to
    read axial rotation. Carpal sizes and places follow
    standard anatomy atlases, with a carpal height (radius to the base of the third metacarpal,
    along its axis) of about 0.56 of the third metacarpal's length, within the normal range of
    Youm's carpal height ratio (0.54 ± 0.03).

Frames:
    * **hand frame** (H): origin at the centre of the capitate head (the wrist's centre of
      rotation), +x radial (towards the thumb), +y dorsal, +z distal (along the third ray). The
      carpal bones and the bases of metacarpals 2–5 are fixed in it.
    * **forearm frame** (F): the same axes at neutral wrist. The radius and ulna are fixed in it;
      the wrist rotates H against F about the common origin.
    * **world**: RAS+ mm. The right hand lies in the anatomical position: the forearm along the
      z axis with the fingers pointing inferior (−z), the palm facing anterior (+y) and the thumb
      on the right (+x). So ``world_from_forearm = diag(1, −1, −1)``: radial = +x (R), dorsal =
      −y (posterior), distal = −z (inferior), and the world origin is the wrist centre at neutral.
      A PA radiograph of this hand looks along +y, from a source behind the dorsum (posterior)
      towards a detector under the palm (anterior): ``camera_from_world`` of such a view maps
      world +y to camera +z.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np

__all__ = [
    "BONE_NAMES",
    "CARPALS",
    "CMC1_CENTER",
    "CMC1_RADIUS",
    "CUP_DEPTH_MM",
    "CURVED_JOINTS",
    "GAPS_MM",
    "LABELS",
    "LONG_BONES",
    "METACARPAL_BASES",
    "MIDCARPAL_RADIUS",
    "RADIOCARPAL_RADIUS",
    "RADIUS",
    "THUMB_REST_DEG",
    "ULNA",
    "WORLD_FROM_FOREARM",
    "BoneKind",
    "CarpalSpec",
    "LongBoneSpec",
    "RadiusSpec",
    "UlnaSpec",
    "bone_kind",
]

BoneKind = Literal["forearm", "carpal", "metacarpal", "proximal_phalanx", "middle_phalanx",
                   "distal_phalanx"]

_NAMES: tuple[str, ...] = (
    "radius", "ulna",
    "scaphoid", "lunate", "triquetrum", "pisiform", "trapezium", "trapezoid", "capitate", "hamate",
    *(f"metacarpal_{r}" for r in range(1, 6)),
    *(f"proximal_phalanx_{r}" for r in range(1, 6)),
    *(f"middle_phalanx_{r}" for r in range(2, 6)),
    *(f"distal_phalanx_{r}" for r in range(1, 6)),
)

BONE_NAMES: MappingProxyType[int, str] = MappingProxyType(
    {label: name for label, name in enumerate(_NAMES, start=1)})
"""Label -> bone name, labels 1..29."""

LABELS: MappingProxyType[str, int] = MappingProxyType(
    {name: label for label, name in BONE_NAMES.items()})
"""Bone name -> label."""

WORLD_FROM_FOREARM = np.diag([1.0, -1.0, -1.0, 1.0])
"""The forearm frame (radial, dorsal, distal) in the RAS+ world: the right hand, anatomical
position (see the module docstring)."""

GAPS_MM: MappingProxyType[str, float] = MappingProxyType({
    "radiocarpal": 2.0,   # radius to scaphoid and lunate
    "ulnocarpal": 4.0,    # ulnar head to the carpus: the triangular fibrocartilage lies there
    "druj": 2.0,          # distal radioulnar joint
    "intercarpal": 1.6,   # between carpals, and between carpals and metacarpal bases
    "cmc1": 1.8,          # trapezium to the first metacarpal
    "mcp": 1.8,
    "pip": 1.7,
    "dip": 1.6,
})
"""Nominal joint spaces in mm; they do not scale with the hand's size."""

CUP_DEPTH_MM = 1.2
"""How deep a phalanx base cups the head before it, mm (scaled with the hand)."""


def bone_kind(name: str) -> BoneKind:
    """Which kind of bone ``name`` is."""
    if name in ("radius", "ulna"):
        return "forearm"
    kinds: tuple[BoneKind, ...] = ("metacarpal", "proximal_phalanx", "middle_phalanx",
                                   "distal_phalanx")
    for kind in kinds:
        if name.startswith(kind + "_"):
            return kind
    return "carpal"


@dataclass(frozen=True)
class LongBoneSpec:
    """Reference dimensions of one tubular bone (mm, adult, scale 1).

    Attributes:
        length: Base-to-tip length along the axis.
        base, waist, end: Half-widths (radioulnar, dorsopalmar) at the base, mid-shaft and just
            proximal to the head.
        head_radius: Radius of the head (radially and axially); the joint centre of the next bone.
        head_depth: Dorsopalmar radius of the head as a fraction of ``head_radius``.
        cortex_end, cortex_mid: Cortical thickness at the ends and at mid-shaft.
        flare_base, flare_end: Fractions of the length over which base and head flare.
    """

    length: float
    base: tuple[float, float]
    waist: tuple[float, float]
    end: tuple[float, float]
    head_radius: float
    head_depth: float
    cortex_end: float
    cortex_mid: float
    flare_base: float = 0.42
    flare_end: float = 0.4


def _mc(length: float, base: tuple[float, float], waist: tuple[float, float],
        end: tuple[float, float], head: float) -> LongBoneSpec:
    return LongBoneSpec(length, base, waist, end, head, 0.86, 0.45, 1.7)


def _pp(length: float, base: tuple[float, float], waist: tuple[float, float],
        end: tuple[float, float], head: float) -> LongBoneSpec:
    return LongBoneSpec(length, base, waist, end, head, 0.72, 0.4, 1.2, 0.4, 0.38)


def _mp(length: float, base: tuple[float, float], waist: tuple[float, float],
        end: tuple[float, float], head: float) -> LongBoneSpec:
    return LongBoneSpec(length, base, waist, end, head, 0.72, 0.4, 1.0, 0.42, 0.38)


def _dp(length: float, base: tuple[float, float], waist: tuple[float, float],
        end: tuple[float, float], head: float) -> LongBoneSpec:
    return LongBoneSpec(length, base, waist, end, head, 0.55, 0.4, 0.8, 0.45, 0.35)


LONG_BONES: MappingProxyType[str, LongBoneSpec] = MappingProxyType({
    # Metacarpals: lengths 46 / 68 / 65 / 58 / 53 mm.
    "metacarpal_1": _mc(46.0, (7.6, 6.2), (4.6, 3.8), (6.4, 5.4), 7.0),
    "metacarpal_2": _mc(68.0, (7.8, 6.6), (4.3, 3.6), (6.2, 5.4), 6.9),
    "metacarpal_3": _mc(65.0, (7.6, 6.4), (4.2, 3.5), (6.2, 5.4), 6.9),
    "metacarpal_4": _mc(58.0, (6.2, 5.2), (3.6, 3.0), (5.5, 4.7), 6.1),
    "metacarpal_5": _mc(53.0, (6.4, 5.4), (3.7, 3.0), (5.4, 4.6), 5.9),
    # Proximal phalanges: 32 / 40 / 45 / 42 / 33 mm.
    "proximal_phalanx_1": _pp(32.0, (7.6, 5.4), (4.6, 3.2), (5.6, 3.8), 5.6),
    "proximal_phalanx_2": _pp(40.0, (7.4, 5.3), (4.3, 3.0), (5.3, 3.6), 5.3),
    "proximal_phalanx_3": _pp(45.0, (7.7, 5.5), (4.5, 3.2), (5.6, 3.8), 5.6),
    "proximal_phalanx_4": _pp(42.0, (7.3, 5.2), (4.3, 3.0), (5.3, 3.6), 5.3),
    "proximal_phalanx_5": _pp(33.0, (6.4, 4.7), (3.8, 2.7), (4.6, 3.2), 4.6),
    # Middle phalanges: 23 / 27 / 25 / 18 mm (middle + distal = proximal).
    "middle_phalanx_2": _mp(23.0, (6.0, 4.2), (3.5, 2.5), (4.3, 3.0), 4.3),
    "middle_phalanx_3": _mp(27.0, (6.2, 4.4), (3.7, 2.7), (4.5, 3.1), 4.5),
    "middle_phalanx_4": _mp(25.0, (6.0, 4.2), (3.5, 2.5), (4.3, 3.0), 4.3),
    "middle_phalanx_5": _mp(18.0, (5.2, 3.7), (3.0, 2.2), (3.7, 2.6), 3.7),
    # Distal phalanges: 23 / 17 / 18 / 17 / 15 mm; the head is the flattened tuft.
    "distal_phalanx_1": _dp(23.0, (6.8, 4.6), (3.5, 2.6), (4.4, 2.4), 4.4),
    "distal_phalanx_2": _dp(17.0, (5.1, 3.7), (2.6, 2.1), (3.5, 2.0), 3.5),
    "distal_phalanx_3": _dp(18.0, (5.3, 3.8), (2.7, 2.2), (3.6, 2.1), 3.6),
    "distal_phalanx_4": _dp(17.0, (5.1, 3.7), (2.6, 2.1), (3.5, 2.0), 3.5),
    "distal_phalanx_5": _dp(15.0, (4.5, 3.3), (2.3, 1.9), (3.1, 1.8), 3.1),
})
"""Reference dimensions of the 19 tubular bones of the hand."""


@dataclass(frozen=True)
class CarpalSpec:
    """One carpal bone in the hand frame (mm, scale 1).

    Attributes:
        lobes: (centre, semi-axes, rotation as (about x, about y, about z) in degrees applied
            z first, exponent) of each superellipsoid lobe; the first is the body.
        proximal_row: Whether the bone articulates with the radius (kept inside the radiocarpal
            sphere).
        proxy: The ellipsoid (centre, semi-axes, rotation) that stands for the bone when the
            separators are placed; by default the first lobe.
    """

    lobes: tuple[tuple[tuple[float, float, float], tuple[float, float, float],
                       tuple[float, float, float], float], ...]
    proximal_row: bool = False
    proxy: tuple[tuple[float, float, float], tuple[float, float, float],
                 tuple[float, float, float]] | None = None


CARPALS: MappingProxyType[str, CarpalSpec] = MappingProxyType({
    # The proximal row reaches past the radiocarpal sphere, which then shapes its proximal
    # surface; neighbours overlap a little, and the separators carve the joint spaces.
    "scaphoid": CarpalSpec((((9.0, 0.0, -8.5), (6.6, 6.4, 7.0), (20.0, 30.0, 0.0), 2.0),
                            ((15.5, -5.0, 1.0), (6.0, 6.0, 7.5), (35.0, 40.0, 0.0), 2.0)),
                           proximal_row=True,
                           proxy=((12.0, -2.5, -3.5), (6.2, 6.2, 14.0), (30.0, 38.0, 0.0))),
    "lunate": CarpalSpec((((-2.0, 0.5, -10.5), (8.0, 9.5, 9.0), (0.0, 0.0, 0.0), 2.2),),
                         proximal_row=True),
    "triquetrum": CarpalSpec((((-13.0, 2.0, -5.5), (6.0, 5.5, 7.5), (0.0, -35.0, 0.0), 2.2),),
                             proximal_row=True),
    "pisiform": CarpalSpec((((-14.0, -8.0, -2.0), (4.4, 4.6, 5.2), (0.0, 0.0, 0.0), 2.0),)),
    "trapezium": CarpalSpec((((18.0, -5.5, 8.0), (7.0, 7.0, 8.0), (15.0, 30.0, 0.0), 2.2),
                             ((17.0, -10.5, 8.0), (3.0, 3.5, 5.0), (0.0, 20.0, 0.0), 2.0))),
    "trapezoid": CarpalSpec((((10.0, 2.0, 10.0), (5.2, 7.5, 5.4), (0.0, 0.0, 0.0), 2.4),)),
    # The capitate: a body and, at the hand frame's origin, a spherical head on which the
    # lunate turns.
    "capitate": CarpalSpec((((0.0, 0.5, 8.0), (7.0, 9.0, 9.5), (0.0, 0.0, 0.0), 2.2),
                            ((0.0, 0.0, 0.0), (5.2, 5.2, 5.2), (0.0, 0.0, 0.0), 2.0))),
    "hamate": CarpalSpec((((-10.5, 0.0, 6.0), (7.0, 8.5, 9.0), (0.0, -12.0, 0.0), 2.2),
                          ((-11.5, -8.5, 9.0), (2.4, 4.5, 3.8), (0.0, 0.0, 0.0), 2.0))),
})
"""The eight carpals. Their facing surfaces are cut flat by separator planes (see
:mod:`regkit_recon.phantom.skeleton`), which keeps every intercarpal space at least
``GAPS_MM["intercarpal"]`` wide."""

CURVED_JOINTS: MappingProxyType[tuple[str, str], tuple[str, float]] = MappingProxyType({
    ("capitate", "scaphoid"): ("capitate", 12.0),
    ("hamate", "lunate"): ("hamate", 9.0),
    ("scaphoid", "trapezium"): ("scaphoid", 12.0),
    ("scaphoid", "trapezoid"): ("scaphoid", 12.0),
    ("hamate", "triquetrum"): ("triquetrum", 14.0),
})
"""Intercarpal joints separated by a sphere rather than a plane: (pair) -> (the convex member,
radius in mm at scale 1). The other pairs meet at flat joint surfaces."""

MIDCARPAL_RADIUS = 6.0
"""Radius of the capitate head around the hand-frame origin, mm (scale 1)."""

RADIOCARPAL_RADIUS = 16.5
"""Radius of the sphere about the wrist centre on which the proximal carpal row turns, mm."""

METACARPAL_BASES: MappingProxyType[str, tuple[tuple[float, float, float], float, float, float]] = \
    MappingProxyType({
        # base centre (hand frame), fan (about y), palmar tilt (about x), axial roll (about z), °
        "metacarpal_2": ((10.3, 1.0, 16.6), 8.0, 0.0, 0.0),
        "metacarpal_3": ((0.0, 1.0, 19.4), 0.0, 0.0, 0.0),
        "metacarpal_4": ((-10.3, 0.0, 17.0), -7.0, 4.0, 0.0),
        "metacarpal_5": ((-18.8, -1.5, 14.0), -14.0, 8.0, -8.0),
    })
"""Where the bases of metacarpals 2–5 sit in the hand frame and how each ray fans out."""

CMC1_CENTER = (20.0, -7.5, 11.0)
"""Centre of the first carpometacarpal joint in the hand frame, mm (scale 1)."""

CMC1_RADIUS = 5.5
"""Radius of the trapezium's distal joint surface about ``CMC1_CENTER``, mm."""

THUMB_REST_DEG = MappingProxyType({"pronation": 70.0, "palmar_abduction": 15.0})
"""The thumb's rest orientation: its metacarpal is pronated (its dorsum faces radially) and lies
palmar to the plane of the palm; the drawn abduction and opposition add to this."""

@dataclass(frozen=True)
class RadiusSpec:
    """The distal radius in the forearm frame (mm, scale 1; half-widths radioulnar, dorsopalmar).

    The articular surface is the radiocarpal sphere's cap, ``cup_depth`` deep, cut by the rim
    plane whose normal carries the palmar tilt and the radial inclination; the shaft axis passes
    through the rim's centre, on that normal below the wrist centre. So the axis lies radial and
    dorsal to the wrist centre, about (7, 3.5) mm, and the cup faces palmarly and ulnarly.

    Attributes:
        cup_depth: Depth of the articular cup below the rim plane.
        stub: Length of shaft kept proximal to the rim (the grid cuts the forearm there).
        plateau: Distal length over which the width stays at ``end``.
        flare: Length over which the metaphysis flares from ``waist`` to ``end``.
        end_shift: Offset of the distal cross-section's centre from the shaft axis: the
            metaphysis widens mostly towards the ulna, where the sigmoid notch holds the ulnar
            head.
    """

    cup_depth: float = 3.0
    stub: float = 48.0
    plateau: float = 14.0
    flare: float = 28.0
    base: tuple[float, float] = (8.0, 6.5)
    waist: tuple[float, float] = (7.6, 6.2)
    end: tuple[float, float] = (14.0, 10.5)
    end_shift: tuple[float, float] = (-2.5, 0.0)
    cortex_end: float = 0.6
    cortex_mid: float = 2.4


@dataclass(frozen=True)
class UlnaSpec:
    """The distal ulna in the forearm frame (mm, scale 1).

    Attributes:
        axis: (x, y) of the shaft axis.
        dome_z: Top of the ulnar head (neutral ulnar variance: level with the radius' ulnar
            corner).
        flare: Length over which the neck widens into the head.
    """

    axis: tuple[float, float] = (-15.5, 0.5)
    dome_z: float = -20.0
    flare: float = 16.0
    base: tuple[float, float] = (6.0, 6.0)
    waist: tuple[float, float] = (5.6, 5.6)
    end: tuple[float, float] = (7.6, 7.2)
    head_radius: float = 7.6
    cortex_end: float = 0.6
    cortex_mid: float = 2.2


RADIUS = RadiusSpec()
"""The reference distal radius."""

ULNA = UlnaSpec()
"""The reference distal ulna."""
