"""Reading JSON files with errors that name the file and the problem."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from regkit.errors import FileFormatError

__all__ = ["parse_json", "read_json"]


def parse_json(text: str, source: str | os.PathLike[str] | None = None) -> Any:
    """Parse JSON text; a syntax error becomes :class:`FileFormatError` naming ``source``."""
    try:
        return json.loads(text)
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
