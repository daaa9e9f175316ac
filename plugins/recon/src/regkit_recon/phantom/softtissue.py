"""The soft-tissue envelope: a smooth skin around the skeleton.

The envelope is the smooth union (polynomial smooth minimum, blend ``6·scale`` mm) of round cones
laid along the skeleton: two along the forearm bones, three over the carpus, one along each
metacarpal (offset palmarly: the palm is thick, the back of the hand thin), thenar and hypothenar
eminences, the root of the first web space, and a tapering chain along each finger that ends a few
millimetres beyond the distal phalanx (the pulp). Finally every bone is wrapped by at least
``cover`` mm of tissue. Radii are those of an average adult hand (finger widths 16–20 mm at the
proximal phalanx, wrist about 56 mm wide and 36 mm deep) times the hand's scale and its drawn
thickness factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from regkit_recon.phantom._sdf import Capsule, smooth_min
from regkit_recon.phantom.pose import HandPose
from regkit_recon.phantom.skeleton import Skeleton

__all__ = ["Envelope", "build_envelope"]

F32 = NDArray[np.float32]

_RAY_WIDTH = {1: 1.05, 2: 1.0, 3: 1.03, 4: 0.97, 5: 0.86}


@dataclass(frozen=True)
class Envelope:
    """The skin as an implicit surface in world coordinates (negative inside, mm)."""

    parts: tuple[Capsule, ...]
    blend: float

    def sdf(self, x: F32, y: F32, z: F32) -> F32:
        """Signed distance-like value at world points (broadcastable float32 arrays)."""
        value = self.parts[0].sdf(x, y, z)
        for part in self.parts[1:]:
            value = smooth_min(value, part.sdf(x, y, z), self.blend)
        return value

    def extent(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """World box (lo, hi) that holds the envelope."""
        boxes = [p.extent() for p in self.parts]
        lo = np.min([b[0] for b in boxes], axis=0) - self.blend
        hi = np.max([b[1] for b in boxes], axis=0) + self.blend
        return lo, hi


def _cone(a: NDArray[np.float64], b: NDArray[np.float64], ra: float, rb: float) -> Capsule:
    return Capsule((float(a[0]), float(a[1]), float(a[2])), (float(b[0]), float(b[1]), float(b[2])),
                   float(ra), float(rb))


def build_envelope(skeleton: Skeleton, pose: HandPose) -> Envelope:
    """Lay the soft tissue along ``skeleton``.

    Args:
        skeleton: The placed bones.
        pose: Gives the scale and the soft-tissue thickness factor.

    Returns:
        The :class:`Envelope` (the bones' own cover is added when the phantom is voxelised).
    """
    s = pose.scale
    t = pose.soft_tissue_thickness * s
    fa = skeleton.forearm
    hand = skeleton.world_from_hand
    forearm_palmar = -skeleton.world_from_forearm[:3, 1]
    proximal = skeleton.world_from_forearm[:3, 2] * -40.0  # beyond the stub cut

    def h(point: tuple[float, float, float]) -> NDArray[np.float64]:
        return hand[:3, :3] @ (np.asarray(point) * s) + hand[:3, 3]

    parts = [
        _cone(fa["radius_stub"] + proximal + forearm_palmar * 3.0 * s,
              fa["radius_wrist"] + forearm_palmar * 3.0 * s, 16.5 * t, 17.0 * t),
        _cone(fa["ulna_stub"] + proximal + forearm_palmar * 2.0 * s,
              fa["ulna_wrist"] + forearm_palmar * 2.0 * s, 13.5 * t, 13.0 * t),
        _cone(h((1.0, -3.0, -14.0)), h((1.0, -3.0, 12.0)), 18.0 * t, 18.0 * t),
        _cone(h((-14.0, -2.5, -8.0)), h((-16.0, -3.0, 16.0)), 12.5 * t, 13.0 * t),
        _cone(h((15.0, -4.0, -8.0)), h((17.0, -6.0, 14.0)), 12.5 * t, 13.0 * t),
    ]
    bones = {b.name: b for b in skeleton.bones}
    for ray in range(1, 6):
        points = skeleton.rays[ray]
        mc = bones[f"metacarpal_{ray}"].world_from_local
        mc_palmar, mc_ulnar = -mc[:3, 1], -mc[:3, 0]
        w = _RAY_WIDTH[ray] * t
        if ray == 1:  # thenar eminence and the first web space
            parts.append(_cone(points["base"] + mc_palmar * 3.0 * s,
                               points["mcp"] + mc_palmar * 1.5 * s, 10.5 * t, 8.5 * t))
            index_base = 0.7 * skeleton.rays[2]["base"] + 0.3 * skeleton.rays[2]["mcp"]
            parts.append(_cone(points["base"] + mc_palmar * 2.0 * s, index_base, 8.0 * t,
                               9.0 * t))
        else:
            parts.append(_cone(points["base"] + mc_palmar * 4.0 * s,
                               points["mcp"] + mc_palmar * 3.5 * s, 11.5 * t, 10.5 * t))
        if ray == 5:  # hypothenar eminence
            parts.append(_cone(points["base"] + mc_palmar * 5.0 * s + mc_ulnar * 3.0 * s,
                               points["mcp"] + mc_palmar * 3.0 * s + mc_ulnar * 1.5 * s,
                               12.5 * t, 9.5 * t))
        palmar = skeleton.palmar[ray] * 1.2 * s
        joints = ["mcp", "pip", "dip", "tip"] if ray != 1 else ["mcp", "pip", "tip"]
        radii = [9.6, 8.6, 7.6, 6.2] if ray != 1 else [10.2, 9.2, 7.4]
        tip = points["tip"]
        pulp = tip + (tip - points[joints[-2]]) / np.linalg.norm(tip - points[joints[-2]]) * 1.5 * s
        path = [points[j] for j in joints[:-1]] + [pulp]
        for k in range(len(path) - 1):
            parts.append(_cone(path[k] + palmar, path[k + 1] + palmar, radii[k] * w,
                               radii[k + 1] * w))
    return Envelope(tuple(parts), 6.0 * s)
