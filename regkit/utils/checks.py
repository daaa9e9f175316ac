"""Type predicates for checking options: whole and real numbers that are not booleans.

``True`` is an ``int`` in Python, so ``isinstance(x, int)`` lets a flag pass as a count. Every
option check in regkit asks these predicates instead; numpy scalars count as numbers.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["is_real", "is_whole", "refuse_gradients"]


def is_whole(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (Python or numpy, whole or not), not a ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def refuse_gradients(value: Any, key: str, what: str) -> None:
    """Refuse a tensor that requires gradients where ``what`` keeps plain numbers.

    numpy cannot take it (torch's own message names neither the argument nor a way out), and
    the gradients would be cut there anyway.

    Raises:
        InputError: ``value`` requires gradients (``key`` names the argument).
    """
    if getattr(value, "requires_grad", False) is True:
        from regkit.errors import InputError

        raise InputError(f"is a tensor that requires gradients, but {what} holds plain numbers "
                         "(gradients stop here): pass value.detach(), or use the torch "
                         "renderer's own differentiable inputs", key=key)
