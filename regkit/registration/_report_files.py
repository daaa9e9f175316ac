"""The names of the files a registration report writes, importable without torch.

The register commands check these names against their inputs before any work (see
:func:`regkit.utils.files.check_outputs`), before torch is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

CONVERGENCE_FILE = "convergence.png"
"""The convergence plot's name in a report folder."""

VOLUME_PLANES = ("sagittal", "coronal", "axial")
"""The planes of a 3D-3D report, one PNG each (``NAME.png``)."""


def radiograph_report_files(directory: str | os.PathLike[str], views: int) -> list[Path]:
    """The files a 2D-3D report may write in ``directory``.

    ``view_I.png`` per view, and the convergence plot.
    """
    out = Path(directory)
    return [out / f"view_{i}.png" for i in range(views)] + [out / CONVERGENCE_FILE]


def volume_report_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The files a 3D-3D report may write in ``directory``.

    A PNG per plane of :data:`VOLUME_PLANES`, and the convergence plot.
    """
    out = Path(directory)
    return [out / f"{name}.png" for name in VOLUME_PLANES] + [out / CONVERGENCE_FILE]
