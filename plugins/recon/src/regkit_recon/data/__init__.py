"""Data shipped with regkit-recon.

``demo_hand()`` is a ground-truth folder (``regkit recon generate`` layout) of three 256²
radiographs (PA, oblique, lateral) of one procedural hand phantom with two malunited phalanges,
taken from the test split of the shipped model: never trained on. Made by regkit-recon itself
(no outside data); see its ``manifest.json``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["demo_hand"]


def demo_hand() -> Path:
    """The folder of the demo hand radiographs (``manifest.json``, ``samples/*.npz``)."""
    return Path(str(resources.files("regkit_recon.data").joinpath("demo_hand")))
