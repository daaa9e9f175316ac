"""Progress lines of the registration commands, on stderr."""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["ProgressPrinter"]

# At most one line per this many seconds, plus one at each level's start.
_PROGRESS_INTERVAL_S = 1.0


class ProgressPrinter:
    """A registration progress callback printing the level, evaluations and best score.

    Args:
        command: The subcommand named at the start of each line.
        show_stage: Also print the level's stage (the optimizer phase) in brackets.
    """

    def __init__(self, command: str, *, show_stage: bool = False) -> None:
        self._command = command
        self._show_stage = show_stage
        self._last = -float("inf")
        self._level = -1

    def __call__(self, p: Any) -> None:
        """Print ``p`` (a registration progress report), at most once an interval per level."""
        now = time.monotonic()
        if p.level == self._level and now - self._last < _PROGRESS_INTERVAL_S:
            return
        self._level, self._last = p.level, now
        stage = f" ({p.stage})" if self._show_stage else ""
        print(f"{self._command}: level {p.level + 1}/{p.levels}{stage}: {p.evaluations} "
              f"evaluations, best {p.metric} {p.best_score:.5g}", file=sys.stderr, flush=True)
