"""The metric contract, checked against every built-in metric.

Registry, options, shapes, batching, broadcasting, masks, degenerate inputs, NaN checks, gradients,
devices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from regkit.errors import InputError, ShapeError, UnknownNameError, UserInputError
from regkit.metrics import GC, LNCC, NCC, Metric, get_metric, metrics
from regkit.metrics.base import option_names

Build = Callable[..., Metric]
Score = Callable[..., torch.Tensor]

BUILTIN_NAMES = {"gc", "gncc", "lncc", "masked_ncc", "mattes_mi", "ncc", "nmi", "ssd"}

# The documented value for a zero-variance (constant) image against a textured one.
CONSTANT_SCORE = {"gc": 0.0, "gncc": 0.0, "lncc": 0.0, "masked_ncc": 0.0, "mattes_mi": 0.0,
                  "ncc": 0.0, "nmi": 1.0}
EMPTY_SCORE = {"gc": 0.0, "gncc": 0.0, "lncc": 0.0, "masked_ncc": 0.0, "mattes_mi": 0.0,
               "ncc": 0.0, "nmi": 1.0, "ssd": 1e30}


def _better_or_equal(metric: Metric, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a >= b if metric.higher_is_better else a <= b


# ------------------------------------------------------------------------------ registry/options


def test_builtins_are_registered_with_their_names() -> None:
    assert set(metrics.names()) >= BUILTIN_NAMES
    assert metrics.entry_point_group == "regkit.metrics"
    for key in BUILTIN_NAMES:
        cls = metrics.get(key)
        assert issubclass(cls, Metric)
        assert cls.name == key
        assert isinstance(cls.higher_is_better, bool)
        assert set(cls.spatial_dims) == {2, 3}
        assert math.isfinite(cls.empty_score)
        assert cls.empty_score == EMPTY_SCORE[key]
    assert metrics.get("ssd").higher_is_better is False
    assert metrics.get("masked_ncc").requires_mask
    assert not metrics.get("ncc").requires_mask


def test_unknown_name_lists_known_names_and_suggests() -> None:
    with pytest.raises(UnknownNameError) as info:
        get_metric("nccc")
    msg = str(info.value)
    assert "unknown metric 'nccc'" in msg
    assert "did you mean 'ncc'" in msg
    assert "known: gc, gncc, lncc, masked_ncc, mattes_mi, ncc, nmi, ssd" in msg
    assert isinstance(info.value, UserInputError)


def test_unknown_option_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InputError) as info:
        get_metric("nmi", bin=16)
    assert info.value.key == "bin"
    assert "did you mean 'bins'" in str(info.value)
    assert "known: bins, window, check_finite" in str(info.value)
    with pytest.raises(InputError, match=r"'patch_size'.*known: check_finite"):
        get_metric("ncc", patch_size=5)
    with pytest.raises(InputError, match="'bins'"):  # built directly, same error
        LNCC(bins=4)  # type: ignore[call-arg]
    with pytest.raises(InputError, match="keyword options only"):
        NCC(True)  # type: ignore[call-arg]


@pytest.mark.parametrize(("metric_name", "options", "key"), [
    ("lncc", {"patch_size": 1}, "patch_size"),
    ("lncc", {"patch_size": 2.5}, "patch_size"),
    ("lncc", {"patch_size": True}, "patch_size"),
    ("nmi", {"bins": 1}, "bins"),
    ("nmi", {"bins": 3, "window": "cubic"}, "bins"),
    ("nmi", {"window": "gaussian"}, "window"),
    ("mattes_mi", {"bins": 3}, "bins"),
    ("mattes_mi", {"samples": 0}, "samples"),
    ("mattes_mi", {"seed": -1}, "seed"),
    ("ncc", {"check_finite": "yes"}, "check_finite"),
])
def test_bad_option_values_are_refused(metric_name: str, options: dict[str, Any],
                                       key: str) -> None:
    with pytest.raises(InputError) as info:
        get_metric(metric_name, **options)
    assert info.value.key == key


def test_options_round_trip_through_repr() -> None:
    metric = get_metric("mattes_mi", bins=32, samples=1000, seed=3)
    assert metric.options() == {"bins": 32, "samples": 1000, "seed": 3, "check_finite": True}
    assert repr(metric) == "MattesMI(bins=32, samples=1000, seed=3, check_finite=True)"
    assert option_names(GC) == ["check_finite"]


class _MeanAbsolute(Metric):
    """A plugin-style metric: it implements forward only and inherits every check."""

    higher_is_better = False
    empty_score = 0.0

    def __init__(self, *, power: int = 1, check_finite: bool = True) -> None:
        super().__init__(check_finite=check_finite)
        self.power = power

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor,
                weight: torch.Tensor | None) -> torch.Tensor:  # noqa: ARG002 - override
        return ((moving - fixed).abs() ** self.power).flatten(1).mean(dim=1)


def test_plugins_arrive_through_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from regkit.metrics import base
    from regkit.registry import Registry

    class FakeEntryPoint:
        name = "mean_abs"

        def load(self) -> type[Metric]:
            return _MeanAbsolute

    def fake_entry_points(group: str) -> list[FakeEntryPoint]:
        return [FakeEntryPoint()] if group == "regkit.metrics" else []

    monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
    fresh: Registry[type[Metric]] = Registry("metric", entry_point_group="regkit.metrics")
    monkeypatch.setattr(base, "metrics", fresh)
    metric = base.get_metric("mean_abs", power=2)
    assert metric.name == "mean_abs"
    assert metric.options() == {"power": 2, "check_finite": True}
    out = metric(torch.zeros(4, 4), torch.ones(3, 4, 4))
    torch.testing.assert_close(out, torch.ones(3))
    with pytest.raises(ShapeError):
        metric(torch.zeros(4, 5), torch.ones(3, 4, 4))
    with pytest.raises(InputError, match="unknown option for metric 'mean_abs'"):
        base.get_metric("mean_abs", bins=3)


# ----------------------------------------------------------------------------- shapes and types


def test_scores_have_batch_shape_dtype_and_loss_sign(name: str, build: Build, score: Score,
                                                     smooth: Callable[..., torch.Tensor]) -> None:
    metric = build(name)
    fixed = smooth((12, 13), seed=1)
    moving = torch.stack([smooth((12, 13), seed=s) for s in (1, 2, 3)])
    for dtype in (torch.float32, torch.float64):
        out = score(metric, fixed, moving.to(dtype))
        assert out.shape == (3,)
        assert out.dtype == dtype
        assert torch.isfinite(out).all()
    mask = torch.ones(12, 13, dtype=torch.bool)
    loss = metric.loss(fixed, moving, mask)
    torch.testing.assert_close(loss, -score(metric, fixed, moving, mask) if
                               metric.higher_is_better else score(metric, fixed, moving, mask))
    assert score(metric, fixed, moving[:0]).shape == (0,)


def test_shape_mismatches_name_both_shapes(name: str, build: Build) -> None:
    metric = build(name)
    moving = torch.rand(2, 8, 9, dtype=torch.float64)
    mask = torch.ones(8, 9, dtype=torch.bool)
    with pytest.raises(ShapeError, match=r"\(8, 10\).*\(2, 8, 9\)"):
        metric(torch.rand(8, 10), moving, mask)
    with pytest.raises(ShapeError, match=r"\(3, 8, 9\).*\(2, 8, 9\)"):
        metric(torch.rand(3, 8, 9), moving, mask)
    with pytest.raises(ShapeError, match=r"mask has shape \(9, 8\)"):
        metric(torch.rand(8, 9), moving, torch.ones(9, 8, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"\(8, 9\)"):  # an unbatched 2-D moving image
        metric(torch.rand(8, 9), moving[0], mask)
    with pytest.raises(ShapeError):
        metric(torch.rand(2, 3, 4, 5), torch.rand(1, 2, 3, 4, 5), None)


def test_bad_types_and_devices_are_input_errors(name: str, build: Build) -> None:
    metric = build(name)
    fixed = torch.rand(6, 7)
    with pytest.raises(InputError) as info:
        metric(fixed, torch.ones(2, 6, 7, dtype=torch.int64))
    assert info.value.key == "moving"
    with pytest.raises(InputError, match="float32 or float64"):
        metric(fixed, torch.rand(2, 6, 7).half())
    with pytest.raises(InputError) as info:
        metric(fixed.numpy(), torch.rand(2, 6, 7))  # type: ignore[arg-type]
    assert info.value.key == "fixed"
    with pytest.raises(InputError) as info:
        metric(fixed, torch.rand(2, 6, 7), [[1]])  # type: ignore[arg-type]
    assert info.value.key == "mask"
    # An integer fixed image (a raw radiograph) is converted to the moving dtype.
    raw = (fixed * 1000).to(torch.int32)
    mask = torch.ones(6, 7, dtype=torch.bool)
    out = metric(raw, torch.rand(2, 6, 7, dtype=torch.float64), mask)
    assert out.dtype == torch.float64


def test_masked_ncc_requires_a_mask() -> None:
    with pytest.raises(InputError) as info:
        get_metric("masked_ncc")(torch.rand(5, 5), torch.rand(1, 5, 5))
    assert info.value.key == "mask"


# ---------------------------------------------------------------------------- finite-input check


def test_nan_and_inf_are_refused_naming_the_argument(name: str, build: Build,
                                                     score: Score) -> None:
    metric = build(name)
    fixed = torch.rand(6, 7, dtype=torch.float64)
    moving = torch.rand(2, 6, 7, dtype=torch.float64)
    bad_moving = moving.clone()
    bad_moving[1, 2, 3] = float("nan")
    with pytest.raises(InputError) as info:
        score(metric, fixed, bad_moving)
    assert info.value.key == "moving"
    assert "NaN" in str(info.value)
    bad_fixed = fixed.clone()
    bad_fixed[0, 0] = float("inf")
    with pytest.raises(InputError) as info:
        score(metric, bad_fixed, moving)
    assert info.value.key == "fixed"
    for bad_mask in (torch.full((6, 7), 1.5), torch.full((6, 7), float("nan")),
                     torch.full((6, 7), -0.1)):
        with pytest.raises(InputError) as info:
            score(metric, fixed, moving, bad_mask.double())
        assert info.value.key == "mask"
    # The check can be switched off inside an optimizer: no error is raised then, and NaN
    # anywhere (here in the first pixel of the first image too) must not crash the metric,
    # e.g. by indexing a histogram out of bounds.
    unchecked = build(name, check_finite=False)
    assert unchecked.check_finite is False
    bad_moving[0, 0, 0] = float("nan")
    assert score(unchecked, fixed, bad_moving).shape == (2,)
    assert score(unchecked, bad_moving[0], moving).shape == (2,)


# --------------------------------------------------------------------- batching and broadcasting


@pytest.mark.parametrize("shape", [(11, 12), (7, 8, 9)], ids=["2d", "3d"])
def test_batched_scores_equal_per_item_scores(name: str, build: Build, score: Score,
                                              smooth: Callable[..., torch.Tensor],
                                              shape: tuple[int, ...]) -> None:
    metric = build(name)
    fixed = smooth(shape, seed=0, sigma=1.5)
    moving = torch.stack([smooth(shape, seed=s, sigma=1.5) for s in range(4)])
    moving[1] = 0.5 * fixed + 0.3 * moving[1]
    weights = torch.rand(4, *shape, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    weights[..., :2] = 0.0
    fixed_batch = torch.stack([fixed, 1 - fixed, fixed ** 2, fixed])

    together = score(metric, fixed, moving)
    shared_mask = score(metric, fixed, moving, weights[0] > 0.3)
    own_masks = score(metric, fixed_batch, moving, weights)
    for b in range(4):
        one = moving[b:b + 1]
        torch.testing.assert_close(together[b:b + 1], score(metric, fixed, one))
        torch.testing.assert_close(together[b:b + 1], score(metric, fixed[None], one))
        torch.testing.assert_close(shared_mask[b:b + 1],
                                   score(metric, fixed, one, weights[0] > 0.3))
        torch.testing.assert_close(own_masks[b:b + 1],
                                   score(metric, fixed_batch[b], one, weights[b]))
    # Broadcasting a fixed image equals repeating it.
    torch.testing.assert_close(together, score(metric, fixed.expand(4, *shape).clone(), moving))


# -------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("shape", [(12, 14), (8, 9, 10)], ids=["2d", "3d"])
@pytest.mark.parametrize("soft", [False, True], ids=["bool", "weights"])
def test_masked_out_pixels_do_not_count(name: str, build: Build, score: Score,
                                        smooth: Callable[..., torch.Tensor],
                                        shape: tuple[int, ...], soft: bool) -> None:
    metric = build(name)
    fixed = smooth(shape, seed=0, sigma=2.0)
    moving = torch.stack([0.7 * fixed + 0.3 * smooth(shape, seed=s, sigma=2.0)
                          for s in (1, 2)])
    mask = torch.zeros(shape, dtype=torch.float64)
    mask[..., 1:-4] = torch.linspace(0.2, 1.0, shape[-1] - 5, dtype=torch.float64) if soft \
        else 1.0
    outside = mask == 0
    gen = torch.Generator().manual_seed(1)
    junk_f = torch.where(outside, 100 * torch.rand(shape, generator=gen, dtype=torch.float64),
                         fixed)
    junk_m = torch.where(outside, -50 * torch.rand(shape, generator=gen, dtype=torch.float64),
                         moving)
    m = mask if soft else mask > 0
    before = score(metric, fixed, moving, m)
    after = score(metric, junk_f, junk_m, m)
    torch.testing.assert_close(before, after)
    # ... while without the mask the same junk does change the score.
    assert not torch.allclose(score(metric, fixed, moving), score(metric, junk_f, junk_m))


# --------------------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("shape", [(10, 11), (6, 7, 8)], ids=["2d", "3d"])
def test_zero_variance_images_give_the_documented_finite_value(
        name: str, build: Build, score: Score, smooth: Callable[..., torch.Tensor],
        shape: tuple[int, ...]) -> None:
    metric = build(name)
    textured = smooth(shape, seed=3, sigma=1.0).float()
    constant = torch.full(shape, 0.1, dtype=torch.float32)  # 0.1 is not exact in binary
    pairs = [(constant, textured), (textured, constant), (constant, constant + 0.2)]
    for fixed, moving_image in pairs:
        moving = moving_image[None].clone().requires_grad_(True)
        out = score(metric, fixed, moving)
        assert torch.isfinite(out).all()
        if name == "ssd":
            expected = ((fixed - moving_image) ** 2).mean().reshape(1)
        else:
            expected = torch.tensor([CONSTANT_SCORE[name]])
        torch.testing.assert_close(out.detach(), expected, atol=1e-6, rtol=1e-5)
        metric.loss(fixed, moving, torch.ones(shape, dtype=torch.bool)).sum().backward()
        assert moving.grad is not None
        assert torch.isfinite(moving.grad).all()


@pytest.mark.parametrize("shape", [(10, 11), (6, 7, 8)], ids=["2d", "3d"])
def test_empty_mask_gives_the_empty_score_with_finite_gradients(
        name: str, build: Build, smooth: Callable[..., torch.Tensor],
        shape: tuple[int, ...]) -> None:
    metric = build(name)
    fixed = smooth(shape, seed=0)
    moving = torch.stack([fixed, smooth(shape, seed=1)]).requires_grad_(True)
    masks = torch.ones(2, *shape, dtype=torch.bool)
    masks[1] = False  # only the second element's mask is empty
    out = metric(fixed, moving, masks)
    assert out[1].item() == type(metric).empty_score == EMPTY_SCORE[name]
    torch.testing.assert_close(out[:1], metric(fixed, moving[:1]) if not metric.requires_mask
                               else metric(fixed, moving[:1], masks[0]))
    out.sum().backward()
    assert moving.grad is not None
    assert torch.isfinite(moving.grad).all()
    assert (moving.grad[1] == 0).all()


# ---------------------------------------------------------------------------------- behaviour


def test_identity_scores_best_and_scores_worsen_with_shift_2d(
        name: str, build: Build, score: Score, smooth: Callable[..., torch.Tensor]) -> None:
    metric = build(name, **({"bins": 32} if "mi" in name else {}),
                   **({"patch_size": 9} if name == "lncc" else {}))
    big = smooth((96, 96), seed=4, sigma=4.0)
    fixed = big[16:80, 16:80]
    shifts = [0, 1, 2, 4, 8]
    moving = torch.stack([big[16 + s // 2:80 + s // 2, 16 + s:80 + s] for s in shifts])
    values = score(metric, fixed, moving)
    sign = 1.0 if metric.higher_is_better else -1.0
    steps = sign * (values[:-1] - values[1:])
    assert (steps > 0).all(), values
    if name in ("ncc", "masked_ncc", "lncc", "gc", "gncc"):
        assert values[0].item() == pytest.approx(1.0, abs=1e-12)
    if name == "ssd":
        assert values[0].item() == 0.0


def test_identity_scores_best_and_scores_worsen_with_shift_3d(
        name: str, build: Build, score: Score, smooth: Callable[..., torch.Tensor]) -> None:
    metric = build(name, **({"bins": 16} if "mi" in name else {}))
    big = smooth((36, 36, 36), seed=5, sigma=3.0)
    fixed = big[6:30, 6:30, 6:30]
    shifts = [0, 1, 2, 4]
    moving = torch.stack([big[6 + s:30 + s, 6:30, 6 + s // 2:30 + s // 2] for s in shifts])
    values = score(metric, fixed, moving)
    sign = 1.0 if metric.higher_is_better else -1.0
    assert (sign * (values[:-1] - values[1:]) > 0).all(), values


def test_affine_intensity_changes(name: str, build: Build, score: Score,
                                  smooth: Callable[..., torch.Tensor]) -> None:
    """a·m + b with a > 0 leaves every metric but SSD unchanged.

    With a < 0 it negates the NCC family and GC, and leaves GNCC (polarity-free by design) and the
    MI family unchanged.
    """
    metric = build(name)
    fixed = smooth((20, 21), seed=0, sigma=2.0)
    moving = (0.8 * fixed + 0.2 * smooth((20, 21), seed=1, sigma=2.0))[None]
    base = score(metric, fixed, moving)
    scaled = score(metric, fixed, 3.0 * moving + 7.0)
    flipped = score(metric, fixed, -2.0 * moving + 1.0)
    if name == "ssd":
        assert not torch.allclose(base, scaled)
        return
    torch.testing.assert_close(scaled, base)
    if name in ("ncc", "masked_ncc", "lncc", "gc"):
        torch.testing.assert_close(flipped, -base)
        torch.testing.assert_close(score(metric, fixed, -fixed[None]),
                                   torch.tensor([-1.0], dtype=torch.float64))
    else:
        torch.testing.assert_close(flipped, base)


# ----------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("shape", [(7, 8), (5, 6, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "weights"])
def test_gradcheck_float64(name: str, build: Build, shape: tuple[int, ...],
                           masked: bool) -> None:
    metric = build(name, check_finite=False)
    gen = torch.Generator().manual_seed(7)
    fixed = torch.rand(shape, generator=gen, dtype=torch.float64)
    moving = (0.6 * fixed + 0.4 * torch.rand(2, *shape, generator=gen, dtype=torch.float64))
    moving.requires_grad_(True)
    mask = None
    if masked or metric.requires_mask:
        mask = torch.rand(shape, generator=gen, dtype=torch.float64)
        mask[..., 0] = 0.0
    assert torch.autograd.gradcheck(lambda m: metric(fixed, m, mask), (moving,),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradients_are_finite_for_float32_images(name: str, build: Build, score: Score,
                                                 smooth: Callable[..., torch.Tensor]) -> None:
    metric = build(name)
    fixed = smooth((16, 16), seed=0).float()
    moving = smooth((16, 16), seed=1).float()[None].repeat(2, 1, 1)
    moving[1] = fixed
    moving.requires_grad_(True)
    score(metric, fixed, moving).sum().backward()
    assert moving.grad is not None
    assert torch.isfinite(moving.grad).all()
    assert moving.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(name: str, build: Build, score: Score,
                          smooth: Callable[..., torch.Tensor]) -> None:
    metric = build(name)
    fixed = smooth((16, 17), seed=0)
    moving = torch.stack([smooth((16, 17), seed=s) for s in range(3)])
    mask = torch.rand(16, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cpu = score(metric, fixed, moving, mask)
    moving_gpu = moving.cuda().requires_grad_(True)
    gpu = score(metric, fixed.cuda(), moving_gpu, mask.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)
    gpu.sum().backward()
    assert moving_gpu.grad is not None
    assert torch.isfinite(moving_gpu.grad).all()
    with pytest.raises(InputError, match="cuda"):
        metric(fixed, moving_gpu.detach(), mask.cuda())
