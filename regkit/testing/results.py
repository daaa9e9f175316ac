"""Results files of benchmarks: one JSON file per benchmark module, a case at a time.

Layout: ``{"command": ..., "machine": {...}, "cases": {CASE: {...}}, ...}``. Adding a case keeps the
other cases of earlier runs and any other top-level key (such as an ``accuracy`` section written by
a script), so a partial rerun updates what it measured and nothing else. Writes are atomic.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from regkit.utils.files import atomic_write_text

__all__ = ["load_avg", "machine", "save_case"]


def load_avg() -> list[float]:
    """The machine's 1-, 5- and 15-minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def machine(**extra: Any) -> dict[str, Any]:
    """The machine's description: CPU count, Python, load average, and ``extra`` fields."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg": load_avg(), **extra}


def save_case(path: str | os.PathLike[str], case: str, row: Mapping[str, Any], *,
              command: str, machine_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Add (or replace) one case of a results file; stamp the row with the load average.

    Returns:
        The whole file's content as written.
    """
    target = Path(path)
    content: dict[str, Any] = {}
    if target.is_file():
        with contextlib.suppress(ValueError):
            loaded = json.loads(target.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                content = loaded
    cases = content.get("cases")
    cases = dict(cases) if isinstance(cases, dict) else {}
    cases[case] = {**row, "load_avg": load_avg()}
    content.update(command=command, machine=dict(machine_info or machine()), cases=cases)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(content, indent=2) + "\n")
    return content
