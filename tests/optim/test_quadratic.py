"""The batched quadratic-model trust region.

Exact on quadratics, flat directions, bounds, noise, NaN values, budgets and the ask/tell contract.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from regkit.optim import OptimizerStateError, Quadratic, minimize, optimizers
from regkit.optim.quadratic import design, fit_quadratic, model_step


def test_the_design_fits_a_full_quadratic_exactly() -> None:
    rng = np.random.default_rng(0)
    n = 6
    s = design(n)
    assert s.shape == (n * n + n + 1, n)
    assert np.all(s[0] == 0)
    a = rng.normal(size=(n, n))
    h = a @ a.T
    g = rng.normal(size=n)
    values = 3.0 + s @ g + 0.5 * np.einsum("bi,ij,bj->b", s, h, s)
    g_fit, h_fit = fit_quadratic(s, values)
    np.testing.assert_allclose(g_fit, g, atol=1e-9)
    np.testing.assert_allclose(h_fit, h, atol=1e-9)
    # the step is Newton's, capped
    np.testing.assert_allclose(model_step(g, h, 1e9), -np.linalg.solve(h, g), rtol=1e-7)
    assert np.linalg.norm(model_step(g, h, 0.5)) == pytest.approx(0.5)


def test_the_minimal_design_fits_exactly_too(rotated_quadratic: Any) -> None:
    s = design(6, "minimal")
    assert s.shape == (28, 6)
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 6))
    g = rng.normal(size=6)
    values = s @ g + 0.5 * np.einsum("bi,ij,bj->b", s, a @ a.T, s)
    g_fit, h_fit = fit_quadratic(s, values)
    np.testing.assert_allclose(g_fit, g, atol=1e-9)
    np.testing.assert_allclose(h_fit, a @ a.T, atol=1e-9)
    p = rotated_quadratic
    result = minimize(p.objective, np.zeros(6), p.spec, "quadratic",
                      {"tol_x": 1e-4, "max_evaluations": 3000, "design": "minimal"})
    assert p.scaled_error(result.x) < 1e-6
    assert result.runs[0].popsize == 28


def test_reaches_the_minimum_of_a_mixed_scale_quadratic(rotated_quadratic: Any) -> None:
    p = rotated_quadratic
    result = minimize(p.objective, np.zeros(6), p.spec, "quadratic",
                      {"tol_x": 1e-4, "max_evaluations": 3000})
    assert p.scaled_error(result.x) < 1e-6
    assert result.value < 1e-10
    assert result.method == "quadratic"
    assert result.runs[0].popsize == 43
    assert result.evaluations == sum(h.count for h in result.history) == \
        result.history[-1].evaluations
    assert set(result.stop_reasons[0]) & {"tol_x", "tol_fun"}


def test_a_nearly_flat_direction_gets_its_full_newton_step(ellipsoid: Any) -> None:
    # condition 1e4: the flat axis is found in a few designs, not crawled along
    p = ellipsoid
    result = minimize(p.objective, np.zeros(6), p.spec, "quadratic",
                      {"radius": 1.0, "max_step": 8.0, "tol_x": 1e-3, "max_evaluations": 600})
    assert p.scaled_error(result.x) < 1e-4
    assert result.evaluations <= 600


def test_bounds_are_respected(make_pose_spec: Any, make_quadratic: Any) -> None:
    spec = make_pose_spec(lower=(-0.2,) * 3 + (-20.0,) * 3, upper=(0.2,) * 3 + (20.0,) * 3)
    optimum = np.array([0.3, -0.05, 0.1, 40.0, -5.0, -30.0])
    problem = make_quadratic(spec, optimum, np.diag(10.0 ** np.linspace(0.0, 2.0, 6)))
    seen: list[np.ndarray] = []

    def objective(x: np.ndarray) -> np.ndarray:
        seen.append(x.copy())
        return problem.objective(x)

    result = minimize(objective, np.full(6, 0.01), spec, "quadratic",
                      {"tol_x": 1e-4, "tol_fun": 1e-14, "max_evaluations": 4000})
    assert np.all(spec.contains(np.concatenate(seen)))
    expected = np.clip(optimum, spec.lower_array, spec.upper_array)
    # at the bound, half the design collapses onto the centre: close, not Newton-exact
    np.testing.assert_allclose((result.x - expected) / spec.scale_array, 0.0, atol=5e-3)
    # converged, not stopped by the budget (a step a bound cuts short never grows the radius)
    assert set(result.stop_reasons[0]) & {"tol_x", "tol_fun"}
    assert result.evaluations < 1000


def test_noise_smaller_than_the_design_is_averaged_out(rotated_quadratic: Any) -> None:
    p = rotated_quadratic
    rng = np.random.default_rng(1)

    def noisy(x: np.ndarray) -> np.ndarray:
        return p.objective(x) + 1e-3 * rng.normal(size=len(x))

    result = minimize(noisy, np.zeros(6), p.spec, "quadratic",
                      {"tol_x": 0.05, "max_evaluations": 2000})
    assert p.scaled_error(result.x) < 0.05


@pytest.mark.parametrize("kind", ["full", "minimal"])
def test_nan_values_are_counted_and_avoided(rotated_quadratic: Any, kind: str) -> None:
    def objective(x: np.ndarray) -> np.ndarray:
        values = rotated_quadratic.objective(x)
        values[x[:, 5] > 35.0] = np.nan
        return values

    result = minimize(objective, np.zeros(6), rotated_quadratic.spec, "quadratic",
                      {"tol_x": 1e-4, "max_evaluations": 4000, "design": kind})
    assert result.nonfinite > 0
    assert np.isfinite(result.value)
    assert rotated_quadratic.scaled_error(result.x) < 1e-3


def test_a_design_too_damaged_to_fit_is_a_failed_step(rotated_quadratic: Any) -> None:
    # one NaN in a minimal design leaves fewer points than coefficients: no model is fitted
    # from it (a minimum-norm guess would step anywhere); the radius halves instead
    p = rotated_quadratic
    opt = Quadratic(np.zeros(6), p.spec, {"design": "minimal", "radius": 1.0})
    cands = opt.ask()
    values = p.objective(cands)
    values[5] = np.nan
    opt.tell(cands, values)
    np.testing.assert_array_equal(opt.ask(), opt.spec.from_scaled(
        opt.spec.to_scaled(cands[values == np.nanmin(values)][0]) + 0.5 * design(6, "minimal")))


def test_budgets_callback_and_the_ask_tell_contract(rotated_quadratic: Any) -> None:
    p = rotated_quadratic
    result = minimize(p.objective, np.zeros(6), p.spec, "quadratic", {"max_evaluations": 50})
    assert result.stop_reasons == [{"max_evaluations": 50}]
    assert result.evaluations == 86
    result = minimize(p.objective, np.zeros(6), p.spec, "quadratic", {"max_iterations": 1})
    assert result.stop_reasons == [{"max_iterations": 1}]
    result = minimize(p.objective, np.zeros(6), p.spec, "quadratic",
                      callback=lambda record: record.iteration >= 2)
    assert result.stop_reasons == [{"callback": True}]
    assert result.iterations == 2
    assert optimizers.get("quadratic") is Quadratic
    opt = Quadratic(np.zeros(6), p.spec)
    with pytest.raises(OptimizerStateError, match="without ask"):
        opt.tell(np.zeros((43, 6)), np.zeros(43))
    cands = opt.ask()
    with pytest.raises(OptimizerStateError, match="twice"):
        opt.ask()
    opt.tell(cands, p.objective(cands))
    assert opt.latest is not None
    assert opt.latest.count == 43


def test_the_final_step_evaluates_the_last_models_answer(rotated_quadratic: Any) -> None:
    # On a quadratic one design fits the model exactly: its step lands on the minimum, which
    # only the final step evaluates; without it the answer is the best design point.
    p = rotated_quadratic
    options = {"max_iterations": 1, "max_step": 1e6, "design": "minimal"}
    plain = minimize(p.objective, np.zeros(6), p.spec, "quadratic", options)
    assert plain.evaluations == 28
    assert p.scaled_error(plain.x) > 0.1
    final = minimize(p.objective, np.zeros(6), p.spec, "quadratic",
                     {**options, "final_step": True})
    assert final.evaluations == 29
    assert final.iterations == 2
    assert final.history[-1].count == 1
    assert p.scaled_error(final.x) < 1e-8
    assert final.stop_reasons == [{"max_iterations": 1}]
    # on a function the model does not fit exactly the final point is the model's guess, kept
    # only where it beats the design
    def steep(x: np.ndarray) -> np.ndarray:
        return p.objective(x) ** 1.5

    before = minimize(steep, np.zeros(6), p.spec, "quadratic", options)
    after = minimize(steep, np.zeros(6), p.spec, "quadratic", {**options, "final_step": True})
    assert after.evaluations == before.evaluations + 1
    assert after.value <= before.value
    assert after.value == min(before.value, after.history[-1].best)
    # where the last model's step is nil (its centre is the minimum) nothing is scored twice
    exact = {"tol_x": 0.3, "design": "minimal"}
    assert minimize(p.objective, np.zeros(6), p.spec, "quadratic",
                    {**exact, "final_step": True}).evaluations == \
        minimize(p.objective, np.zeros(6), p.spec, "quadratic", exact).evaluations


def test_no_final_step_after_a_failed_design_or_a_callback(rotated_quadratic: Any) -> None:
    p = rotated_quadratic
    options = {"max_iterations": 1, "final_step": True, "design": "minimal"}
    # every value NaN: the design failed, the centre went back to the start (already scored)
    nan = minimize(lambda x: np.full(len(x), np.nan), np.zeros(6), p.spec, "quadratic", options)
    assert nan.evaluations == 28
    # the last design's centre worse than the best (a trap at the minimum the first model
    # finds): the centre goes back to an evaluated point, which is not scored again
    def trapped(x: np.ndarray) -> np.ndarray:
        z = p.spec.to_scaled(np.asarray(x)) - p.spec.to_scaled(p.optimum)
        return np.where(np.linalg.norm(z, axis=1) < 1e-6, 1e6, p.objective(x))

    trap = {**options, "max_iterations": 2, "max_step": 1e6}
    run = minimize(trapped, np.zeros(6), p.spec, "quadratic", trap)
    assert [h.count for h in run.history] == [28, 28]
    assert minimize(trapped, np.zeros(6), p.spec, "quadratic",
                    {**trap, "max_iterations": 3}).history[-1].count == 1
    # a callback that stops the run wins over the final point, and the run's own reason stays
    stopped = minimize(p.objective, np.zeros(6), p.spec, "quadratic", options,
                       callback=lambda _record: True)
    assert stopped.evaluations == 28
    assert stopped.stop_reasons == [{"max_iterations": 1, "callback": True}]


def test_the_final_step_keeps_a_converged_runs_reason(rotated_quadratic: Any) -> None:
    p = rotated_quadratic

    def steep(x: np.ndarray) -> np.ndarray:
        return p.objective(x) ** 1.5

    options = {"tol_x": 0.05, "tol_fun": 1e-2, "design": "minimal"}
    plain = minimize(steep, np.zeros(6), p.spec, "quadratic", options)
    final = minimize(steep, np.zeros(6), p.spec, "quadratic", {**options, "final_step": True})
    assert list(plain.stop_reasons[0]) == list(final.stop_reasons[0]) == ["tol_fun"]
    assert final.evaluations == plain.evaluations + 1
    assert final.history[-1].count == 1


def test_a_final_tell_that_raises_can_be_told_again(rotated_quadratic: Any) -> None:
    from regkit.errors import ShapeError

    p = rotated_quadratic
    opt = Quadratic(np.zeros(6), p.spec, {"max_iterations": 1, "final_step": True,
                                          "design": "minimal"})
    cands = opt.ask()
    opt.tell(cands, p.objective(cands))
    assert not opt.stop()
    last = opt.ask()
    assert last.shape == (1, 6)
    with pytest.raises(ShapeError):
        opt.tell(last, np.zeros(3))
    again = opt.ask()
    np.testing.assert_array_equal(again, last)
    opt.tell(again, p.objective(again))
    assert opt.stop() == {"max_iterations": 1}
    assert opt.result.evaluations == 29


def test_bad_options_are_refused() -> None:
    from regkit.errors import InputError
    from regkit.optim import ParamSpec

    with pytest.raises(InputError, match="radius"):
        Quadratic(np.zeros(2), ParamSpec.unitless(2), {"radius": 0})
    with pytest.raises(InputError):
        Quadratic(np.zeros(2), ParamSpec.unitless(2), {"radios": 1})
    with pytest.raises(InputError, match="design"):
        Quadratic(np.zeros(2), ParamSpec.unitless(2), {"design": "sparse"})
    with pytest.raises(InputError, match="final_step"):
        Quadratic(np.zeros(2), ParamSpec.unitless(2), {"final_step": "yes"})
