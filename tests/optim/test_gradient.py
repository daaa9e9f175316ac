"""Adam and L-BFGS for torch objectives: scaled coordinates, stop reasons, non-finite losses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from regkit.errors import InputError, ShapeError, UnknownNameError
from regkit.optim import minimize_torch

torch = pytest.importorskip("torch")


def torch_loss(problem: Any) -> Any:
    """The problem's quadratic as a differentiable torch loss of one ``(n,)`` tensor."""
    a = torch.as_tensor(problem.matrix)
    c = torch.as_tensor(problem.optimum)
    s = torch.as_tensor(problem.spec.scale_array)

    def loss(x: Any) -> Any:
        d = (x - c) / s
        return d @ a @ d

    return loss


@pytest.mark.parametrize(("method", "tolerance"), [("adam", 1e-4), ("lbfgs", 1e-8)])
def test_reaches_the_minimum_of_a_mixed_scale_quadratic(rotated_quadratic: Any, method: str,
                                                        tolerance: float) -> None:
    result = minimize_torch(torch_loss(rotated_quadratic), np.zeros(6), rotated_quadratic.spec,
                            method)
    assert rotated_quadratic.scaled_error(result.x) < tolerance
    assert result.method == method
    assert result.nonfinite == 0
    assert result.evaluations == sum(h.count for h in result.history)
    assert result.iterations == len(result.history) < 1000
    assert np.all(np.diff(result.history_array("best_so_far")) <= 0)
    reasons = result.stop_reasons[0]
    assert "plateau" in reasons or "tol_grad" in reasons


def test_adam_takes_one_evaluation_per_iteration(rotated_quadratic: Any) -> None:
    result = minimize_torch(torch_loss(rotated_quadratic), np.zeros(6), rotated_quadratic.spec,
                            "adam", {"max_iterations": 25})
    assert result.stop_reasons == [{"max_iterations": 25}]
    assert result.evaluations == result.iterations == 25
    assert all(h.count == 1 for h in result.history)


def test_scaled_coordinates_let_one_learning_rate_fit_mm_and_radians(rotated_quadratic: Any
                                                                     ) -> None:
    # Adam moves each coordinate by about lr per step: 0.05 scales (5 mrad, 0.5 mm) when scaled,
    # 0.05 rad and 0.05 mm when not, which cannot cover the 40 mm to the optimum in 400 steps.
    loss = torch_loss(rotated_quadratic)
    options = {"max_iterations": 400}
    scaled = minimize_torch(loss, np.zeros(6), rotated_quadratic.spec, "adam", options)
    raw = minimize_torch(loss, np.zeros(6), rotated_quadratic.spec, "adam",
                         {**options, "scaled": False})
    assert rotated_quadratic.scaled_error(scaled.x) < 1e-3
    assert rotated_quadratic.scaled_error(raw.x) > 1.0


@pytest.mark.parametrize("method", ["adam", "lbfgs"])
def test_non_finite_loss_stops_and_returns_the_best_finite_point(rotated_quadratic: Any,
                                                                 method: str) -> None:
    quadratic = torch_loss(rotated_quadratic)
    evaluated: list[float] = []

    def loss(x: Any) -> Any:
        value = quadratic(x)
        if float(x[3].detach()) > 20.0:  # the optimum (tx = 40 mm) lies beyond a cliff
            value = value * float("nan")
        evaluated.append(float(value.detach()))
        return value

    result = minimize_torch(loss, np.zeros(6), rotated_quadratic.spec, method)
    assert result.stop_reasons == [{"non_finite_loss": pytest.approx(np.nan, nan_ok=True)}]
    assert np.isnan(evaluated[-1])
    assert result.nonfinite == 1
    assert np.isfinite(result.value)
    assert result.x[3] <= 20.0
    assert result.value == min(v for v in evaluated if np.isfinite(v))
    assert result.evaluations == len(evaluated)


def test_bounds_are_kept_by_projection(make_pose_spec: Any, make_quadratic: Any) -> None:
    spec = make_pose_spec(lower=(-0.2,) * 3 + (-20.0,) * 3, upper=(0.2,) * 3 + (20.0,) * 3)
    optimum = np.array([0.3, -0.05, 0.1, 40.0, -5.0, -30.0])
    problem = make_quadratic(spec, optimum, np.diag(10.0 ** np.linspace(0.0, 2.0, 6)))
    quadratic = torch_loss(problem)
    seen: list[np.ndarray] = []

    def loss(x: Any) -> Any:
        seen.append(x.detach().numpy().copy())
        return quadratic(x)

    expected = np.clip(optimum, spec.lower_array, spec.upper_array)
    for method, tolerance in (("adam", 1e-3), ("lbfgs", 1e-6)):
        seen.clear()
        result = minimize_torch(loss, np.zeros(6), spec, method)
        assert np.all(spec.contains(np.array(seen)))
        np.testing.assert_allclose((result.x - expected) / spec.scale_array, 0.0,
                                   atol=tolerance)


def test_tensor_start_keeps_dtype_and_callback_stops(rotated_quadratic: Any) -> None:
    dtypes: list[Any] = []
    quadratic = torch_loss(rotated_quadratic)

    def loss(x: Any) -> Any:
        dtypes.append(x.dtype)
        return quadratic(x.double())

    result = minimize_torch(loss, torch.zeros(6, dtype=torch.float32), rotated_quadratic.spec,
                            "adam", callback=lambda record: record.iteration == 3)
    assert set(dtypes) == {torch.float32}
    assert result.stop_reasons == [{"callback": True}]
    assert result.iterations == 3


def test_bad_losses_and_options_are_refused(rotated_quadratic: Any) -> None:
    spec = rotated_quadratic.spec
    with pytest.raises(ShapeError, match="scalar"):
        minimize_torch(lambda x: x * 2.0, np.zeros(6), spec)
    with pytest.raises(InputError, match="differentiabl"):
        minimize_torch(lambda _x: torch.tensor(1.0), np.zeros(6), spec)
    with pytest.raises(InputError, match=r"'patiense'.*did you mean 'patience'"):
        minimize_torch(torch_loss(rotated_quadratic), np.zeros(6), spec,
                       options={"patiense": 3})
    with pytest.raises(InputError) as info:
        minimize_torch(torch_loss(rotated_quadratic), np.zeros(6), spec, options={"lr": -1.0})
    assert info.value.key == "lr"
    with pytest.raises(UnknownNameError, match=r"unknown gradient method 'sgd'.*adam, lbfgs"):
        minimize_torch(torch_loss(rotated_quadratic), np.zeros(6), spec, "sgd")
