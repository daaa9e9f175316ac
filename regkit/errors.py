"""The one exception hierarchy of regkit.

Every error regkit raises on purpose derives from :class:`RegkitError`. Errors caused by what a user
handed in (a file, an array, an option) also derive from :class:`UserInputError`; the command line
turns those into one message and exit status 2, and anything else into exit status 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = [
    "BackendUnavailableError",
    "FileFormatError",
    "FrameError",
    "InputError",
    "RegkitError",
    "ShapeError",
    "UnknownNameError",
    "UserInputError",
    "did_you_mean",
]


class RegkitError(Exception):
    """Root of every error regkit raises on purpose."""


class UserInputError(RegkitError):
    """Marker base: the error lies in what the caller gave, not in regkit."""


class InputError(UserInputError, ValueError):
    """A value, file or option that breaks a documented contract.

    Args:
        message: What is wrong, in words a user can act on.
        source: The file (or other origin) the value came from, if any.
        key: The key, field or argument that holds the bad value, if any.
    """

    def __init__(self, message: str, *, source: str | os.PathLike[str] | None = None,
                 key: str | None = None):
        self.source = None if source is None else str(source)
        self.key = key
        self.reason = message
        parts = []
        if self.source is not None:
            parts.append(self.source)
        if key is not None:
            parts.append(f"'{key}'")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class FileFormatError(InputError):
    """A file that cannot be read: missing, truncated, corrupt or of the wrong kind."""


class ShapeError(UserInputError, ValueError):
    """An array whose shape, dtype or batch size does not fit."""


class FrameError(UserInputError, ValueError):
    """A transform that is not what its frames promise (not rigid, frames that do not chain)."""


class UnknownNameError(UserInputError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class BackendUnavailableError(RegkitError, ImportError):
    """An optional backend (OpenGL, CUDA, a plugin) that cannot be loaded here."""


def did_you_mean(name: str, known: Iterable[str], n: int = 1) -> str:
    """The hint an unknown-name message carries: ``" (did you mean 'x'?)"``.

    It offers up to ``n`` close matches among ``known`` (difflib's), or is ``""`` when none is
    close.
    """
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=n)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
