"""The procedural hand CT phantom: anatomy, pose, deformities, voxelisation.

Public entry points: :func:`make_hand_phantom` and :class:`HandPhantom`
(:mod:`~regkit_recon.phantom.phantom`), :func:`parse_deformity`
(:mod:`~regkit_recon.phantom.deformity`), and the bone table ``BONE_NAMES``
(:mod:`~regkit_recon.phantom.anatomy`).
"""

from __future__ import annotations

from regkit_recon.phantom.anatomy import BONE_NAMES, LABELS
from regkit_recon.phantom.deformity import RadiusMalunion, ShaftMalunion, parse_deformity
from regkit_recon.phantom.phantom import HandPhantom, make_hand_phantom

__all__ = [
    "BONE_NAMES",
    "LABELS",
    "HandPhantom",
    "RadiusMalunion",
    "ShaftMalunion",
    "make_hand_phantom",
    "parse_deformity",
]
