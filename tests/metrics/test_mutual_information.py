"""NMI and Mattes MI: a dense NumPy reference and exact values on piecewise-constant images.

Also the invariance to intensity remappings that is their reason to exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import pytest
import torch

from regkit.metrics import get_metric
from regkit.metrics.mi import NMI, MattesMI

Labels = Callable[..., np.ndarray]


def cubic_bspline(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return np.where(ax < 1, 2 / 3 - ax**2 + ax**3 / 2, np.where(ax < 2, (2 - ax) ** 3 / 6, 0.0))


def parzen_matrix(x: np.ndarray, w: np.ndarray, bins: int, kind: str) -> np.ndarray:
    """``(N, bins)``: each pixel's weight in each bin, the window evaluated at every bin."""
    counted = w > 0
    lo, hi = x[counted].min(), x[counted].max()
    s = np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)
    centres = np.arange(bins)
    if kind == "box":
        out = np.zeros((x.size, bins))
        out[np.arange(x.size), np.minimum(np.floor(s * bins), bins - 1).astype(int)] = 1.0
        return out
    if kind == "linear":
        return np.maximum(0.0, 1.0 - np.abs(s[:, None] * (bins - 1) - centres))
    return cubic_bspline(1.0 + s[:, None] * (bins - 3) - centres)


def entropies(f: np.ndarray, m: np.ndarray, w: np.ndarray, bins: int, kind_f: str,
              kind_m: str) -> tuple[float, float, float]:
    f, m, w = f.ravel(), m.ravel(), w.ravel()
    joint = (parzen_matrix(f, w, bins, kind_f) * w[:, None]).T @ parzen_matrix(m, w, bins, kind_m)
    p = joint / joint.sum()

    def h(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return h(p.sum(axis=1)), h(p.sum(axis=0)), h(p)


def label_entropy(lab: np.ndarray) -> float:
    p = np.bincount(lab.ravel()) / lab.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("shape", [(13, 14), (6, 7, 8)], ids=["2d", "3d"])
@pytest.mark.parametrize("window", ["linear", "cubic"])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "weights"])
def test_nmi_matches_a_dense_reference(smooth: Callable[..., torch.Tensor],
                                       shape: tuple[int, ...], window: str,
                                       masked: bool) -> None:
    fixed = smooth(shape, seed=0, sigma=1.0)
    moving = torch.stack([0.5 * fixed + smooth(shape, seed=s, sigma=1.0) for s in (1, 2)])
    w = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) \
        if masked else torch.ones(shape, dtype=torch.float64)
    if masked:
        w[..., :2] = 0.0
    out = get_metric("nmi", bins=12, window=window)(fixed, moving, w if masked else None)
    for b in range(2):
        hf, hm, hfm = entropies(fixed.numpy(), moving[b].numpy(), w.numpy(), 12, window, window)
        assert out[b].item() == pytest.approx((hf + hm) / hfm, abs=1e-12)


@pytest.mark.parametrize("shape", [(13, 14), (6, 7, 8)], ids=["2d", "3d"])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "weights"])
def test_mattes_mi_matches_a_dense_reference(smooth: Callable[..., torch.Tensor],
                                             shape: tuple[int, ...], masked: bool) -> None:
    fixed = smooth(shape, seed=0, sigma=1.0)
    moving = torch.stack([0.5 * fixed + smooth(shape, seed=s, sigma=1.0) for s in (1, 2)])
    w = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) \
        if masked else torch.ones(shape, dtype=torch.float64)
    if masked:
        w[..., -1] = 0.0
    out = get_metric("mattes_mi", bins=10)(fixed, moving, w if masked else None)
    for b in range(2):
        hf, hm, hfm = entropies(fixed.numpy(), moving[b].numpy(), w.numpy(), 10, "box", "cubic")
        assert out[b].item() == pytest.approx(hf + hm - hfm, abs=1e-12)


@pytest.mark.parametrize("bins", [5, 9])
def test_nmi_of_identical_images_is_two_when_levels_sit_on_bin_centres(
        labels: Labels, bins: int) -> None:
    lab = labels((24, 24), levels=5)
    image = torch.from_numpy(10.0 * lab + 3.0)  # levels 3, 13, ..., 43: equally spaced
    assert get_metric("nmi", bins=bins)(image, image[None]).item() == pytest.approx(2.0,
                                                                                   abs=1e-12)
    # Off the bin centres the linear window blurs the diagonal: below 2, still the best.
    nmi = get_metric("nmi", bins=32)
    shifted = torch.from_numpy(10.0 * np.roll(lab, 3, axis=1) + 3.0)
    values = nmi(image, torch.stack([image, shifted]))
    assert 2.0 > values[0].item() > values[1].item()


def test_mattes_mi_of_identical_images_is_the_label_entropy(labels: Labels) -> None:
    """Levels 12 bins apart (bins = 3 + 4 * 12): the moving image determines the fixed one.

    The cubic windows of the levels do not overlap, so MI = H(fixed).
    """
    lab = labels((24, 24), levels=5, seed=1)
    image = torch.from_numpy(lab.astype(np.float64))
    out = get_metric("mattes_mi", bins=51)(image, image[None]).item()
    assert out == pytest.approx(label_entropy(lab), abs=1e-12)


@pytest.mark.parametrize(("name", "bins"), [("nmi", 9), ("mattes_mi", 51)])
def test_mi_is_invariant_to_permuting_grey_levels_and_ncc_is_not(
        labels: Labels, name: str, bins: int) -> None:
    lab = labels((32, 32), levels=5, seed=2)
    moved = np.roll(lab, (1, 1), axis=(0, 1))
    moved[:8] = labels((8, 32), levels=5, seed=3)  # partly related, partly not
    fixed = torch.from_numpy(lab.astype(np.float64))
    grey = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    remap = np.array([2.0, 4.0, 0.0, 3.0, 1.0])  # a bijection, neither increasing nor decreasing
    moving = torch.from_numpy(np.stack([grey[moved], remap[moved]]))
    out = get_metric(name, bins=bins)(fixed, moving)
    assert out[0].item() == pytest.approx(out[1].item(), abs=1e-12)
    assert out[0].item() > (1.1 if name == "nmi" else 0.3)  # there is something to measure
    ncc = get_metric("ncc")(fixed, moving)
    assert abs(ncc[0].item() - ncc[1].item()) > 0.1


def test_independent_images_share_no_information() -> None:
    """Vertical stripes against horizontal ones: every pairing of levels is equally common."""
    rows = torch.arange(16, dtype=torch.float64) % 2
    fixed = rows[:, None].expand(16, 16).clone()
    moving = rows[None, :].expand(16, 16).clone()[None]
    assert get_metric("nmi", bins=8)(fixed, moving).item() == pytest.approx(1.0, abs=1e-12)
    assert get_metric("mattes_mi", bins=8)(fixed, moving).item() == pytest.approx(0.0,
                                                                                 abs=1e-12)


def test_mattes_sampling_is_deterministic_and_approximates_the_full_score(
        smooth: Callable[..., torch.Tensor]) -> None:
    fixed = smooth((64, 64), seed=0, sigma=2.0)
    moving = torch.stack([0.6 * fixed + 0.4 * smooth((64, 64), seed=s, sigma=2.0)
                          for s in (1, 2)])
    full = get_metric("mattes_mi", bins=16)(fixed, moving)
    sampled = get_metric("mattes_mi", bins=16, samples=2000, seed=5)
    first = sampled(fixed, moving)
    torch.testing.assert_close(first, sampled(fixed, moving))  # same pixels every call
    torch.testing.assert_close(first, get_metric("mattes_mi", bins=16, samples=2000,
                                                 seed=5)(fixed, moving))
    other_seed = get_metric("mattes_mi", bins=16, samples=2000, seed=6)(fixed, moving)
    assert not torch.allclose(first, other_seed)
    assert not torch.allclose(first, full)
    torch.testing.assert_close(first, full, rtol=0.15, atol=0.0)
    # As many samples as pixels (or more) is the full score.
    torch.testing.assert_close(get_metric("mattes_mi", bins=16, samples=4096)(fixed, moving),
                               full)


def test_mattes_sampling_respects_the_mask_and_has_gradients(
        smooth: Callable[..., torch.Tensor]) -> None:
    fixed = smooth((20, 20), seed=0, sigma=1.5)
    moving = (0.6 * fixed + 0.4 * smooth((20, 20), seed=1, sigma=1.5))[None]
    mask = torch.zeros(20, 20, dtype=torch.bool)
    mask[:, 5:] = True
    junk = moving.clone()
    junk[..., :5] = 99.0
    metric = get_metric("mattes_mi", bins=8, samples=150, seed=1)
    torch.testing.assert_close(metric(fixed, moving, mask), metric(fixed, junk, mask))
    moving.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: metric(fixed, m, mask), (moving,), eps=1e-6,
                                    atol=1e-5, rtol=1e-4)


def test_defaults_rank_an_aligned_image_first(smooth: Callable[..., torch.Tensor]) -> None:
    nmi, mattes = cast(NMI, get_metric("nmi")), cast(MattesMI, get_metric("mattes_mi"))
    assert (nmi.bins, nmi.window, mattes.bins, mattes.samples) == (32, "linear", 50, None)
    big = smooth((80, 80), seed=9, sigma=3.0).float()
    fixed = big[8:72, 8:72]
    moving = torch.stack([big[8:72, 8 + s:72 + s] for s in (0, 2, 6)])
    for metric in (nmi, mattes):
        values = metric(fixed, moving)
        assert values.dtype == torch.float32
        assert values[0] > values[1] > values[2]


@pytest.mark.parametrize(("name", "options"), [("mattes_mi", {}), ("nmi", {}),
                                               ("nmi", {"window": "cubic"})])
def test_float32_scores_of_a_large_image_keep_to_rounding(name: str, options: dict[str, str]
                                                          ) -> None:
    """The histogram sums window polynomials' moments: no cancellation beyond float32 rounding.

    40 000 pixels, most of a bin's mass sitting near one window edge (a skewed image), masked
    weights; the float32 score stays within 2e-6 of the float64 one.
    """
    gen = torch.Generator().manual_seed(4)
    fixed = torch.rand(200, 200, generator=gen, dtype=torch.float64) ** 3
    moving = torch.stack([0.7 * fixed + 0.3 * torch.rand(200, 200, generator=gen,
                                                         dtype=torch.float64) ** 2
                          for _ in range(3)])
    mask = torch.rand(3, 200, 200, generator=gen) > 0.1
    metric = get_metric(name, **options)
    exact = metric(fixed, moving, mask)
    single = metric(fixed.float(), moving.float(), mask)
    torch.testing.assert_close(single.double(), exact, rtol=0.0, atol=2e-6)


@pytest.mark.parametrize("name", ["mattes_mi", "nmi"])
def test_scores_are_unchanged_under_cpu_autocast(name: str) -> None:
    """The histogram's cancelling combination never runs at reduced precision (bf16 autocast)."""
    gen = torch.Generator().manual_seed(5)
    fixed = torch.rand(120, 120, generator=gen) ** 2
    moving = torch.stack([0.6 * fixed + 0.4 * torch.rand(120, 120, generator=gen)
                          for _ in range(3)])
    metric = get_metric(name)
    plain = metric(fixed, moving)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast_score = metric(fixed, moving)
    assert cast_score.dtype == torch.float32
    torch.testing.assert_close(cast_score, plain, rtol=0.0, atol=1e-6)
