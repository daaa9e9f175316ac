"""regkit.utils.blocks: block sums, means and minima against a plain 2n-D reshape."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from regkit.utils.blocks import block_reduce


def _reference(a: np.ndarray, f: tuple[int, ...], op: str) -> np.ndarray:
    n = [s // k for s, k in zip(a.shape, f, strict=True)]
    box = a[tuple(slice(0, m * k) for m, k in zip(n, f, strict=True))]
    view = box.reshape([x for m, k in zip(n, f, strict=True) for x in (m, k)])
    axes = tuple(range(1, 2 * a.ndim, 2))
    reducers: dict[str, Callable[..., np.ndarray]] = {"sum": view.sum, "mean": view.mean,
                                                   "min": view.min}
    return reducers[op](axis=axes)


@pytest.mark.parametrize("op", ["sum", "mean", "min"])
@pytest.mark.parametrize("factors", [(2, 3, 1), (1, 1, 1), (4, 4, 4), (7, 2, 5)])
def test_matches_a_reshape_and_drops_remainders(op: str, factors: tuple[int, ...]) -> None:
    a = np.random.default_rng(1).normal(size=(9, 10, 7))
    got = block_reduce(a, factors, op)  # type: ignore[arg-type]
    np.testing.assert_allclose(got, _reference(a, factors, op), rtol=1e-12, atol=1e-12)


def test_integer_sums_are_exact_in_a_wider_type_and_the_input_is_untouched() -> None:
    a = np.full((4, 4, 4), 30000, np.int16)
    before = a.copy()
    assert block_reduce(a, (4, 4, 4), "sum", np.float32)[0, 0, 0] == 30000 * 64
    assert block_reduce(a, (2, 2, 2), "mean", np.float32).dtype == np.float32
    assert block_reduce(a, (1, 1, 1), "mean").dtype == np.float64
    np.testing.assert_array_equal(a, before)


def test_bad_factors() -> None:
    with pytest.raises(ValueError, match="block sizes"):
        block_reduce(np.zeros((4, 4)), (2,), "sum")
    with pytest.raises(ValueError, match="block sizes"):
        block_reduce(np.zeros((4, 4)), (2, 0), "mean")
