"""Powell and Nelder–Mead (scipy), scaled coordinates: minima, bounds, NaN values, stop reasons."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from regkit.optim import OptimizerStateError, Powell, minimize, optimizers


def test_powell_reaches_the_minimum_of_a_mixed_scale_quadratic(rotated_quadratic: Any) -> None:
    result = minimize(rotated_quadratic.objective, np.zeros(6), rotated_quadratic.spec, "powell")
    assert rotated_quadratic.scaled_error(result.x) < 1e-6
    assert result.value < 1e-12
    assert "converged" in result.stop_reasons[0]
    assert result.method == "powell"
    assert result.runs[0].popsize is None
    assert result.evaluations == sum(h.count for h in result.history) == \
        result.history[-1].evaluations
    assert result.iterations == len(result.history) >= 2


def test_nelder_mead_reaches_the_minimum_of_a_mixed_scale_quadratic(rotated_quadratic: Any
                                                                    ) -> None:
    result = minimize(rotated_quadratic.objective, np.zeros(6), rotated_quadratic.spec,
                      "nelder_mead")
    assert rotated_quadratic.scaled_error(result.x) < 1e-5
    assert "converged" in result.stop_reasons[0]
    assert result.evaluations == sum(h.count for h in result.history)


@pytest.mark.parametrize(("method", "tolerance"), [("powell", 1e-4), ("nelder_mead", 0.2)])
def test_bounds_are_respected(method: str, tolerance: float, make_pose_spec: Any,
                              make_quadratic: Any) -> None:
    # Nelder-Mead's simplex flattens against the bounds and crawls (it runs out of its default
    # budget here): it is checked for staying inside and getting close, Powell for converging.
    spec = make_pose_spec(lower=(-0.2,) * 3 + (-20.0,) * 3, upper=(0.2,) * 3 + (20.0,) * 3)
    optimum = np.array([0.3, -0.05, 0.1, 40.0, -5.0, -30.0])
    problem = make_quadratic(spec, optimum, np.diag(10.0 ** np.linspace(0.0, 2.0, 6)))
    seen: list[np.ndarray] = []

    def objective(x: np.ndarray) -> np.ndarray:
        assert x.shape == (1, 6)
        seen.append(x[0].copy())
        return problem.objective(x)

    result = minimize(objective, np.full(6, 0.01), spec, method)
    assert np.all(spec.contains(np.array(seen)))
    assert len(seen) == result.evaluations
    expected = np.clip(optimum, spec.lower_array, spec.upper_array)
    np.testing.assert_allclose((result.x - expected) / spec.scale_array, 0.0, atol=tolerance)


def test_nan_values_are_counted_and_avoided(rotated_quadratic: Any) -> None:
    # The objective is broken (NaN) for tz > 35 mm; the optimum (tz = 30) is inside the good part.
    def objective(x: np.ndarray) -> np.ndarray:
        values = rotated_quadratic.objective(x)
        values[x[:, 5] > 35.0] = np.nan
        return values

    result = minimize(objective, np.zeros(6), rotated_quadratic.spec, "powell")
    assert result.nonfinite > 0
    assert rotated_quadratic.scaled_error(result.x) < 1e-5


def test_budget_and_callback_reasons(rotated_quadratic: Any) -> None:
    p = rotated_quadratic
    result = minimize(p.objective, np.zeros(6), p.spec, "powell", {"max_evaluations": 40})
    assert result.stop_reasons == [{"max_evaluations": 40}]
    result = minimize(p.objective, np.zeros(6), p.spec, "nelder_mead", {"max_iterations": 10})
    assert result.stop_reasons == [{"max_iterations": 10}]
    result = minimize(p.objective, np.zeros(6), p.spec, "powell",
                      callback=lambda record: record.iteration >= 2)
    assert result.stop_reasons == [{"callback": True}]
    assert result.iterations >= 2


@pytest.mark.parametrize("method", ["powell", "nelder_mead"])
@pytest.mark.parametrize("budget", [1, 5, 37])
def test_the_evaluation_budget_is_kept_exactly(rotated_quadratic: Any, method: str,
                                               budget: int) -> None:
    """Not one evaluation past ``max_evaluations``; a budget of 1 leaves the start as it is."""
    p = rotated_quadratic
    seen: list[int] = []

    def counted(x: np.ndarray) -> np.ndarray:
        seen.append(len(np.atleast_2d(x)))
        return np.asarray(p.objective(x))

    start = np.full(6, 0.1)
    result = minimize(counted, start, p.spec, method, {"max_evaluations": budget})
    assert sum(seen) == budget
    assert result.evaluations == budget
    if budget == 1:
        np.testing.assert_array_equal(result.x, start)


def test_not_ask_tell_but_runs_through_the_registry(rotated_quadratic: Any) -> None:
    cls = optimizers.get("powell")
    assert cls is Powell
    assert not cls.supports_ask_tell
    opt = cls(np.zeros(6), rotated_quadratic.spec)
    with pytest.raises(OptimizerStateError, match="not ask/tell"):
        opt.ask()
    with pytest.raises(OptimizerStateError, match="not ask/tell"):
        opt.tell(np.zeros((1, 6)), np.zeros(1))
    assert opt.stop() == {}
    result = opt.run(rotated_quadratic.objective)
    assert opt.stop() == result.stop_reasons[0] != {}
    with pytest.raises(OptimizerStateError, match="already run"):
        opt.run(rotated_quadratic.objective)
