"""Deformities on request: malunited fractures, their grammar, validation and geometry.

Two kinds exist:

* :class:`ShaftMalunion` — a healed fracture of a metacarpal or a phalanx. The bone breaks at
  ``level`` (fraction of its length from the base); the distal fragment (with everything distal to
  it: the rest of the ray) is first slid proximally along the bone's axis by ``shortening_mm``,
  then rotated about the centre of the fracture: by ``rotation`` about the bone's axis, then by
  ``angulation`` in the sagittal plane, then by ``angulation2`` in the coronal plane.
* :class:`RadiusMalunion` — a healed distal radius fracture. The distal fragment (with the whole
  hand) turns about a hinge on the palmar-ulnar corner of the fracture plane, ``level_mm``
  proximal to the articular rim, by the smallest rotation that makes the articular surface show
  the requested dorsal tilt and radial inclination.

Signs (bone frame: +x radial, +y dorsal, +z distal; see :mod:`regkit_recon.phantom.anatomy`):
    * ``angulation_deg`` > 0: the distal fragment tilts palmarly, so the apex of the angle points
      dorsally (the usual "boxer's" metacarpal neck malunion).
    * ``angulation2_deg`` > 0: the distal fragment tilts radially (apex ulnar).
    * ``rotation_deg`` > 0: right-handed about the proximal-to-distal axis (the radial side of the
      distal fragment turns dorsally).
    * ``dorsal_tilt_deg``: the resulting tilt of the distal radius' articular surface in the
      lateral view, > 0 facing dorsally (a normal radius has about −11°, i.e. 11° palmar tilt).
    * ``radial_inclination_deg``: the resulting inclination in the PA view (normal about 22°).

Grammar of a SPEC string (as typed after ``--deformity``)::

    SPEC  := JSON | ITEM (";" ITEM)*
    ITEM  := FIELD ("," FIELD)*          # one bone per item; FIELD "bone" is required
    FIELD := NAME "=" VALUE              # spaces around tokens are ignored

    bone=metacarpal_5,angulation_deg=20,angulation2_deg=5,rotation_deg=10,shortening_mm=3
    bone=radius,dorsal_tilt_deg=20,radial_inclination_deg=12
    {"bone": "proximal_phalanx_3", "rotation_deg": 15}
    [{"bone": "radius", "dorsal_tilt_deg": 15}, {"bone": "metacarpal_5", "angulation_deg": 30}]

Fields and their allowed ranges are in :data:`SHAFT_FIELDS` and :data:`RADIUS_FIELDS`; omitted
fields take the default shown there. Every problem is reported as an :class:`InputError` whose
``key`` names the field (``deformity.<field>``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.errors import InputError, did_you_mean
from regkit.geometry.transforms import rotation_between
from regkit_recon.phantom._geometry import frame, rot_x, rot_y, rot_z, translation
from regkit_recon.phantom.anatomy import LONG_BONES

__all__ = [
    "MALUNION_DRAW",
    "RADIUS_FIELDS",
    "SHAFT_FIELDS",
    "Deformity",
    "DeformityLike",
    "RadiusMalunion",
    "ShaftMalunion",
    "draw_malunions",
    "parse_deformity",
]

SHAFT_FIELDS: MappingProxyType[str, tuple[float, float, float]] = MappingProxyType({
    # name: (low, high, default)
    "level": (0.2, 0.8, 0.5),
    "angulation_deg": (-45.0, 45.0, 0.0),
    "angulation2_deg": (-30.0, 30.0, 0.0),
    "rotation_deg": (-45.0, 45.0, 0.0),
    "shortening_mm": (0.0, 8.0, 0.0),
})
"""Fields of a metacarpal or phalanx malunion: (low, high, default)."""

RADIUS_FIELDS: MappingProxyType[str, tuple[float, float, float | None]] = MappingProxyType({
    "dorsal_tilt_deg": (-30.0, 40.0, None),        # None: keep the normal value
    "radial_inclination_deg": (0.0, 32.0, None),
    "level_mm": (12.0, 35.0, 22.0),
})
"""Fields of a distal radius malunion: (low, high, default; None keeps the normal value)."""

SHORTENING_MAX_FRACTION = 0.18
"""Shortening may not exceed this fraction of the bone's reference length."""

_SHAFT_BONES = tuple(LONG_BONES)
_RADIUS_NAMES = ("radius", "distal_radius")


@dataclass(frozen=True)
class ShaftMalunion:
    """A malunited metacarpal or phalanx (angles in radians; see the module docstring)."""

    bone: str
    level: float = 0.5
    angulation: float = 0.0
    angulation2: float = 0.0
    rotation: float = 0.0
    shortening_mm: float = 0.0

    def rotation_matrix(self) -> NDArray[np.float64]:
        """3×3 turn of the distal fragment in the bone frame: ``Ry(a2) @ Rx(a) @ Rz(rot)``."""
        return rot_y(self.angulation2) @ rot_x(self.angulation) @ rot_z(self.rotation)

    def moved_from_original(self, level_mm: float) -> NDArray[np.float64]:
        """4×4 (bone frame) taking a distal-fragment point p to ``f + R (p − f − s·ẑ)``.

        Args:
            level_mm: Distance of the fracture from the base, mm (f = (0, 0, level_mm)).
        """
        centre = np.array([0.0, 0.0, level_mm])
        slide = translation((0.0, 0.0, -self.shortening_mm))
        return translation(centre) @ frame(self.rotation_matrix()) @ translation(-centre) @ slide

    def to_json(self) -> dict[str, Any]:
        """The record written to ``phantom.json`` (degrees in ``_deg`` fields)."""
        return {"kind": "shaft_malunion", "bone": self.bone, "level": self.level,
                "angulation_deg": math.degrees(self.angulation),
                "angulation2_deg": math.degrees(self.angulation2),
                "rotation_deg": math.degrees(self.rotation),
                "shortening_mm": self.shortening_mm}


@dataclass(frozen=True)
class RadiusMalunion:
    """A malunited distal radius: the resulting articular angles (radians), None = normal."""

    dorsal_tilt: float | None = None
    radial_inclination: float | None = None
    level_mm: float = 22.0
    bone: str = "radius"

    def changes(self, palmar_tilt: float, inclination: float) -> tuple[float, float]:
        """(increase of dorsal tilt, increase of radial inclination), radians, from normal."""
        d_tilt = 0.0 if self.dorsal_tilt is None else self.dorsal_tilt + palmar_tilt
        d_incl = 0.0 if self.radial_inclination is None else self.radial_inclination - inclination
        return d_tilt, d_incl

    def rotation_matrix(self, palmar_tilt: float, inclination: float) -> NDArray[np.float64]:
        """3×3 turn of the distal fragment (forearm frame) from the normal angles given.

        The articular surface's normal is ``(−tan(inclination), tan(dorsal tilt), 1)``
        (normalised) in the forearm frame; the turn is the smallest rotation that carries the
        normal one onto the requested one, so both angles come out exactly as asked (a turn about
        two fixed axes in sequence would let the tilt change the inclination seen in PA).
        """
        d_tilt, d_incl = self.changes(palmar_tilt, inclination)
        before = _articular_normal(-palmar_tilt, inclination)
        after = _articular_normal(-palmar_tilt + d_tilt, inclination + d_incl)
        return np.asarray(rotation_between(before, after), dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        """The record written to ``phantom.json``."""
        return {"kind": "radius_malunion", "bone": "radius",
                "dorsal_tilt_deg": None if self.dorsal_tilt is None
                else math.degrees(self.dorsal_tilt),
                "radial_inclination_deg": None if self.radial_inclination is None
                else math.degrees(self.radial_inclination),
                "level_mm": self.level_mm}


def _articular_normal(dorsal_tilt: float, inclination: float) -> NDArray[np.float64]:
    normal = np.array([-math.tan(inclination), math.tan(dorsal_tilt), 1.0])
    return normal / np.linalg.norm(normal)


Deformity = ShaftMalunion | RadiusMalunion
DeformityLike = str | Mapping[str, Any] | Deformity | Sequence[Mapping[str, Any] | Deformity]
"""What :func:`parse_deformity` accepts."""


def _key(name: str) -> str:
    return f"deformity.{name}"


def _number(name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a finite float in [low, high], or an InputError naming the field."""
    if isinstance(value, bool):
        raise InputError(f"must be a number, got {value!r}", key=_key(name))
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"must be a number, got {value!r}", key=_key(name)) from None
    if not math.isfinite(number):
        raise InputError(f"must be finite, got {value!r}", key=_key(name))
    if not low <= number <= high:
        raise InputError(f"must lie in [{low:g}, {high:g}], got {number:g}", key=_key(name))
    return number


def _unknown_field(name: str, known: Iterable[str], what: str) -> InputError:
    known = list(known)
    hint = did_you_mean(name, known)
    return InputError(f"unknown field for {what}{hint}; fields: bone, {', '.join(known)}",
                      key=_key(name))


def _from_mapping(item: Mapping[str, Any]) -> Deformity:
    """One deformity from its fields; every problem names the field."""
    if "bone" not in item:
        raise InputError("is required (e.g. bone=metacarpal_5 or bone=radius)", key=_key("bone"))
    bone = item["bone"]
    if not isinstance(bone, str):
        raise InputError(f"must be a bone name, got {bone!r}", key=_key("bone"))
    bone = bone.strip()
    fields = {k: v for k, v in item.items() if k != "bone"}
    if bone in _RADIUS_NAMES:
        for name in fields:
            if name not in RADIUS_FIELDS:
                raise _unknown_field(name, RADIUS_FIELDS, "a distal radius malunion")
        values: dict[str, float | None] = {}
        for name, (low, high, default) in RADIUS_FIELDS.items():
            values[name] = _number(name, fields[name], low, high) if name in fields else default
        if values["dorsal_tilt_deg"] is None and values["radial_inclination_deg"] is None:
            raise InputError("a radius malunion needs dorsal_tilt_deg or radial_inclination_deg",
                             key=_key("dorsal_tilt_deg"))
        tilt, incl, level = (values["dorsal_tilt_deg"], values["radial_inclination_deg"],
                             values["level_mm"])
        return RadiusMalunion(None if tilt is None else math.radians(tilt),
                              None if incl is None else math.radians(incl),
                              float(level if level is not None else 22.0))
    if bone not in LONG_BONES:
        hint = did_you_mean(bone, [*_SHAFT_BONES, "radius"])
        raise InputError(f"cannot deform {bone!r}{hint}; deformable bones: radius, "
                         f"{', '.join(_SHAFT_BONES)}", key=_key("bone"))
    for name in fields:
        if name not in SHAFT_FIELDS:
            raise _unknown_field(name, SHAFT_FIELDS, "a metacarpal or phalanx malunion")
    v = {name: (_number(name, fields[name], low, high) if name in fields else default)
         for name, (low, high, default) in SHAFT_FIELDS.items()}
    limit = SHORTENING_MAX_FRACTION * LONG_BONES[bone].length
    if v["shortening_mm"] > limit:
        raise InputError(f"must not exceed {limit:.1f} mm for {bone} "
                         f"({SHORTENING_MAX_FRACTION:.0%} of its length), got "
                         f"{v['shortening_mm']:g}", key=_key("shortening_mm"))
    return ShaftMalunion(bone, v["level"], math.radians(v["angulation_deg"]),
                         math.radians(v["angulation2_deg"]), math.radians(v["rotation_deg"]),
                         v["shortening_mm"])


def _parse_item(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise InputError(f"expected NAME=VALUE, got {part!r}", key=_key(part or "?"))
        name, value = (s.strip() for s in part.split("=", 1))
        if not name:
            raise InputError(f"a field has no name in {part!r}", key=_key("?"))
        if name in fields:
            raise InputError("is given twice", key=_key(name))
        fields[name] = value
    return fields


def _items(spec: DeformityLike) -> list[Mapping[str, Any] | Deformity]:
    if isinstance(spec, ShaftMalunion | RadiusMalunion | Mapping):
        return [spec]
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            raise InputError("is empty; expected e.g. bone=metacarpal_5,angulation_deg=20",
                             key="deformity")
        if text[0] in "[{":
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"is not valid JSON ({exc})", key="deformity") from exc
            items = loaded if isinstance(loaded, list) else [loaded]
            for item in items:
                if not isinstance(item, Mapping):
                    raise InputError(f"each JSON deformity must be an object, got {item!r}",
                                     key="deformity")
            return list(items)
        return [_parse_item(part) for part in text.split(";") if part.strip()]
    if isinstance(spec, Sequence):
        out: list[Mapping[str, Any] | Deformity] = []
        for item in spec:
            out.extend(_items(item))
        return out
    raise InputError(f"must be a SPEC string, a mapping or a deformity, got {type(spec).__name__}",
                     key="deformity")


def parse_deformity(spec: DeformityLike | None) -> tuple[Deformity, ...]:
    """Parse and validate deformities (see the module docstring for the grammar).

    Args:
        spec: A SPEC string (``key=value`` items or JSON), a mapping of fields, a deformity
            object, a sequence of those, or None.

    Returns:
        The deformities, one per bone, in the order given.

    Raises:
        InputError: bad syntax, an unknown bone or field, a value out of range, or one bone
            deformed twice; ``key`` names the field (``deformity.<field>``).
    """
    if spec is None:
        return ()
    # Objects are validated like typed fields: through their own JSON record.
    parsed = [_from_mapping({k: v for k, v in item.to_json().items()
                             if k != "kind" and v is not None})
              if isinstance(item, ShaftMalunion | RadiusMalunion) else _from_mapping(item)
              for item in _items(spec)]
    seen: set[str] = set()
    for item in parsed:
        if item.bone in seen:
            raise InputError(f"{item.bone} is deformed twice; give one item per bone",
                             key=_key("bone"))
        seen.add(item.bone)
    return tuple(parsed)


MALUNION_DRAW: MappingProxyType[str, tuple[float, float]] = MappingProxyType({
    # The ranges random malunions are drawn from (uniform), inside SHAFT_FIELDS and
    # RADIUS_FIELDS but narrowed to what healed fractures commonly show: a draw from the full
    # ranges (45° of angulation with 8 mm of shortening) makes most phantoms collide.
    "level": (0.25, 0.75),
    "angulation_deg": (-35.0, 35.0),
    "angulation2_deg": (-20.0, 20.0),
    "rotation_deg": (-25.0, 25.0),
    "shortening_mm": (0.0, 5.0),
    "dorsal_tilt_deg": (-25.0, 35.0),
    "radial_inclination_deg": (5.0, 30.0),
    "level_mm": (15.0, 30.0),
})
"""Uniform ranges of :func:`draw_malunions` (degrees in ``_deg`` fields, as in a SPEC)."""


def draw_malunions(rng: np.random.Generator, *, max_bones: int = 2,
                   radius_probability: float = 0.3) -> list[dict[str, Any]]:
    """Draw 1 to ``max_bones`` random malunions, as SPEC mappings for :func:`parse_deformity`.

    Each deformed bone is the radius with probability ``radius_probability`` (at most once),
    else a metacarpal or phalanx drawn uniformly (no bone twice). Every field is drawn from
    :data:`MALUNION_DRAW`; the shortening is capped at the bone's allowed maximum.

    Args:
        rng: The generator (the only randomness).
        max_bones: The most bones deformed in one hand (>= 1).
        radius_probability: Chance that each deformed bone is the distal radius.
    """
    if max_bones < 1:
        raise InputError(f"must be >= 1, got {max_bones!r}", key="max_bones")
    count = int(rng.integers(1, max_bones + 1))
    shafts = list(_SHAFT_BONES)
    items: list[dict[str, Any]] = []
    radius_done = False
    for _ in range(count):
        if not radius_done and rng.random() < radius_probability:
            radius_done = True
            items.append({"bone": "radius",
                          **{f: float(rng.uniform(*MALUNION_DRAW[f]))
                             for f in ("dorsal_tilt_deg", "radial_inclination_deg",
                                       "level_mm")}})
            continue
        bone = shafts.pop(int(rng.integers(len(shafts))))
        item: dict[str, Any] = {"bone": bone}
        for f in ("level", "angulation_deg", "angulation2_deg", "rotation_deg",
                  "shortening_mm"):
            item[f] = float(rng.uniform(*MALUNION_DRAW[f]))
        cap = SHORTENING_MAX_FRACTION * LONG_BONES[bone].length
        item["shortening_mm"] = min(item["shortening_mm"], cap)
        items.append(item)
    return items
