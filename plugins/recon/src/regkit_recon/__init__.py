"""regkit-recon: single-radiograph bone reconstruction, a plugin of regkit.

It provides the procedural hand CT phantom (:func:`make_hand_phantom`), the tools that measure
bones in a label map (:mod:`regkit_recon.measure`) and the ground-truth factory
(:func:`generate`, :class:`GenerateSpec`, :class:`GroundTruthDataset`,
:func:`open_ground_truth`; see
:mod:`regkit_recon.groundtruth`). The command line gains ``regkit recon phantom`` and
``regkit recon generate``. Importing the package loads nothing heavy; the names below load on
first use.
"""

from __future__ import annotations

from importlib import metadata

from regkit.lazy import lazy_exports

try:
    __version__ = metadata.version("regkit-recon")
except metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.1.0"

__all__ = [
    "GenerateSpec",
    "GroundTruthDataset",
    "HandPhantom",
    "__version__",
    "collate_ground_truth",
    "generate",
    "make_hand_phantom",
    "measure_bone_axis",
    "measure_fracture",
    "measure_radius_angles",
    "open_ground_truth",
    "parse_deformity",
]

_LAZY = {
    "GenerateSpec": "regkit_recon.groundtruth.generate",
    "generate": "regkit_recon.groundtruth.generate",
    "GroundTruthDataset": "regkit_recon.groundtruth.dataset",
    "open_ground_truth": "regkit_recon.groundtruth.dataset",
    "collate_ground_truth": "regkit_recon.groundtruth.dataset",
    "HandPhantom": "regkit_recon.phantom.phantom",
    "make_hand_phantom": "regkit_recon.phantom.phantom",
    "parse_deformity": "regkit_recon.phantom.deformity",
    "measure_bone_axis": "regkit_recon.measure",
    "measure_fracture": "regkit_recon.measure",
    "measure_radius_angles": "regkit_recon.measure",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
