"""The bone network: segmentation and per-bone depth from one radiograph.

Modules: :mod:`.model` (the network and its file), :mod:`.geometry` (depth targets as heights
above the detector, fitting an image to the network, augmentation), :mod:`.data` (training items),
:mod:`.train` (``regkit recon train``, one process or torchrun), :mod:`.predict`
(``regkit recon predict``), :mod:`.evaluate` (``regkit recon evaluate``). Importing this package
loads nothing heavy.
"""

from __future__ import annotations

__all__: list[str] = []
