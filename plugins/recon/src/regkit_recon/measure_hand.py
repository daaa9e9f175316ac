"""Deformity measurement of a whole hand label map, in the hand's own anatomical frame.

:func:`measure_hand` measures any label map of the plugin's bone table (a phantom's truth or a
reconstruction) with the same code, and knows nothing of how it was made:

1. **The hand's frame from the bones.** *Dorsal* is the normal of the plane the metacarpals 2–5
   span (the smallest principal direction of their voxels), signed so that the pisiform lies
   palmar to the triquetrum (or, without them, so that the fingers' bones lie palmar to that
   plane, as a resting hand curls). *Radial* points from the fifth metacarpal to the second,
   *distal* from the radius to the third metacarpal. A right hand has ``radial × dorsal`` along
   distal; a left hand the opposite, and is mirrored (through the plane normal to radial) before
   measuring, so that left and right hands in any position and view give the same figures.
2. **Each tubular bone** (metacarpals, phalanges): its axis, oriented away from its proximal
   neighbour; the **apex** of an angulation found by fitting a broken line to the shaft's
   centreline (no fracture level is given); then the two-plane angulation at that apex, or at
   the shaft's middle when no break stands out (:func:`~regkit_recon.measure.measure_fracture`),
   and the length. The two planes are set by the bone's dorsal direction (tubular bones are
   wider than deep): the proximal fragment's own thinner cross-section axis, over its trimmed
   shaft; for the fingers, signed like the flatness-weighted mean of the thinner axes of
   metacarpals and proximal phalanges 2-5, and that mean itself where the bone's section is
   nearly round or its axis lies over 30° from it; for the thumb, whose nail faces radially,
   signed radially at any turn (the hand's radial direction itself where the section is nearly
   round).
3. **The radius**: dorsal tilt and radial inclination
   (:func:`~regkit_recon.measure.measure_radius_angles`), its length, and the **ulnar variance**:
   along the radius' shaft, the ulna's most distal point less the radius' ulnar corner (the
   distal rim's most ulnar part); + when the ulna reaches further.

Convention:
    Output fields and signs are those of the deformity SPEC (angles in degrees here, at the edge):
    ``angulation_deg`` sagittal, + = distal fragment palmar (apex dorsal); ``angulation2_deg``
    coronal, + = distal fragment radial; ``rotation_deg`` axial; ``length_mm``;
    ``apex_world`` the apex in world RAS+ mm. Lengths are the outer extent along the axis (voxel
    centres' extent plus one voxel).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.errors import InputError

from .measure import _check, _principal, fracture_from_points, radius_angles_from_points

__all__ = ["HandFrame", "find_hand_frame", "labels_table_beside", "measure_hand",
           "measure_labels_file", "unmeasured_names_note"]

Vector = NDArray[np.float64]

_TUBULAR_PREFIXES = ("metacarpal_", "proximal_phalanx_", "middle_phalanx_", "distal_phalanx_")
_MIN_VOXELS = 60
_BREAK_GAIN = 0.8
"""A broken line must explain this fraction of a shaft centreline's scatter about one straight
line to place an apex there (malunited shafts give 0.95-0.99, straight ones 0.1-0.5)."""


def _unit(v: Vector) -> Vector:
    return np.asarray(v, dtype=np.float64) / float(np.linalg.norm(v))


def _proximal_neighbour(name: str) -> str | None:
    """The bone a tubular bone articulates with at its base (by the bone table's names)."""
    kind, _, ray = name.rpartition("_")
    if kind == "metacarpal":
        return {"1": "trapezium", "2": "trapezoid", "3": "capitate", "4": "hamate",
                "5": "hamate"}[ray]
    if kind == "proximal_phalanx":
        return f"metacarpal_{ray}"
    if kind == "middle_phalanx":
        return f"proximal_phalanx_{ray}"
    if kind == "distal_phalanx":
        return f"middle_phalanx_{ray}" if ray != "1" else "proximal_phalanx_1"
    return None


@dataclass(frozen=True)
class HandFrame:
    """The hand's anatomical frame found from its bones.

    Attributes:
        radial, dorsal, distal: Unit vectors (3,), world; orthonormal.
        side: ``"right"`` or ``"left"``.
        mirror: 3×3 applied to world points before measuring (identity for a right hand, a
            reflection through the plane normal to ``radial`` for a left one).
        dorsal_cue: What signed the dorsal direction (``"pisiform"`` or ``"fingers"``).
    """

    radial: Vector
    dorsal: Vector
    distal: Vector
    side: str
    mirror: NDArray[np.float64]
    dorsal_cue: str


def _points_by_name(labels: NDArray[Any], world_from_index: NDArray[np.float64],
                    names: Mapping[int, str]) -> dict[str, Vector]:
    from scipy import ndimage

    points: dict[str, Vector] = {}
    boxes = ndimage.find_objects(labels.astype(np.int32))
    for label, name in names.items():
        if label <= 0 or label > len(boxes) or boxes[label - 1] is None:
            continue
        box = boxes[label - 1]
        index = np.argwhere(labels[box] == label) + np.array([s.start for s in box])
        if len(index) >= _MIN_VOXELS:
            points[name] = index @ world_from_index[:3, :3].T + world_from_index[:3, 3]
    return points


def find_hand_frame(points: Mapping[str, Vector]) -> HandFrame:
    """The hand's frame from its bones' points (see the module notes).

    Raises:
        InputError: the radius, or two of the metacarpals 2–5 are missing.
    """
    metacarpals = [points[f"metacarpal_{k}"] for k in (2, 3, 4, 5) if f"metacarpal_{k}" in points]
    if len(metacarpals) < 2 or "radius" not in points:
        raise InputError("the hand's frame needs the radius and at least two of the metacarpals "
                         "2-5", key="labels")
    palm = np.concatenate(metacarpals)
    centre = palm.mean(axis=0)
    _, _, vt = np.linalg.svd(palm - centre, full_matrices=False)
    normal = vt[2]
    first = points.get("metacarpal_2", metacarpals[0])
    last = points.get("metacarpal_5", metacarpals[-1])
    radial = first.mean(axis=0) - last.mean(axis=0)
    radial = _unit(radial - (radial @ normal) * normal)
    forward = centre - points["radius"].mean(axis=0)
    if "pisiform" in points and "triquetrum" in points:
        cue = "pisiform"
        sign = float((points["triquetrum"].mean(axis=0) - points["pisiform"].mean(axis=0)) @ normal)
    else:
        cue = "fingers"
        fingers = [points[n] for n in points if "phalanx" in n and not n.endswith("_1")]
        if not fingers:
            raise InputError("the hand's dorsal side needs the pisiform and triquetrum, or the "
                             "finger bones", key="labels")
        sign = -float((np.concatenate(fingers).mean(axis=0) - centre) @ normal)
    dorsal = normal if sign >= 0 else -normal
    distal = np.cross(radial, dorsal)
    if distal @ forward >= 0:
        side, mirror = "right", np.eye(3)
    else:
        side, mirror = "left", np.eye(3) - 2.0 * np.outer(radial, radial)
        distal = -distal
    return HandFrame(radial, _unit(dorsal), _unit(distal), side, mirror, cue)


def _centreline(points: Vector, axis: Vector, step_mm: float = 1.0, trim: float = 0.12
                ) -> tuple[Vector, Vector]:
    """Centroids of ``step_mm`` slabs across ``axis`` over the bone's middle.

    ``trim`` of its length is left out at each end. Returns the positions along the axis and the
    centroids ``(n, 3)``.
    """
    s = (points - points.mean(axis=0)) @ axis
    lo, hi = float(s.min()), float(s.max())
    span = hi - lo
    edges = np.arange(lo + trim * span, hi - trim * span, step_mm)
    where = np.digitize(s, edges)
    pos, cent = [], []
    for k in range(1, len(edges)):
        pick = where == k
        if pick.sum() >= 3:
            pos.append(0.5 * (edges[k - 1] + edges[k]))
            cent.append(points[pick].mean(axis=0))
    return np.asarray(pos), np.asarray(cent)


def _line_residual(c: Vector) -> tuple[float, Vector, Vector]:
    centre = c.mean(axis=0)
    _, sv, vt = np.linalg.svd(c - centre, full_matrices=False)
    return float((sv[1:] ** 2).sum()), centre, vt[0]


def _find_apex(points: Vector, axis: Vector) -> tuple[Vector, float]:
    """The apex of a broken shaft: the break of the best two-line fit to its centreline.

    Returns:
        The apex (world, the point of the centreline's fit at the break) and the fraction of the
        residual the break removes (0: straight, 1: perfectly broken).
    """
    pos, cent = _centreline(points, axis)
    if len(pos) < 8:
        return points.mean(axis=0), 0.0
    whole, _, _ = _line_residual(cent)
    best = (math.inf, len(pos) // 2)
    for k in range(4, len(pos) - 3):
        r1, _, _ = _line_residual(cent[:k])
        r2, _, _ = _line_residual(cent[k:])
        if r1 + r2 < best[0]:
            best = (r1 + r2, k)
    k = best[1]
    _, c1, d1 = _line_residual(cent[:k])
    _, c2, d2 = _line_residual(cent[k:])
    # The apex: the point nearest both fitted lines (their common perpendicular's middle).
    w = c1 - c2
    a, b, c = d1 @ d1, d1 @ d2, d2 @ d2
    d, e = d1 @ w, d2 @ w
    denom = a * c - b * b
    if denom < 1e-9:
        apex = 0.5 * (cent[k - 1] + cent[k])
    else:
        s1 = (b * e - c * d) / denom
        s2 = (a * e - b * d) / denom
        apex = 0.5 * ((c1 + s1 * d1) + (c2 + s2 * d2))
        # A near-straight bone puts the lines' meeting point anywhere: keep it on the shaft.
        along = (apex - points.mean(axis=0)) @ axis
        if not pos[0] <= along <= pos[-1]:
            apex = 0.5 * (cent[k - 1] + cent[k])
    gain = 1.0 - best[0] / whole if whole > 0 else 0.0
    if gain < _BREAK_GAIN:
        # No break explains the centreline: a straight bone, measured at its middle (where the
        # fragments' fits stay off its flared ends).
        middle = 0.5 * (float(((points - points.mean(axis=0)) @ axis).min())
                        + float(((points - points.mean(axis=0)) @ axis).max()))
        apex = points.mean(axis=0) + middle * axis
    return apex, float(gain)


def _bone_dorsal(points: Vector, axis: Vector, hand_dorsal: Vector) -> Vector:
    """The bone's thinner cross-section axis, signed towards the hand's dorsal side."""
    centred = points - points.mean(axis=0)
    across = centred - np.outer(centred @ axis, axis)
    values, vectors = np.linalg.eigh(across.T @ across)
    # the two cross-section axes are the largest eigenvectors; the thinner is the second
    order = np.argsort(values)[::-1]
    thin = vectors[:, order[1]]
    thin = thin - (thin @ axis) * axis
    thin = _unit(thin)
    return thin if thin @ hand_dorsal >= 0 else -thin


def _flatness(points: Vector, axis: Vector) -> float:
    """1 − (thinner / wider cross-section spread): 0 for a round shaft."""
    centred = points - points.mean(axis=0)
    across = centred - np.outer(centred @ axis, axis)
    values = np.sort(np.maximum(np.linalg.eigvalsh(across.T @ across), 0.0))
    return float(1.0 - math.sqrt(values[1] / values[2])) if values[2] > 0 else 0.0


def _fingers_dorsal(points: Mapping[str, Vector], hand_dorsal: Vector) -> Vector:
    """The fingers' common dorsal direction.

    The thinner cross-section axes of metacarpals and proximal phalanges 2-5, weighted by how flat
    each is (a nearly round shaft says little).
    """
    total = np.zeros(3)
    for name in [f"{kind}_{ray}" for kind in ("metacarpal", "proximal_phalanx")
                 for ray in (2, 3, 4, 5)]:
        neighbour = _proximal_neighbour(name)
        if name not in points or neighbour is None or neighbour not in points:
            continue
        p = points[name]
        axis = _principal(p, p.mean(axis=0) - points[neighbour].mean(axis=0)).direction
        total += _flatness(p, axis) * _bone_dorsal(p, axis, hand_dorsal)
    norm = float(np.linalg.norm(total))
    return total / norm if norm > 0 else hand_dorsal


_FINGER_SECTION_TURN_DEG = 30.0
"""A finger bone's own thinner section axis sets its planes when within this of the fingers'."""
_THUMB_SECTION_TURN_DEG = 90.0
"""The thumb's own section sets its planes whatever its turn; the hint only signs it."""


def _tubular(points: Vector, towards: Vector, dorsal_hint: Vector, voxel_mm: float, *,
             thumb: bool) -> dict[str, Any]:
    axis = _principal(points, _unit(towards)).direction
    apex, gain = _find_apex(points, axis)
    shaft = (points - apex) @ axis
    margin = (min(3.0, 0.15 * float(-shaft.min())), min(3.0, 0.15 * float(shaft.max())))
    # The planes come from the proximal shaft's own section (the distal fragment may be
    # turned): the fingers' common dorsal direction misses each bone's own roll, and a bent
    # or turned bone among those it averages pulls it (7-10° on two malunited metacarpals).
    turn = _THUMB_SECTION_TURN_DEG if thumb else _FINGER_SECTION_TURN_DEG
    try:
        m = fracture_from_points(points, fracture_point=apex, distal=axis, dorsal=dorsal_hint,
                                 margin_mm=margin, section_turn_deg=turn)
    except InputError:
        return {"length_mm": _length(points, axis, voxel_mm)}
    return {"angulation_deg": math.degrees(m.angulation),
            "angulation2_deg": math.degrees(m.angulation2),
            "rotation_deg": math.degrees(m.rotation),
            "length_mm": m.length + voxel_mm,
            "apex_world": apex, "apex_fit_gain": gain}


def _length(points: Vector, axis: Vector, voxel_mm: float) -> float:
    s = points @ axis
    return float(s.max() - s.min()) + voxel_mm


def _ulnar_variance(radius: Vector, ulna: Vector, axis: Vector, radial: Vector) -> float:
    top = float((radius @ axis).max())
    rim = radius[radius @ axis >= top - 12.0]
    across = rim @ radial
    corner = rim[across <= across.min() + 3.0]
    return float((ulna @ axis).max() - (corner @ axis).max())


def measure_hand(labels: NDArray[Any], world_from_index: NDArray[np.float64],
                 names: Mapping[int, str]) -> dict[str, Any]:
    """Every measurement of a hand label map (see the module notes).

    Args:
        labels: Integer label map (I, J, K); floats holding whole numbers are taken as integers.
        world_from_index: Its 4×4 affine (RAS+ mm).
        names: Label value → bone name (the plugin's bone table, or a subset).

    Returns:
        ``{"frame": {...}, "bones": {NAME: {FIELD: value}}}`` with angles in degrees and
        ``apex_world`` as a list.

    Raises:
        InputError: a label map without the bones the hand's frame needs; or one that cannot be
            measured (not 3-D, empty, not whole numbers) or an affine that is not a finite,
            invertible 4×4 (``key`` names which).
    """
    values, affine = _check(labels, world_from_index)
    voxel_mm = float(np.cbrt(abs(np.linalg.det(affine[:3, :3]))))
    raw = _points_by_name(values, affine, names)
    if not raw:
        raise InputError(f"the label map holds none of the {len(names)} bones named (at least "
                         f"{_MIN_VOXELS} voxels each)", key="labels")
    frame = find_hand_frame(raw)
    m = frame.mirror
    points = {n: p @ m.T for n, p in raw.items()}
    dorsal, distal, radial = m @ frame.dorsal, m @ frame.distal, m @ frame.radial
    fingers = _fingers_dorsal(points, dorsal)
    bones: dict[str, dict[str, Any]] = {}
    for name, p in points.items():
        if name.startswith(_TUBULAR_PREFIXES):
            neighbour = _proximal_neighbour(name)
            towards = p.mean(axis=0) - points[neighbour].mean(axis=0) \
                if neighbour is not None and neighbour in points else distal
            # The thumb's nail faces radially in the anatomical position: its dorsal side is
            # told from the hand's radial direction, the fingers' from the hand's dorsal.
            thumb = name.endswith("_1")
            fields = _tubular(p, towards, radial if thumb else fingers, voxel_mm, thumb=thumb)
            if "apex_world" in fields:
                fields["apex_world"] = [float(x) for x in m @ fields["apex_world"]]
            bones[name] = fields
    if "radius" in points:
        r = points["radius"]
        fields = {}
        across = radial          # the hand's, unless the radius' own sections give theirs
        try:
            # The forearm's axis, not the hand's: a malunion or wrist flexion turns the hand.
            shaft = _principal(r, distal).direction
            angles = radius_angles_from_points(r, distal=shaft, dorsal=dorsal)
            fields["dorsal_tilt_deg"] = math.degrees(angles.dorsal_tilt)
            fields["radial_inclination_deg"] = math.degrees(angles.radial_inclination)
            axis, across = angles.shaft_axis, angles.radial
        except InputError:
            axis = shaft
        fields["length_mm"] = _length(r, axis, voxel_mm)
        bones["radius"] = fields
        if "ulna" in points:
            bones["ulna"] = {"length_mm": _length(points["ulna"], axis, voxel_mm),
                             "ulnar_variance_mm": _ulnar_variance(r, points["ulna"], axis,
                                                                  across)}
    for name in bones:
        for key, value in list(bones[name].items()):
            if isinstance(value, float):
                bones[name][key] = round(value, 3)
    return {"frame": {"side": frame.side, "dorsal_cue": frame.dorsal_cue,
                      "radial": frame.radial.round(6).tolist(),
                      "dorsal": frame.dorsal.round(6).tolist(),
                      "distal": frame.distal.round(6).tolist()},
            "bones": dict(sorted(bones.items(), key=lambda kv: _order(kv[0], names)))}


def _order(name: str, names: Mapping[int, str]) -> int:
    for label, n in names.items():
        if n == name:
            return int(label)
    return 10**6


def measure_labels_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`measure_hand` of a label NIfTI.

    The bone names come from the ``labels.csv`` beside it (``label,name``) or the plugin's bone
    table.
    """
    from .phantom import anatomy

    labels, affine = _load_labels(path)
    names = _names_beside(path) or {int(k): v for k, v in anatomy.BONE_NAMES.items() if k}
    try:
        return measure_hand(labels, affine, names)
    except InputError as err:     # name the file, not the function's argument
        if err.source is None:
            raise InputError(err.reason, source=os.fspath(path)) from None
        raise


def _load_labels(path: str | os.PathLike[str]) -> tuple[NDArray[Any], NDArray[np.float64]]:
    import nibabel as nib

    try:
        image: Any = nib.load(os.fspath(path))
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises several kinds for a corrupt file
        raise InputError(f"cannot read the label map: {err}", source=os.fspath(path)) from err
    try:
        return _check(data, image.affine)
    except InputError as err:     # name the file, not the function's argument
        raise InputError(err.reason, source=os.fspath(path)) from None


def unmeasured_names_note(path: str | os.PathLike[str], *, most: int = 6) -> str | None:
    """A line naming the bones of a label map's table that the measurement does not know.

    ``measure`` passes over names outside the plugin's bone table (a richer table, such as a
    whole-body segmentation's, is read as it is), so a misspelt one (``Radius``,
    ``metacarpal 2``) would silently leave that bone unmeasured; this says so, with the nearest
    known name where one is close. None when every name is known or there is no table.
    """
    import difflib

    from .phantom import anatomy

    table = _names_beside(path)
    known = [n for k, n in anatomy.BONE_NAMES.items() if k]
    unknown = [n for n in (table or {}).values() if n not in known]
    if not unknown:
        return None
    said = []
    for name in unknown[:most]:
        folded = name.lower().replace(" ", "_").replace("-", "_")
        near = difflib.get_close_matches(folded, known, n=1, cutoff=0.8)
        said.append(f"{name!r} (did you mean {near[0]!r}?)" if near else repr(name))
    more = f" and {len(unknown) - most} more" if len(unknown) > most else ""
    return (f"{labels_table_beside(path)} names {len(unknown)} label(s) that are not bones of "
            f"the hand's table, so they are not measured: {', '.join(said)}{more}")


def labels_table_beside(path: str | os.PathLike[str]) -> Path:
    """The bone table a label map's names come from: ``NAME.csv`` beside ``NAME.nii[.gz]``."""
    p = Path(path)
    stem = p.name[:-7] if p.name.endswith(".nii.gz") else p.stem
    return p.with_name(stem + ".csv")


def _names_beside(path: str | os.PathLike[str]) -> dict[int, str] | None:
    """The bone names of the table beside a label map (None: no table there).

    The table is ``label,name`` rows (the first row is a header, as ``label,bone`` or
    ``label,name``, when its label is not a number), each label a whole number and each name
    given once; further columns (``label,name,voxels``), blank lines and label 0 (the
    background) are passed over.

    Raises:
        InputError: a table that is not UTF-8 text, a row that is not ``label,name``, a label
            or a name given twice, or no bone row at all.
    """
    import csv

    csv_path = labels_table_beside(path)
    if not csv_path.is_file():
        return None
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as stream:   # a BOM: Excel
            rows = list(csv.reader(stream))
    except UnicodeDecodeError as err:
        raise InputError(f"is not UTF-8 text (byte {err.start})", source=csv_path) from None
    except csv.Error as err:
        raise InputError(f"is not a CSV table: {err}", source=csv_path) from None
    out: dict[int, str] = {}
    first = True
    for number, row in enumerate(rows, start=1):
        if not any(field.strip() for field in row):
            continue
        label, name = row[0].strip(), row[1].strip() if len(row) > 1 else ""
        if first and not label.lstrip("+-").isdigit():
            first = False
            continue                                   # the header
        first = False
        if not label.isdigit() or not name:
            raise InputError(f"row {number} is {','.join(row)!r}, not 'label,name' with a "
                             "whole-number label", source=csv_path)
        if int(label) == 0:
            continue                                   # the background
        if int(label) in out:
            raise InputError(f"row {number} gives label {label} again", source=csv_path)
        if name in out.values():
            raise InputError(f"row {number} gives the name {name!r} again", source=csv_path)
        out[int(label)] = name
    if not out:
        raise InputError("holds no 'label,name' row", source=csv_path)
    return out
