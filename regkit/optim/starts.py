"""Starting points: random and grid starts, batched screening, and multi-start local search.

With a batched objective a whole set of candidate starts is scored in one call
(:func:`best_starts`), and only the best few are refined (:func:`multistart` with ``keep``).

Example:
    A grid of ±10° about z and ±20 mm along x (offsets in the coordinates' own units: radians for
    rotations), screened in one call, the best 3 refined with Powell::

        spec = ParamSpec.rigid6()
        grid = grid_starts(center, spec, {"rz": np.radians([-10, 0, 10]).tolist(),
                                          "tx": [-20.0, 0.0, 20.0]})
        found = multistart(objective, spec, center, starts=grid, keep=3, method="powell")
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from regkit.errors import InputError, ShapeError
from regkit.optim._common import as_values
from regkit.optim.base import (
    Callback,
    Objective,
    OptimResult,
    ParamSpec,
    minimize,
    optimizers,
)
from regkit.utils.checks import is_whole

__all__ = ["MultistartResult", "best_starts", "grid_starts", "multistart", "random_starts"]


@dataclass(frozen=True, eq=False)
class MultistartResult:
    """The runs of :func:`multistart`.

    Attributes:
        best: The result with the lowest value (the first of equals).
        results: One result per start, in the order of :attr:`starts`.
        starts: ``(k, n)`` the starts that were refined.
        screen_evaluations: Evaluations spent screening candidates (0 without ``keep``).
    """

    best: OptimResult
    results: tuple[OptimResult, ...]
    starts: np.ndarray
    screen_evaluations: int = 0

    @property
    def x(self) -> np.ndarray:
        """``(n,)`` best point."""
        return self.best.x

    @property
    def value(self) -> float:
        """Its value."""
        return self.best.value

    @property
    def evaluations(self) -> int:
        """Evaluations of every run plus the screening."""
        return sum(r.evaluations for r in self.results) + self.screen_evaluations


def random_starts(center: Any, spec: ParamSpec, n_starts: int, spread: float = 2.0,
                  seed: int | None = None, include_center: bool = True) -> np.ndarray:
    """Random starts, uniform in a box about ``center``, clipped into the bounds.

    Args:
        center: ``(n,)`` centre, original units, within bounds.
        spec: Coordinates; the box's half-width on coordinate ``i`` is ``spread · scales[i]``.
        n_starts: Number of starts (>= 1).
        spread: Half-width of the box in scales (> 0).
        seed: Seed of the draw (None: fresh).
        include_center: Make the first start ``center`` itself.

    Returns:
        ``(n_starts, n)`` float64 starts.
    """
    c = spec.check_point(center, "center")
    if not is_whole(n_starts) or n_starts < 1:
        raise InputError(f"must be an integer >= 1, got {n_starts!r}", key="n_starts")
    if not (np.isfinite(spread) and spread > 0):
        raise InputError(f"must be finite and > 0, got {spread!r}", key="spread")
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(-spread, spread, size=(n_starts, spec.size)) * spec.scale_array
    if include_center:
        offsets[0] = 0.0
    return spec.clip(c + offsets)


def grid_starts(center: Any, spec: ParamSpec, steps: Mapping[str, Sequence[float]]
                ) -> np.ndarray:
    """Every combination of offsets on named coordinates, the others at ``center``.

    Args:
        center: ``(n,)`` centre, original units, within bounds.
        spec: Coordinates.
        steps: Coordinate name -> offsets from the centre, in that coordinate's unit (radians for
            a rotation); list 0 to keep the centre's value among them.

    Returns:
        ``(m, n)`` float64 starts in :func:`itertools.product` order of ``steps`` (the last
        name varies fastest); combinations outside the bounds are left out.

    Raises:
        UnknownNameError: A name that is not a coordinate (the message lists them).
        InputError: An empty or non-finite list of offsets, or no combination within bounds.
    """
    c = spec.check_point(center, "center")
    axes: list[int] = []
    lists: list[np.ndarray] = []
    for name, offsets in steps.items():
        axes.append(spec.index(name))
        values = np.asarray(offsets, dtype=np.float64).reshape(-1)
        if values.size == 0 or not np.isfinite(values).all():
            raise InputError(f"needs at least one finite offset, got {list(offsets)!r}", key=name)
        lists.append(values)
    combos = np.asarray(list(itertools.product(*lists)), dtype=np.float64)
    points = np.repeat(c[None], len(combos), axis=0)
    if axes:
        points[:, axes] += combos
    points = points[spec.contains(points)]
    if points.shape[0] == 0:
        raise InputError("no grid point lies within the bounds", key="steps")
    return points


def best_starts(objective: Objective, candidates: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Score all candidates in ONE call of the batched objective and keep the best ``k``.

    Args:
        objective: ``(m, n)`` to ``(m,)`` values, lower is better (non-finite values rank last).
        candidates: ``(m, n)`` points.
        k: How many to keep (at most m).

    Returns:
        ``(k, n)`` the best candidates, best first, and their ``(k,)`` values.
    """
    cand = np.asarray(candidates, dtype=np.float64)
    if cand.ndim != 2 or cand.shape[0] == 0:
        raise ShapeError(f"candidates must be (m, n) with m >= 1, got {cand.shape}")
    if not is_whole(k) or k < 1:
        raise InputError(f"must be an integer >= 1, got {k!r}", key="k")
    values = as_values(objective(cand), cand.shape[0])
    order = np.argsort(np.where(np.isfinite(values), values, np.inf), kind="stable")[:k]
    return cand[order], values[order]


def _with_seed(options: Any, options_type: type[Any], seed: int) -> Any:
    """The options with ``seed`` filled in, if the method has a seed option left unset."""
    if "seed" not in {f.name for f in fields(options_type)}:
        return options
    if options is None:
        return options_type(seed=seed)
    if isinstance(options, Mapping):
        return dict(options) if options.get("seed") is not None else {**options, "seed": seed}
    if isinstance(options, options_type) and options.seed is None:
        return replace(options, seed=seed)
    return options


def multistart(objective: Objective, spec: ParamSpec, center: Any, n_starts: int = 8,
               spread: float = 2.0, method: str = "powell", options: Any = None,
               seed: int | None = None, *, starts: Any = None, keep: int | None = None,
               callback: Callback | None = None) -> MultistartResult:
    """Run a local method from several starts and keep the best.

    Args:
        objective: Batched objective, ``(λ, n)`` to ``(λ,)``, lower is better.
        spec: Coordinates.
        center: ``(n,)`` centre of the random starts.
        n_starts: Number of random starts (ignored when ``starts`` is given).
        spread: Half-width of the random box, in scales (see :func:`random_starts`).
        method: A name registered in :data:`~regkit.optim.base.optimizers`.
        options: The method's options (shared by all runs). A stochastic method whose seed
            option is unset gets a seed per run drawn from ``seed``.
        seed: Seed of the random starts and of the per-run seeds.
        starts: ``(k, n)`` explicit starts (e.g. from :func:`grid_starts`) instead of random ones.
        keep: If given, screen the starts in one batched call and refine only the best ``keep``.
        callback: Passed to every run.

    Returns:
        The best result, all results and the starts used.
    """
    options_type = optimizers.get(method).options_type
    seeds = np.random.SeedSequence(seed)
    start_seed, run_seeds = seeds.spawn(2)
    if starts is None:
        points = random_starts(center, spec, n_starts, spread,
                               seed=int(start_seed.generate_state(1)[0]))
    else:
        points = np.asarray(starts, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != spec.size or points.shape[0] == 0:
            raise ShapeError(f"starts must be (k, {spec.size}) with k >= 1, got {points.shape}")
    screened = 0
    if keep is not None and keep < points.shape[0]:
        screened = points.shape[0]
        points, _ = best_starts(objective, points, keep)
    per_run = run_seeds.generate_state(points.shape[0])
    results = tuple(
        minimize(objective, p, spec, method, _with_seed(options, options_type, int(s)), callback)
        for p, s in zip(points, per_run, strict=True))
    best = min(results, key=lambda r: r.value if np.isfinite(r.value) else np.inf)
    return MultistartResult(best=best, results=results, starts=points, screen_evaluations=screened)
