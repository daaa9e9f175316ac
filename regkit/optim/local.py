"""Derivative-free local refinement through scipy: Powell and Nelder–Mead.

scipy's ``minimize`` calls the objective itself, one point at a time, so these methods are not
ask/tell: they are registered in :data:`~regkit.optim.base.optimizers` like the others, but only
:meth:`~regkit.optim.base.Optimizer.run` (and so :func:`~regkit.optim.base.minimize`) drives them;
their ``ask``/``tell`` raise :class:`~regkit.optim.base.OptimizerStateError`
(``supports_ask_tell`` is False). The batched objective is called with one candidate, ``(1, n)``.

Convention:
    Both work in scaled coordinates ``z = x / spec.scales``: Powell's initial directions are the
    coordinate axes with unit steps (one scale), Nelder–Mead's initial simplex is ``x0`` plus one
    scale along each axis (minus one where that would leave the box). Bounds are scipy ``Bounds``
    in scaled coordinates; every evaluated point is also clipped into the box, so the objective
    never sees a point outside it. NaN and ±inf values are counted and replaced by finite values
    worse than every finite one seen, growing with the distance to the best point, before scipy
    sees them.

Stop reasons (one dict, the single run's): ``{"converged": <scipy message>}`` on success,
``{"max_evaluations": N}``, ``{"max_iterations": N}``, ``{"callback": True}``, or
``{"failed": <scipy message>}`` for any other scipy status.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from regkit.optim._common import Tracker, as_values, check_float, check_int
from regkit.optim.base import (
    Callback,
    IterationRecord,
    Objective,
    Optimizer,
    OptimizerStateError,
    OptimResult,
    ParamSpec,
    optimizers,
)

__all__ = ["LocalOptions", "NelderMead", "Powell"]


@dataclass(frozen=True)
class LocalOptions:
    """Options of :class:`Powell` and :class:`NelderMead`; an unknown key is an error.

    Attributes:
        max_evaluations: Evaluation budget (scipy ``maxfev``, which scipy ≥ 1.8 keeps exactly:
            it stops at the budget's last evaluation, even inside a Powell line search). None:
            scipy's default (1000·n Powell, 200·n Nelder–Mead).
        max_iterations: Iteration budget (scipy ``maxiter``). None: scipy's default.
        tol_x: Tolerance on the point, in scaled units (fractions of each coordinate's scale):
            Powell's line-search ``xtol``, Nelder–Mead's ``xatol``.
        tol_fun: Tolerance on the value: Powell's ``ftol`` (relative decrease per sweep),
            Nelder–Mead's ``fatol`` (absolute spread over the simplex).
    """

    max_evaluations: int | None = None
    max_iterations: int | None = None
    tol_x: float = 1e-8
    tol_fun: float = 1e-12

    def __post_init__(self) -> None:
        check_int("local", "max_evaluations", self.max_evaluations, 1, optional=True)
        check_int("local", "max_iterations", self.max_iterations, 1, optional=True)
        check_float("local", "tol_x", self.tol_x, positive=True)
        check_float("local", "tol_fun", self.tol_fun, positive=True)


class _ScipyLocal(Optimizer):
    """Shared driver of the scipy methods; subclasses name the method and its options."""

    options_type = LocalOptions
    options: LocalOptions
    supports_ask_tell = False
    scipy_method: ClassVar[str]

    def __init__(self, x0: Any, spec: ParamSpec, options: LocalOptions | dict[str, Any] | None
                 = None):
        super().__init__(x0, spec, options)
        self._tracker = Tracker(self.x0)
        self._reasons: dict[str, Any] = {}
        self._done = False

    @abstractmethod
    def _scipy_options(self, z0: np.ndarray, lower: np.ndarray, upper: np.ndarray
                       ) -> dict[str, Any]:
        """The scipy ``options`` for this method, given the scaled start and bounds."""

    def ask(self) -> np.ndarray:
        """Not available: see the module docstring.

        Raises:
            OptimizerStateError: Always.
        """
        raise OptimizerStateError(f"{self.name} is not ask/tell: use run(objective) or "
                                  f"minimize(objective, x0, spec, method={self.name!r})")

    def tell(self, candidates: np.ndarray, values: Any) -> None:  # noqa: ARG002 - the Optimizer interface
        """Not available: see the module docstring.

        Raises:
            OptimizerStateError: Always.
        """
        raise OptimizerStateError(f"{self.name} is not ask/tell: use run(objective) or "
                                  f"minimize(objective, x0, spec, method={self.name!r})")

    def stop(self) -> dict[str, Any]:
        """Empty until :meth:`run` has finished; then the reasons scipy stopped."""
        return dict(self._reasons) if self._done else {}

    @property
    def latest(self) -> IterationRecord | None:
        """The record of the most recent iteration (None before the first)."""
        return self._tracker.latest

    @property
    def result(self) -> OptimResult:
        """Best point, counts, stop reasons and history.

        The history has one record per scipy iteration, the last one also holding the evaluations
        after the final iteration.
        """
        return self._tracker.single_run_result(self.name, self.stop(), None)

    def run(self, objective: Objective, callback: Callback | None = None) -> OptimResult:
        """Run scipy's method to its end.

        Args:
            objective: Batched objective; called with ``(1, n)`` candidates.
            callback: Called with each :class:`IterationRecord`; a truthy return stops the run.

        Returns:
            The final :class:`OptimResult`.

        Raises:
            OptimizerStateError: This instance has already run.
        """
        if self._done:
            raise OptimizerStateError(f"{self.name} has already run; read .result")
        from scipy.optimize import Bounds
        from scipy.optimize import minimize as scipy_minimize

        spec, tracker = self.spec, self._tracker
        lower = spec.to_scaled(spec.lower_array)
        upper = spec.to_scaled(spec.upper_array)
        z0 = spec.to_scaled(self.x0)

        def fun(z: np.ndarray) -> float:
            x = spec.clip(spec.from_scaled(z))[None]
            values = as_values(objective(x), 1)
            tracker.observe(x, values)
            return float(tracker.penalized(x, values, spec.scale_array)[0])

        def on_iteration(intermediate_result: Any) -> None:  # noqa: ARG001 - scipy calls by this name
            record = tracker.close_iteration(run=0)
            if callback is not None and callback(record):
                self.request_stop("callback")
            if self._requested_stop:
                raise StopIteration

        if self._requested_stop:  # stopped before it started
            self._reasons, self._done = dict(self._requested_stop), True
            return self.result
        res = scipy_minimize(fun, z0, method=self.scipy_method,
                             bounds=Bounds(lower, upper) if spec.bounded else None,
                             options=self._scipy_options(z0, lower, upper),
                             callback=on_iteration)
        if tracker.pending:
            tracker.close_iteration(run=0)
        self._reasons = self._reasons_from(int(res.status), bool(res.success), str(res.message))
        self._done = True
        return self.result

    def _reasons_from(self, status: int, success: bool, message: str) -> dict[str, Any]:
        if self._requested_stop:
            return dict(self._requested_stop)
        if success:
            return {"converged": message}
        if status == 1:  # scipy: maximum number of function evaluations
            return {"max_evaluations": self.options.max_evaluations or self._tracker.evaluations}
        if status == 2:  # scipy: maximum number of iterations
            return {"max_iterations": self.options.max_iterations or len(self._tracker.history)}
        return {"failed": message}


@optimizers.register("powell")
class Powell(_ScipyLocal):
    """Powell's conjugate-direction method (scipy), in scaled coordinates, with bounds.

    Args:
        x0: ``(n,)`` start, original units, within bounds.
        spec: Names, units, scales (unit line-search steps) and bounds.
        options: :class:`LocalOptions`, a dict of its fields, or None.
    """

    name = "powell"
    scipy_method = "Powell"

    def _scipy_options(self, z0: np.ndarray, lower: np.ndarray, upper: np.ndarray  # noqa: ARG002 - override
                       ) -> dict[str, Any]:
        o = self.options
        return {"xtol": o.tol_x, "ftol": o.tol_fun, "maxfev": o.max_evaluations,
                "maxiter": o.max_iterations, "direc": np.eye(z0.size)}


@optimizers.register("nelder_mead")
class NelderMead(_ScipyLocal):
    """The Nelder–Mead simplex method (scipy, adaptive parameters), in scaled coordinates.

    Args:
        x0: ``(n,)`` start, original units, within bounds.
        spec: Names, units, scales (the initial simplex's edges) and bounds.
        options: :class:`LocalOptions`, a dict of its fields, or None.
    """

    name = "nelder_mead"
    scipy_method = "Nelder-Mead"

    def _scipy_options(self, z0: np.ndarray, lower: np.ndarray, upper: np.ndarray
                       ) -> dict[str, Any]:
        o = self.options
        n = z0.size
        simplex = np.repeat(z0[None], n + 1, axis=0)
        for i in range(n):  # one scale along each axis, staying in the box
            up, down = z0[i] + 1.0, z0[i] - 1.0
            if up <= upper[i]:
                simplex[i + 1, i] = up
            elif down >= lower[i]:
                simplex[i + 1, i] = down
            else:  # the box is narrower than one scale: go to its farther side
                simplex[i + 1, i] = upper[i] if upper[i] - z0[i] > z0[i] - lower[i] else lower[i]
        return {"xatol": o.tol_x, "fatol": o.tol_fun, "maxfev": o.max_evaluations,
                "maxiter": o.max_iterations, "initial_simplex": simplex, "adaptive": True}
