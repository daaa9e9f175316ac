"""CMA-ES through pycma: the one adapter between regkit's ask/tell contract and ``cma``.

Everything regkit says to pycma is said here, and nowhere else.

Convention:
    **Scaled coordinates.** pycma sees ``z = x / spec.scales`` with ``sigma0 = 1``: the initial
    standard deviation of coordinate ``i`` is ``scales[i]`` in its own unit, which is what
    pycma's ``CMA_stds`` would give too. Scaling was chosen over ``CMA_stds`` because then every
    pycma quantity has one meaning on every axis: bounds are ``spec.lower / scales`` and
    ``spec.upper / scales`` (pycma's ``bounds``, handled by its ``BoundTransform``, so no candidate
    is ever outside the box), and ``tol_x`` is a fraction of each coordinate's scale rather than a
    number that mixes mm and radians.

    **Randomness.** pycma samples through its ``randn`` option, which is given a private
    ``numpy.random.Generator`` seeded from ``CMAESOptions.seed``; pycma's ``seed`` option is NaN so
    it never touches numpy's global random state. The same seed gives bit-identical runs whatever
    else uses ``numpy.random`` meanwhile.

    **Restarts** are run here, not by ``cma.fmin``, so that they stay ask/tell: when a pycma
    instance stops for one of its own reasons and restarts remain, a new instance starts from
    ``x0``; the best point over all runs is kept.

    * IPOP (Auger & Hansen 2005): run ``k`` has population ``λ0 · 2^k``; ``restarts`` counts the
      runs after the first.
    * BIPOP (Hansen 2009, with the accounting of pycma's ``fmin(bipop=True)``): after the first
      run (``λ0``, counted as "small" budget) each restart goes to the regime that has used fewer
      evaluations so far. *Large*: ``λ = λ0 · 2^(i+1)`` after ``i`` large runs, step 1 (the
      spec's scales). *Small*: ``λ = ⌊λ0 · (λ_large/λ0)^(U1²)⌋`` with ``λ_large`` the last large
      population, step ``10^(-2·U2)`` times the scales, and at most
      ``½ · (large-regime evaluations) / λ`` iterations (``U1, U2 ~ U[0, 1]``). ``restarts``
      counts the large runs; small runs come in between and do not count.

Stop reasons (one dict per run in ``OptimResult.stop_reasons``): pycma's own ``stop()`` dict,
e.g. ``{"tolfun": 1e-11}``, ``{"tolx": 1e-11}``, ``{"tolfunhist": 1e-12}``,
``{"tolstagnation": 140}``, ``{"maxiter": 37}``, ``{"tolflatfitness": 1}`` (threshold values), plus
regkit's budget reasons ``{"max_evaluations": N}`` and ``{"max_iterations": N}`` (totals over all
runs; they end the whole optimization) and ``{"callback": True}`` when a callback or
:meth:`~regkit.optim.base.Optimizer.request_stop` ended it.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

from regkit.errors import InputError
from regkit.optim._common import (
    Tracker,
    as_values,
    check_bool,
    check_float,
    check_int,
)
from regkit.optim.base import (
    IterationRecord,
    Optimizer,
    OptimizerStateError,
    OptimResult,
    ParamSpec,
    RunRecord,
    optimizers,
)
from regkit.utils.imports import import_refusing

__all__ = ["CMAES", "CMAESOptions", "RestartStrategy", "import_pycma"]

RestartStrategy = Literal["none", "ipop", "bipop"]


@dataclass(frozen=True)
class CMAESOptions:
    """Options of :class:`CMAES`; an unknown key is an error.

    Attributes:
        popsize: Candidates per iteration of the first run (λ0); None for pycma's default
            ``4 + ⌊3 ln n⌋``.
        max_evaluations: Budget of objective evaluations over all runs, checked after every
            iteration (the last population may take it past the budget by less than λ).
        max_iterations: Budget of iterations over all runs.
        tol_fun: pycma ``tolfun``: stop a run when the values of the recent iterations span less
            than this (pycma's ``tolfunhist`` is set to a tenth of it).
        tol_x: pycma ``tolx``: stop a run when every coordinate's search step is below this
            fraction of its scale (scaled coordinates, see the module docstring).
        seed: Seed of every random draw (sampling and restart choices); None draws a fresh seed,
            which :attr:`CMAES.seed` then reports.
        restarts: Restarts after the first run (BIPOP: large-population restarts).
        restart_strategy: ``"ipop"`` (population doubles each restart), ``"bipop"`` (alternating
            large and small regimes) or ``"none"`` (which needs ``restarts == 0``).
        verbose: Let pycma print its progress table; otherwise nothing is printed.
    """

    popsize: int | None = None
    max_evaluations: int | None = None
    max_iterations: int | None = None
    tol_fun: float = 1e-11
    tol_x: float = 1e-11
    seed: int | None = None
    restarts: int = 0
    restart_strategy: RestartStrategy = "ipop"
    verbose: bool = False

    def __post_init__(self) -> None:
        check_int("cmaes", "popsize", self.popsize, 2, optional=True)
        check_int("cmaes", "max_evaluations", self.max_evaluations, 1, optional=True)
        check_int("cmaes", "max_iterations", self.max_iterations, 1, optional=True)
        check_float("cmaes", "tol_fun", self.tol_fun)
        check_float("cmaes", "tol_x", self.tol_x)
        check_int("cmaes", "seed", self.seed, 0, optional=True)
        check_int("cmaes", "restarts", self.restarts, 0)
        check_bool("cmaes", "verbose", self.verbose)
        if self.restart_strategy not in _PLANNERS:
            raise InputError(f"cmaes option must be one of {sorted(_PLANNERS)}, got "
                             f"{self.restart_strategy!r}", key="restart_strategy")
        if self.restart_strategy == "none" and self.restarts > 0:
            raise InputError(f"restarts={self.restarts} needs restart_strategy 'ipop' or "
                             f"'bipop', not 'none'", key="restart_strategy")


@dataclass(frozen=True)
class _RunPlan:
    regime: str
    popsize: int | None  # None: pycma's default
    step: float
    max_iterations: float | None = None  # None: pycma's default


@dataclass(frozen=True)
class _RestartState:
    restarts: int
    popsize0: int
    maxiter0: float
    runs: list[RunRecord]
    rng: np.random.Generator


def _plan_none(_state: _RestartState) -> _RunPlan | None:
    return None


def _plan_ipop(state: _RestartState) -> _RunPlan | None:
    done = len(state.runs)
    if done - 1 >= state.restarts:
        return None
    return _RunPlan("large", state.popsize0 * 2 ** done, 1.0)


def _plan_bipop(state: _RestartState) -> _RunPlan | None:
    large = [r for r in state.runs if r.regime == "large"]
    if len(large) >= state.restarts:
        return None
    budget_large = sum(r.evaluations for r in large)
    budget_small = sum(r.evaluations for r in state.runs if r.regime != "large")
    if budget_small < max(1, budget_large):
        multiplier = 2.0 ** len(large)  # λ_large / λ0 of the last large run
        u1, u2 = state.rng.uniform(size=2)
        popsize = max(2, int(state.popsize0 * multiplier ** (u1 ** 2)))
        max_iterations = max(1.0, min(state.maxiter0, 0.5 * budget_large / popsize))
        return _RunPlan("small", popsize, 10.0 ** (-2.0 * u2), max_iterations)
    return _RunPlan("large", state.popsize0 * 2 ** (len(large) + 1), 1.0)


_PLANNERS: dict[str, Callable[[_RestartState], _RunPlan | None]] = {
    "none": _plan_none,
    "ipop": _plan_ipop,
    "bipop": _plan_bipop,
}


def import_pycma(*, refused: Collection[str] = ()) -> ModuleType:
    """Import pycma (``cma``), without its warning that matplotlib (for its plots) is missing.

    ``refused``: modules to import it without, where it can do without them (see
    :func:`regkit.utils.imports.import_refusing`). The registration commands import it without
    ``scipy.stats``, which pycma's ``fitness_models`` imports at its top, inside a try, for the
    Kendall tau of its surrogate models (lq-CMA-ES), which regkit does not use: 0.55 s of a
    cold ``regkit register-2d3d``. pycma then keeps its own Kendall tau for the process: the
    same values on data without ties, and a tie in both counted as half an agreement where
    scipy's tau-b corrects for ties. The library itself imports pycma as usual, so a program
    that uses regkit and pycma's surrogates gets them as pycma made them.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*matplotlib.*", category=UserWarning)
        if refused:
            return import_refusing("cma", refused)
        return importlib.import_module("cma")


@optimizers.register("cmaes")
class CMAES(Optimizer):
    """CMA-ES (pycma) with per-coordinate steps from the spec, bounds, seeds and restarts.

    Args:
        x0: ``(n,)`` start (the mean of the first population), original units, within bounds.
        spec: Names, units, scales (initial standard deviations) and bounds.
        options: :class:`CMAESOptions`, a dict of its fields, or None.

    Example:
        >>> import numpy as np
        >>> spec = ParamSpec.unitless(3, scale=1.0)
        >>> opt = CMAES(np.ones(3), spec, {"seed": 1})
        >>> while not opt.stop():
        ...     c = opt.ask()
        ...     opt.tell(c, (c ** 2).sum(axis=1))
        >>> bool(opt.result.value < 1e-10)
        True
    """

    name = "cmaes"
    options_type = CMAESOptions
    options: CMAESOptions

    def __init__(self, x0: Any, spec: ParamSpec, options: CMAESOptions | dict[str, Any] | None
                 = None):
        super().__init__(x0, spec, options)
        if spec.size < 2:
            # pycma does not support one dimension (its bound handling fails part-way through
            # a run); a line search is the right tool there.
            raise InputError("CMA-ES needs at least 2 parameters; for one, use 'powell' (a "
                             "line search)", key="method")
        self._cma = import_pycma()
        o = self.options
        self.seed: int = (int(o.seed) if o.seed is not None
                          else int(np.random.default_rng().integers(0, 2 ** 62)))
        sample_seq, restart_seq = np.random.SeedSequence(self.seed).spawn(2)
        self._sample_rng = np.random.default_rng(sample_seq)
        self._restart_rng = np.random.default_rng(restart_seq)
        self._z0 = spec.to_scaled(self.x0)
        self._bounds: list[Any] = [None, None]
        if spec.bounded:
            self._bounds = [spec.to_scaled(spec.lower_array).tolist(),
                            spec.to_scaled(spec.upper_array).tolist()]
        self._tracker = Tracker(self.x0)
        self._runs: list[RunRecord] = []
        self._pending: tuple[np.ndarray, list[np.ndarray]] | None = None
        self._done = False
        self._final_reasons: dict[str, Any] = {}
        self._popsize0 = 0
        self._maxiter0 = math.inf
        first = "single" if o.restarts == 0 else "default"
        self._start_run(_RunPlan(first, o.popsize, 1.0))

    # -- runs ------------------------------------------------------------------------------

    def _randn(self, *shape: int) -> np.ndarray:
        return self._sample_rng.standard_normal(shape)

    def _start_run(self, plan: _RunPlan) -> None:
        o = self.options
        opts: dict[str, Any] = {
            "bounds": self._bounds,
            "seed": np.nan,  # pycma: leave numpy's global random state alone
            "randn": self._randn,
            "tolfun": o.tol_fun,
            "tolfunhist": o.tol_fun / 10.0,
            "tolx": o.tol_x,
            "verbose": 1 if o.verbose else -9,
            "verb_disp": 100 if o.verbose else 0,
            "verb_log": 0,
        }
        if plan.popsize is not None:
            opts["popsize"] = plan.popsize
        if plan.max_iterations is not None:
            opts["maxiter"] = plan.max_iterations
        self._es = self._cma.CMAEvolutionStrategy(self._z0.tolist(), plan.step, opts)
        if not self._runs:
            self._popsize0 = int(self._es.popsize)
            self._maxiter0 = float(self._es.opts["maxiter"])
        self._plan = plan
        self._run_popsize = int(self._es.popsize)
        self._run_start_evaluations = self._tracker.evaluations
        self._run_iterations = 0
        self._run_best_value = math.inf
        self._run_best_x = self.x0.copy()
        if o.verbose:
            print(f"cmaes: run {len(self._runs)} ({plan.regime}, popsize {self._run_popsize}, "
                  f"step {plan.step:.3g} x scales)")

    def _run_record(self, reasons: dict[str, Any]) -> RunRecord:
        return RunRecord(
            index=len(self._runs),
            regime=self._plan.regime,
            popsize=self._run_popsize,
            step=self._plan.step,
            evaluations=self._tracker.evaluations - self._run_start_evaluations,
            iterations=self._run_iterations,
            best_value=self._run_best_value,
            best_x=self._run_best_x.copy(),
            stop_reasons=dict(reasons),
        )

    def _end_run(self, reasons: dict[str, Any], final: bool) -> None:
        self._runs.append(self._run_record(reasons))
        self._pending = None
        plan = None
        if not final:
            plan = _PLANNERS[self.options.restart_strategy](_RestartState(
                restarts=self.options.restarts, popsize0=self._popsize0,
                maxiter0=self._maxiter0, runs=self._runs, rng=self._restart_rng))
        if plan is None:
            self._done = True
            self._final_reasons = dict(reasons)
        else:
            self._start_run(plan)

    # -- ask / tell ------------------------------------------------------------------------

    def ask(self) -> np.ndarray:
        """Return ``(λ, n)`` candidates, original units, within the bounds.

        Raises:
            OptimizerStateError: The optimizer has stopped, or the last ask was not told yet.
        """
        if self.stop():
            raise OptimizerStateError(f"cmaes has stopped ({self._final_reasons}); read .result")
        if self._pending is not None:
            raise OptimizerStateError("ask() called twice: tell() the previous candidates first")
        z_list = [np.asarray(z, dtype=np.float64) for z in self._es.ask()]
        x = self.spec.clip(self.spec.from_scaled(np.stack(z_list)))
        self._pending = (x, z_list)
        return x.copy()

    def tell(self, candidates: np.ndarray, values: Any) -> None:
        """Report the ``(λ,)`` values of the last :meth:`ask`'s candidates (lower is better).

        Raises:
            OptimizerStateError: No ask is waiting for its values.
            InputError: ``candidates`` are not those of the last ask.
            ShapeError: ``values`` is not ``(λ,)``.
        """
        if self._pending is None:
            raise OptimizerStateError("tell() without a pending ask()")
        x, z_list = self._pending
        cand = np.asarray(candidates, dtype=np.float64)
        if cand.shape != x.shape or not np.array_equal(cand, x):
            raise InputError("tell() needs the candidates of the last ask(), unchanged",
                             key="candidates")
        vals = as_values(values, x.shape[0])
        self._pending = None

        self._tracker.observe(x, vals)
        finite = np.isfinite(vals)
        if finite.any():
            i = int(np.argmin(np.where(finite, vals, np.inf)))
            if vals[i] < self._run_best_value:
                self._run_best_value = float(vals[i])
                self._run_best_x = x[i].copy()
        told = self._tracker.penalized(x, vals, self.spec.scale_array)
        self._es.tell(z_list, told.tolist())
        self._run_iterations += 1
        self._tracker.close_iteration(run=len(self._runs))
        if self.options.verbose:
            self._es.disp()

        reasons = {str(k): v for k, v in self._es.stop().items()}
        o = self.options
        final = False
        if o.max_evaluations is not None and self._tracker.evaluations >= o.max_evaluations:
            reasons["max_evaluations"] = o.max_evaluations
            final = True
        if o.max_iterations is not None and len(self._tracker.history) >= o.max_iterations:
            reasons["max_iterations"] = o.max_iterations
            final = True
        if reasons:
            self._end_run(reasons, final)

    def stop(self) -> dict[str, Any]:
        """Empty while running; when done, the reasons that ended the last run."""
        if not self._done and self._requested_stop:
            self._end_run(dict(self._requested_stop), final=True)
        return dict(self._final_reasons) if self._done else {}

    @property
    def runs(self) -> list[RunRecord]:
        """Finished runs so far."""
        return list(self._runs)

    @property
    def latest(self) -> IterationRecord | None:
        """The record of the most recent iteration (None before the first)."""
        return self._tracker.latest

    @property
    def result(self) -> OptimResult:
        """Best point over all runs, counts, per-run stop reasons (``{}`` for a running run)."""
        runs = list(self._runs)
        if not self._done:
            runs.append(self._run_record({}))
        t = self._tracker
        return OptimResult(
            x=t.x, value=t.best_value, evaluations=t.evaluations, iterations=len(t.history),
            stop_reasons=[dict(r.stop_reasons) for r in runs], history=tuple(t.history),
            runs=tuple(runs), nonfinite=t.nonfinite, method=self.name)
