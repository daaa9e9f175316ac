"""Bookkeeping shared by every optimizer: value checks, non-finite handling, best point, history.

Private to :mod:`regkit.optim`; the public types it fills in live in :mod:`regkit.optim.base`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from regkit.errors import InputError, ShapeError
from regkit.optim.base import IterationRecord, OptimResult, RunRecord
from regkit.utils.checks import is_real, is_whole

__all__ = [
    "Tracker",
    "as_values",
    "check_bool",
    "check_float",
    "check_int",
    "replace_nonfinite",
]


def check_int(owner: str, name: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    """Refuse anything but an ``int`` (not a ``bool``) >= ``minimum`` (``None`` if optional)."""
    if value is None and optional:
        return
    if not is_whole(value) or value < minimum:
        kind = "None or an integer" if optional else "an integer"
        raise InputError(f"{owner} option must be {kind} >= {minimum}, got {value!r}", key=name)


def check_float(owner: str, name: str, value: Any, *, positive: bool = False,
                optional: bool = False) -> None:
    """Refuse anything but a finite real number >= 0 (> 0 if ``positive``; ``None`` if optional)."""
    if value is None and optional:
        return
    ok = is_real(value) and math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        bound = "> 0" if positive else ">= 0"
        kind = "None or a finite number" if optional else "a finite number"
        raise InputError(f"{owner} option must be {kind} {bound}, got {value!r}", key=name)


def check_bool(owner: str, name: str, value: Any) -> None:
    """Refuse anything but ``True`` or ``False``."""
    if not isinstance(value, bool | np.bool_):
        raise InputError(f"{owner} option must be True or False, got {value!r}", key=name)


def as_values(values: Any, count: int) -> np.ndarray:
    """An objective's answer as float64 ``(count,)``; torch tensors are detached and moved to CPU.

    Raises:
        ShapeError: The answer does not hold exactly one value per candidate.
    """
    if hasattr(values, "detach"):  # a torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"the objective must return {count} numbers, got {type(values).__name__}"
                         ) from exc
    if array.shape != (count,):
        raise ShapeError(f"the objective must return values of shape ({count},) for {count} "
                         f"candidates, got shape {array.shape}")
    return array


def replace_nonfinite(values: np.ndarray, worst_seen: float, distances: np.ndarray
                      ) -> np.ndarray:
    """Replace NaN and ±inf by finite values worse than every finite one seen so far.

    Candidate ``i`` gets ``w + max(1, |w|) · (1 + distances[i])``, where ``w`` is the worst finite
    value of this batch or of the run so far (0 when there is none). Such candidates rank below
    every finite one and, among themselves, by their distance to the best point so far: the
    values stay distinct (a population that is broken as a whole does not look like a flat,
    converged one to pycma's ``tolfun``) and they pull the search back towards where the objective
    was finite. ``-inf`` is treated like NaN: a broken evaluation, not a perfect one.

    Args:
        values: ``(m,)`` raw objective values.
        worst_seen: Largest finite value seen so far (``-inf`` if none).
        distances: ``(m,)`` distance of each candidate to the best point so far, in scales.

    Returns:
        ``(m,)`` finite values (a copy).
    """
    out = values.copy()
    bad = ~np.isfinite(out)
    if not bad.any():
        return out
    finite = out[~bad]
    worst = max(float(finite.max()) if finite.size else -math.inf, worst_seen)
    if not math.isfinite(worst):
        worst = 0.0
    with np.errstate(over="ignore"):
        penalty = worst + max(1.0, abs(worst)) * (1.0 + distances[bad])
    out[bad] = np.where(np.isfinite(penalty), penalty, np.finfo(np.float64).max)
    return out


class Tracker:
    """Counts evaluations, keeps the best finite point and the per-iteration history.

    Evaluations are observed as they happen (:meth:`observe`) and grouped into iterations by
    :meth:`close_iteration`, so that the history's counts always sum to :attr:`evaluations`.

    Args:
        x0: ``(n,)`` starting point, returned as the best point while nothing finite was seen.
    """

    def __init__(self, x0: np.ndarray):
        self.x0 = x0.copy()
        self.best_x: np.ndarray | None = None
        self.best_value = math.inf
        self.worst_value = -math.inf
        self.evaluations = 0
        self.nonfinite = 0
        self.history: list[IterationRecord] = []
        self._pending: list[np.ndarray] = []

    def observe(self, candidates: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Account for ``(m, n)`` candidates and their ``(m,)`` raw values.

        Returns:
            ``(m,)`` boolean mask of the finite values.
        """
        finite = np.isfinite(values)
        self.evaluations += int(values.size)
        self.nonfinite += int((~finite).sum())
        if finite.any():
            masked = np.where(finite, values, np.inf)
            i = int(np.argmin(masked))
            if values[i] < self.best_value:
                self.best_value = float(values[i])
                self.best_x = np.array(candidates[i], dtype=np.float64, copy=True)
            self.worst_value = max(self.worst_value, float(values[finite].max()))
        self._pending.append(values.copy())
        return finite

    @property
    def pending(self) -> int:
        """Evaluations observed since the last closed iteration."""
        return sum(v.size for v in self._pending)

    def close_iteration(self, run: int) -> IterationRecord:
        """Turn the evaluations observed since the last call into one :class:`IterationRecord`."""
        values = np.concatenate(self._pending) if self._pending else np.empty(0)
        self._pending = []
        ranked = np.where(np.isfinite(values), values, np.inf)
        best = float(ranked.min()) if ranked.size else math.inf
        median = float(np.median(ranked)) if ranked.size else math.inf
        record = IterationRecord(
            iteration=len(self.history) + 1,
            run=run,
            evaluations=self.evaluations,
            count=int(values.size),
            best=best,
            median=median,
            best_so_far=self.best_value,
        )
        self.history.append(record)
        return record

    def penalized(self, candidates: np.ndarray, values: np.ndarray, scales: np.ndarray
                  ) -> np.ndarray:
        """:func:`replace_nonfinite` for ``(m, n)`` observed candidates.

        Their distances are measured (in ``scales``) to the best point so far (to ``x0`` while there
        is none).
        """
        distances = np.linalg.norm((candidates - self.x) / scales, axis=-1)
        return replace_nonfinite(values, self.worst_value, distances)

    @property
    def latest(self) -> IterationRecord | None:
        """The record of the most recent iteration (None before the first)."""
        return self.history[-1] if self.history else None

    def single_run_result(self, method: str, reasons: dict[str, Any], popsize: int | None
                          ) -> OptimResult:
        """The result of a method that makes one run (no restarts).

        Its best point, counts, ``reasons`` and history, with one :class:`RunRecord`.
        """
        run = RunRecord(index=0, regime="single", popsize=popsize, step=1.0,
                        evaluations=self.evaluations, iterations=len(self.history),
                        best_value=self.best_value, best_x=self.x, stop_reasons=reasons)
        return OptimResult(x=self.x, value=self.best_value, evaluations=self.evaluations,
                           iterations=len(self.history), stop_reasons=[reasons],
                           history=tuple(self.history), runs=(run,), nonfinite=self.nonfinite,
                           method=method)

    @property
    def x(self) -> np.ndarray:
        """The best finite point so far (``x0`` if none)."""
        return (self.x0 if self.best_x is None else self.best_x).copy()
