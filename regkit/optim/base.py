"""The optimizer contracts of regkit: parameter specifications, ask/tell optimizers, results.

Two pluggable kinds live here, each with one contract and one registry:

* :class:`Optimizer` (registry :data:`optimizers`): derivative-free methods driven by a *batched*
  objective, ``(λ, n)`` candidates in and ``(λ,)`` values out, lower is better. Population methods
  (CMA-ES) are ask/tell like pycma; local methods built on scipy (Powell, Nelder–Mead) only
  :meth:`Optimizer.run`, see :attr:`Optimizer.supports_ask_tell`.
* :class:`GradientMethod` (registry :data:`gradient_methods`): first-order and quasi-Newton
  methods for differentiable torch objectives, used by :func:`regkit.optim.minimize_torch`
  through a :class:`GradientProblem`.

Convention:
    A :class:`ParamSpec` gives every coordinate a name, a unit and a *scale*: the size of a
    sensible first step, in the coordinate's own unit (0.1 rad, 10 mm). Every optimizer works in
    *scaled coordinates* ``z = x / scales`` (no offset), so that a step of 1 means "one scale" on
    every axis whatever its unit; bounds are divided by the same scales. What crosses this module's
    public functions (``x0``, candidates, results) is always in the original units.

Example:
    >>> spec = ParamSpec.rigid6(rot_step_deg=5.0, trans_step_mm=10.0)
    >>> spec.units
    ('rad', 'rad', 'rad', 'mm', 'mm', 'mm')
    >>> round(spec.scales[0], 6)  # 5 degrees, in radians
    0.087266
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np

from regkit.errors import InputError, RegkitError, ShapeError, UnknownNameError, did_you_mean
from regkit.registry import Registry
from regkit.utils.checks import is_whole

if TYPE_CHECKING:
    import torch

__all__ = [
    "Callback",
    "GradientMethod",
    "GradientProblem",
    "IterationRecord",
    "Objective",
    "OptimResult",
    "Optimizer",
    "OptimizerStateError",
    "ParamSpec",
    "RunRecord",
    "coerce_options",
    "gradient_methods",
    "minimize",
    "optimizers",
]

Objective = Callable[[np.ndarray], Any]
"""A batched objective: ``(λ, n)`` float64 candidates (original units) to ``(λ,)`` values, lower is
better. The values may be a numpy array, a sequence or a torch tensor; NaN and ±inf are allowed and
are treated as the worst values (and counted)."""

Callback = Callable[["IterationRecord"], Any]
"""Called after every iteration with its :class:`IterationRecord`; a truthy return stops the run
(stop reason ``{"callback": True}``)."""

OptionsT = TypeVar("OptionsT")


class OptimizerStateError(RegkitError, RuntimeError):
    """An optimizer used out of order.

    ``tell`` without ``ask``, ``ask`` after it has stopped, or ask/tell on a method that only runs
    whole (:attr:`Optimizer.supports_ask_tell` is False).
    """


def _floats(values: Sequence[float], what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"must be a sequence of numbers, got {values!r}", key=what) from exc


@dataclass(frozen=True)
class ParamSpec:
    """Names, units, step scales and bounds of an optimizer's coordinates, one entry per coordinate.

    Attributes:
        names: Unique coordinate names, e.g. ``("rx", "ry", "rz", "tx", "ty", "tz")``.
        units: Unit of each coordinate: ``"rad"``, ``"mm"``, ``"1"`` (dimensionless)...
        scales: Initial step per coordinate, in its unit (e.g. 0.1 rad, 10 mm); finite and > 0.
            This is CMA-ES's per-coordinate standard deviation at the start, the unit of a Powell
            line search, and the unit in which gradient methods take their steps.
        lower: Lower bound per coordinate (``-inf`` allowed), or None for none.
        upper: Upper bound per coordinate (``+inf`` allowed), or None for none. Where both are
            given, ``lower < upper`` on every coordinate.

    Raises:
        InputError: Lengths differ, a name repeats, a scale is not finite and positive, or a bound
            is NaN or not below its upper bound.
    """

    names: tuple[str, ...]
    units: tuple[str, ...]
    scales: tuple[float, ...]
    lower: tuple[float, ...] | None = None
    upper: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        units = tuple(str(u) for u in self.units)
        scales = _floats(self.scales, "scales")
        n = len(names)
        if n == 0:
            raise InputError("a parameter specification needs at least one coordinate",
                             key="names")
        if len(set(names)) != n:
            repeated = sorted({x for x in names if names.count(x) > 1})
            raise InputError(f"coordinate names must be unique, repeated: {repeated}", key="names")
        for key, seq in (("units", units), ("scales", scales)):
            if len(seq) != n:
                raise InputError(f"needs {n} entries (one per name), got {len(seq)}", key=key)
        for name, s in zip(names, scales, strict=True):
            if not (math.isfinite(s) and s > 0):
                raise InputError(f"the scale of '{name}' must be finite and > 0, got {s}",
                                 key="scales")
        lower = None if self.lower is None else _floats(self.lower, "lower")
        upper = None if self.upper is None else _floats(self.upper, "upper")
        for key, bounds in (("lower", lower), ("upper", upper)):
            if bounds is None:
                continue
            if len(bounds) != n:
                raise InputError(f"needs {n} entries (one per name), got {len(bounds)}", key=key)
            if any(math.isnan(v) for v in bounds):
                raise InputError("bounds must not be NaN (use ±inf for none)", key=key)
        lo = (-math.inf,) * n if lower is None else lower
        hi = (math.inf,) * n if upper is None else upper
        for name, a, b in zip(names, lo, hi, strict=True):
            if not a < b:
                raise InputError(f"the bounds of '{name}' must satisfy lower < upper, got "
                                 f"[{a}, {b}]", key="lower")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def rigid6(cls, rot_step_deg: float = 5.0, trans_step_mm: float = 10.0,
               rot_bound_deg: float | None = None,
               trans_bound_mm: float | None = None) -> ParamSpec:
        """The 6-vector rigid pose ``(rx, ry, rz, tx, ty, tz)`` of :mod:`regkit.geometry`.

        ``(rx, ry, rz)`` is a rotation vector (axis × angle) in radians and ``(tx, ty, tz)`` a
        translation in mm. Degrees appear only in this constructor's arguments and are converted
        to radians here.

        Args:
            rot_step_deg: Initial step of each rotation coordinate, degrees.
            trans_step_mm: Initial step of each translation coordinate, mm.
            rot_bound_deg: If given, rotations are bounded to ``[-b, b]`` (degrees, converted).
            trans_bound_mm: If given, translations are bounded to ``[-b, b]`` mm.

        Example:
            ``ParamSpec.rigid6(2.0, 5.0, rot_bound_deg=20, trans_bound_mm=50)``: start with steps
            of 2° and 5 mm; search within ±20° and ±50 mm of the origin of the parameters.
        """
        rot = math.radians(_positive("rot_step_deg", rot_step_deg))
        trans = _positive("trans_step_mm", trans_step_mm)
        rb = _optional_bound("rot_bound_deg", rot_bound_deg, math.radians)
        tb = _optional_bound("trans_bound_mm", trans_bound_mm, float)
        return cls._grouped([
            (("rx", "ry", "rz"), "rad", rot, rb),
            (("tx", "ty", "tz"), "mm", trans, tb),
        ])

    @classmethod
    def affine12(cls, rot_step_deg: float = 5.0, trans_step_mm: float = 10.0,
                 log_scale_step: float = 0.05, shear_step: float = 0.05,
                 rot_bound_deg: float | None = None, trans_bound_mm: float | None = None,
                 log_scale_bound: float | None = None,
                 shear_bound: float | None = None) -> ParamSpec:
        """A 12-vector affine ``(rx, ry, rz, tx, ty, tz, sx, sy, sz, hxy, hxz, hyz)``.

        Convention:
            * ``(rx, ry, rz)``: rotation vector, radians; ``(tx, ty, tz)``: translation, mm.
            * ``(sx, sy, sz)``: natural logarithms of the scale factors along x, y, z
              (dimensionless, unit ``"1"``): 0 means no scaling, 0.1 means × e^0.1 ≈ 1.105.
            * ``(hxy, hxz, hyz)``: shears (dimensionless), the upper off-diagonal entries of
              ``H = [[1, hxy, hxz], [0, 1, hyz], [0, 0, 1]]``.
            * The linear part these names stand for is ``R(r) @ H @ diag(exp(s))``: scale first,
              then shear, then rotate, then translate. This class only names and scales the
              coordinates; building the matrix is the transform layer's job.

        Args:
            rot_step_deg: Initial rotation step, degrees (converted to radians).
            trans_step_mm: Initial translation step, mm.
            log_scale_step: Initial step of each log-scale.
            shear_step: Initial step of each shear.
            rot_bound_deg: If given, the rotations are bounded to ``[-b, b]``, b in degrees.
            trans_bound_mm: If given, the translations are bounded to ``[-b, b]``, mm.
            log_scale_bound: If given, the log-scales are bounded to ``[-b, b]``.
            shear_bound: If given, the shears are bounded to ``[-b, b]``.
        """
        return cls._grouped([
            (("rx", "ry", "rz"), "rad", math.radians(_positive("rot_step_deg", rot_step_deg)),
             _optional_bound("rot_bound_deg", rot_bound_deg, math.radians)),
            (("tx", "ty", "tz"), "mm", _positive("trans_step_mm", trans_step_mm),
             _optional_bound("trans_bound_mm", trans_bound_mm, float)),
            (("sx", "sy", "sz"), "1", _positive("log_scale_step", log_scale_step),
             _optional_bound("log_scale_bound", log_scale_bound, float)),
            (("hxy", "hxz", "hyz"), "1", _positive("shear_step", shear_step),
             _optional_bound("shear_bound", shear_bound, float)),
        ])

    @classmethod
    def unitless(cls, n: int, scale: float = 1.0, lower: float | None = None,
                 upper: float | None = None) -> ParamSpec:
        """``n`` dimensionless coordinates ``x0 … x{n-1}``, one scale, optional box bounds."""
        if not is_whole(n) or n < 1:
            raise InputError(f"must be a positive integer, got {n!r}", key="n")
        return cls(names=tuple(f"x{i}" for i in range(n)), units=("1",) * n,
                   scales=(float(scale),) * n,
                   lower=None if lower is None else (float(lower),) * n,
                   upper=None if upper is None else (float(upper),) * n)

    @classmethod
    def _grouped(cls, groups: list[tuple[tuple[str, ...], str, float, float | None]]) -> ParamSpec:
        names: list[str] = []
        units: list[str] = []
        scales: list[float] = []
        lower: list[float] = []
        upper: list[float] = []
        for group_names, unit, scale, bound in groups:
            for name in group_names:
                names.append(name)
                units.append(unit)
                scales.append(scale)
                lower.append(-math.inf if bound is None else -bound)
                upper.append(math.inf if bound is None else bound)
        bounded = any(math.isfinite(b) for b in upper)
        return cls(tuple(names), tuple(units), tuple(scales),
                   tuple(lower) if bounded else None, tuple(upper) if bounded else None)

    # -- views ---------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of coordinates n."""
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def scale_array(self) -> np.ndarray:
        """``(n,)`` float64 scales."""
        return np.asarray(self.scales, dtype=np.float64)

    @property
    def lower_array(self) -> np.ndarray:
        """``(n,)`` float64 lower bounds, ``-inf`` where unbounded."""
        if self.lower is None:
            return np.full(self.size, -np.inf)
        return np.asarray(self.lower, dtype=np.float64)

    @property
    def upper_array(self) -> np.ndarray:
        """``(n,)`` float64 upper bounds, ``+inf`` where unbounded."""
        if self.upper is None:
            return np.full(self.size, np.inf)
        return np.asarray(self.upper, dtype=np.float64)

    @property
    def bounded(self) -> bool:
        """Whether any coordinate has a finite bound."""
        return bool(np.isfinite(self.lower_array).any() or np.isfinite(self.upper_array).any())

    def index(self, name: str) -> int:
        """Position of coordinate ``name``.

        Raises:
            UnknownNameError: No such coordinate; the message lists the names.
        """
        try:
            return self.names.index(name)
        except ValueError:
            hint = did_you_mean(name, self.names)
            raise UnknownNameError(f"unknown coordinate '{name}'{hint}; known: "
                                   f"{', '.join(self.names)}") from None

    def to_scaled(self, x: np.ndarray) -> np.ndarray:
        """``(..., n)`` original units to scaled coordinates ``x / scales``."""
        return np.asarray(x, dtype=np.float64) / self.scale_array

    def from_scaled(self, z: np.ndarray) -> np.ndarray:
        """``(..., n)`` scaled coordinates to original units ``z * scales``."""
        return np.asarray(z, dtype=np.float64) * self.scale_array

    def clip(self, x: np.ndarray) -> np.ndarray:
        """``(..., n)`` points clipped into the bounds (a copy)."""
        return np.clip(np.asarray(x, dtype=np.float64), self.lower_array, self.upper_array)

    def contains(self, x: np.ndarray) -> np.ndarray:
        """``(...,)`` booleans: which ``(..., n)`` points lie within the bounds (inclusive)."""
        x = np.asarray(x, dtype=np.float64)
        return np.all((x >= self.lower_array) & (x <= self.upper_array), axis=-1)

    def check_point(self, x: Any, name: str = "x0") -> np.ndarray:
        """Validate one point and return it as a float64 ``(n,)`` copy.

        Raises:
            ShapeError: It is not ``(n,)``.
            InputError: It is not finite, or lies outside the bounds (the message names the
                coordinate).
        """
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        array = np.array(x, dtype=np.float64, copy=True)
        if array.shape != (self.size,):
            raise ShapeError(f"{name} must have shape ({self.size},) for coordinates "
                             f"{self.names}, got {array.shape}")
        if not np.isfinite(array).all():
            raise InputError(f"must be finite, got {array.tolist()}", key=name)
        outside = ~((array >= self.lower_array) & (array <= self.upper_array))
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise InputError(f"coordinate '{self.names[i]}' = {array[i]} {self.units[i]} lies "
                             f"outside its bounds [{self.lower_array[i]}, "
                             f"{self.upper_array[i]}]", key=name)
        return array


def _positive(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"must be finite and > 0, got {value!r}", key=name)
    return v


def _optional_bound(name: str, value: float | None, convert: Callable[[float], float]
                    ) -> float | None:
    if value is None:
        return None
    return convert(_positive(name, value))


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IterationRecord:
    """One iteration of a run, for convergence plots and callbacks.

    Attributes:
        iteration: 1-based index over the whole optimization (all runs).
        run: 0-based index of the run (restart) it belongs to.
        evaluations: Objective evaluations so far, over all runs, this iteration included.
        count: Evaluations in this iteration (a CMA-ES population size; the function calls of a
            Powell sweep or of an L-BFGS line search).
        best: Lowest value of this iteration (non-finite values rank as ``inf``).
        median: Median value of this iteration (non-finite values rank as ``inf``).
        best_so_far: Lowest finite value of the whole optimization up to here.
    """

    iteration: int
    run: int
    evaluations: int
    count: int
    best: float
    median: float
    best_so_far: float


@dataclass(frozen=True, eq=False)
class RunRecord:
    """One run of an optimizer; CMA-ES with restarts makes several.

    Attributes:
        index: 0-based run number.
        regime: How the run was set up: ``"single"`` (no restarts, or a local method),
            ``"default"`` (first run of a restart strategy), ``"large"`` (IPOP or BIPOP's large
            population regime) or ``"small"`` (BIPOP's small population regime).
        popsize: Candidates per iteration (None for methods without a population).
        step: Initial step size as a multiple of the spec's scales (1 unless BIPOP shrank it).
        evaluations: Objective evaluations of this run.
        iterations: Iterations of this run.
        best_value: Lowest finite value of this run (``inf`` if none).
        best_x: ``(n,)`` point of ``best_value`` (the run's start if none).
        stop_reasons: Why the run ended, e.g. ``{"tolfun": 1e-11}``.
    """

    index: int
    regime: str
    popsize: int | None
    step: float
    evaluations: int
    iterations: int
    best_value: float
    best_x: np.ndarray
    stop_reasons: dict[str, Any]


@dataclass(frozen=True, eq=False)
class OptimResult:
    """What an optimization found, and how.

    Attributes:
        x: ``(n,)`` best point found, in original units (over all runs; finite values only).
        value: Its objective value (``inf`` if no evaluation returned a finite value; ``x`` is
            then the start).
        evaluations: Objective evaluations, all runs together.
        iterations: Iterations, all runs together (``len(history)``).
        stop_reasons: One dict per run, in run order: why each run ended.
        history: One :class:`IterationRecord` per iteration.
        runs: One :class:`RunRecord` per run.
        nonfinite: How many evaluations returned NaN or ±inf.
        method: Registered name of the method that produced this result.
    """

    x: np.ndarray
    value: float
    evaluations: int
    iterations: int
    stop_reasons: list[dict[str, Any]]
    history: tuple[IterationRecord, ...]
    runs: tuple[RunRecord, ...] = ()
    nonfinite: int = 0
    method: str = ""

    def history_array(self, name: str) -> np.ndarray:
        """One field of every history record as a 1-D array, e.g. ``history_array("best")``.

        Raises:
            UnknownNameError: ``name`` is not a field of :class:`IterationRecord`.
        """
        known = [f.name for f in fields(IterationRecord)]
        if name not in known:
            raise UnknownNameError(f"unknown history field '{name}'; known: {', '.join(known)}")
        return np.asarray([getattr(r, name) for r in self.history])


# -- options ---------------------------------------------------------------------------------


def coerce_options(options_type: type[OptionsT], options: Any, owner: str) -> OptionsT:
    """Turn ``None``, a dict or an instance into an options dataclass of ``options_type``.

    Args:
        options_type: The dataclass of the method's options.
        options: None (defaults), an instance of ``options_type`` or a mapping of its fields.
        owner: The method's name, for messages.

    Raises:
        InputError: A key that is not an option (the error's ``key`` and message name it, with
            the closest known option), or options of another type.
    """
    if options is None:
        return options_type()
    if isinstance(options, options_type):
        return options
    if isinstance(options, Mapping):
        if not is_dataclass(options_type):
            raise TypeError(f"{options_type!r} is not a dataclass")
        known = [f.name for f in fields(options_type)]
        for key in options:
            if key not in known:
                hint = did_you_mean(str(key), known)
                raise InputError(f"unknown {owner} option{hint}; known: {', '.join(known)}",
                                 key=str(key))
        return options_type(**options)
    raise InputError(f"{owner} options must be a {options_type.__name__} or a dict, got "
                     f"{type(options).__name__} (None: the defaults)", key="options")


# -- the derivative-free contract ------------------------------------------------------------


class Optimizer(ABC):
    """Contract of every derivative-free optimizer: ask/tell with a batched objective.

    Usage, ask/tell::

        opt = optimizers.get("cmaes")(x0, spec, {"seed": 1})
        while not opt.stop():
            candidates = opt.ask()                   # (λ, n), original units
            opt.tell(candidates, objective(candidates))
        result = opt.result

    or simply ``opt.run(objective)`` (what :func:`minimize` does).

    Subclasses set :attr:`options_type`, implement :meth:`ask`, :meth:`tell`, :meth:`stop`,
    :attr:`result` and :attr:`latest`, and honour :meth:`request_stop`. A method that cannot be
    driven step by step sets :attr:`supports_ask_tell` to False and overrides :meth:`run` instead;
    its ``ask``/``tell`` raise :class:`OptimizerStateError`.

    Args:
        x0: ``(n,)`` start, original units, finite and within the bounds of ``spec``.
        spec: Names, units, scales and bounds of the coordinates.
        options: The method's options dataclass, a dict of its fields, or None for defaults.

    Raises:
        ShapeError: ``x0`` is not ``(n,)``.
        InputError: ``x0`` is not finite or out of bounds; an unknown or invalid option.
    """

    name: ClassVar[str] = ""
    options_type: ClassVar[type[Any]]
    supports_ask_tell: ClassVar[bool] = True

    def __init__(self, x0: Any, spec: ParamSpec, options: Any = None):
        if not isinstance(spec, ParamSpec):
            raise InputError(f"must be a ParamSpec, got {type(spec).__name__}", key="spec")
        self.spec = spec
        self.x0 = spec.check_point(x0, "x0")
        self.options = coerce_options(self.options_type, options, self.name or type(self).__name__)
        self._requested_stop: dict[str, Any] = {}

    @abstractmethod
    def ask(self) -> np.ndarray:
        """Return ``(λ, n)`` float64 candidates (original units, within bounds) to evaluate."""

    @abstractmethod
    def tell(self, candidates: np.ndarray, values: Any) -> None:
        """Report the values of the candidates of the last :meth:`ask`.

        Args:
            candidates: ``(λ, n)``, exactly as returned by the last :meth:`ask`.
            values: ``(λ,)`` objective values, lower is better. NaN and ±inf are treated as worse
                than every finite value and counted in :attr:`OptimResult.nonfinite`.
        """

    @abstractmethod
    def stop(self) -> dict[str, Any]:
        """Empty while running; the reasons for stopping (name -> threshold or value) when done."""

    @property
    @abstractmethod
    def result(self) -> OptimResult:
        """The best point so far and the bookkeeping; final once :meth:`stop` is non-empty."""

    @property
    @abstractmethod
    def latest(self) -> IterationRecord | None:
        """The record of the most recent iteration (None before the first)."""

    def request_stop(self, reason: str = "callback", value: Any = True) -> None:
        """Ask the optimizer to stop before its next iteration, with ``{reason: value}``."""
        self._requested_stop[reason] = value

    def run(self, objective: Objective, callback: Callback | None = None) -> OptimResult:
        """Drive the optimizer to its end with a batched objective.

        Args:
            objective: ``(λ, n)`` candidates to ``(λ,)`` values, lower is better.
            callback: Called with each :class:`IterationRecord`; a truthy return stops the run.

        Returns:
            The final :class:`OptimResult`.
        """
        while not self.stop():
            candidates = self.ask()
            self.tell(candidates, objective(candidates))
            latest = self.latest
            if callback is not None and latest is not None and callback(latest):
                self.request_stop("callback")
        return self.result


optimizers: Registry[type[Optimizer]] = Registry("optimizer", entry_point_group="regkit.optimizers")
"""Derivative-free optimizers by name: ``cmaes``, ``powell``, ``nelder_mead`` and plugins."""


def minimize(objective: Objective, x0: Any, spec: ParamSpec, method: str = "cmaes",
             options: Any = None, callback: Callback | None = None) -> OptimResult:
    """Minimize a batched objective with a registered derivative-free method.

    Args:
        objective: ``(λ, n)`` float64 candidates (original units) to ``(λ,)`` values, lower is
            better; the whole population comes in one call. Local methods call it with λ = 1.
        x0: ``(n,)`` start, original units.
        spec: Names, units, scales and bounds of the coordinates.
        method: A name registered in :data:`optimizers`.
        options: The method's options dataclass or a dict of its fields (None: defaults).
        callback: Called after every iteration with its :class:`IterationRecord`; a truthy
            return stops the optimization.

    Returns:
        The best point, its value, counts, per-run stop reasons and the history.

    Raises:
        UnknownNameError: ``method`` is not registered (the message lists the known ones).
        InputError: An unknown or invalid option, or a bad ``x0``.
    """
    cls = optimizers.get(method)
    return cls(x0, spec, options).run(objective, callback)


# -- the gradient contract -------------------------------------------------------------------


class GradientProblem(Protocol):
    """What :func:`regkit.optim.minimize_torch` hands a :class:`GradientMethod`.

    Everything is in scaled coordinates ``z = x / scales`` (tensors of the loss's dtype and
    device); the problem converts to original units, evaluates the loss, keeps the best point, the
    history and the counts, and decides when to stop.

    Attributes:
        z0: ``(n,)`` start (a tensor not requiring grad).
        lower: ``(n,)`` lower bounds (``-inf`` where none).
        upper: ``(n,)`` upper bounds (``+inf`` where none).
        bounded: Whether any bound is finite.
    """

    z0: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    bounded: bool

    def evaluate(self, z: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Loss and its ``(n,)`` gradient with respect to ``z`` at ``clamp(z, lower, upper)``.

        Raises an exception private to the driver on a non-finite loss or gradient; a method
        lets it propagate.
        """
        ...

    def end_iteration(self) -> bool:
        """Close an iteration (history, callback, stop tests); True means: stop now."""
        ...


class GradientMethod(ABC):
    """Contract of a gradient method for :func:`regkit.optim.minimize_torch`.

    :meth:`run` iterates on a :class:`GradientProblem`: it evaluates the loss and gradient as
    often as it likes, calls ``problem.end_iteration()`` after each iteration and returns when
    that says True (or when the method itself can go no further). It never leaves the bounds for
    good: a method without bound handling of its own projects its iterate after each step.
    """

    name: ClassVar[str] = ""
    default_lr: ClassVar[float] = 0.1
    """Learning rate used when the options give none (in scaled units)."""

    @abstractmethod
    def run(self, problem: GradientProblem, lr: float, max_iterations: int) -> dict[str, Any]:
        """Iterate until ``problem.end_iteration()`` is True.

        Args:
            problem: The loss, bounds and bookkeeping, in scaled coordinates.
            lr: Learning rate in scaled units (methods with a line search may ignore it).
            max_iterations: An upper bound on iterations, as a safety net (the problem stops
                the run at this count itself).

        Returns:
            The method's own stop reasons when it ended before the problem said stop (e.g.
            ``{"converged": message}``), else ``{}``.
        """


gradient_methods: Registry[type[GradientMethod]] = Registry(
    "gradient method", entry_point_group="regkit.gradient_methods")
"""Gradient methods by name: ``adam``, ``lbfgs`` and plugins."""
