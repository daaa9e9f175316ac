"""The ``--units`` option of the commands that read a CT: what its values are.

A volume's units come from the header :func:`regkit.io.nifti.save_nifti` wrote (``regkit
units=mu``), else HU. Said on the command line they win over the header, with a warning where
the two differ, so that a tag another tool kept after changing the values cannot trap a file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from regkit.errors import InputError

__all__ = ["add_units_argument", "apply_units"]


def add_units_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--units hu|mu`` (default: the file's)."""
    parser.add_argument("--units", choices=("hu", "mu"), default=None,
                        help="volume values: Hounsfield units (converted to μ) or μ in 1/mm "
                             "(default: what the file's header says where regkit wrote it, "
                             "else hu; given, it wins over the header, with a warning where "
                             "they differ)")


def apply_units(volume: Any, units: str | None, source: Any, prog: str) -> Any:
    """``volume`` with the units ``--units`` says, or the file's.

    Raises:
        InputError: no ``--units`` for a file whose header says ``other`` (neither HU nor μ).
    """
    if units is None:
        if volume.units == "other":
            raise InputError("the file's header says its values are neither HU nor μ (regkit "
                             "wrote it): say which with --units hu or --units mu",
                             key="--units", source=source)
        return volume
    wanted = "HU" if units == "hu" else "mu"
    if volume.units != "HU" and volume.units != wanted:
        print(f"{prog}: warning: {source}'s header says its values are {volume.units} (regkit "
              f"wrote it); reading them as {wanted}, as --units says", file=sys.stderr)
    return volume.with_data(volume.data, wanted)
