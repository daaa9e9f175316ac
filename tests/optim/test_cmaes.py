"""CMA-ES through pycma: convergence, scales, bounds, seeds, NaN values, restarts, bookkeeping."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest

from regkit.errors import InputError, ShapeError
from regkit.optim import (
    CMAES,
    OptimizerStateError,
    OptimResult,
    ParamSpec,
    RunRecord,
    minimize,
)

TIGHT = {"tol_fun": 1e-15, "tol_x": 1e-12}


def _popsize(run: RunRecord) -> int:
    """A CMA-ES run's population size (never None for a method with a population)."""
    assert run.popsize is not None
    return run.popsize


def check_bookkeeping(result: OptimResult) -> None:
    """Counts agree with each other, with the history and with the runs."""
    history = result.history
    assert result.iterations == len(history) == sum(r.iterations for r in result.runs)
    assert result.evaluations == sum(h.count for h in history) == history[-1].evaluations
    assert result.evaluations == sum(r.evaluations for r in result.runs)
    assert result.evaluations == sum(_popsize(r) * r.iterations for r in result.runs)
    for h in history:
        assert h.count == result.runs[h.run].popsize  # one population per iteration
    assert np.all(np.diff(result.history_array("evaluations")) > 0)
    assert np.all(np.diff(result.history_array("best_so_far")) <= 0)
    assert np.all(np.diff(result.history_array("run")) >= 0)
    assert [h.iteration for h in history] == list(range(1, len(history) + 1))
    assert len(result.stop_reasons) == len(result.runs)
    assert all(reasons for reasons in result.stop_reasons)
    assert result.value == min(r.best_value for r in result.runs)


def test_minimises_badly_scaled_ellipsoid_to_1e6_relative(ellipsoid: Any) -> None:
    result = minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, "cmaes",
                      {"seed": 1, **TIGHT})
    # 1e-6 of a scale: 1e-7 rad and 1e-5 mm; the start is 2.5 to 4 scales away.
    assert ellipsoid.scaled_error(result.x) < 1e-6
    assert result.value < 1e-12
    assert result.method == "cmaes"
    assert result.evaluations < 4000
    assert "tolfun" in result.stop_reasons[0] or "tolx" in result.stop_reasons[0]
    assert result.nonfinite == 0
    check_bookkeeping(result)


def test_first_population_spreads_by_the_scales(make_pose_spec: Any) -> None:
    spec = make_pose_spec()
    x0 = np.array([0.1, 0.2, 0.3, 10.0, 20.0, 30.0])
    opt = CMAES(x0, spec, {"popsize": 2000, "seed": 3})
    candidates = opt.ask()
    assert candidates.shape == (2000, 6)
    np.testing.assert_allclose(candidates.std(axis=0) / spec.scale_array, 1.0, atol=0.1)
    np.testing.assert_allclose((candidates.mean(axis=0) - x0) / spec.scale_array, 0.0, atol=0.1)


def test_bounds_respected_and_optimum_on_the_boundary(make_pose_spec: Any,
                                                      make_quadratic: Any) -> None:
    spec = make_pose_spec(lower=(-0.2,) * 3 + (-20.0,) * 3, upper=(0.2,) * 3 + (20.0,) * 3)
    optimum = np.array([0.3, -0.05, 0.1, 40.0, -5.0, -30.0])  # rx, tx, tz outside the box
    problem = make_quadratic(spec, optimum, np.diag(10.0 ** np.linspace(0.0, 2.0, 6)))
    seen: list[np.ndarray] = []

    def objective(x: np.ndarray) -> np.ndarray:
        seen.append(x.copy())
        return problem.objective(x)

    result = minimize(objective, np.zeros(6), spec, "cmaes", {"seed": 2, **TIGHT})
    everything = np.concatenate(seen)
    assert everything.shape[0] == result.evaluations
    assert np.all(spec.contains(everything))  # never outside, not even by rounding
    expected = np.clip(optimum, spec.lower_array, spec.upper_array)  # separable: clip
    np.testing.assert_allclose((result.x - expected) / spec.scale_array, 0.0, atol=1e-4)
    np.testing.assert_array_equal(result.x[[0, 3, 5]], expected[[0, 3, 5]])  # on the boundary


def test_one_parameter_is_refused_with_the_alternative() -> None:
    spec = ParamSpec(("a",), ("mm",), (6.0,), (-40.0,), (40.0,))
    with pytest.raises(InputError, match=r"at least 2 parameters.*powell"):
        CMAES(np.zeros(1), spec)


def test_x0_outside_bounds_is_refused(make_pose_spec: Any) -> None:
    spec = make_pose_spec(lower=(-0.2,) * 3 + (-20.0,) * 3, upper=(0.2,) * 3 + (20.0,) * 3)
    with pytest.raises(InputError, match=r"'ty'.*outside"):
        CMAES(np.array([0, 0, 0, 0, 25.0, 0]), spec)


def test_same_seed_bit_identical_and_global_rng_untouched(ellipsoid: Any) -> None:
    options = {"seed": 7, "max_iterations": 60}
    np.random.seed(0)  # noqa: NPY002  (the legacy global state is the point here)
    first = minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, "cmaes", options)
    np.random.seed(12345)  # noqa: NPY002  a different global state must not matter
    state = cast(tuple[Any, ...], np.random.get_state())  # noqa: NPY002
    second = minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, "cmaes", options)
    after = cast(tuple[Any, ...], np.random.get_state())  # noqa: NPY002
    assert np.array_equal(first.x, second.x)
    assert first.value == second.value
    assert first.history == second.history
    assert state[0] == after[0]
    assert np.array_equal(state[1], after[1])
    assert state[2] == after[2]


def test_different_seeds_take_different_paths(ellipsoid: Any) -> None:
    a = CMAES(np.zeros(6), ellipsoid.spec, {"seed": 1}).ask()
    b = CMAES(np.zeros(6), ellipsoid.spec, {"seed": 2}).ask()
    assert not np.allclose(a, b)
    runs = [minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, "cmaes",
                     {"seed": s, "max_iterations": 30}) for s in (1, 2)]
    assert runs[0].value != runs[1].value


def test_unseeded_run_reports_a_seed_that_repeats_it(ellipsoid: Any) -> None:
    opt = CMAES(np.zeros(6), ellipsoid.spec, {"max_iterations": 20})
    first = opt.run(ellipsoid.objective)
    again = minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, "cmaes",
                     {"seed": opt.seed, "max_iterations": 20})
    assert np.array_equal(first.x, again.x)


def test_nan_and_inf_values_are_counted_and_do_not_crash(ellipsoid: Any) -> None:
    returned_nonfinite = 0
    failures = np.random.default_rng(99)  # renders that fail now and then, whatever the pose

    def objective(x: np.ndarray) -> np.ndarray:
        nonlocal returned_nonfinite
        values = ellipsoid.objective(x)
        draw = failures.uniform(size=len(x))
        values[draw < 0.25] = np.nan
        values[draw > 0.95] = np.inf
        if returned_nonfinite == 0:
            values[:] = np.nan  # a whole population broken at once
        returned_nonfinite += int((~np.isfinite(values)).sum())
        return values

    result = minimize(objective, np.zeros(6), ellipsoid.spec, "cmaes", {"seed": 4, **TIGHT})
    assert result.nonfinite == returned_nonfinite > result.evaluations // 5
    assert np.isfinite(result.value)
    assert ellipsoid.scaled_error(result.x) < 1e-4
    assert np.isinf(result.history[0].best)
    assert np.isinf(result.history[0].median)
    check_bookkeeping(result)


def test_all_values_nan_stops_cleanly(ellipsoid: Any) -> None:
    result = minimize(lambda x: np.full(len(x), np.nan), np.zeros(6), ellipsoid.spec, "cmaes",
                      {"seed": 0, "max_evaluations": 500})
    assert result.nonfinite == result.evaluations > 0
    assert result.value == np.inf
    assert np.array_equal(result.x, np.zeros(6))
    assert result.stop_reasons[-1]


def test_budget_reasons_and_overshoot(ellipsoid: Any) -> None:
    result = minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, "cmaes",
                      {"seed": 0, "popsize": 12, "max_evaluations": 100})
    assert result.stop_reasons == [{"max_evaluations": 100}]
    assert 100 <= result.evaluations < 100 + 12
    result = minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, "cmaes",
                      {"seed": 0, "max_iterations": 7})
    assert result.stop_reasons == [{"max_iterations": 7}]
    assert result.iterations == 7


def sphere(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x) ** 2).sum(axis=1)


def test_ipop_doubles_the_population() -> None:
    spec = ParamSpec.unitless(6, scale=2.0)
    result = minimize(sphere, np.full(6, 3.0), spec, "cmaes",
                      {"seed": 0, "restarts": 3, "restart_strategy": "ipop", "tol_fun": 1e-8})
    assert [r.popsize for r in result.runs] == [9, 18, 36, 72]  # λ0 = 4 + ⌊3 ln 6⌋ = 9
    assert [r.regime for r in result.runs] == ["default", "large", "large", "large"]
    assert all(r.step == 1.0 for r in result.runs)
    for reasons in result.stop_reasons:  # every run ended by pycma, not by a budget
        assert reasons
        assert "max_evaluations" not in reasons
    check_bookkeeping(result)


def test_bipop_alternates_regimes_by_budget() -> None:
    spec = ParamSpec.unitless(6, scale=2.0)
    result = minimize(sphere, np.full(6, 3.0), spec, "cmaes",
                      {"seed": 5, "restarts": 3, "restart_strategy": "bipop", "tol_fun": 1e-8})
    runs = result.runs
    assert runs[0].regime == "default"
    assert runs[0].popsize == 9
    assert runs[0].step == 1.0
    large = [r for r in runs if r.regime == "large"]
    small = [r for r in runs if r.regime == "small"]
    assert [r.popsize for r in large] == [18, 36, 72]  # restarts=3 counts the large runs
    assert len(small) >= 2, "BIPOP should interleave small-population runs"
    assert len({r.step for r in small}) == len(small)  # a random step for each
    assert runs[-1].regime == "large"
    for i, run in enumerate(runs[1:], start=1):
        budget_large = sum(r.evaluations for r in runs[:i] if r.regime == "large")
        budget_small = sum(r.evaluations for r in runs[:i] if r.regime != "large")
        if run.regime == "small":
            assert budget_small < budget_large
            last_large = max(_popsize(r) for r in runs[:i] if r.regime == "large")
            assert 9 <= _popsize(run) <= last_large
            assert 0.01 <= run.step <= 1.0
            assert run.iterations <= 0.5 * budget_large / _popsize(run) + 1
        else:
            assert budget_small >= max(1, budget_large)
    check_bookkeeping(result)


@pytest.mark.slow
def test_restarts_beat_a_single_run_at_equal_budget_on_rastrigin(rastrigin: Any) -> None:
    # Rastrigin 6-D from x0 = 3 with steps of 2: one default-population run gets stuck in a local
    # minimum and stops early; restarts use the rest of the same budget. Same seed on all sides,
    # so the first runs coincide and the comparison measures what the restarts add.
    spec = ParamSpec.unitless(6, scale=2.0, lower=-5.12, upper=5.12)
    budget = 10_000
    found: dict[str, list[float]] = {"single": [], "ipop": [], "bipop": []}
    for seed in range(3):
        one = minimize(rastrigin, np.full(6, 3.0), spec, "cmaes",
                       {"seed": seed, "max_evaluations": budget})
        assert one.evaluations <= budget
        assert "max_evaluations" not in one.stop_reasons[0]
        found["single"].append(one.value)
        for strategy in ("ipop", "bipop"):
            many = minimize(rastrigin, np.full(6, 3.0), spec, "cmaes",
                            {"seed": seed, "max_evaluations": budget, "restarts": 20,
                             "restart_strategy": strategy})
            assert budget <= many.evaluations < budget + _popsize(many.runs[-1])
            assert len(many.runs) >= 3
            assert many.stop_reasons[-1]["max_evaluations"] == budget
            found[strategy].append(many.value)
    for strategy in ("ipop", "bipop"):
        pairs = zip(found[strategy], found["single"], strict=True)
        assert all(m < s for m, s in pairs), found
        assert np.mean(found[strategy]) < 0.5 * np.mean(found["single"]), found


def test_ask_tell_protocol(ellipsoid: Any) -> None:
    opt = CMAES(np.zeros(6), ellipsoid.spec, {"seed": 0, "max_iterations": 3})
    assert opt.stop() == {}
    assert opt.latest is None
    with pytest.raises(OptimizerStateError, match="without a pending ask"):
        opt.tell(np.zeros((9, 6)), np.zeros(9))
    candidates = opt.ask()
    with pytest.raises(OptimizerStateError, match="twice"):
        opt.ask()
    with pytest.raises(InputError, match="candidates of the last ask"):
        opt.tell(candidates + 1.0, ellipsoid.objective(candidates))
    with pytest.raises(ShapeError, match=r"\(9,\)"):
        opt.tell(candidates, np.zeros(8))
    opt.tell(candidates, ellipsoid.objective(candidates))  # still waiting: the errors kept it
    assert opt.latest is not None
    assert opt.latest.count == 9
    running = opt.result
    assert running.stop_reasons == [{}]
    assert running.evaluations == 9
    while not opt.stop():
        c = opt.ask()
        opt.tell(c, ellipsoid.objective(c))
    assert opt.stop() == {"max_iterations": 3}
    with pytest.raises(OptimizerStateError, match="stopped"):
        opt.ask()


def test_values_as_torch_tensor_are_accepted(ellipsoid: Any) -> None:
    torch = pytest.importorskip("torch")
    result = minimize(lambda x: torch.as_tensor(ellipsoid.objective(x)).requires_grad_(),
                      np.zeros(6), ellipsoid.spec, "cmaes", {"seed": 0, "max_iterations": 5})
    assert result.evaluations == 45


def test_callback_stops_the_run(ellipsoid: Any) -> None:
    seen: list[int] = []

    def callback(record: Any) -> bool:
        seen.append(record.iteration)
        return record.iteration >= 5

    result = minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, "cmaes",
                      {"seed": 0, "restarts": 2}, callback=callback)
    assert seen == [1, 2, 3, 4, 5]
    assert result.iterations == 5
    assert result.stop_reasons == [{"callback": True}]


def test_quiet_unless_verbose(ellipsoid: Any, capsys: pytest.CaptureFixture[str]) -> None:
    minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, "cmaes",
             {"seed": 0, "max_iterations": 5})
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""
    minimize(ellipsoid.objective, np.zeros(6), ellipsoid.spec, "cmaes",
             {"seed": 0, "max_iterations": 5, "verbose": True})
    assert "cmaes: run 0" in capsys.readouterr().out


@pytest.mark.parametrize(("options", "key"), [
    ({"popsize": 1}, "popsize"),
    ({"max_evaluations": 0}, "max_evaluations"),
    ({"tol_fun": -1.0}, "tol_fun"),
    ({"seed": 1.5}, "seed"),
    ({"restarts": -1}, "restarts"),
    ({"restart_strategy": "lpop"}, "restart_strategy"),
    ({"restarts": 2, "restart_strategy": "none"}, "restart_strategy"),
    ({"verbose": 1}, "verbose"),
])
def test_invalid_option_values_name_the_key(ellipsoid: Any, options: dict[str, Any],
                                            key: str) -> None:
    with pytest.raises(InputError) as info:
        CMAES(np.zeros(6), ellipsoid.spec, options)
    assert info.value.key == key
    assert f"'{key}'" in str(info.value)
