"""Reconstruction: radiographs → closed bone solids, meshes, labels, refinement and measurement.

:func:`reconstruct` runs a registered :class:`Reconstructor` (``hand`` is built in) on
:class:`View` objects (:func:`load_view` reads a radiograph and finds its camera) and returns a
:class:`Reconstruction` whose :meth:`~Reconstruction.save` writes the reconstruction folder.
"""

from __future__ import annotations

from .api import load_view, reconstruct, standard_camera
from .base import RECONSTRUCTION_FILES, Reconstruction, Reconstructor, View, reconstructors
from .hand import HandReconstructor

__all__ = ["RECONSTRUCTION_FILES", "HandReconstructor", "Reconstruction", "Reconstructor",
           "View", "load_view", "reconstruct", "reconstructors", "standard_camera"]
