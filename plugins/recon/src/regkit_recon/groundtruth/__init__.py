"""Ground truth for single-radiograph reconstruction: ``regkit recon generate``.

Modules: :mod:`.views` (jittered PA / oblique / lateral geometries), :mod:`.degrade` (a DRR made
to look like a real radiograph), :mod:`.sample` (rendering one sample and its file),
:mod:`.generate` (the resumable, parallel, deterministic factory; its :mod:`.spec` and seeds,
:mod:`.manifest` and :mod:`.workers`), :mod:`.registered` (a real radiograph: register first),
:mod:`.dataset` (a PyTorch ``Dataset``), :mod:`.montage`.
Importing this package loads nothing heavy.
"""

from __future__ import annotations

__all__: list[str] = []
