"""Optimizers: CMA-ES, Powell, Nelder–Mead, quadratic trust region, Adam, L-BFGS, starts.

CMA-ES comes from pycma, Powell and Nelder–Mead from scipy, Adam and L-BFGS from torch; the trust
region is a batched quadratic model.

``import regkit.optim`` registers the built-in methods but loads neither pycma, scipy nor torch:
each is imported when a method that needs it is first used. The contracts, the parameter
specification and the results are in :mod:`regkit.optim.base`.
"""

from __future__ import annotations

from regkit.optim.base import (
    Callback,
    GradientMethod,
    GradientProblem,
    IterationRecord,
    Objective,
    Optimizer,
    OptimizerStateError,
    OptimResult,
    ParamSpec,
    RunRecord,
    coerce_options,
    gradient_methods,
    minimize,
    optimizers,
)
from regkit.optim.cmaes import CMAES, CMAESOptions, RestartStrategy
from regkit.optim.gradient import LBFGS, Adam, GradientOptions, minimize_torch
from regkit.optim.local import LocalOptions, NelderMead, Powell
from regkit.optim.quadratic import Quadratic, QuadraticOptions
from regkit.optim.starts import (
    MultistartResult,
    best_starts,
    grid_starts,
    multistart,
    random_starts,
)

__all__ = [
    "CMAES",
    "LBFGS",
    "Adam",
    "CMAESOptions",
    "Callback",
    "GradientMethod",
    "GradientOptions",
    "GradientProblem",
    "IterationRecord",
    "LocalOptions",
    "MultistartResult",
    "NelderMead",
    "Objective",
    "OptimResult",
    "Optimizer",
    "OptimizerStateError",
    "ParamSpec",
    "Powell",
    "Quadratic",
    "QuadraticOptions",
    "RestartStrategy",
    "RunRecord",
    "best_starts",
    "coerce_options",
    "gradient_methods",
    "grid_starts",
    "minimize",
    "minimize_torch",
    "multistart",
    "optimizers",
    "random_starts",
]
