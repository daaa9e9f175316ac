"""The bone network's augmentation and input channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from regkit_recon.net.geometry import augment, augment_batch, draw_augmentation, fit_image, unfit
from regkit_recon.net.model import rank_channel

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.geometry.carm import camera_from_carm


def test_augmented_heights_never_mix_in_unknown_pixels() -> None:
    """A hit pixel without a height (NaN) must not leak a 0 into the heights around it."""
    size = 32
    hit = torch.zeros((1, size, size), dtype=torch.bool)
    hit[0, 8:24, 8:24] = True
    front = torch.full((1, size, size), torch.nan)
    front[0, 8:24, 8:24] = 5.0
    front[0, 15, 15] = torch.nan  # hit, but no height known there
    back = front - 1.0
    image = torch.rand((1, size, size))
    for seed in range(6):
        _, hit_t, front_t, back_t, _, rec = augment(image, hit, front, back,
                                                   np.random.default_rng(seed))
        z = rec["zoom"]
        finite = torch.isfinite(front_t)
        assert bool(finite.any())
        assert torch.allclose(front_t[finite], torch.full_like(front_t[finite], 5.0 * z),
                              atol=1e-4)
        assert torch.allclose(back_t[finite], torch.full_like(back_t[finite], 4.0 * z),
                              atol=1e-4)
        assert bool((hit_t | ~finite).all())  # a height only where the bone is hit


def test_outline_targets_give_every_hit_pixel_its_bone_s_height() -> None:
    """``outline=True``: a turned pixel straddling the outline keeps the bone's height.

    A bone of constant heights keeps them exactly on every augmented hit pixel, the outermost
    ring included, where the default drops about half; inside the two agree; an unknown pixel
    inside the bone still leaks no 0 into its neighbours.
    """
    size = 32
    hit = torch.zeros((1, 1, size, size), dtype=torch.bool)
    hit[0, 0, 6:26, 10:20] = True
    front = torch.where(hit, torch.tensor(5.0), torch.tensor(float("nan")))
    back = front - 2.0
    image = torch.rand((1, 1, size, size))
    holed = front.clone()
    holed[0, 0, 15, 15] = torch.nan
    for seed in range(6):
        aug = draw_augmentation(np.random.default_rng(seed))
        _, hit_t, f_out, b_out, _ = augment_batch(image, hit, front, back, [aug], outline=True)
        _, _, f_in, _, _ = augment_batch(image, hit, front, back, [aug])
        assert bool(hit_t.any())
        assert bool(torch.isfinite(f_out[hit_t]).all())
        assert bool(torch.isfinite(f_out[~hit_t]).logical_not().all())
        assert torch.allclose(f_out[hit_t], torch.full_like(f_out[hit_t], 5.0 * aug.zoom),
                              atol=1e-4)
        assert torch.allclose(b_out[hit_t], torch.full_like(b_out[hit_t], 3.0 * aug.zoom),
                              atol=1e-4)
        both = torch.isfinite(f_in)
        assert int(both.sum()) < int(hit_t.sum())        # the default drops the outline
        torch.testing.assert_close(f_out[both], f_in[both], rtol=1e-3, atol=1e-5)  # cover > 0.999
        _, hit_h, f_h, _, _ = augment_batch(image, hit, holed, back, [aug], outline=True)
        known = torch.isfinite(f_h)
        assert torch.allclose(f_h[known], torch.full_like(f_h[known], 5.0 * aug.zoom),
                              atol=1e-4)
        assert bool((hit_h | ~known).all())


def test_augmentation_turns_image_and_maps_together() -> None:
    """The image and the hit mask move as one: a bright square stays on its mask."""
    size = 64
    image = torch.zeros((1, size, size))
    image[0, 20:36, 12:30] = 1.0
    hit = (image > 0.5)
    heights = torch.where(hit, torch.tensor(2.0), torch.tensor(float("nan")))
    for seed in range(4):
        img, hit_t, *_ = augment(image, hit, heights, heights - 1, np.random.default_rng(seed),
                                 gamma=(1.0, 1.0))
        bright = img[0] > 0.5
        agree = (bright == hit_t[0]).float().mean()
        assert float(agree) > 0.99


def test_rank_channel_ignores_increasing_intensity_maps() -> None:
    # distinct values 1/512 apart, so that the float32 tone curve below keeps every order
    # (unseeded close values could tie after rounding and change ranks: a flaky test)
    x = (torch.randperm(512, generator=torch.Generator().manual_seed(0)).float() / 512).reshape(
        2, 1, 16, 16)
    r = rank_channel(x)
    assert torch.equal(r, rank_channel(3.0 * x ** 2 + 7.0))  # exposure, gain, tone curve
    assert float(r.min()) > 0
    assert float(r.max()) == 1.0
    flat = torch.zeros((1, 1, 4, 4))
    assert torch.equal(rank_channel(flat), torch.ones_like(flat))  # ties share one rank


def test_the_augmented_tone_curve_keeps_values_below_zero() -> None:
    """The augmentation's gamma curve is sign-preserving.

    Normalised values below 0 (the darkest air, under the 1st percentile) are mapped to
    ``-|x|^g``, not cut to 0.
    """
    size = 32
    image = torch.linspace(-0.2, 1.2, size * size).reshape(1, size, size)
    hit = torch.zeros((1, size, size), dtype=torch.bool)
    nan = torch.full((1, size, size), float("nan"))
    for seed in range(4):
        img, *_, valid, rec = augment(image, hit, nan, nan, np.random.default_rng(seed))
        assert rec["gamma"] != 1.0
        assert float(img[0][valid].min()) < -0.05  # the darkest values are still below 0
    flat = torch.full((1, size, size), -0.1)  # all air, below 0 (and the padding too)
    img, *_, rec = augment(flat, hit, nan, nan, np.random.default_rng(0))
    assert torch.allclose(img, torch.full_like(img, -(0.1 ** rec["gamma"])), rtol=1e-5)


def test_a_batch_is_augmented_as_its_items_one_by_one() -> None:
    gen = torch.Generator().manual_seed(5)
    image = torch.randn(3, 1, 40, 40, generator=gen)
    hit = torch.rand(3, 4, 40, 40, generator=gen) > 0.4
    front = torch.where(hit, 5.0 * torch.rand(3, 4, 40, 40, generator=gen), torch.nan)
    back = front - 1.0
    augs = [draw_augmentation(np.random.default_rng(s)) for s in (1, 2, 3)]
    assert len({a.mirror for a in augs}) == 2  # both branches of the mirror
    batch = augment_batch(image, hit, front, back, augs)
    for i, seed in enumerate((1, 2, 3)):
        one = augment(image[i], hit[i], front[i], back[i], np.random.default_rng(seed))
        assert one[5] == augs[i].record()
        for got, want in zip(batch, one[:5], strict=True):
            torch.testing.assert_close(got[i], want, rtol=1e-6, atol=1e-6, equal_nan=True)
    with pytest.raises(InputError, match="2 augmentations for 3 items"):
        augment_batch(image, hit, front, back, augs[:2])


def _fit_camera(width: int, height: int) -> Camera:
    return camera_from_carm(source_to_detector_mm=1000.0, source_to_isocenter_mm=950.0,
                            pixel_spacing_mm=(0.5, 0.55), width=width, height=height,
                            principal_offset_mm=(3.0, -2.0), primary_angle=0.3,
                            secondary_angle=-0.1)


@pytest.mark.parametrize("fill", [1.0, 0.87, 0.5])
def test_a_smaller_fill_shows_the_image_smaller_with_its_camera_to_match(fill: float) -> None:
    width, height, size = 48, 40, 32
    camera = _fit_camera(width, height)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.exp(-((xx - 30.0) ** 2 + (yy - 12.0) ** 2) / 20.0)   # a blob off centre
    x, fit = fit_image(image, camera, size, fill=fill)
    assert x.shape == (1, 1, size, size)
    assert fit.inner_width == round(fill * size)
    assert fit.inner_height == round(fill * size * height / width)
    assert fit.net_spacing_mm == pytest.approx(0.525 * width / (fill * size), rel=0.03)
    # a world point lands on the same share of the detector in both cameras
    point = np.array([[5.0, -8.0, 30.0]])
    uv = camera.project(point)[0]
    net_uv = fit.net_camera.project(point)[0]
    np.testing.assert_allclose(net_uv, uv * [fit.inner_width / width, fit.inner_height / height],
                               atol=1e-9)
    # the blob's peak is where the camera says, the rest of the input is air
    peak = np.unravel_index(int(torch.argmax(x[0, 0])), (size, size))
    scale = fit.inner_width / width
    assert abs(peak[1] + 0.5 - (30.5 * scale)) <= 1.0
    assert abs(peak[0] + 0.5 - (12.5 * scale)) <= 1.0
    air = x[0, 0, fit.inner_height:, :]
    if air.numel():
        assert float(air.max() - air.min()) == 0.0
    # and the maps come back to the detector's own grid
    back = unfit(x[0], fit)
    assert back.shape == (1, height, width)


@pytest.mark.parametrize("fill", [0.0, -0.5, 1.2, float("nan"), "big"])
def test_a_fill_outside_zero_to_one_is_refused(fill: object) -> None:
    with pytest.raises(InputError, match="fill"):
        fit_image(np.random.default_rng(0).random((8, 8)), _fit_camera(8, 8), 8,
                  fill=fill)  # type: ignore[arg-type]
