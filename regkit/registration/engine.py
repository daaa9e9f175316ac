"""The one registration engine: a pyramid of levels, an optimizer per level, one record.

Every registration in regkit (2D–3D, 3D–3D, a plugin's own problem) is a :class:`Problem`
handed to :func:`run`. The problem knows *what* is registered: at each pyramid level it builds a
:class:`Level` with the level's parameter specification and a way to score a batch of candidate
parameters (render or resample, then a metric). The engine knows *how*: it runs the levels in
order, each from the previous level's result, with the level's optimizer (CMA-ES with its
restarts, Powell, a gradient method, or any registered one), screens random starts, reports
progress, counts evaluations and writes the record (:class:`EngineResult`).

Convention:
    * **Losses** are what the optimizers minimise: ``Level.losses(params)`` maps ``(λ, n)``
      candidates to ``(λ,)`` values, lower is better. A level whose metric is higher-is-better
      returns minus its score; :meth:`Level.score_from_loss` undoes that for reports.
    * **Parameters grow, never shrink.** A level's :class:`~regkit.optim.ParamSpec` may add
      coordinates after the previous level's (3D–3D's affine stage after its rigid levels); they
      start at 0, so 0 must mean "no change" for every coordinate.
    * **Evaluations** count every candidate scored: screened starts, a level's own set-up
      screening (:attr:`Level.setup_evaluations`), its preparation at the level's start
      (:meth:`Level.prepare`: 2D–3D fits the radiographs' intensities and the CT's bone
      weight there), the optimizer's,
      and one per level for the score of its result (:meth:`Level.finish`).
    * **Seeds.** One seed (default :data:`DEFAULT_SEED`) gives every random draw: level ``ℓ``'s
      optimizer gets word ``ℓ`` of ``SeedSequence(seed).generate_state(L + 1)`` and the start
      screening word ``L``. The same seed and inputs give the same result.

Example:
    A plugin registers its own problem: fit a shift ``(dx, dy)`` that moves a blob onto a target.

    >>> import numpy as np
    >>> from regkit.optim import ParamSpec
    >>> from regkit.registration.engine import Level, LevelOptions, run
    >>> class Shift(Level):
    ...     def __init__(self, target):
    ...         self.spec = ParamSpec.unitless(2, scale=1.0, lower=-10.0, upper=10.0)
    ...         self.target = np.asarray(target)
    ...     def losses(self, params):
    ...         return ((params - self.target) ** 2).sum(axis=1)
    >>> class ShiftProblem:
    ...     metric, higher_is_better = "ssd", False
    ...     def level(self, index, options):
    ...         return Shift([3.0, -2.0])
    >>> result = run(ShiftProblem(), [LevelOptions(method="cmaes", options={"popsize": 8})])
    >>> np.round(result.x, 3).tolist()
    [3.0, -2.0]
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from regkit.errors import InputError
from regkit.optim import ParamSpec, best_starts, gradient_methods, minimize, minimize_torch
from regkit.optim.base import IterationRecord, OptimResult
from regkit.registration.levels import (
    DEFAULT_SEED,
    LevelOptions,
    Progress,
    ProgressCallback,
    level_options,
)
from regkit.registration.results import ConvergencePoint
from regkit.utils.checks import is_whole

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_SEED",
    "EngineResult",
    "Level",
    "LevelOptions",
    "Problem",
    "Progress",
    "ProgressCallback",
    "check_seed",
    "run",
    "torch_threads",
]

def check_seed(seed: Any) -> int:
    """A registration's seed: ``None`` draws a fresh one; otherwise an integer ``>= 0``.

    Raises:
        InputError: anything else (a bool, a float, a negative number).
    """
    if seed is None:
        return int(np.random.default_rng().integers(0, 2 ** 31 - 1))
    if not is_whole(seed) or seed < 0:
        raise InputError(f"must be None or an integer >= 0, got {seed!r}", key="seed")
    return int(seed)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """The torch intra-op threads set to ``threads`` inside the block and restored after.

    None leaves them alone. Registrations score small batches, where threads cost more than they
    save.
    """
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Level:
    """A problem at one pyramid level: scores batches of candidate parameters.

    Subclasses set :attr:`spec` and implement :meth:`losses`; a level that can be optimised by a
    gradient method also implements :meth:`loss`.

    Attributes:
        spec: The level's parameters (names, units, first steps, bounds).
        stage: What the level fits, for progress and the record (``"rigid"``, ``"affine"``...).
        higher_is_better: The sense of the level's score (its metric's).
        setup_evaluations: Candidates the level scored while it was built (a screening of
            initial transforms, say), counted in the record.
    """

    spec: ParamSpec
    stage: str = "rigid"
    higher_is_better: bool = False
    setup_evaluations: int = 0

    def losses(self, params: NDArray[np.float64]) -> NDArray[np.float64]:
        """``(λ,)`` values to minimise of ``(λ, n)`` candidates."""
        raise NotImplementedError

    def loss(self, params: torch.Tensor) -> torch.Tensor:  # noqa: ARG002 - the default refuses
        """The loss of one ``(n,)`` float64 candidate as a differentiable scalar tensor."""
        raise InputError(f"a {type(self).__name__} level cannot run a gradient method: its "
                         "loss is not differentiable", key="method")

    def prepare(self, x: NDArray[np.float64]) -> int:  # noqa: ARG002 - the default does nothing
        """Adapt the level to its starting parameters ``x`` before its optimizer runs.

        Called once per level, after the start screening. A level may fit something that needs
        a pose near the answer here (2D–3D: the radiographs' intensity maps and the CT's bone
        weight). Returns the
        candidates it scored (counted as evaluations).
        """
        return 0

    def score_from_loss(self, loss: float) -> float:
        """The level's score (its metric's own sense) of a loss."""
        return -float(loss) if self.higher_is_better else float(loss)

    def finish(self, x: NDArray[np.float64], index: int) -> tuple[float, dict[str, Any]]:  # noqa: ARG002 - interface
        """The score of the level's result ``x`` and facts about the level for the record.

        Called once per level after its optimizer (one evaluation). A level may raise here
        when its result shows that the inputs cannot be registered (3D–3D: no overlap).
        """
        return self.score_from_loss(float(self.losses(x[None])[0])), {}


@runtime_checkable
class Problem(Protocol):
    """What :func:`run` registers: builds one :class:`Level` per pyramid level.

    Attributes:
        metric: The metric's name (progress lines and the record).
        higher_is_better: The metric's sense.
    """

    metric: str
    higher_is_better: bool

    def level(self, index: int, options: LevelOptions) -> Level:
        """The problem at pyramid level ``index`` (0 is the coarsest), built to ``options``."""
        ...


@dataclass(frozen=True)
class EngineResult:
    """The record of one :func:`run`.

    Attributes:
        x: The result's parameters (the last level's specification, its units).
        score: The last level's score at ``x`` (its metric's own sense).
        level: The last :class:`Level` (to map ``x`` to a transform, or score more).
        evaluations: Every candidate scored (see the module's convention).
        history: One :class:`~regkit.registration.results.ConvergencePoint` per optimizer
            iteration.
        levels: Per level: ``level``, ``stage``, ``method``, ``shrink``, ``evaluations`` (all
            of the level's: set-up, screened starts, preparation, optimizer and its result's
            score; they add up to ``evaluations``), ``seconds``, ``score``, ``stop_reasons``
            and the level's own facts.
        stop_reasons: The last level's optimizer's stop reasons.
        seed: The seed every draw came from.
    """

    x: NDArray[np.float64]
    score: float
    level: Level
    evaluations: int
    history: tuple[ConvergencePoint, ...]
    levels: tuple[dict[str, Any], ...]
    stop_reasons: list[dict[str, Any]] = field(default_factory=list)
    seed: int = DEFAULT_SEED


def run(problem: Problem, levels: Sequence[LevelOptions], *, seed: int | None = DEFAULT_SEED,
        x0: Any = None, starts: int = 0, start_spread: float = 2.0,
        progress: ProgressCallback | None = None) -> EngineResult:
    """Register ``problem`` through the pyramid ``levels``, coarsest first.

    Args:
        problem: Builds each level (:class:`Problem`).
        levels: The pyramid: per level its resolution, optimizer, options and first steps.
        seed: Seed of every random draw (None: a fresh one, in the record).
        x0: Starting parameters (default: zeros of the first level's size).
        starts: Random starts screened in one batch at level 0 (uniform within
            ``±start_spread`` first steps of ``x0``, ``x0`` included); the best becomes the
            optimizer's start. 0: none.
        start_spread: Half-width of the screened box, in first steps.
        progress: Called with a :class:`~regkit.registration.levels.Progress` after every
            optimizer iteration and at every level's end.

    Returns:
        The :class:`EngineResult`.

    Raises:
        InputError: no levels, a bad seed, a level whose parameters shrink, a level whose
            score at its result is not finite (key ``problem``), or what a level raises.
    """
    plan = list(levels)
    if not plan:
        raise InputError("needs at least one level", key="levels")
    seed = check_seed(seed)
    words = np.random.SeedSequence(seed).generate_state(len(plan) + 1)
    history: list[ConvergencePoint] = []
    facts: list[dict[str, Any]] = []
    evaluations = 0
    x = None if x0 is None else np.asarray(x0, dtype=np.float64).ravel()
    level: Level | None = None
    result: OptimResult | None = None
    score = float("nan")

    def report(index: int, stage: str, done: int, best: float) -> None:
        if progress is not None:
            progress(Progress(level=index, levels=len(plan), stage=stage, evaluations=done,
                              best_score=best, metric=problem.metric,
                              higher_is_better=problem.higher_is_better))

    for li, options in enumerate(plan):
        t_level = time.perf_counter()
        level = problem.level(li, options)
        spec = level.spec
        evaluations += int(level.setup_evaluations)
        x = _grown(x, spec.size)
        screened = 0
        if li == 0 and starts > 0:
            from regkit.optim import random_starts

            cands = random_starts(x, spec, starts, spread=start_spread, seed=int(words[-1]),
                                  include_center=True)
            best, _ = best_starts(level.losses, cands, 1)
            screened = len(cands)
            evaluations += screened
            x = np.asarray(best[0], dtype=np.float64)

        prepared = int(level.prepare(spec.clip(x)))
        evaluations += prepared

        def on_iteration(rec: IterationRecord, _lv: Level = level, _li: int = li,
                         _done: int = evaluations) -> None:
            point = ConvergencePoint(evaluations=_done + rec.evaluations,
                                     best=_lv.score_from_loss(rec.best_so_far),
                                     current=_lv.score_from_loss(rec.best), level=_li)
            history.append(point)
            report(_li, _lv.stage, point.evaluations, point.best)

        if options.method in gradient_methods:
            result = _gradient(level, x, options, on_iteration)
        else:
            result = minimize(level.losses, spec.clip(x), spec, options.method,
                              level_options(options, int(words[li])), on_iteration)
        evaluations += result.evaluations
        x = np.asarray(result.x, dtype=np.float64)
        score, own = level.finish(x, li)
        evaluations += 1
        if not math.isfinite(score):
            # every loss the optimizer saw was NaN (it keeps its start): a result would look
            # like a registration that merely did not move
            raise InputError(f"level {li} ({level.stage}): the score at the result is {score}; "
                             "the loss gave no finite value to optimise (NaN in the problem's "
                             "inputs or its loss)", key="problem")
        report(li, level.stage, evaluations, score)
        facts.append({
            "level": li, "stage": level.stage, "method": options.method,
            "shrink": options.shrink, **own,
            "evaluations": int(level.setup_evaluations) + screened + prepared
            + result.evaluations + 1,
            "seconds": round(time.perf_counter() - t_level, 4),
            "score": score,
            "stop_reasons": result.stop_reasons,
        })
    assert level is not None
    assert result is not None
    assert x is not None
    return EngineResult(x=x, score=score, level=level, evaluations=evaluations,
                        history=tuple(history), levels=tuple(facts),
                        stop_reasons=list(result.stop_reasons), seed=seed)


def _grown(x: NDArray[np.float64] | None, size: int) -> NDArray[np.float64]:
    if x is None:
        return np.zeros(size)
    if x.size > size:
        raise InputError(f"a level has {size} parameters after {x.size} (the previous level's, "
                         "or x0's): parameters may only be added", key="levels")
    return np.concatenate([x, np.zeros(size - x.size)])


def _gradient(level: Level, x: NDArray[np.float64], options: LevelOptions,
              on_iteration: Callable[[IterationRecord], None]) -> OptimResult:
    import torch

    return minimize_torch(level.loss, torch.as_tensor(level.spec.clip(x), dtype=torch.float64),
                          level.spec, options.method, dict(options.options), on_iteration)
