"""Label values of a label map: parsing them from text, finding which are present, refusing absent.

Labels are positive integers below 2**31 (0 is background), as in the conventions' label maps.
Every command, renderer and registration that takes bones reads and checks them here, so that the
same input gets the same answer and the same message everywhere.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import numpy as np

from regkit.errors import InputError

__all__ = ["check_present", "parse_labels", "present_labels"]

_LIMIT = 2**31


def parse_labels(text: str, *, key: str = "--bones") -> tuple[int, ...]:
    """``"70, 72"`` → ``(70, 72)``: comma-separated label numbers, sorted, each once.

    Blank entries are skipped. Raises:
        InputError: an entry that is not a whole number, one outside ``1 .. 2**31 - 1``, or no
            label at all (the error's ``key`` is ``key``).
    """
    values = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise InputError(f"'{part}' is not a label number: give comma-separated label "
                             f"numbers (e.g. 70,72), got {text!r}", key=key) from None
        if not 0 < value < _LIMIT:
            raise InputError(f"label {value} must be a positive integer below 2**31", key=key)
        values.add(value)
    if not values:
        raise InputError(f"no label numbers given in {text!r}", key=key)
    return tuple(sorted(values))


def present_labels(labels: Any) -> frozenset[int]:
    """The label values that occur in a label array (0, the background, included if present)."""
    data = np.asarray(labels)
    if data.size == 0:
        return frozenset()
    lo, hi = int(data.min()), int(data.max())
    if lo >= 0 and hi < (1 << 20):   # a histogram is much faster than np.unique
        counts = np.bincount(data.ravel().astype(np.int64, copy=False), minlength=hi + 1)
        return frozenset(int(v) for v in np.flatnonzero(counts))
    return frozenset(int(v) for v in np.unique(data))


def check_present(wanted: Iterable[int], present: Collection[int], *, key: str = "bones",
                  source: str | None = None) -> None:
    """Refuse labels that do not occur in a label map, listing (up to 20 of) those that do.

    Args:
        wanted: the labels asked for.
        present: the labels of the map (:func:`present_labels`).
        key: the option or field that named them, for the error.
        source: the label map's file, for the error.
    """
    missing = [int(b) for b in wanted if int(b) not in present]
    if missing:
        shown = sorted(int(v) for v in present if int(v) != 0)
        listing = ", ".join(str(v) for v in shown[:20]) + (" ..." if len(shown) > 20 else "")
        raise InputError(f"label(s) {missing} do not occur in the label map (labels present: "
                         f"{listing or 'none'})", key=key, source=source)
