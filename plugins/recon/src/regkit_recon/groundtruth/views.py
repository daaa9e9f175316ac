"""Radiographic views drawn around the standard hand projections, with jitter.

Convention:
    Each view is built as a C-arm view (:func:`regkit.geometry.carm.camera_from_carm`): at a
    primary angle of 0 it looks along world +y, which is the posteroanterior (PA) hand view of the
    phantom (source behind the dorsum, detector under the palm). The primary angle turns the beam
    about world z (the forearm axis): 45° is the oblique view, 90° the lateral. The secondary
    angle tilts it cranio-caudally (along the fingers), and a roll turns the detector about the
    central ray (the hand not square on the cassette). The anatomy lies on the detector: the
    anatomy box's far face is ``gap_mm`` from the detector plane. The pixel spacing is chosen so
    the projected anatomy box spans ``fill`` of the detector along its longer side, and the box's
    projection is centred on the detector up to a random offset that keeps it in view.

Angles are in radians inside, in degrees (``*_deg``) in the ranges people edit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.geometry.carm import camera_from_carm
from regkit.labels import check_present, present_labels

__all__ = ["VIEW_KINDS", "ViewRanges", "anatomy_corners", "bone_boxes", "draw_view"]

VIEW_KINDS: dict[str, float] = {"pa": 0.0, "oblique": 45.0, "lateral": 90.0}
"""The standard hand views and their primary angle about world z, degrees."""


@dataclass(frozen=True)
class ViewRanges:
    """The jitter of the drawn views (uniform in each range unless said otherwise).

    Attributes:
        primary_deg: Added to the view's primary angle (about world z), ± degrees.
        secondary_deg: Cranio-caudal tilt, ± degrees.
        roll_deg: Detector roll about the central ray, ± degrees.
        shift_mm: Anatomy centre moved across the beam by up to this, mm (each of 2 axes).
        sdd_mm: Source-to-detector distance range, mm.
        gap_mm: Distance from the anatomy box to the detector, mm.
        fill: Fraction of the detector the projected anatomy box spans (longer side).
    """

    primary_deg: float = 8.0
    secondary_deg: float = 6.0
    roll_deg: float = 10.0
    shift_mm: float = 10.0
    sdd_mm: tuple[float, float] = (950.0, 1050.0)
    gap_mm: tuple[float, float] = (2.0, 25.0)
    fill: tuple[float, float] = (0.78, 0.92)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def bone_boxes(labels: Any, bones: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each bone's voxel bounding box ``[lo, hi)`` (index space) in a label map.

    Raises:
        InputError: a bone's label does not occur (the message lists those that do).
    """
    from scipy import ndimage

    lab = np.asarray(labels)
    wanted = [int(b) for b in bones]
    if not wanted or min(wanted) < 1:
        raise InputError(f"bones must be positive labels, got {wanted}", key="bones")
    if not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"a label map holds whole numbers, got dtype {lab.dtype}",
                         key="labels")
    found = ndimage.find_objects(lab, max_label=max(wanted)) if lab.size else []
    boxes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    missing = []
    for b in wanted:
        box = found[b - 1] if b <= len(found) else None
        if box is None:
            missing.append(b)
            continue
        boxes[b] = (np.array([sl.start for sl in box]), np.array([sl.stop for sl in box]))
    if missing:
        check_present(missing, present_labels(lab), key="bones")
    return boxes


def anatomy_corners(volume: Any, labels: Sequence[int], margin_mm: float = 8.0, *,
                    boxes: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
                    ) -> np.ndarray:
    """The 8 world corners ``(8, 3)`` mm of the bounding box of ``labels``, grown by a margin.

    The box is taken in index space around the voxels of the bones (voxel edges, not centres),
    grown by ``margin_mm`` along each index axis, then mapped to world. ``boxes``: the bones'
    boxes (:func:`bone_boxes`) when already known.
    """
    if boxes is None:
        boxes = bone_boxes(volume.labels, labels)
    first = np.min([boxes[int(b)][0] for b in labels], axis=0).astype(np.float64)
    last = np.max([boxes[int(b)][1] for b in labels], axis=0).astype(np.float64) - 1.0
    grow = margin_mm / np.asarray(volume.spacing, dtype=np.float64)
    lo = first - 0.5 - grow
    hi = last + 0.5 + grow
    idx = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                    for z in (lo[2], hi[2])])
    return np.asarray(volume.index_to_world(idx), dtype=np.float64)


def _roll(camera_from_world: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    turn = np.eye(4)
    turn[:2, :2] = [[c, -s], [s, c]]
    return turn @ camera_from_world


def draw_view(rng: np.random.Generator, kind: str, corners_world: np.ndarray, size: int,
              ranges: ViewRanges | None = None) -> tuple[Camera, dict[str, Any]]:
    """Draw one jittered view of ``kind`` that sees the whole anatomy box.

    Args:
        rng: The sample's generator (its draws are the only randomness).
        kind: One of :data:`VIEW_KINDS`.
        corners_world: ``(8, 3)`` anatomy box corners, world mm (:func:`anatomy_corners`).
        size: Detector width = height, pixels.
        ranges: The jitter (default :class:`ViewRanges`).

    Returns:
        The camera (with ``pixel_spacing_mm``) and a JSON-ready record of every drawn value.
    """
    if kind not in VIEW_KINDS:
        raise InputError(f"unknown view {kind!r}; known: {', '.join(VIEW_KINDS)}", key="views")
    r = ranges or ViewRanges()
    primary_deg = VIEW_KINDS[kind] + rng.uniform(-r.primary_deg, r.primary_deg)
    secondary_deg = rng.uniform(-r.secondary_deg, r.secondary_deg)
    roll_deg = rng.uniform(-r.roll_deg, r.roll_deg)
    shift = rng.uniform(-r.shift_mm, r.shift_mm, size=2)
    sdd = rng.uniform(*r.sdd_mm)
    gap = rng.uniform(*r.gap_mm)
    fill = rng.uniform(*r.fill)
    offset_unit = rng.uniform(-1.0, 1.0, size=2)

    centre = corners_world.mean(axis=0)
    # a provisional camera (1 mm pixels) only to learn the beam direction and the projection
    probe = camera_from_carm(source_to_detector_mm=sdd, source_to_isocenter_mm=0.5 * sdd,
                             pixel_spacing_mm=1.0, width=size, height=size,
                             primary_angle=math.radians(primary_deg),
                             secondary_angle=math.radians(secondary_deg),
                             isocenter_world=centre)
    beam = probe.view_direction_world
    across = probe.camera_from_world[:2, :3]            # detector x and y axes in world
    half_depth = float(np.max((corners_world - centre) @ beam))
    iso = centre + shift @ across
    sid = sdd - half_depth - gap
    pose = camera_from_carm(source_to_detector_mm=sdd, source_to_isocenter_mm=sid,
                            pixel_spacing_mm=1.0, width=size, height=size,
                            primary_angle=math.radians(primary_deg),
                            secondary_angle=math.radians(secondary_deg), isocenter_world=iso)
    camera_from_world = _roll(pose.camera_from_world, math.radians(roll_deg))
    # with 1 mm pixels and the principal point at 0, pixels are mm on the detector plane
    unit = Camera(np.array([[sdd, 0.0, 0.0], [0.0, sdd, 0.0], [0.0, 0.0, 1.0]]),
                  camera_from_world, size, size)
    uv = unit.project(corners_world)
    extent = float(np.max(uv.max(axis=0) - uv.min(axis=0)))
    spacing = extent / (fill * size)
    mid = 0.5 * (uv.max(axis=0) + uv.min(axis=0)) / spacing     # box centre, px from the axis
    room = 0.5 * (1.0 - fill) * size * 0.8
    offset = offset_unit * room
    cx, cy = size / 2.0 + offset - mid
    k = np.array([[sdd / spacing, 0.0, cx], [0.0, sdd / spacing, cy], [0.0, 0.0, 1.0]])
    camera = Camera(k, camera_from_world, size, size, (spacing, spacing))
    record = {"kind": kind, "primary_deg": primary_deg, "secondary_deg": secondary_deg,
              "roll_deg": roll_deg, "shift_mm": shift.tolist(), "sdd_mm": sdd,
              "gap_mm": gap, "fill": fill, "pixel_spacing_mm": spacing,
              "source_to_anatomy_centre_mm": sid, "principal_point_px": [cx, cy]}
    return camera, record
