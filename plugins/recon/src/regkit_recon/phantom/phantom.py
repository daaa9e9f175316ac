"""``make_hand_phantom``: a procedural CT of a right hand and distal forearm, with bone labels.

What one call gives (see :class:`HandPhantom`):
    * an int16 CT in Hounsfield units (air, soft tissue, cortical and cancellous bone; the ranges
      are in :data:`~regkit_recon.phantom._voxelise.HU_RANGES`) on a grid of ``voxel_mm``
      isotropic voxels whose axes follow the RAS+ world axes, tight around the skin plus 3 mm of
      air, cut proximally through the forearm 48 mm (times the scale) above the radius' rim;
    * a uint8 label map of the 29 bones (numbers in :mod:`~regkit_recon.phantom.anatomy`);
    * every parameter that was drawn (:mod:`~regkit_recon.phantom.pose`), the deformities, each
      bone's frame and dimensions, and the checks that bones neither overlap nor come closer than
      1 mm.

The hand lies in the anatomical position (palm anterior, fingers inferior, thumb to the right:
see :mod:`~regkit_recon.phantom.anatomy`); a PA radiograph views it along world +y. The same seed
always gives byte-identical arrays; the seed decides the pose and size (stream 0), the bone
texture (stream 1, per bone) and the soft-tissue texture (stream 2), so adding a deformity does not
change the pose.
"""

from __future__ import annotations

import copy
import json
import math
import operator
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from regkit import Volume, save_nifti
from regkit.errors import InputError, RegkitError
from regkit.utils.files import atomic_write_text
from regkit_recon.measure import bone_gaps
from regkit_recon.phantom import anatomy as A
from regkit_recon.phantom._voxelise import HU_RANGES, plan_grid, voxelise
from regkit_recon.phantom.deformity import (
    Deformity,
    DeformityLike,
    RadiusMalunion,
    parse_deformity,
)
from regkit_recon.phantom.pose import POSE_RANGES, HandPose, draw_pose
from regkit_recon.phantom.skeleton import PlacedBone, Skeleton, build_skeleton
from regkit_recon.phantom.softtissue import build_envelope

__all__ = ["MIN_GAP_MM", "PHANTOM_FILES", "VOXEL_MM_RANGE", "HandPhantom", "make_hand_phantom"]

VOXEL_MM_RANGE = (0.25, 1.0)
"""Allowed voxel sizes, mm. 0.3–0.5 mm is the intended range; coarser grids are for quick tests
and previews (at those, the 1 mm gap check becomes a no-contact check)."""

MIN_GAP_MM = 1.0
"""Every two bones are at least this far apart (measured on voxels at ``voxel_mm <= 0.5``)."""

PHANTOM_FILES = ("ct.nii.gz", "labels.nii.gz", "labels.csv", "phantom.json")
"""What :meth:`HandPhantom.save` writes."""

_SOFT_TISSUE_COVER_MM = 1.8


def _version() -> str:
    from regkit_recon import __version__

    return __version__


@dataclass(frozen=True)
class BoneRecord:
    """One bone of a phantom as recorded in ``phantom.json``.

    Attributes:
        label, name: Label number and bone name.
        kind: ``forearm``, ``carpal``, ``metacarpal``, ``proximal_phalanx``, ...
        world_from_local: 4×4 frame of the bone (proximal fragment), RAS+ mm.
        world_from_distal: 4×4 frame of the distal fragment of a malunited bone, else None.
        length_mm: Base-to-tip length of a tubular bone before any shortening, else None.
        voxels: Number of voxels labelled.
    """

    label: int
    name: str
    kind: str
    world_from_local: np.ndarray
    world_from_distal: np.ndarray | None
    length_mm: float | None
    voxels: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"label": self.label, "name": self.name, "kind": self.kind,
                "length_mm": self.length_mm, "voxels": self.voxels,
                "world_from_local": np.round(self.world_from_local, 6).tolist(),
                "world_from_distal": None if self.world_from_distal is None
                else np.round(self.world_from_distal, 6).tolist()}


@dataclass(frozen=True, eq=False)
class HandPhantom:
    """One generated hand phantom.

    Attributes:
        volume: The CT: int16 HU on the phantom grid, with the uint8 bone labels attached
            (``volume.labels``); ``volume.world_from_index`` places it in the RAS+ world.
        seed: The seed it was made from.
        voxel_mm: Voxel size, mm.
        pose: The drawn size and pose.
        deformities: The malunions built in (empty for a normal hand).
        bones: One :class:`BoneRecord` per label, in label order.
        min_gap_mm: The smallest gap between two bones, measured on the voxels, mm.
        closest_pair: The two bone names with that gap.
        record: What ``phantom.json`` holds (read it through :meth:`to_json`, which copies).
    """

    volume: Volume
    seed: int
    voxel_mm: float
    pose: HandPose
    deformities: tuple[Deformity, ...]
    bones: tuple[BoneRecord, ...] = field(repr=False)
    min_gap_mm: float
    closest_pair: tuple[str, str]
    record: Mapping[str, Any] = field(repr=False)

    @property
    def labels(self) -> np.ndarray:
        """The uint8 label map (I, J, K)."""
        assert self.volume.labels is not None
        return self.volume.labels

    @property
    def bone_table(self) -> tuple[tuple[int, str], ...]:
        """(label, bone name) for the 29 bones, as in ``labels.csv``."""
        return tuple((b.label, b.name) for b in self.bones)

    def bone(self, name: str) -> BoneRecord:
        """The record of the bone called ``name``."""
        for record in self.bones:
            if record.name == name:
                return record
        raise InputError(f"no bone called {name!r}; bones: "
                         f"{', '.join(b.name for b in self.bones)}", key="name")

    def to_json(self) -> dict[str, Any]:
        """Everything ``phantom.json`` holds (a fresh copy)."""
        return copy.deepcopy(dict(self.record))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``ct.nii.gz``, ``labels.nii.gz``, ``labels.csv`` and ``phantom.json``.

        The files are first written (each through :func:`regkit.utils.files.atomic_path`) into a
        temporary folder beside ``directory``; a new ``directory`` then appears by one rename, so
        an error leaves nothing behind. When ``directory`` already exists the four files are
        moved into it one by one, each replacing its old version atomically; other files there
        are left alone.

        Returns:
            The directory.

        Raises:
            InputError: ``directory`` exists and is not a directory.
        """
        target = Path(directory)
        if target.exists() and not target.is_dir():
            raise InputError("exists and is not a directory", source=target, key="out")
        parent = target.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        try:
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual mode
            save_nifti(self.volume, staging / "ct.nii.gz", labels_path=staging / "labels.nii.gz")
            table = "label,bone\n" + "".join(f"{label},{name}\n"
                                              for label, name in self.bone_table)
            atomic_write_text(staging / "labels.csv", table)
            text = json.dumps(dict(self.record), indent=2) + "\n"
            atomic_write_text(staging / "phantom.json", text)
            if not target.exists():
                try:
                    os.rename(staging, target)
                    return target
                except OSError:
                    if not target.is_dir():
                        raise
            for name in PHANTOM_FILES:
                os.replace(staging / name, target / name)
            return target
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _validated_seed(seed: Any) -> int:
    try:
        if isinstance(seed, bool):        # operator.index(True) is 1
            raise TypeError(seed)
        value = operator.index(seed)
    except TypeError:
        raise InputError(f"must be a whole number, got {seed!r}", key="seed") from None
    if not 0 <= value < 2**63:
        raise InputError(f"must lie in [0, 2**63), got {value}", key="seed")
    return int(value)


def _validated_voxel(voxel_mm: Any) -> float:
    try:
        value = float(voxel_mm)
    except (TypeError, ValueError):
        raise InputError(f"must be a number of mm, got {voxel_mm!r}", key="voxel_mm") from None
    lo, hi = VOXEL_MM_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InputError(f"must lie in [{lo:g}, {hi:g}] mm (0.3–0.5 recommended), got "
                         f"{voxel_mm!r}", key="voxel_mm")
    return value


def _deformity_record(deformity: Deformity, pose: HandPose, skeleton: Skeleton
                      ) -> dict[str, Any]:
    record = deformity.to_json()
    if isinstance(deformity, RadiusMalunion):
        d_tilt, d_incl = deformity.changes(pose.radius_palmar_tilt, pose.radius_inclination)
        record["normal_dorsal_tilt_deg"] = -math.degrees(pose.radius_palmar_tilt)
        record["normal_radial_inclination_deg"] = math.degrees(pose.radius_inclination)
        record["dorsal_tilt_change_deg"] = math.degrees(d_tilt)
        record["radial_inclination_change_deg"] = math.degrees(d_incl)
        if record["dorsal_tilt_deg"] is None:
            record["dorsal_tilt_deg"] = record["normal_dorsal_tilt_deg"]
        if record["radial_inclination_deg"] is None:
            record["radial_inclination_deg"] = record["normal_radial_inclination_deg"]
    bone = next(b for b in skeleton.bones if b.name == deformity.bone)
    shape = bone.shape
    fracture = getattr(shape, "fracture", None)
    if fracture is not None:
        centre = bone.world_from_local[:3, :3] @ np.array([0.0, 0.0, fracture.level]) \
            + bone.world_from_local[:3, 3]
        record["fracture_level_mm"] = float(fracture.level)
        record["fracture_point_world"] = np.round(centre, 6).tolist()
    return record


def _check_contacts(labels: np.ndarray, affine: np.ndarray, voxel_mm: float,
                    deformities: tuple[Deformity, ...], overlap: int,
                    overlap_pairs: tuple[tuple[int, int], ...]
                    ) -> tuple[float, tuple[int, int], dict[tuple[int, int], float]]:
    """Measure the gaps; refuse a phantom whose bones overlap or touch."""
    gaps = bone_gaps(labels, affine, within_mm=4.0)
    if gaps:
        pair = min(gaps, key=lambda p: gaps[p])
        smallest = gaps[pair]
    else:
        pair, smallest = (0, 0), math.inf
    required = MIN_GAP_MM if voxel_mm <= 0.5 + 1e-9 else voxel_mm / 2
    if overlap or smallest < required:
        bad = overlap_pairs[0] if overlap else pair
        names = f"{A.BONE_NAMES[bad[0]]} and {A.BONE_NAMES[bad[1]]}"
        what = (f"{overlap} voxel(s) claimed by both {names}" if overlap
                else f"{names} only {smallest:.2f} mm apart (needs {required:g} mm)")
        if deformities:
            raise InputError(f"the requested deformity makes bones collide: {what}; ask for "
                             "less angulation, rotation or shortening", key="deformity")
        raise RegkitError(f"phantom bones collide without any deformity ({what}); this is a bug")
    return smallest, pair, gaps


def make_hand_phantom(seed: int, deformity: DeformityLike | None = None,
                      voxel_mm: float = 0.4) -> HandPhantom:
    """Generate a hand CT phantom with labelled bones.

    Args:
        seed: Whole number in [0, 2**63); the same seed gives byte-identical arrays.
        deformity: Malunions to build in: a SPEC string (see
            :mod:`regkit_recon.phantom.deformity`), a mapping of fields, a deformity object, a
            sequence of those, or None for a normal hand.
        voxel_mm: Isotropic voxel size in mm, within :data:`VOXEL_MM_RANGE` (default 0.4).

    Returns:
        The :class:`HandPhantom`.

    Raises:
        InputError: a bad seed, voxel size or deformity (the key names the field), or a
            deformity that would make bones collide.
    """
    seed = _validated_seed(seed)
    voxel = _validated_voxel(voxel_mm)
    deformities = parse_deformity(deformity)
    pose = draw_pose(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))))
    skeleton = build_skeleton(pose, deformities)
    envelope = build_envelope(skeleton, pose)
    grid = plan_grid(skeleton, envelope, voxel, _SOFT_TISSUE_COVER_MM * pose.scale,
                     np.random.SeedSequence(seed, spawn_key=(2,)))
    ct, labels, stats = voxelise(skeleton, grid, pose.soft_tissue_hu, seed)
    affine = grid.world_from_index
    missing = [A.BONE_NAMES[b.label] for b in skeleton.bones if stats.voxels[b.label] == 0]
    if missing:
        raise RegkitError(f"bones left the grid: {', '.join(missing)}; this is a bug")
    smallest, pair, gaps = _check_contacts(labels, affine, voxel, deformities,
                                           stats.overlap_voxels, stats.overlap_pairs)
    volume = Volume(ct, affine, labels, "HU")
    bones = tuple(_bone_record(b, stats.voxels[b.label]) for b in skeleton.bones)
    record = {
        "generator": "regkit-recon make_hand_phantom",
        "version": _version(),
        "seed": seed,
        "voxel_mm": voxel,
        "hand": "right",
        "convention": ("RAS+ world, mm. Right hand in the anatomical position: forearm along z, "
                       "fingers pointing inferior (-z), palm facing anterior (+y), thumb to the "
                       "right (+x); world origin at the wrist centre (capitate head) at neutral. "
                       "A PA radiograph looks along +y. Bone frames: origin at the proximal end, "
                       "+z distal, +x radial, +y dorsal; carpals use the hand frame."),
        "anatomy": ("long-bone lengths in the proportions of Buryanov & Kotiuk (Int. J. Morphol. "
                    "2010), scaled by 'scale'; see regkit_recon.phantom.anatomy"),
        "grid": {"shape": list(grid.shape), "world_from_index": affine.tolist()},
        "frames": {"world_from_forearm": skeleton.world_from_forearm.tolist(),
                   "world_from_hand": np.round(skeleton.world_from_hand, 9).tolist()},
        "parameters": pose.to_json(),
        "ranges": {name: list(r) for name, r in POSE_RANGES.items()},
        "joint_gaps_mm": dict(A.GAPS_MM),
        "hu_ranges": {k: list(v) for k, v in HU_RANGES.items()},
        "deformities": [_deformity_record(d, pose, skeleton) for d in deformities],
        "bones": [b.to_json() for b in bones],
        "checks": {
            "overlap_voxels": stats.overlap_voxels,
            "min_gap_mm": round(smallest, 4),
            "closest_pair": [A.BONE_NAMES[pair[0]], A.BONE_NAMES[pair[1]]] if pair[0] else [],
            "gap_definition": "smallest distance between voxel centres of two bones minus one "
                              "voxel",
            "neighbour_gaps_mm": {f"{A.BONE_NAMES[a]}/{A.BONE_NAMES[b]}": round(v, 3)
                                  for (a, b), v in sorted(gaps.items())},
        },
    }
    closest = (A.BONE_NAMES[pair[0]], A.BONE_NAMES[pair[1]]) if pair[0] else ("", "")
    return HandPhantom(volume, seed, voxel, pose, deformities, bones, smallest, closest,
                       MappingProxyType(record))


def _frozen(matrix: np.ndarray) -> np.ndarray:
    out = np.array(matrix, dtype=np.float64)
    out.flags.writeable = False
    return out


def _bone_record(bone: PlacedBone, voxels: int) -> BoneRecord:
    return BoneRecord(bone.label, bone.name, A.bone_kind(bone.name),
                      _frozen(bone.world_from_local),
                      None if bone.world_from_distal is None else _frozen(bone.world_from_distal),
                      bone.length, voxels)
