"""Reading JSON files with errors that name the file and the problem."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from regkit.errors import FileFormatError

__all__ = ["parse_json", "read_json"]


class _DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def parse_json(text: str, source: str | os.PathLike[str] | None = None) -> Any:
    """Parse JSON text; a syntax error becomes :class:`FileFormatError` naming ``source``.

    A key given twice in one object is an error too: JSON readers differ on which one wins (Python
    keeps the last), so the file does not say one thing.
    """
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKeyError as err:
        raise FileFormatError(f"the key {err.args[0]!r} is given twice in one object",
                              source=source) from None
    except json.JSONDecodeError as err:
        raise FileFormatError(f"not valid JSON ({err.msg} at line {err.lineno})",
                              source=source) from None
    except RecursionError:
        raise FileFormatError("JSON nested too deeply to read", source=source) from None
    except ValueError as err:   # a number of more digits than Python converts
        raise FileFormatError(f"not readable JSON ({err})", source=source) from None


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read and parse a JSON file.

    Raises:
        FileFormatError: the file is missing, unreadable, not UTF-8 or not JSON.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileFormatError("file not found", source=p) from None
    except (OSError, UnicodeDecodeError) as err:
        raise FileFormatError(f"cannot read {what} ({err})", source=p) from None
    return parse_json(text, p)
