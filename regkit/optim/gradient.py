"""Gradient methods for differentiable torch objectives: Adam and L-BFGS, and their driver.

Convention:
    Parameters are optimized in scaled coordinates ``z = x / spec.scales`` (unless
    ``GradientOptions.scaled`` is False), so a learning rate is a step in "scales" on every axis and
    one rate suits millimetres and radians alike. The loss always receives ``x`` in original units.
    The loss is evaluated at ``clamp(z)``, so it never sees a point outside the bounds. Adam keeps
    the bounds by projection (projected gradient, iterate clamped after each step); L-BFGS is
    scipy's L-BFGS-B, which handles bounds itself, fed with torch's gradients.

Stop reasons (one dict, the single run's): ``{"max_iterations": N}``, ``{"plateau": P}`` (the best
loss improved by less than ``tol_fun · max(1, |best|)`` over ``P`` = patience iterations),
``{"tol_grad": t}`` (the projected gradient's norm in scaled coordinates fell to ``t`` or
below), ``{"non_finite_loss": v}`` / ``{"non_finite_gradient": v}`` (with the offending value;
the best finite point is returned), ``{"callback": True}``, and from L-BFGS-B when it ends on its
own ``{"converged": <scipy message>}`` or ``{"failed": <scipy message>}`` (e.g. a line search
that can make no more progress at machine precision).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from regkit.errors import InputError, ShapeError
from regkit.optim._common import Tracker, check_bool, check_float, check_int
from regkit.optim.base import (
    Callback,
    GradientMethod,
    GradientProblem,
    OptimResult,
    ParamSpec,
    RunRecord,
    coerce_options,
    gradient_methods,
)

if TYPE_CHECKING:
    import torch

__all__ = ["LBFGS", "Adam", "GradientOptions", "minimize_torch"]


@dataclass(frozen=True)
class GradientOptions:
    """Options of :func:`minimize_torch`; an unknown key is an error.

    Attributes:
        lr: Learning rate in scaled units (None: the method's ``default_lr``, 0.05 for Adam).
            L-BFGS picks its steps by line search and ignores it.
        max_iterations: Iterations (optimizer steps).
        tol_grad: Stop when the projected gradient's norm with respect to the scaled
            coordinates is at most this (0 disables).
        tol_fun: Plateau threshold: an improvement of the best loss smaller than
            ``tol_fun · max(1, |best|)`` does not count.
        patience: Stop after this many iterations without an improvement that counts.
        scaled: Optimize ``x / spec.scales`` (True) or ``x`` itself (False).
    """

    lr: float | None = None
    max_iterations: int = 1000
    tol_grad: float = 1e-10
    tol_fun: float = 1e-12
    patience: int = 50
    scaled: bool = True

    def __post_init__(self) -> None:
        check_float("gradient", "lr", self.lr, positive=True, optional=True)
        check_int("gradient", "max_iterations", self.max_iterations, 1)
        check_float("gradient", "tol_grad", self.tol_grad)
        check_float("gradient", "tol_fun", self.tol_fun)
        check_int("gradient", "patience", self.patience, 1)
        check_bool("gradient", "scaled", self.scaled)


def _projected(z: torch.Tensor, grad: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
               ) -> torch.Tensor:
    """The gradient without the components that push through a bound ``z`` sits on."""
    pushing_out = ((z <= lower) & (grad > 0)) | ((z >= upper) & (grad < 0))
    return grad.masked_fill(pushing_out, 0.0)


@gradient_methods.register("adam")
class Adam(GradientMethod):
    """``torch.optim.Adam`` (default betas) on the projected gradient, one loss per iteration.

    With bounds, the iterate is clamped into them after every step.
    """

    name = "adam"
    default_lr = 0.05

    def run(self, problem: GradientProblem, lr: float, max_iterations: int) -> dict[str, Any]:
        """Adam steps until the problem says stop."""
        import torch

        z = problem.z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(max_iterations):
            _, grad = problem.evaluate(z.detach())
            if problem.bounded:
                grad = _projected(z.detach(), grad, problem.lower, problem.upper)
            z.grad = grad
            opt.step()
            if problem.bounded:
                with torch.no_grad():
                    z.copy_(torch.clamp(z, problem.lower, problem.upper))
            if problem.end_iteration():
                break
        return {}


@gradient_methods.register("lbfgs")
class LBFGS(GradientMethod):
    """scipy's L-BFGS-B (20 correction pairs) with torch's gradients, bounds handled natively.

    scipy's own tolerances are switched off (the driver applies :class:`GradientOptions`); one
    iteration is one L-BFGS-B iteration, line-search evaluations included in its count.
    """

    name = "lbfgs"
    default_lr = 1.0  # unused: the line search chooses the steps

    def run(self, problem: GradientProblem, lr: float, max_iterations: int) -> dict[str, Any]:  # noqa: ARG002 - override; the line search sets the steps
        """L-BFGS-B until the problem says stop, or until scipy can go no further."""
        import torch
        from scipy.optimize import Bounds
        from scipy.optimize import minimize as scipy_minimize

        like = problem.z0

        def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
            value, grad = problem.evaluate(torch.as_tensor(z, dtype=like.dtype, device=like.device))
            return value, grad.detach().cpu().numpy().astype(np.float64)

        def on_iteration(intermediate_result: Any) -> None:  # noqa: ARG001 - scipy calls by this name
            if problem.end_iteration():
                raise StopIteration

        bounds = None
        if problem.bounded:
            bounds = Bounds(problem.lower.cpu().numpy().astype(np.float64),
                            problem.upper.cpu().numpy().astype(np.float64))
        res = scipy_minimize(fun, like.cpu().numpy().astype(np.float64), jac=True,
                             method="L-BFGS-B", bounds=bounds, callback=on_iteration,
                             options={"maxiter": max_iterations + 1,
                                      "maxfun": 1000 * (max_iterations + 1),
                                      "maxcor": 20, "ftol": 0.0, "gtol": 0.0})
        if int(res.status) == 99:  # scipy: the callback raised StopIteration
            return {}
        return {"converged" if res.success else "failed": str(res.message)}


class _NonFinite(Exception):
    """Raised inside an evaluation to abandon the run on a NaN/inf loss or gradient."""

    def __init__(self, reason: str, value: float):
        super().__init__(reason)
        self.reason = reason
        self.value = value


class _TorchProblem:
    """The :class:`~regkit.optim.base.GradientProblem` that :func:`minimize_torch` hands out."""

    def __init__(self, loss_fn: Callable[[torch.Tensor], torch.Tensor], start: np.ndarray,
                 spec: ParamSpec, unit: np.ndarray, options: GradientOptions,
                 callback: Callback | None, dtype: torch.dtype, device: torch.device):
        import torch

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=dtype, device=device)

        self.loss_fn = loss_fn
        self.options = options
        self.callback = callback
        self.scale = tensor(unit)
        self.z0 = tensor(start / unit)
        self.lower = tensor(spec.lower_array / unit)
        self.upper = tensor(spec.upper_array / unit)
        self.bounded = spec.bounded
        self.tracker = Tracker(start)
        self.reasons: dict[str, Any] = {}
        self.last_grad_norm = math.inf
        self._reference = math.inf  # best loss at the last improvement that counted
        self._stalled = 0

    def evaluate(self, z: torch.Tensor) -> tuple[float, torch.Tensor]:
        import torch

        zz = z.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            x = (torch.clamp(zz, self.lower, self.upper) if self.bounded else zz) * self.scale
            loss = self.loss_fn(x)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ShapeError(f"loss_fn must return a scalar tensor, got "
                                 f"{getattr(loss, 'shape', type(loss).__name__)}")
            value = float(loss.detach())
            self.tracker.observe(x.detach().cpu().numpy().astype(np.float64)[None],
                                 np.array([value]))
            if not math.isfinite(value):
                raise _NonFinite("non_finite_loss", value)
            grad: torch.Tensor | None = None
            if loss.requires_grad:
                (grad,) = torch.autograd.grad(loss.reshape(()), zz, allow_unused=True)
            if grad is None:
                raise InputError("loss_fn's result does not depend differentiably on x",
                                 key="loss_fn")
        grad_norm = float(_projected(zz.detach(), grad, self.lower, self.upper).norm()
                          if self.bounded else grad.norm())
        if not math.isfinite(grad_norm):
            raise _NonFinite("non_finite_gradient", grad_norm)
        self.last_grad_norm = grad_norm
        return value, grad

    def end_iteration(self) -> bool:
        o = self.options
        record = self.tracker.close_iteration(run=0)
        if self.callback is not None and self.callback(record):
            self.reasons = {"callback": True}
        elif self.last_grad_norm <= o.tol_grad:
            self.reasons = {"tol_grad": o.tol_grad}
        elif record.iteration >= o.max_iterations:
            self.reasons = {"max_iterations": o.max_iterations}
        else:
            best = self.tracker.best_value
            if (not math.isfinite(self._reference)
                    or best < self._reference - o.tol_fun * max(1.0, abs(best))):
                self._reference, self._stalled = best, 0
            else:
                self._stalled += 1
                if self._stalled >= o.patience:
                    self.reasons = {"plateau": o.patience}
        return bool(self.reasons)


def minimize_torch(loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: Any, spec: ParamSpec,
                   method: str = "adam", options: GradientOptions | dict[str, Any] | None = None,
                   callback: Callback | None = None) -> OptimResult:
    """Minimize a differentiable scalar torch loss with a registered gradient method.

    Args:
        loss_fn: ``(n,)`` tensor ``x`` in original units (float64 unless ``x0`` is a floating
            tensor, whose dtype and device are kept) to a scalar tensor, differentiable in ``x``.
        x0: ``(n,)`` start (numpy array, sequence or tensor), within the bounds of ``spec``.
        spec: Names, units, scales and bounds of the coordinates.
        method: A name registered in :data:`~regkit.optim.base.gradient_methods` (``"adam"``,
            ``"lbfgs"``).
        options: :class:`GradientOptions`, a dict of its fields, or None.
        callback: Called after every iteration with its
            :class:`~regkit.optim.base.IterationRecord`; a truthy return stops.

    Returns:
        The best finite point seen (``x0`` with value ``inf`` if none), the number of loss
        evaluations (line-search calls included), the history with one record per iteration, and
        the stop reasons.

    Raises:
        UnknownNameError: ``method`` is not registered (the message lists the known ones).
        InputError: An unknown or invalid option, a bad ``x0``, or a loss without gradient.
        ShapeError: ``loss_fn`` returned something other than one number.
    """
    import torch

    gm = gradient_methods.get(method)()
    o = coerce_options(GradientOptions, options, "gradient")
    if not isinstance(spec, ParamSpec):
        raise InputError(f"must be a ParamSpec, got {type(spec).__name__}", key="spec")
    dtype, device = torch.float64, torch.device("cpu")
    if isinstance(x0, torch.Tensor):
        device = x0.device
        if x0.dtype.is_floating_point:
            dtype = x0.dtype
    start = spec.check_point(x0, "x0")
    unit = spec.scale_array if o.scaled else np.ones(spec.size)
    problem = _TorchProblem(loss_fn, start, spec, unit, o, callback, dtype, device)
    tracker = problem.tracker
    try:
        own = gm.run(problem, o.lr if o.lr is not None else gm.default_lr, o.max_iterations)
    except _NonFinite as exc:
        own = {exc.reason: exc.value}
    if tracker.pending:  # evaluations after the last complete iteration
        tracker.close_iteration(run=0)
    reasons = problem.reasons or own or {"max_iterations": o.max_iterations}
    run = RunRecord(index=0, regime="single", popsize=None, step=1.0,
                    evaluations=tracker.evaluations, iterations=len(tracker.history),
                    best_value=tracker.best_value, best_x=tracker.x, stop_reasons=dict(reasons))
    return OptimResult(x=tracker.x, value=tracker.best_value, evaluations=tracker.evaluations,
                       iterations=len(tracker.history), stop_reasons=[dict(reasons)],
                       history=tuple(tracker.history), runs=(run,), nonfinite=tracker.nonfinite,
                       method=method)
