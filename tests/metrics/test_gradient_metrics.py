"""Gradient correlation and gradient NCC against SciPy's Sobel filter and NumPy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import ndimage

from regkit.errors import ShapeError
from regkit.metrics import get_metric
from regkit.metrics._ops import erode, sobel


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def valid(x: np.ndarray) -> np.ndarray:
    """Drop the one-pixel border, where SciPy pads and regkit does not compute."""
    return x[tuple(slice(1, -1) for _ in x.shape)]


@pytest.mark.parametrize("shape", [(9, 10), (6, 7, 8)], ids=["2d", "3d"])
def test_sobel_matches_scipy_on_the_valid_region(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).standard_normal(shape)
    ours = sobel(torch.from_numpy(x)[None])
    assert len(ours) == len(shape)
    for axis, g in enumerate(ours):
        expected = valid(ndimage.sobel(x, axis=axis))
        np.testing.assert_allclose(g[0].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("shape", [(14, 15), (8, 9, 10)], ids=["2d", "3d"])
def test_gc_is_the_mean_of_per_axis_gradient_correlations(
        smooth: Callable[..., torch.Tensor], shape: tuple[int, ...]) -> None:
    fixed = smooth(shape, seed=0, sigma=1.5)
    moving = smooth(shape, seed=1, sigma=1.5)
    f, m = fixed.numpy(), moving.numpy()
    expected = np.mean([corr(valid(ndimage.sobel(f, axis=a)), valid(ndimage.sobel(m, axis=a)))
                        for a in range(len(shape))])
    assert get_metric("gc")(fixed, moving[None]).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("shape", [(14, 15), (8, 9, 10)], ids=["2d", "3d"])
def test_gncc_is_the_correlation_of_gradient_magnitudes(
        smooth: Callable[..., torch.Tensor], shape: tuple[int, ...]) -> None:
    fixed = smooth(shape, seed=0, sigma=1.5)
    moving = smooth(shape, seed=1, sigma=1.5)

    def magnitude(x: np.ndarray) -> np.ndarray:
        return valid(np.sqrt(sum(ndimage.sobel(x, axis=a) ** 2 for a in range(x.ndim))))

    expected = corr(magnitude(fixed.numpy()), magnitude(moving.numpy()))
    assert get_metric("gncc")(fixed, moving[None]).item() == pytest.approx(expected, abs=1e-12)


def test_gc_keeps_contrast_polarity_and_gncc_ignores_it(
        smooth: Callable[..., torch.Tensor]) -> None:
    image = smooth((20, 20), seed=0, sigma=2.0)
    inverted = (1.0 - 3.0 * image)[None]  # a radiograph against a DRR with inverted greys
    assert get_metric("gc")(image, inverted).item() == pytest.approx(-1.0, abs=1e-12)
    assert get_metric("gncc")(image, inverted).item() == pytest.approx(1.0, abs=1e-12)


def test_gc_ignores_a_smooth_offset_field_that_ncc_sees(
        smooth: Callable[..., torch.Tensor]) -> None:
    """Gradients remove a constant offset.

    A gentle linear background changes only the gradient means, which NCC of the gradients removes
    too.
    """
    fixed = smooth((30, 30), seed=0, sigma=1.5)
    background = 5.0 * torch.linspace(0.0, 1.0, 30, dtype=torch.float64)[:, None].expand(30, 30)
    moving = (fixed + background)[None]
    assert get_metric("gc")(fixed, moving).item() == pytest.approx(1.0, abs=1e-12)
    assert get_metric("ncc")(fixed, moving).item() < 0.5


def test_a_ramp_has_no_gradient_information() -> None:
    """A linear ramp has constant derivatives: zero variance, documented to give 0."""
    ramp = torch.arange(12, dtype=torch.float64)[:, None].expand(12, 12) * 0.5
    assert get_metric("gc")(ramp, ramp[None]).item() == 0.0
    assert get_metric("gncc")(ramp, ramp[None]).item() == 0.0


def test_gc_in_3d_averages_three_axes() -> None:
    """An image that varies along one axis only: identical copies score 1/3.

    That axis correlates fully; the other two have zero-variance derivatives and contribute 0.
    """
    profile = torch.sin(torch.linspace(0.0, 6.0, 9, dtype=torch.float64)) + \
        torch.linspace(0.0, 1.0, 9, dtype=torch.float64) ** 2
    volume = profile[:, None, None].expand(9, 7, 8).clone()
    assert get_metric("gc")(volume, volume[None]).item() == pytest.approx(1.0 / 3.0, abs=1e-12)


def test_pixels_next_to_the_mask_edge_do_not_leak_in(
        smooth: Callable[..., torch.Tensor]) -> None:
    """The Sobel stencil of an in-mask pixel reaches one pixel out: the eroded mask drops it."""
    fixed = smooth((12, 16), seed=0, sigma=1.5)
    moving = smooth((12, 16), seed=1, sigma=1.5)[None]
    mask = torch.zeros(12, 16, dtype=torch.bool)
    mask[:, :8] = True
    changed = moving.clone()
    changed[:, :, 8] += 10.0  # the first column outside the mask
    for name in ("gc", "gncc"):
        metric = get_metric(name)
        torch.testing.assert_close(metric(fixed, moving, mask), metric(fixed, changed, mask))
        assert not torch.allclose(metric(fixed, moving), metric(fixed, changed))


def test_erosion_takes_the_neighbourhood_minimum() -> None:
    w = torch.ones(1, 6, 6, dtype=torch.float64)
    w[0, 2, 3] = 0.25
    out = erode(w)
    assert out.shape == (1, 4, 4)
    expected = torch.ones(4, 4, dtype=torch.float64)
    expected[0:3, 1:4] = 0.25  # every 3x3 window that contains (2, 3)
    torch.testing.assert_close(out[0], expected)


def test_images_smaller_than_the_stencil_are_shape_errors() -> None:
    for name in ("gc", "gncc"):
        with pytest.raises(ShapeError, match=r"at least 3.*\(1, 2, 9\)"):
            get_metric(name)(torch.rand(2, 9), torch.rand(1, 2, 9))
