"""Data shipped with regkit: a small crop of a real chest CT with bone labels.

Example:
    >>> from regkit.data import chest_ct_crop
    >>> paths = chest_ct_crop()
    >>> sorted(paths)
    ['bones', 'bones_csv', 'ct']
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["chest_ct_crop"]


def chest_ct_crop() -> dict[str, Path]:
    """Paths of the shipped chest CT crop: ``ct`` (HU), ``bones`` (labels) and ``bones_csv``.

    See ``regkit/data/chest_ct_crop/README.md`` for the grid and the attribution.
    """
    root = Path(str(resources.files("regkit.data").joinpath("chest_ct_crop")))
    return {
        "ct": root / "ct.nii.gz",
        "bones": root / "bones.nii.gz",
        "bones_csv": root / "bones.csv",
    }
