"""Global and local NCC against direct NumPy computations."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch

from regkit.errors import ShapeError
from regkit.metrics import get_metric


def weighted_ncc(f: np.ndarray, m: np.ndarray, w: np.ndarray) -> float:
    """Weighted Pearson correlation; 0 when either weighted variance (or the weight) is 0."""
    total = w.sum()
    if total <= 0:
        return 0.0
    fc = f - (w * f).sum() / total
    mc = m - (w * m).sum() / total
    var_f, var_m = (w * fc * fc).sum(), (w * mc * mc).sum()
    if var_f <= 1e-20 or var_m <= 1e-20:
        return 0.0
    return float((w * fc * mc).sum() / np.sqrt(var_f * var_m))


def patch_ncc(f: np.ndarray, m: np.ndarray, w: np.ndarray, size: int) -> float:
    """Mean over every valid patch of the weighted patch NCC, each patch weighted by its mass."""
    num = den = 0.0
    for corner in itertools.product(*(range(n - size + 1) for n in f.shape)):
        sl = tuple(slice(c, c + size) for c in corner)
        mass = w[sl].sum()
        num += mass * weighted_ncc(f[sl], m[sl], w[sl])
        den += mass
    return num / den if den > 0 else 0.0


def test_ncc_matches_pearson_correlation(smooth: Callable[..., torch.Tensor]) -> None:
    fixed = smooth((17, 19), seed=0, sigma=1.0)
    moving = torch.stack([smooth((17, 19), seed=s, sigma=1.0) for s in (1, 2)])
    out = get_metric("ncc")(fixed, moving)
    for b in range(2):
        expected = np.corrcoef(fixed.numpy().ravel(), moving[b].numpy().ravel())[0, 1]
        assert out[b].item() == pytest.approx(expected, abs=1e-12)


def test_masked_ncc_is_the_correlation_of_the_masked_pixels(
        smooth: Callable[..., torch.Tensor]) -> None:
    fixed = smooth((15, 16), seed=0, sigma=1.0)
    moving = smooth((15, 16), seed=1, sigma=1.0)[None]
    mask = torch.zeros(15, 16, dtype=torch.bool)
    mask[3:12, 2:9] = True
    mask[0, :] = True
    expected = np.corrcoef(fixed[mask].numpy(), moving[0][mask].numpy())[0, 1]
    for name in ("ncc", "masked_ncc"):
        assert get_metric(name)(fixed, moving, mask).item() == pytest.approx(expected, abs=1e-12)
    weights = torch.rand(15, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected_w = weighted_ncc(fixed.numpy(), moving[0].numpy(), weights.numpy())
    assert get_metric("ncc")(fixed, moving, weights).item() == pytest.approx(expected_w, abs=1e-12)
    # Unlike its mean, NCC is no mean over pixels: the mask must not be ignored.
    assert abs(get_metric("ncc")(fixed, moving).item() - expected) > 1e-3


def test_float32_constant_image_is_caught_despite_rounding() -> None:
    """0.1 is not exact in float32 and a 65536-pixel mean of it is off by rounding.

    The resulting tiny spread must count as zero variance, not as signal.
    """
    constant = torch.full((256, 256), 0.1, dtype=torch.float32)
    noise = torch.rand(2, 256, 256, generator=torch.Generator().manual_seed(0))
    assert get_metric("ncc")(constant, noise).tolist() == [0.0, 0.0]
    assert get_metric("ncc")(noise[0], constant.expand(2, 256, 256)).tolist() == [0.0, 0.0]
    # A genuine small spread on a large offset is not mistaken for a constant.
    offset = 1000.0 + 0.5 * noise
    assert get_metric("ncc")(offset[0], offset).tolist()[0] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("shape", [(9, 11), (6, 7, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "weights"])
def test_lncc_matches_a_loop_over_patches(smooth: Callable[..., torch.Tensor],
                                          shape: tuple[int, ...], masked: bool) -> None:
    fixed = smooth(shape, seed=0, sigma=1.0)
    moving = torch.stack([0.5 * fixed + smooth(shape, seed=s, sigma=1.0) for s in (1, 2)])
    gen = torch.Generator().manual_seed(3)
    weights = torch.rand(shape, generator=gen, dtype=torch.float64) if masked \
        else torch.ones(shape, dtype=torch.float64)
    if masked:
        weights[..., :2] = 0.0  # whole patches with no weight, and partial ones
    out = get_metric("lncc", patch_size=3)(fixed, moving, weights if masked else None)
    for b in range(2):
        expected = patch_ncc(fixed.numpy(), moving[b].numpy(), weights.numpy(), 3)
        assert out[b].item() == pytest.approx(expected, abs=1e-10)


def test_lncc_with_one_patch_is_global_ncc(smooth: Callable[..., torch.Tensor]) -> None:
    fixed = smooth((12, 12), seed=0, sigma=1.0)
    moving = torch.stack([smooth((12, 12), seed=s, sigma=1.0) for s in (1, 2, 3)])
    torch.testing.assert_close(get_metric("lncc", patch_size=12)(fixed, moving),
                               get_metric("ncc")(fixed, moving))


def test_lncc_constant_patches_count_as_zero(smooth: Callable[..., torch.Tensor]) -> None:
    """An image that is flat on its left part.

    Identical copies score the share of patches that see texture (each such patch 1, each flat patch
    0).
    """
    image = smooth((10, 20), seed=0, sigma=1.0)
    image[:, :8] = 0.25
    out = get_metric("lncc", patch_size=4)(image, image[None]).item()
    patches_x = 20 - 4 + 1
    flat_x = 8 - 4 + 1  # patches lying wholly in columns 0..7
    assert out == pytest.approx((patches_x - flat_x) / patches_x, abs=1e-12)


def test_lncc_sees_local_structure_that_global_ncc_misses(
        smooth: Callable[..., torch.Tensor]) -> None:
    """Multiplying by a slow, strong intensity ramp (a bias field) hurts global NCC far more."""
    fixed = smooth((40, 40), seed=0, sigma=1.5)
    ramp = torch.linspace(0.5, 2.0, 40, dtype=torch.float64)[None, :].expand(40, 40)
    moving = (fixed * ramp)[None]
    global_ncc = get_metric("ncc")(fixed, moving).item()
    local_ncc = get_metric("lncc", patch_size=5)(fixed, moving).item()
    assert local_ncc > 0.9
    assert global_ncc < 0.6


def test_lncc_patch_larger_than_image_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match=r"patch_size=9.*\(1, 8, 20\)"):
        get_metric("lncc")(torch.rand(8, 20), torch.rand(1, 8, 20))
