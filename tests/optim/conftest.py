"""Test problems for the optimizers: mixed-unit poses, badly scaled quadratics, Rastrigin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from regkit.optim import ParamSpec

OPTIMUM = np.array([0.3, -0.2, 0.25, 40.0, -25.0, 30.0])  # rad, rad, rad, mm, mm, mm


@dataclass(frozen=True, eq=False)
class Problem:
    """A batched objective ``(λ, n) -> (λ,)`` with a known minimiser."""

    spec: ParamSpec
    optimum: np.ndarray
    objective: Callable[[np.ndarray], np.ndarray]
    matrix: np.ndarray

    def scaled_error(self, x: np.ndarray) -> float:
        """Largest distance to the optimum, in scales (0.1 rad, 10 mm)."""
        return float(np.max(np.abs((x - self.optimum) / self.spec.scale_array)))


def pose_spec(lower: tuple[float, ...] | None = None,
              upper: tuple[float, ...] | None = None) -> ParamSpec:
    """Rotation vector (rad, scale 0.1) and translation (mm, scale 10)."""
    return ParamSpec(names=("rx", "ry", "rz", "tx", "ty", "tz"), units=("rad",) * 3 + ("mm",) * 3,
                     scales=(0.1,) * 3 + (10.0,) * 3, lower=lower, upper=upper)


def quadratic(spec: ParamSpec, optimum: np.ndarray, matrix: np.ndarray) -> Problem:
    """``f(x) = dᵀ A d`` with ``d = (x - optimum) / scales``."""

    def objective(x: np.ndarray) -> np.ndarray:
        d = (np.asarray(x) - optimum) / spec.scale_array
        return np.einsum("bi,ij,bj->b", d, matrix, d)

    return Problem(spec, optimum, objective, matrix)


@pytest.fixture
def ellipsoid() -> Problem:
    """Shifted ellipsoid in 6-D, axis ratios 1 to 100 (condition 1e4), mm and radians mixed."""
    return quadratic(pose_spec(), OPTIMUM, np.diag(10.0 ** np.linspace(0.0, 4.0, 6)))


@pytest.fixture
def rotated_quadratic() -> Problem:
    """A non-separable quadratic (random rotation, condition ~30) in the same mixed units."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    return quadratic(pose_spec(), OPTIMUM, q @ np.diag(10.0 ** np.linspace(0.0, 1.5, 6)) @ q.T)


def _rastrigin(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return 10.0 * x.shape[1] + (x**2 - 10.0 * np.cos(2.0 * np.pi * x)).sum(axis=1)


@pytest.fixture
def rastrigin() -> Callable[[np.ndarray], np.ndarray]:
    """Rastrigin, batched; global minimum 0 at the origin, local minima near the integers."""
    return _rastrigin


@pytest.fixture
def make_pose_spec() -> Callable[..., ParamSpec]:
    """``make_pose_spec(lower=None, upper=None)``: the mixed-unit 6-D spec, optionally bounded."""
    return pose_spec


@pytest.fixture
def make_quadratic() -> Callable[[ParamSpec, np.ndarray, np.ndarray], Problem]:
    """``make_quadratic(spec, optimum, matrix)``: a quadratic problem."""
    return quadratic
