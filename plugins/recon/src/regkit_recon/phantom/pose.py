"""The phantom's size and pose, drawn from a seed within documented ranges.

Every parameter is drawn uniformly from the range listed in :data:`POSE_RANGES`, in the order of
that table, from ``numpy.random.default_rng`` seeded with the phantom's seed, so the same seed
always gives the same hand. The ranges describe a relaxed adult hand laid flat for a PA
radiograph: fingers nearly straight and a little spread, the thumb resting away from the index,
the wrist near neutral.

Sign conventions (all angles in radians inside; the JSON record adds ``_deg``):
    * wrist flexion: + palmar flexion, − extension; wrist deviation: + radial, − ulnar. The
      hand turns about the centre of the capitate head.
    * finger ``mcp``/``pip``/``dip`` flexion: + towards the palm.
    * finger ``abduction``: rotation at the MCP joint, + towards the radial side (the thumb). The
      index spreads radially (+), the ring and little fingers ulnarly (−).
    * thumb ``cmc_abduction``: radial abduction of the first metacarpal, in the plane of the palm,
      away from the index; ``cmc_opposition``: turns the first metacarpal palmarly and pronates
      it about its axis by the same angle; ``mcp``/``ip`` flexion: + across the palm.
    * ``radius_palmar_tilt`` and ``radius_inclination``: the normal orientation of the distal
      radius' articular surface (lateral and PA views).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ["FINGER_RAYS", "POSE_RANGES", "FingerPose", "HandPose", "ThumbPose", "draw_pose"]

FINGER_RAYS = (2, 3, 4, 5)

POSE_RANGES: MappingProxyType[str, tuple[float, float]] = MappingProxyType({
    # overall size: 1 is the reference adult of anatomy.py (hand length about 190 mm)
    "scale": (0.9, 1.1),
    "wrist_flexion_deg": (-15.0, 15.0),
    "wrist_deviation_deg": (-15.0, 10.0),
    "finger_2_mcp_flexion_deg": (0.0, 20.0),
    "finger_2_pip_flexion_deg": (0.0, 20.0),
    "finger_2_dip_flexion_deg": (0.0, 10.0),
    "finger_2_abduction_deg": (0.0, 12.0),
    "finger_3_mcp_flexion_deg": (0.0, 20.0),
    "finger_3_pip_flexion_deg": (0.0, 20.0),
    "finger_3_dip_flexion_deg": (0.0, 10.0),
    "finger_3_abduction_deg": (-3.0, 3.0),
    "finger_4_mcp_flexion_deg": (0.0, 20.0),
    "finger_4_pip_flexion_deg": (0.0, 20.0),
    "finger_4_dip_flexion_deg": (0.0, 10.0),
    "finger_4_abduction_deg": (-8.0, 0.0),
    "finger_5_mcp_flexion_deg": (0.0, 20.0),
    "finger_5_pip_flexion_deg": (0.0, 20.0),
    "finger_5_dip_flexion_deg": (0.0, 10.0),
    "finger_5_abduction_deg": (-15.0, 0.0),
    "thumb_cmc_abduction_deg": (20.0, 40.0),
    "thumb_cmc_opposition_deg": (0.0, 15.0),
    "thumb_mcp_flexion_deg": (0.0, 20.0),
    "thumb_ip_flexion_deg": (0.0, 20.0),
    # normal distal radius: palmar tilt 11° ± 3°, radial inclination 22° ± 3°
    "radius_palmar_tilt_deg": (8.0, 14.0),
    "radius_inclination_deg": (19.0, 25.0),
    # soft tissue: mean HU and thickness factor of the soft-tissue envelope
    "soft_tissue_hu": (20.0, 40.0),
    "soft_tissue_thickness": (0.9, 1.15),
})
"""Every drawn parameter and its uniform range (degrees where the name ends in ``_deg``)."""


@dataclass(frozen=True)
class FingerPose:
    """Joint angles of one finger (rays 2–5), radians."""

    mcp_flexion: float
    pip_flexion: float
    dip_flexion: float
    abduction: float


@dataclass(frozen=True)
class ThumbPose:
    """Joint angles of the thumb (ray 1), radians."""

    cmc_abduction: float
    cmc_opposition: float
    mcp_flexion: float
    ip_flexion: float


@dataclass(frozen=True)
class HandPose:
    """Everything the seed decides about one phantom.

    Attributes:
        scale: Size factor applied to every bone dimension (joint spaces stay as they are).
        wrist_flexion, wrist_deviation: Wrist angles, radians.
        fingers: Ray (2..5) -> :class:`FingerPose`.
        thumb: :class:`ThumbPose`.
        radius_palmar_tilt, radius_inclination: Normal distal radius angles, radians.
        soft_tissue_hu: Mean Hounsfield value of the soft tissue.
        soft_tissue_thickness: Factor on the soft-tissue envelope's thickness.
    """

    scale: float
    wrist_flexion: float
    wrist_deviation: float
    fingers: Mapping[int, FingerPose]
    thumb: ThumbPose
    radius_palmar_tilt: float
    radius_inclination: float
    soft_tissue_hu: float
    soft_tissue_thickness: float

    def to_json(self) -> dict[str, Any]:
        """The flat record of :data:`POSE_RANGES`' names (degrees in ``_deg`` fields)."""
        out: dict[str, Any] = {"scale": self.scale}
        out["wrist_flexion_deg"] = math.degrees(self.wrist_flexion)
        out["wrist_deviation_deg"] = math.degrees(self.wrist_deviation)
        for ray in FINGER_RAYS:
            finger = self.fingers[ray]
            for joint in ("mcp_flexion", "pip_flexion", "dip_flexion", "abduction"):
                out[f"finger_{ray}_{joint}_deg"] = math.degrees(getattr(finger, joint))
        for joint in ("cmc_abduction", "cmc_opposition", "mcp_flexion", "ip_flexion"):
            out[f"thumb_{joint}_deg"] = math.degrees(getattr(self.thumb, joint))
        out["radius_palmar_tilt_deg"] = math.degrees(self.radius_palmar_tilt)
        out["radius_inclination_deg"] = math.degrees(self.radius_inclination)
        out["soft_tissue_hu"] = self.soft_tissue_hu
        out["soft_tissue_thickness"] = self.soft_tissue_thickness
        return out


def draw_pose(rng: np.random.Generator) -> HandPose:
    """Draw a :class:`HandPose`: one uniform draw per entry of :data:`POSE_RANGES`, in order."""
    v = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in POSE_RANGES.items()}
    rad = {name: math.radians(value) for name, value in v.items() if name.endswith("_deg")}
    fingers = {ray: FingerPose(rad[f"finger_{ray}_mcp_flexion_deg"],
                               rad[f"finger_{ray}_pip_flexion_deg"],
                               rad[f"finger_{ray}_dip_flexion_deg"],
                               rad[f"finger_{ray}_abduction_deg"]) for ray in FINGER_RAYS}
    thumb = ThumbPose(rad["thumb_cmc_abduction_deg"], rad["thumb_cmc_opposition_deg"],
                      rad["thumb_mcp_flexion_deg"], rad["thumb_ip_flexion_deg"])
    return HandPose(scale=v["scale"], wrist_flexion=rad["wrist_flexion_deg"],
                    wrist_deviation=rad["wrist_deviation_deg"],
                    fingers=MappingProxyType(fingers), thumb=thumb,
                    radius_palmar_tilt=rad["radius_palmar_tilt_deg"],
                    radius_inclination=rad["radius_inclination_deg"],
                    soft_tissue_hu=v["soft_tissue_hu"],
                    soft_tissue_thickness=v["soft_tissue_thickness"])
