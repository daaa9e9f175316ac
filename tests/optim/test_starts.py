"""Starting points: random boxes, grids, one-call screening, multi-start refinement."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from regkit.errors import InputError, UnknownNameError
from regkit.optim import (
    ParamSpec,
    best_starts,
    grid_starts,
    minimize,
    multistart,
    random_starts,
)


def test_random_starts_lie_in_the_spread_and_the_bounds() -> None:
    spec = ParamSpec.rigid6(rot_step_deg=5.0, trans_step_mm=10.0, trans_bound_mm=25.0)
    center = np.array([0.0, 0.0, 0.0, 20.0, 0.0, 0.0])
    starts = random_starts(center, spec, 200, spread=2.0, seed=1)
    assert starts.shape == (200, 6)
    np.testing.assert_array_equal(starts[0], center)
    offsets = np.abs(starts - center) / spec.scale_array
    # the box is used, not exceeded
    assert offsets.max() <= 2.0
    assert offsets[:, :3].max() > 1.8
    # clipped at the bound
    assert np.all(spec.contains(starts))
    assert starts[:, 3].max() == 25.0
    np.testing.assert_array_equal(starts, random_starts(center, spec, 200, spread=2.0, seed=1))
    assert not np.array_equal(starts, random_starts(center, spec, 200, spread=2.0, seed=2))


def test_grid_starts_product_order_and_bounds() -> None:
    spec = ParamSpec.rigid6(trans_bound_mm=25.0)
    center = np.array([0.0, 0.0, 0.1, 10.0, 0.0, 0.0])
    grid = grid_starts(center, spec, {"rz": [-0.1, 0.0, 0.1], "tx": [-10.0, 0.0, 10.0, 20.0]})
    assert grid.shape == (9, 6)  # 3 x 4 combinations, the three with tx = 30 mm left out
    np.testing.assert_allclose(grid[:3, 2], 0.0)  # first rz offset, last name varies fastest
    np.testing.assert_allclose(grid[:3, 3], [0.0, 10.0, 20.0])
    np.testing.assert_array_equal(grid[:, [0, 1, 4, 5]], 0.0)
    assert np.all(spec.contains(grid))
    with pytest.raises(UnknownNameError, match=r"'rzz'.*known: rx, ry, rz, tx, ty, tz"):
        grid_starts(center, spec, {"rzz": [0.0]})
    with pytest.raises(InputError, match="no grid point"):
        grid_starts(center, spec, {"tx": [100.0]})
    with pytest.raises(InputError) as info:
        grid_starts(center, spec, {"ty": []})
    assert info.value.key == "ty"


def test_best_starts_scores_everything_in_one_call() -> None:
    calls: list[int] = []

    def objective(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        values = (x**2).sum(axis=1)
        values[0] = np.nan  # the origin, which would be best, is broken
        return values

    candidates = np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.5, 0.0]])
    best, values = best_starts(objective, candidates, 3)
    assert calls == [5]
    np.testing.assert_array_equal(best, candidates[[4, 2, 3]])
    np.testing.assert_array_equal(values, [0.25, 1.0, 4.0])


def test_multistart_finds_the_global_minimum_a_single_start_misses(rastrigin: Any) -> None:
    spec = ParamSpec.unitless(2, scale=0.3, lower=-5.12, upper=5.12)
    center = np.array([1.0, -1.0])
    single = minimize(rastrigin, center, spec, "nelder_mead")
    assert single.value > 1.0  # the simplex stops in the local minimum next to the start
    found = multistart(rastrigin, spec, center, n_starts=60, spread=6.0, method="nelder_mead",
                       seed=0)
    assert sum(r.value < 1e-6 for r in found.results) >= 3  # not a lucky single hit
    assert found.value < 1e-6
    assert np.allclose(found.x, 0.0, atol=1e-4)
    assert found.best is min(found.results, key=lambda r: r.value)
    assert len(found.results) == 60
    assert found.starts.shape == (60, 2)
    assert found.evaluations == sum(r.evaluations for r in found.results)


def test_multistart_screens_a_grid_in_one_call_then_refines_the_best(rastrigin: Any) -> None:
    spec = ParamSpec.unitless(2, scale=0.3)
    batch_sizes: list[int] = []

    def objective(x: np.ndarray) -> np.ndarray:
        batch_sizes.append(len(x))
        return rastrigin(x)

    grid = grid_starts([3.0, 3.0], spec, {"x0": np.arange(-6.0, 1.0).tolist(),
                                          "x1": np.arange(-6.0, 1.0).tolist()})
    found = multistart(objective, spec, [3.0, 3.0], starts=grid, keep=3, method="nelder_mead")
    # one call for the whole grid
    assert batch_sizes[0] == 49
    assert set(batch_sizes[1:]) == {1}
    assert found.screen_evaluations == 49
    assert len(found.results) == 3
    np.testing.assert_array_equal(found.starts[0], [0.0, 0.0])  # the best grid point first
    assert found.value < 1e-8
    assert found.evaluations == 49 + sum(r.evaluations for r in found.results)


def test_multistart_seeds_each_cmaes_run_reproducibly() -> None:
    spec = ParamSpec.unitless(2, scale=1.0)

    def sphere(x: np.ndarray) -> np.ndarray:
        return (x**2).sum(axis=1)

    runs = [multistart(sphere, spec, [1.0, 1.0], n_starts=3, method="cmaes",
                       options={"max_iterations": 10}, seed=4) for _ in range(2)]
    for a, b in zip(runs[0].results, runs[1].results, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
    # Different runs got different seeds: their first populations differ even from one start.
    assert len({r.history[0].best for r in runs[0].results}) == 3
