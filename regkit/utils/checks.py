"""Type predicates for checking options: whole and real numbers that are not booleans.

``True`` is an ``int`` in Python, so ``isinstance(x, int)`` lets a flag pass as a count. Every
option check in regkit asks these predicates instead; numpy scalars count as numbers.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["is_real", "is_whole"]


def is_whole(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (Python or numpy, whole or not), not a ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
