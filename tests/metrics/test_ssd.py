"""Mean squared difference: values, masks, the empty-mask value."""

from __future__ import annotations

import pytest
import torch

from regkit.metrics import get_metric


def test_ssd_is_the_mean_squared_difference() -> None:
    gen = torch.Generator().manual_seed(0)
    fixed = torch.rand(9, 10, generator=gen, dtype=torch.float64)
    moving = torch.rand(3, 9, 10, generator=gen, dtype=torch.float64)
    expected = ((moving - fixed) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(get_metric("ssd")(fixed, moving), expected)
    assert get_metric("ssd").loss(fixed, moving).tolist() == get_metric("ssd")(fixed,
                                                                              moving).tolist()


def test_masked_ssd_is_the_mean_over_counted_pixels_by_weight() -> None:
    gen = torch.Generator().manual_seed(1)
    fixed = torch.rand(5, 6, 7, generator=gen, dtype=torch.float64)
    moving = torch.rand(2, 5, 6, 7, generator=gen, dtype=torch.float64)
    mask = torch.rand(5, 6, 7, generator=gen) > 0.5
    expected = torch.stack([((m[mask] - fixed[mask]) ** 2).mean() for m in moving])
    torch.testing.assert_close(get_metric("ssd")(fixed, moving, mask), expected)
    weights = torch.rand(5, 6, 7, generator=gen, dtype=torch.float64)
    expected_w = ((moving - fixed) ** 2 * weights).sum(dim=(1, 2, 3)) / weights.sum()
    torch.testing.assert_close(get_metric("ssd")(fixed, moving, weights), expected_w)


def test_empty_overlap_is_worse_than_any_real_score() -> None:
    """A pose that leaves no overlap must never look better than a poor one to an optimizer."""
    fixed = torch.zeros(8, 8)
    moving = torch.full((2, 8, 8), 1000.0)
    masks = torch.ones(2, 8, 8, dtype=torch.bool)
    masks[1] = False
    out = get_metric("ssd")(fixed, moving, masks)
    assert out[0].item() == pytest.approx(1e6)
    assert out[1].item() == pytest.approx(1e30)
    assert out[1] > out[0]
    assert torch.isfinite(out).all()  # float32 holds 1e30
