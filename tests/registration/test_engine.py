"""The one registration engine on toy problems with known optima.

Every optimizer, restarts, starts, growing parameters, progress, the record, determinism, and a
problem from outside.
"""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest
import torch

import regkit.registration.engine as engine_module
from regkit.errors import InputError
from regkit.optim import ParamSpec
from regkit.registration.engine import Level, LevelOptions, Problem, Progress, run

OPTIMUM = np.array([0.7, -1.3, 2.1])


class Bowl(Level):
    """A shifted quadratic bowl (optionally with a ripple that traps local methods)."""

    def __init__(self, size: int = 3, ripple: float = 0.0, higher_is_better: bool = False):
        self.spec = ParamSpec.unitless(size, scale=1.0, lower=-8.0, upper=8.0)
        self.ripple = ripple
        self.higher_is_better = higher_is_better
        self.calls = 0

    def _value(self, x: Any, lib: Any) -> Any:
        """The same formula on numpy arrays (``lib`` np) or torch tensors (``lib`` torch)."""
        d = x[..., :3] - lib.asarray(OPTIMUM, dtype=x.dtype)
        value = (d ** 2).sum(-1) + ((x[..., 3:] - 0.5) ** 2).sum(-1)
        if self.ripple:
            value = value + self.ripple * (1 - lib.cos(3 * d)).sum(-1)
        return value

    def losses(self, params: np.ndarray) -> np.ndarray:
        self.calls += params.shape[0]
        return np.asarray(self._value(params, np), dtype=np.float64)

    def loss(self, params: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self._value(params, torch)


class BowlProblem:
    """The problem builds one bowl per level; a level may add coordinates."""

    metric = "bowl"
    higher_is_better = False

    def __init__(self, sizes: tuple[int, ...] = (3,), ripple: float = 0.0):
        self.sizes, self.ripple = sizes, ripple
        self.built: list[Bowl] = []

    def level(self, index: int, options: LevelOptions) -> Bowl:  # noqa: ARG002 - Problem protocol
        bowl = Bowl(self.sizes[min(index, len(self.sizes) - 1)], self.ripple)
        self.built.append(bowl)
        return bowl


def _level(method: str, **options: Any) -> LevelOptions:
    return LevelOptions(method=method, options=options)


@pytest.mark.parametrize(("method", "options"), [
    ("cmaes", {"popsize": 8, "max_evaluations": 1500, "tol_x": 1e-6}),
    ("powell", {"max_evaluations": 600, "tol_x": 1e-6}),
    ("nelder_mead", {"max_evaluations": 1500, "tol_x": 1e-7}),
    ("adam", {"lr": 0.1, "max_iterations": 400}),
    ("lbfgs", {"max_iterations": 50}),
])
def test_every_optimizer_finds_the_optimum(method: str, options: dict[str, Any]) -> None:
    problem = BowlProblem()
    result = run(problem, [_level(method, **options)], seed=1)
    np.testing.assert_allclose(result.x, OPTIMUM, atol=2e-3)
    assert result.score == pytest.approx(0.0, abs=1e-5)
    # the record: one level, its method, every evaluation counted (the result's score is one)
    (facts,) = result.levels
    assert facts["method"] == method
    assert facts["level"] == 0
    assert facts["stage"] == "rigid"
    assert result.evaluations == facts["evaluations"]
    if method not in ("adam", "lbfgs"):
        assert result.evaluations == problem.built[0].calls
    assert result.history
    assert result.history[-1].best == pytest.approx(result.score, abs=1e-4)


def test_cmaes_restarts_escape_a_rippled_bowl_and_are_recorded() -> None:
    levels = [_level("cmaes", popsize=6, max_evaluations=4000, restarts=4, tol_x=1e-7)]
    result = run(BowlProblem(ripple=3.0), levels, seed=2, x0=[-4.0, 4.0, -4.0])
    np.testing.assert_allclose(result.x, OPTIMUM, atol=1e-2)
    assert len(result.stop_reasons) >= 2      # one entry per CMA-ES run


def test_starts_are_screened_and_counted() -> None:
    problem = BowlProblem(ripple=3.0)
    result = run(problem, [_level("powell", max_evaluations=300)], x0=[-6.0, 6.0, -6.0],
                 starts=64, start_spread=6.0, seed=0)
    assert result.evaluations == problem.built[0].calls == result.levels[0]["evaluations"]
    assert result.evaluations >= 64 + 1
    # the screened best start is where the optimizer began: better than the given start
    without = run(BowlProblem(ripple=3.0), [_level("powell", max_evaluations=300)],
                  x0=[-6.0, 6.0, -6.0], seed=0)
    assert result.score < without.score


def test_levels_run_in_order_and_may_add_parameters() -> None:
    problem = BowlProblem(sizes=(3, 5))
    seen: list[Progress] = []
    result = run(problem, [_level("cmaes", popsize=8, max_evaluations=600),
                           _level("powell", max_evaluations=400, tol_x=1e-6)],
                 seed=3, progress=seen.append)
    assert result.x.shape == (5,)
    np.testing.assert_allclose(result.x, [*OPTIMUM, 0.5, 0.5], atol=2e-3)
    assert [f["level"] for f in result.levels] == [0, 1]
    assert result.evaluations == sum(b.calls for b in problem.built) == \
        sum(f["evaluations"] for f in result.levels)
    # progress: every iteration and every level's end, in order, evaluations never falling
    assert {p.level for p in seen} == {0, 1}
    assert all(p.levels == 2 for p in seen)
    assert [p.evaluations for p in seen] == sorted(p.evaluations for p in seen)
    assert seen[-1].evaluations == result.evaluations
    assert seen[-1].metric == "bowl"


def test_parameters_never_shrink() -> None:
    with pytest.raises(InputError, match="parameters may only be added"):
        run(BowlProblem(sizes=(5, 3)), [_level("powell"), _level("powell")])


class NaNBowl(Bowl):
    """A loss that is NaN everywhere (a problem fed a NaN it did not refuse)."""

    def losses(self, params: np.ndarray) -> np.ndarray:
        return np.full(params.shape[0], np.nan)

    def loss(self, params: torch.Tensor) -> torch.Tensor:
        return params.sum() * float("nan")


class NaNProblem(BowlProblem):
    def level(self, index: int, options: LevelOptions) -> Bowl:  # noqa: ARG002 - Problem protocol
        return NaNBowl()


@pytest.mark.parametrize("method", ["cmaes", "powell", "adam"])
def test_a_loss_that_is_never_finite_is_an_error_not_a_result(method: str) -> None:
    # it returned its start and score NaN, which read as a registration that did not move
    with pytest.raises(InputError, match=r"'problem': level 0 .*no finite value") as caught:
        run(NaNProblem(), [_level(method, max_evaluations=50) if method != "adam"
                           else _level(method, max_iterations=5)])
    assert caught.value.key == "problem"


def test_same_seed_same_result_other_seed_other_path() -> None:
    levels = [_level("cmaes", popsize=8, max_evaluations=200)]
    a = run(BowlProblem(ripple=1.0), levels, seed=5, x0=[3.0, 3.0, 3.0])
    b = run(BowlProblem(ripple=1.0), levels, seed=5, x0=[3.0, 3.0, 3.0])
    c = run(BowlProblem(ripple=1.0), levels, seed=6, x0=[3.0, 3.0, 3.0])
    np.testing.assert_array_equal(a.x, b.x)
    assert a.evaluations == b.evaluations
    assert a.seed == 5
    assert not np.array_equal(a.x, c.x)


def test_seed_none_draws_one_and_records_it() -> None:
    result = run(BowlProblem(), [_level("powell", max_evaluations=50)], seed=None)
    assert isinstance(result.seed, int)
    assert result.seed >= 0
    with pytest.raises(InputError, match="seed"):
        run(BowlProblem(), [_level("powell")], seed=-1)
    with pytest.raises(InputError, match="levels"):
        run(BowlProblem(), [])


def test_a_level_without_a_gradient_refuses_gradient_methods() -> None:
    class NoGrad(Level):
        def __init__(self) -> None:
            self.spec = ParamSpec.unitless(2)

        def losses(self, params: np.ndarray) -> np.ndarray:
            return (params ** 2).sum(axis=1)

    class P:
        metric, higher_is_better = "q", False

        def level(self, index: int, options: LevelOptions) -> Level:  # noqa: ARG002 - Problem protocol
            return NoGrad()

    assert isinstance(P(), Problem)
    with pytest.raises(InputError, match="cannot run a gradient method"):
        run(P(), [_level("adam")])


def test_higher_is_better_scores_are_reported_in_their_own_sense() -> None:
    class Peak(Bowl):
        def losses(self, params: np.ndarray) -> np.ndarray:
            return super().losses(params) - 1.0   # loss = -score, score = 1 - bowl

    class P:
        metric, higher_is_better = "peak", True

        def level(self, index: int, options: LevelOptions) -> Level:  # noqa: ARG002 - Problem protocol
            return Peak(higher_is_better=True)

    result = run(P(), [_level("powell", tol_x=1e-8)])
    assert result.score == pytest.approx(1.0, abs=1e-6)
    assert max(p.best for p in result.history) == pytest.approx(1.0, abs=1e-6)


def test_the_module_example_runs() -> None:
    failures, tried = doctest.testmod(engine_module, verbose=False)
    assert tried > 0
    assert failures == 0


class PreparedBowl(Bowl):
    """A bowl that records the start it is prepared with and counts 2 set-up scores."""

    def __init__(self, size: int = 3):
        super().__init__(size)
        self.prepared: list[np.ndarray] = []

    def prepare(self, x: np.ndarray) -> int:
        self.prepared.append(np.array(x))
        self.calls += 2
        return 2


def test_prepare_sees_each_levels_start_once_and_is_counted() -> None:
    built: list[PreparedBowl] = []

    class Problem_:
        metric, higher_is_better = "bowl", False

        def level(self, index: int, options: LevelOptions) -> PreparedBowl:  # noqa: ARG002
            built.append(PreparedBowl(3 if index == 0 else 4))
            return built[-1]

    result = run(Problem_(), [_level("powell", max_evaluations=300, tol_x=1e-6),
                              _level("powell", max_evaluations=300, tol_x=1e-6)],
                 x0=[1.0, 2.0, 3.0], starts=8)
    assert [len(b.prepared) for b in built] == [1, 1]
    # level 0: after the start screening (a screened draw better than x0, not x0 itself);
    # level 1: level 0's result, grown by a zero
    first = built[0].prepared[0]
    x0 = np.array([1.0, 2.0, 3.0])
    assert first.shape == (3,)
    assert not np.array_equal(first, x0)
    assert Bowl().losses(first[None])[0] < Bowl().losses(x0[None])[0]
    assert built[1].prepared[0][3] == 0.0
    np.testing.assert_allclose(built[1].prepared[0][:3], OPTIMUM, atol=1e-3)
    assert result.evaluations == sum(b.calls for b in built) == \
        sum(f["evaluations"] for f in result.levels)
