"""2D–3D: the radiograph's intensity map, its scatter removal and the views' free zooms.

Closed-form pieces (the polynomial fit, the scatter estimate on an image made with a known
scatter, the zoomed intrinsics), the options and their per-view-count defaults, a gradient level
through the zooms and maps, and a biplane registration of radiographs with scatter that records
what it fitted (it checks the plumbing: whether the corrections help is measured in
``benchmarks/``, and on this small crop they do not; see
docs/decisions/registration-2d3d-depth-bias.md).
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from regkit.errors import InputError
from regkit.geometry.carm import camera_from_carm
from regkit.registration import Register2D3DOptions
from regkit.registration._radiograph_images import (
    apply_intensity_map,
    detector_blur,
    detector_blur_part,
    fit_intensity_map,
    gradient_agreement,
    match_intensities,
    scatter_estimate,
    smooth,
)
from regkit.registration.levels import LevelOptions
from regkit.registration.radiograph_registration import (
    _best_on_grid,
    _coarse_to_fine,
    _final_levels,
    _full_detector_pass,
    _second_pass,
    _zoomed,
)
from regkit.testing.cameras import bench_carm


def _structures(seed: int, n: int = 2, size: int = 64) -> torch.Tensor:
    """``(n, size, size)`` line-integral-like images in [0.2, 5]: smooth blobs and edges."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(n, size, size)), (0, 4, 4))
    field = (field - field.min()) / np.ptp(field)
    edges = (gaussian_filter(rng.normal(size=(n, size, size)), (0, 2, 2)) > 0.05) * 1.5
    return torch.from_numpy((0.2 + 3.0 * field + edges).astype(np.float32))


def test_the_intensity_map_recovers_an_increasing_cubic() -> None:
    drr = _structures(0)
    coef = np.array([0.1, 0.7, 0.05, -0.004])   # increasing on [0, 6]
    inverse_ish = drr  # the radiograph x; the DRR is h(x)
    target = sum(c * inverse_ish ** k for k, c in enumerate(coef))
    fitted = fit_intensity_map(inverse_ish, target, None, degree=3)
    for b, m in enumerate(fitted):
        np.testing.assert_allclose(m.coef, coef, atol=1e-4)
        assert (m.lo, m.hi) == (float(inverse_ish[b].min()), float(inverse_ish[b].max()))
    np.testing.assert_allclose(apply_intensity_map(inverse_ish, fitted).numpy(),
                               target.numpy(), atol=1e-4)
    # beyond the fitted range the map goes on along its end tangents, so it stays finite and
    # increasing far outside (a collimator's 13.8 = -log 1e-6)
    m = fitted[0]
    far = torch.tensor([[-3.0, m.lo, m.hi, m.hi + 1.0, 13.8]], dtype=torch.float64)
    y = m(far)[0].numpy()
    ends = m.slope(np.array([m.lo, m.hi]))
    np.testing.assert_allclose(y[0], y[1] - ends[0] * (m.lo + 3.0), rtol=1e-12)
    np.testing.assert_allclose(y[3], y[2] + ends[1], rtol=1e-12)
    assert np.all(np.diff(y) > 0)


def test_the_intensity_map_stays_increasing_and_weights_count() -> None:
    x = _structures(1)
    # a wave on a slope: the cubic fit of it is not increasing, the linear one is
    wavy = x + 1.2 * torch.sin(2.5 * x)
    grid = np.linspace(float(x.min()), float(x.max()), 200)
    cubic = np.polyfit(x[0].flatten().numpy(), wavy[0].flatten().numpy(), 3)
    assert np.any(np.polyval(np.polyder(cubic), grid) <= 0)   # the plain cubic fit is not
    for m in fit_intensity_map(x, wavy, None, degree=3):
        assert len(m.coef) < 4
        assert np.all(m.slope(grid) > 0)
    # anti-correlated: no increasing fit exists; the identity comes back
    for m in fit_intensity_map(x, -x, None, degree=3):
        assert m.coef == (0.0, 1.0)
        np.testing.assert_array_equal(m(x[0]).numpy(), x[0].numpy())
    # weights: only the left half is fitted (the right half maps by another law)
    weight = torch.zeros_like(x)
    weight[:, :, :32] = 1.0
    mixed = torch.where(weight > 0, 2.0 * x + 1.0, 5.0 - x)
    for m in fit_intensity_map(x, mixed, weight, degree=1):
        np.testing.assert_allclose(m.coef, [1.0, 2.0], atol=1e-5)


def test_scatter_is_removed_from_a_radiograph_made_with_it() -> None:
    drr = _structures(2, size=96)
    # the radiograph: a transmitted primary (another scale of μ: a harder beam) plus its
    # scatter, a fraction k of the primary spread by a wide kernel, as a scatter kernel does
    primary = torch.exp(-0.8 * drr)
    k_true, sigma = 0.4, 12.0
    raw = -torch.log(primary + k_true * smooth(primary, sigma))
    before = match_intensities(raw, drr, None, degree=3, smooth_px=1.0)[0]
    after, facts = match_intensities(raw, drr, None, degree=3, smooth_px=1.0,
                                     scatter_px=sigma)

    def gradient_error(img: torch.Tensor) -> float:
        gi = torch.gradient(img, dim=(1, 2))
        gd = torch.gradient(drr, dim=(1, 2))
        return float(sum(((a - b) ** 2).mean() for a, b in zip(gi, gd, strict=True)))

    # the map alone cannot undo scatter that follows the primary's shape; the removal does
    assert gradient_error(after) < 0.2 * gradient_error(before)
    for fact in facts:
        assert fact["scatter_fraction"] == pytest.approx(k_true, rel=0.25)
        assert fact["scatter_sigma_px"] == sigma
        assert 0.05 < fact["veil_fraction"] < 1.0
        assert fact["scatter_domain"] == "radiograph"
        assert len(fact["map"]["coef"]) == 4
        assert "map_after_scatter" not in fact
    # a broader scatter: the kernel that removes it best is found among the widths tried
    wide_raw = -torch.log(primary + k_true * smooth(primary, 2.5 * sigma))
    wide, wide_facts = match_intensities(wide_raw, drr, None, degree=3, smooth_px=1.0,
                                         scatter_px=sigma)
    assert {f["scatter_sigma_px"] for f in wide_facts} == {2.5 * sigma}
    assert gradient_error(wide) < 0.2 * gradient_error(
        match_intensities(wide_raw, drr, None, degree=3, smooth_px=1.0)[0])
    # without scatter in the radiograph, the removal finds (almost) none and changes little
    clean = -torch.log(primary)
    same, clean_facts = match_intensities(clean, drr, None, degree=3, smooth_px=1.0,
                                          scatter_px=sigma)
    assert all(f["scatter_fraction"] < 0.05 for f in clean_facts)
    assert float((same - drr).abs().median()) < 0.02
    # line integrals spanning more than any detector records (a radiograph scaled ×100): the
    # scatter is estimated after the map, in the DRR's transmitted domain, and stays finite
    scaled, scaled_facts = match_intensities(100.0 * raw, drr, None, degree=3, smooth_px=1.0,
                                             scatter_px=sigma)
    assert all(f["scatter_domain"] == "mapped" for f in scaled_facts)
    assert torch.isfinite(scaled).all()
    assert gradient_error(scaled) < gradient_error(before)
    # a map that cannot be fitted (anti-correlated images: the identity) leaves line
    # integrals spanning ~200 in the mapped fallback, whose e^{−x} underflows: still finite
    inverted, _ = match_intensities(200.0 - 40.0 * drr, drr, None, degree=3, smooth_px=1.0,
                                    scatter_px=4.0)
    assert torch.isfinite(inverted).all()
    # a DRR without structure says nothing of the scatter: none is removed
    flat_drr = torch.full_like(drr, 2.0)
    kept, flat_facts = match_intensities(raw, flat_drr, None, degree=3, smooth_px=1.0,
                                         scatter_px=4.0)
    assert all(f["scatter_fraction"] == 0.0 for f in flat_facts)
    np.testing.assert_allclose(kept.numpy(),
                               match_intensities(raw, flat_drr, None, 3, 1.0)[0].numpy())
    # inputs are not modified
    np.testing.assert_array_equal(raw.numpy(),
                                  (-torch.log(primary + k_true * smooth(primary, sigma))).numpy())


def test_the_scatter_estimate_recovers_each_views_fraction_and_respects_weights() -> None:
    drr = _structures(5, n=2, size=80)

    def radiographs(rates: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        primary = torch.exp(-torch.stack([rates[0] * drr[0], rates[1] * drr[1]]))
        scatter = torch.tensor([0.15, 0.8])[:, None, None] * smooth(primary, 10.0)
        return -torch.log(primary + scatter), scatter

    # primaries the model spans (rates among PRIMARY_RATES): k and the scatter come back
    log_image, truth = radiographs((1.0, 1.5))
    low = log_image.flatten(1).min(1).values
    scatter, fractions = scatter_estimate(log_image, drr, None, 10.0, low)
    np.testing.assert_allclose(fractions, [0.15, 0.8], rtol=1e-3)
    np.testing.assert_allclose(scatter.numpy(), (truth * torch.exp(low)[:, None, None]).numpy(),
                               rtol=1e-3, atol=1e-6)
    # primaries between the rates: the strong scatter comes back within 5 %; a weak one is
    # underestimated (the rates' mix takes part of it up), never invented
    log_image, _ = radiographs((0.7, 1.1))
    low = log_image.flatten(1).min(1).values
    _, fractions = scatter_estimate(log_image, drr, None, 10.0, low)
    assert fractions[1] == pytest.approx(0.8, rel=0.05)
    assert 0.0 < fractions[0] < 0.15
    # a collimated border (zero weight, a far other value) does not move the estimate
    weight = torch.ones_like(drr)
    weight[:, :, :12] = 0.0
    bordered = torch.where(weight > 0, log_image, torch.full_like(log_image, 13.0))
    drr_bordered = torch.where(weight > 0, drr, torch.full_like(drr, 30.0))
    _, masked = scatter_estimate(bordered, drr_bordered, weight, 10.0, low)
    np.testing.assert_allclose(masked, fractions, rtol=0.25)
    # a DRR with almost no structure (one pixel 1e-3 off): k can hardly be told, and the
    # fit's ridge must not pick it (it shrinks c as k grows: scored with it, k came out 0.014)
    near_flat = torch.full((1, 64, 64), 2.0, dtype=torch.float64)
    near_flat[0, 0, 0] += 1e-3
    _, tiny = scatter_estimate(0.8 * near_flat, near_flat, None, 8.0, torch.tensor([1.6]))
    assert tiny[0] < 0.005
    # too few weighted pixels: no scatter, no error
    none, zero = scatter_estimate(log_image, drr, torch.zeros_like(drr), 10.0, low)
    assert zero == [0.0, 0.0]
    assert float(none.abs().max()) == 0.0


def test_gradient_agreement_is_a_correlation_of_the_gradients_over_weighted_pixels() -> None:
    a = _structures(6)
    assert gradient_agreement(a, a, None) == pytest.approx(1.0)
    assert gradient_agreement(a, 3.0 * a + 2.0, None) == pytest.approx(1.0)   # affine-blind
    assert gradient_agreement(a, -a, None) == pytest.approx(-1.0)
    other = _structures(7)
    assert abs(gradient_agreement(a, other, None)) < 0.5
    # pixels of zero weight do not count: equal where weighted, anything elsewhere
    weight = torch.zeros_like(a)
    weight[:, 8:40, 8:40] = 1.0
    mixed = torch.where(weight > 0, a, other)
    assert gradient_agreement(a, mixed, weight) == pytest.approx(1.0)
    assert gradient_agreement(a, mixed, None) < 0.9
    # however far off the pixels outside are: their differences never reach the weighted ones
    far = torch.where(weight > 0, a, torch.full_like(a, 1e3))
    assert gradient_agreement(a, far, weight) == pytest.approx(1.0)
    # no weighted pixel: 0, not NaN
    assert gradient_agreement(a, a, torch.zeros_like(a)) == 0.0


def test_masked_pixels_far_outside_the_fit_stay_finite_and_do_not_leak() -> None:
    # a collimated border at 13.8 (-log 1e-6), masked out, and a strongly concave relation
    # whose cubic would send 13.8 far below -88 (exp overflow) if applied as a polynomial
    x = _structures(4, n=1)
    drr = 4.0 * x + 0.6 * x ** 2 - 0.1 * x ** 3
    weight = torch.ones_like(x)
    raw = x.clone()
    raw[:, :, :6] = 13.8
    weight[:, :, :6] = 0.0
    out, _ = match_intensities(raw, drr, weight, degree=3, smooth_px=1.0, scatter_px=8.0)
    assert torch.isfinite(out).all()
    assert torch.isfinite(smooth(out, 1.0, weight)).all()
    # the counted pixels next to the border are not disturbed by it
    far = match_intensities(x, drr, weight, degree=3, smooth_px=1.0, scatter_px=8.0)[0]
    np.testing.assert_allclose(out[:, :, 6:].numpy(), far[:, :, 6:].numpy(), atol=1e-5)


def test_a_zoom_scales_the_image_about_the_principal_point() -> None:
    cam = camera_from_carm(source_to_detector_mm=1000, source_to_isocenter_mm=800,
                           pixel_spacing_mm=0.5, width=120, height=100)
    k = torch.tensor(np.array(cam.intrinsic)[None], dtype=torch.float64)
    rng = np.random.default_rng(3)
    points = rng.normal(scale=40.0, size=(5, 3))
    u = cam.project(points)
    c = np.array(cam.principal_point)
    for s in (0.97, 1.0, 1.04):
        zoomed = cam.__class__(_zoomed(k, torch.tensor([s], dtype=torch.float64))[0].numpy(),
                               cam.camera_from_world, cam.width, cam.height)
        np.testing.assert_allclose(zoomed.project(points), c + s * (u - c), atol=1e-9)


def test_options_defaults_depend_on_the_number_of_views() -> None:
    opts = Register2D3DOptions()
    assert (opts.intensity_degree, opts.scatter_sigma, opts.view_zoom) == (None, None, None)
    one, two = opts.for_views(1), opts.for_views(2)
    assert (one.intensity_degree, one.scatter_sigma, one.view_zoom) == (0, 0.0, False)
    assert (two.intensity_degree, two.scatter_sigma, two.view_zoom) == (3, 0.06, True)
    # the detector's blur is not modelled unless asked; with it, one view maps intensities too
    assert (one.detector_blur_px, two.detector_blur_px) == (0.0, 0.0)
    blurred = Register2D3DOptions(detector_blur_px="estimate").for_views(1)
    assert (blurred.intensity_degree, blurred.scatter_sigma) == (3, 0.0)
    assert Register2D3DOptions(detector_blur_px=0.8).for_views(1).intensity_degree == 3
    assert Register2D3DOptions(detector_blur_px=0.8).for_views(2).detector_blur_px == 0.8
    assert Register2D3DOptions(detector_blur_px="estimate").for_views(2).detector_blur_px \
        == "estimate"
    chosen = Register2D3DOptions(intensity_degree=2, scatter_sigma=0.1, view_zoom=False)
    kept = chosen.for_views(3)
    assert (kept.intensity_degree, kept.scatter_sigma, kept.view_zoom) == (2, 0.1, False)
    assert Register2D3DOptions(intensity_degree=1).for_views(1).intensity_degree == 1
    with pytest.raises(InputError, match="view_zoom needs two or more views"):
        Register2D3DOptions(view_zoom=True).for_views(1)
    # the veil is removed within the map: without the map it is off, and asking is an error
    off = Register2D3DOptions(intensity_degree=0).for_views(2)
    assert (off.intensity_degree, off.scatter_sigma) == (0, 0.0)
    with pytest.raises(InputError, match="scatter_sigma"):
        Register2D3DOptions(intensity_degree=0, scatter_sigma=0.05).for_views(2)
    # the ray step: a voxel with one view, half a voxel with more, a chosen value kept
    assert opts.ray_step_voxels is None
    assert (one.ray_step_voxels, two.ray_step_voxels) == (1.0, 0.5)
    assert Register2D3DOptions(ray_step_voxels=0.7).for_views(1).ray_step_voxels == 0.7


@pytest.mark.parametrize(("key", "value"), [
    ("intensity_degree", -1), ("intensity_degree", 6), ("intensity_degree", 1.5),
    ("intensity_degree", True), ("scatter_sigma", -0.01), ("scatter_sigma", math.nan),
    ("scatter_sigma", 2.0), ("scatter_sigma", "0.1"), ("view_zoom", 1), ("view_zoom", "yes"),
    ("detector_blur_px", -0.5), ("detector_blur_px", math.nan), ("detector_blur_px", 11.0),
    ("detector_blur_px", "guess"), ("detector_blur_px", "1.0"), ("detector_blur_px", True),
])
def test_bad_correction_options_are_named(key: str, value: Any) -> None:
    with pytest.raises(InputError, match=key):
        Register2D3DOptions(**{key: value})


def test_smooth_of_a_constant_is_the_constant() -> None:
    # the scatter estimate relies on the weighted Gaussian not darkening the image's border
    img = torch.full((1, 30, 40), 0.7)
    weight = torch.ones_like(img)
    weight[:, :5] = 0.0
    np.testing.assert_allclose(smooth(img, 6.0, weight).numpy(), 0.7, atol=1e-6)


@cache
def _crop_views(size: int, angles: tuple[float, ...]
                ) -> tuple[Any, list[Any], np.ndarray, np.ndarray]:
    """The shipped crop, its true views at ``angles`` (rad), their clean DRRs, bone points.

    The DRRs ``(V, size, size)`` are cached: callers must not modify them.
    """
    from regkit.data import chest_ct_crop
    from regkit.io.nifti import load_nifti
    from regkit.render.base import Views
    from regkit.render.select import make_renderer

    paths = chest_ct_crop()
    ct = load_nifti(paths["ct"], labels=paths["bones"])
    true = [bench_carm(size, ct.center_world, a) for a in angles]
    with torch.no_grad():
        drr = make_renderer(ct.to_mu()).drr(Views.from_cameras(true)).numpy()
    assert ct.labels is not None
    points = ct.index_to_world(np.argwhere(ct.labels > 0)[::5].astype(np.float64))
    return ct, true, drr, points


@cache
def _crop_biplane(size: int) -> tuple[Any, list[Any], list[np.ndarray], np.ndarray]:
    """The shipped crop, an AP and a lateral view, radiographs with 8 % scatter, bone points."""
    ct, true, drr, points = _crop_views(size, (0.0, np.pi / 2))
    rng = np.random.default_rng(5)
    images = []
    for d in drr:   # 8 % scatter of a blurred transmitted image, Poisson noise, 0.7 px blur
        t = np.exp(-d)
        veil = 0.08 * gaussian_filter(t, 12.0)
        counts = rng.poisson(1e4 * (t + veil))
        images.append(gaussian_filter(-np.log(np.maximum(counts, 1) / 1e4), 0.7)
                      .astype(np.float32))
    return ct, true, images, points


def _moved(ct: Any, true: list[Any], deg: float, mm: float) -> list[Any]:
    from regkit.geometry.transforms import rigid_from_params

    rot = np.radians(deg) * np.array([0.6, -0.8, 0.0])
    shift = mm * np.array([0.8, -0.6, 0.4]) / np.linalg.norm([0.8, -0.6, 0.4])
    e = np.asarray(rigid_from_params(np.r_[rot, shift], ct.center_world))
    return [c.with_pose(c.camera_from_world @ e) for c in true]


def _error(cams: Any, true: list[Any], points: np.ndarray) -> float:
    from regkit.registration.radiograph_registration import mean_target_error_2d3d

    return mean_target_error_2d3d(np.stack([c.camera_from_world for c in cams]),
                                  np.stack([c.camera_from_world for c in true]), points)


def test_a_gradient_level_fits_the_zooms_and_maps_too() -> None:
    from regkit.registration import register_2d3d
    from regkit.registration.levels import LevelOptions

    ct, true, images, points = _crop_biplane(40)
    start = _moved(ct, true, 1.5, 4.0)
    levels = (LevelOptions(shrink=2.0, max_voxels=40 * 40, method="powell",
                           options={"max_evaluations": 20}, rot_step_deg=1.0,
                           trans_step_mm=2.0),
              LevelOptions(shrink=2.0, max_voxels=40 * 40, method="adam",
                           options={"max_iterations": 30, "lr": 0.1}, rot_step_deg=1.0,
                           trans_step_mm=2.0))
    result = register_2d3d(ct, start, images, seed=0, options={"levels": levels})
    before, after = _error(start, true, points), _error(result.cameras, true, points)
    assert after < 0.5 * before
    assert result.extras["levels"][1]["method"] == "adam"
    assert len(result.extras["levels"][1]["intensity_maps"]) == 2
    zooms = result.extras["view_zoom"]
    assert len(zooms) == 2
    assert all(abs(math.log(z)) > 1e-9 for z in zooms)   # adam moved them


@pytest.mark.slow
def test_biplane_radiographs_with_scatter_register_and_record_their_corrections() -> None:
    from regkit.registration import register_2d3d
    from regkit.testing.levels import fast_levels_2d3d

    size = 80
    ct, true, images, points = _crop_biplane(size)
    start = _moved(ct, true, 4.0, 5.4)
    options = {"levels": fast_levels_2d3d(size)}
    result = register_2d3d(ct, start, images, seed=0, options=options)
    assert _error(result.cameras, true, points) < 1.0
    extras = result.extras
    assert (extras["intensity_degree"], extras["scatter_sigma"]) == (3, 0.06)
    assert len(extras["view_zoom"]) == 2
    assert all(abs(math.log(z)) <= 0.1 for z in extras["view_zoom"])
    assert all(abs(math.log(z)) > 1e-12 for z in extras["view_zoom"])   # the zooms moved
    levels = extras["levels"]
    assert "intensity_maps" not in levels[0]
    for level in levels[1:]:
        assert len(level["intensity_maps"]) == 2
        assert all("veil_fraction" in m and len(m["map"]["coef"]) <= 4
               for m in level["intensity_maps"])
    for before, after in zip(start, result.cameras, strict=True):   # zooms stay out of them
        np.testing.assert_array_equal(after.intrinsic, before.intrinsic)
    assert all("detector_blur_px" not in level for level in levels)   # two views: no blur model
    # one view: no zoom, no map
    single = register_2d3d(ct, start[:1], images[:1], seed=0, options=options)
    assert single.extras["view_zoom"] is None
    assert single.extras["intensity_degree"] == 0
    assert all("intensity_maps" not in level for level in single.extras["levels"])
    assert all("detector_blur_px" not in level for level in single.extras["levels"])
    # asked to estimate the detector's blur: past the first level, with the map and no veil
    single = register_2d3d(ct, start[:1], images[:1], seed=0,
                           options={**options, "detector_blur_px": "estimate"})
    assert (single.extras["intensity_degree"], single.extras["scatter_sigma"]) == (3, 0.0)
    assert single.extras["detector_blur_px"] == "estimate"
    first, *rest = single.extras["levels"]
    assert "intensity_maps" not in first
    assert "detector_blur_px" not in first
    # the level CTs past the first leave the pyramid's Gaussian out; the capturing one keeps it
    assert "pyramid_gaussian" not in first
    assert all(level["pyramid_gaussian"] is False for level in rest)
    assert all("pyramid_gaussian" not in level for level in levels)   # the two views above
    for level in rest:
        scores = level["detector_blur_scores"]
        assert len(scores) == 25
        scored = [i for i, v in enumerate(scores) if v is not None]
        # coarse to fine: every third σ, then those around the best of them
        assert set(range(0, 25, 3)) <= set(scored)
        assert 9 < len(scored) <= 13
        assert all(np.isfinite(scores[i]) for i in scored)
        best = 0.125 * max(scored, key=lambda i: scores[i])   # gncc: higher is better
        assert abs(level["detector_blur_px"] - best) <= 0.125
        assert all("veil_fraction" not in m for m in level["intensity_maps"])


def test_detector_blur_acts_on_the_transmitted_intensity() -> None:
    """A step edge, a constant and the gradient, against the closed form."""
    a, b, sigma = 0.5, 3.0, 1.3
    img = torch.full((1, 9, 40), a)
    img[:, :, 20:] = b
    out = detector_blur(img, sigma)[0, 4].double().numpy()
    radius = math.ceil(3 * sigma)
    w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    w /= w.sum()
    for col in (18, 19, 20, 21):   # every pixel within the kernel's reach of the edge
        right = w[np.arange(-radius, radius + 1) + col >= 20].sum()
        expected = -math.log(right * math.exp(-b) + (1 - right) * math.exp(-a))
        assert out[col] == pytest.approx(expected, abs=1e-5)
        # below the blur of the line integrals themselves: the edge moves to the bright side
        assert out[col] < right * b + (1 - right) * a - 1e-3
    assert out[0] == pytest.approx(a, abs=1e-6)
    assert out[-1] == pytest.approx(b, abs=1e-6)
    assert detector_blur(img, 0.0) is img
    # a constant stays itself; each output's derivatives are the kernel's weights (sum 1)
    flat = torch.full((2, 12, 15), 2.2, requires_grad=True)
    blurred = detector_blur(flat, 0.9)
    np.testing.assert_allclose(blurred.detach().numpy(), 2.2, atol=1e-5)
    (grad,) = torch.autograd.grad(blurred.sum(), flat)
    assert torch.isfinite(grad).all()
    assert float(grad.sum()) == pytest.approx(flat.numel(), rel=1e-4)


@pytest.mark.slow
def test_one_view_estimates_the_detector_blur_it_was_made_with() -> None:
    """A DRR blurred by a known σ in the transmitted domain: the levels estimate that σ.

    The radiograph is made with scipy's Gaussian, the registration's blur is its own.
    """
    from regkit.registration import register_2d3d
    from regkit.testing.levels import fast_levels_2d3d

    size = 80
    ct, true, drrs, points = _crop_views(size, (0.0,))
    drr = drrs[0]
    start = _moved(ct, true, 1.0, 2.0)

    def register(image: np.ndarray, blur: Any) -> Any:
        return register_2d3d(ct, start, [image.astype(np.float32)], seed=0,
                             options={"levels": fast_levels_2d3d(size), "detector_blur_px": blur})

    sharp = register(drr, "estimate")
    assert sharp.extras["levels"][-1]["detector_blur_px"] < 0.4
    blurred = -np.log(gaussian_filter(np.exp(-drr), 1.5))
    modelled, plain = register(blurred, "estimate"), register(blurred, None)
    levels = modelled.extras["levels"]
    # the last level runs twice, the second time re-estimating σ where the first ended
    assert len(levels) == len(fast_levels_2d3d(size)) + 1 == len(plain.extras["levels"]) + 1
    assert levels[-1]["method"] == levels[-2]["method"]
    assert levels[-1]["detector_blur_scores"] != levels[-2]["detector_blur_scores"]
    assert levels[-1]["detector_blur_px"] == pytest.approx(1.5, abs=0.3)
    # unmodelled, the blur reads as a change of magnification: measured 11.2 mm against 0.10
    # (1.02 mm without the second pass)
    assert _error(modelled.cameras, true, points) < 0.3 * _error(plain.cameras, true, points)
    assert _error(modelled.cameras, true, points) < 0.5


@pytest.mark.slow
def test_a_full_detector_level_finishes_a_binned_pyramid() -> None:
    """The crop's DRR blurred by 1.5 px, a pyramid that stops at half the detector.

    With ``full_detector`` a level at the whole detector follows, with σ carried from the
    estimate before it (measured: 1.64 mm without it, 0.25 mm with it).
    """
    from regkit.registration import register_2d3d
    from regkit.testing.levels import fast_levels_2d3d

    size = 80
    ct, true, drrs, points = _crop_views(size, (0.0,))
    drr = drrs[0]
    start = _moved(ct, true, 1.0, 2.0)
    fast = fast_levels_2d3d(size)
    binned = (*fast[:2], replace(fast[2], max_voxels=40 * 40))
    image = (-np.log(gaussian_filter(np.exp(-drr), 1.5))).astype(np.float32)

    def register(full: bool) -> Any:
        return register_2d3d(ct, start, [image], seed=0,
                             options={"levels": binned, "detector_blur_px": "estimate",
                                      "full_detector": full})

    plain, full = register(False), register(True)
    assert len(full.extras["levels"]) == len(plain.extras["levels"]) + 1
    assert full.extras["full_detector"] is True
    *_, before, last = full.extras["levels"]
    assert before["detector_factors"] == [2]
    assert last["detector_factors"] == [1]
    assert last["detector_blur_from_level"] == before["level"]
    assert last["detector_blur_px"] == before["detector_blur_px"]
    assert "detector_blur_scores" not in last
    assert last["detector_blur_px"] == pytest.approx(1.5, abs=0.3)
    assert _error(full.cameras, true, points) < 0.5
    assert _error(full.cameras, true, points) < 0.5 * _error(plain.cameras, true, points)


def test_the_blur_grid_is_searched_coarse_to_fine() -> None:
    # on any one-peaked curve the search finds the whole grid's best point and scores its two
    # neighbours, so the parabola's vertex is the same; 13 of 25 points at most
    rng = np.random.default_rng(3)
    for peak in np.linspace(-0.5, 24.5, 41):
        curve = -np.abs(np.arange(25) - peak) ** rng.uniform(0.5, 2.0)
        for sign in (1.0, -1.0):
            scores: list[float | None] = [None] * 25
            for i in _coarse_to_fine(25, 3, scores, sign):
                assert scores[i] is None                       # nothing scored twice
                scores[i] = float(sign * curve[i])
            done = [i for i, v in enumerate(scores) if v is not None]
            assert len(done) <= 13
            best = int(np.argmax(curve))
            assert best in done
            assert all(j in done for j in (best - 1, best + 1) if 0 <= j < 25)
    # a NaN never wins the coarse pass
    nan_first: list[float | None] = [None] * 25
    for i in _coarse_to_fine(25, 3, nan_first, 1.0):
        nan_first[i] = math.nan if i == 0 else -abs(i - 12.0)
    assert all(nan_first[i] is not None for i in (11, 12, 13))


def test_the_blurred_bone_part_is_the_first_order_change_of_the_blurred_whole() -> None:
    drr = _structures(1)
    bone = torch.relu(_structures(2) - 2.0)
    sigma = 1.2
    part = detector_blur_part(drr, bone, sigma)
    for r in (1e-3, -1e-3):
        change = (detector_blur(drr + r * bone, sigma) - detector_blur(drr, sigma)) / r
        np.testing.assert_allclose(change.numpy(), part.numpy(), atol=2e-2)
    assert detector_blur_part(drr, bone, 0.0) is bone
    # a large line integral (a collimator's 13.8, or far more) does not underflow
    far = detector_blur(drr + 200.0, sigma)
    np.testing.assert_allclose(far.numpy(), detector_blur(drr, sigma).numpy() + 200.0,
                               atol=1e-3)


def test_an_estimated_blur_s_second_pass_polishes_finer() -> None:
    quadratic = LevelOptions(method="quadratic", rot_step_deg=0.5, trans_step_mm=1.0,
                             options={"radius": 0.5, "max_evaluations": 200, "tol_x": 0.12})
    second = _second_pass(quadratic)
    assert (second.rot_step_deg, second.trans_step_mm) == (0.25, 0.5)
    assert dict(second.options) == {"radius": 0.25, "max_iterations": 2, "tol_x": 0.12,
                                    "final_step": True}
    assert dict(quadratic.options)["radius"] == 0.5          # the level given is left alone
    powell = LevelOptions(method="powell", shrink=2.0, max_voxels=4096,
                          options={"max_evaluations": 60})
    second = _second_pass(powell)
    assert (second.shrink, second.max_voxels, dict(second.options)) == (2.0, 4096,
                                                                        {"max_evaluations": 60})
    assert (second.rot_step_deg, second.trans_step_mm) == (1.0, 1.0)
    # the full-detector pass: the second pass's settings at the full detector; a quadratic
    # polish runs one design and its step, another method its own budget
    full = _full_detector_pass(quadratic, 256 * 256)
    assert (full.max_voxels, full.rot_step_deg, full.trans_step_mm) == (256 * 256, 0.25, 0.5)
    assert dict(full.options) == {"radius": 0.25, "max_iterations": 1, "tol_x": 0.12,
                                  "final_step": True}
    full = _full_detector_pass(powell, 256 * 256)
    assert (full.max_voxels, dict(full.options)) == (256 * 256, {"max_evaluations": 60})


def test_the_full_detector_level_follows_the_pyramid_where_it_bins() -> None:
    cams = [bench_carm(256, np.zeros(3), 0.0), bench_carm(200, np.zeros(3), 90.0)]
    binned = [LevelOptions(shrink=4.0, max_voxels=32 * 32),
              LevelOptions(method="quadratic", max_voxels=128 * 128, rot_step_deg=0.5,
                           trans_step_mm=1.0, options={"radius": 0.5})]

    def _full(level: LevelOptions) -> LevelOptions:
        return _full_detector_pass(level, 256 * 256)

    def final(**options: Any) -> tuple[list[LevelOptions], int | None]:
        options.setdefault("scatter_sigma", 0.0)
        return _final_levels(list(binned), Register2D3DOptions(**options).for_views(2), cams)

    levels, carry = final()
    assert (levels, carry) == (binned, None)
    # the scatter removal (two views' default): the last level again, then its second pass,
    # each refitting the scatter where the pass before ended
    levels, carry = final(scatter_sigma=None)
    assert (levels, carry) == ([*binned, binned[1], _second_pass(binned[1])], None)
    levels, carry = final(scatter_sigma=None, full_detector=True)
    assert levels == [binned[0], replace(binned[1], options={"radius": 0.5, "tol_x": 0.04}),
                      binned[1], _second_pass(binned[1]), _full(binned[1])]
    assert carry is None
    levels, carry = final(full_detector=True)
    assert levels[0] == binned[0]
    assert len(levels) == 3
    assert carry is None
    assert levels[2] == _full(binned[1])
    # the full level: the second pass's settings at the full detector, one design and its
    # model's step
    assert dict(levels[2].options) == {"radius": 0.25, "max_iterations": 1, "final_step": True}
    assert (levels[2].max_voxels, levels[2].rot_step_deg) == (256 * 256, 0.25)
    # the binned polish before it stops one halving sooner (tol_x doubled, default 0.02)
    assert levels[1] == replace(binned[1], options={"radius": 0.5, "tol_x": 0.04})
    # an estimated blur: its second pass at the binned detector, then the full one, which
    # takes σ from it
    levels, carry = final(full_detector=True, detector_blur_px="estimate")
    second = _second_pass(binned[1])
    assert levels[1:] == [replace(binned[1], options={"radius": 0.5, "tol_x": 0.04}), second,
                          _full(binned[1])]
    assert carry == 3
    # without the full level the first pass polishes as given
    levels, carry = final(detector_blur_px="estimate")
    assert (levels, carry) == ([*binned, second], None)
    # a tol_x given is doubled too; a bad one is left for the optimizer's check to name
    for given, want in ((0.1, 0.2), (True, True), ("0.1", "0.1"), (None, None), (-1.0, -1.0),
                        (math.inf, math.inf)):
        own = [binned[0], replace(binned[1], options={"radius": 0.5, "tol_x": given})]
        levels, _ = _final_levels(own, Register2D3DOptions(full_detector=True), cams)
        assert dict(levels[1].options)["tol_x"] == want
    # other methods are left as they are
    powell = [binned[0], replace(binned[1], method="powell", options={"max_evaluations": 60})]
    levels, _ = _final_levels(list(powell), Register2D3DOptions(full_detector=True), cams)
    assert levels[:2] == powell
    # a last level that already sees every full detector gets nothing more
    whole = [*binned[:1], replace(binned[1], max_voxels=256 * 256)]
    assert _final_levels(whole, Register2D3DOptions(full_detector=True), cams) == (whole, None)
    # a clinical detector is binned to 512² at most, and not at all past a 512² last level
    big = [bench_carm(1024, np.zeros(3), 0.0)]
    levels, _ = _final_levels(list(binned), Register2D3DOptions(full_detector=True), big)
    assert levels[-1].max_voxels == 512 * 512
    at_cap = [*binned[:1], replace(binned[1], max_voxels=512 * 512)]
    assert _final_levels(at_cap, Register2D3DOptions(full_detector=True), big) == (at_cap, None)
    with pytest.raises(InputError, match="full_detector"):
        Register2D3DOptions(full_detector="yes")  # type: ignore[arg-type]


def test_the_best_blur_on_a_grid_is_the_parabola_s_vertex() -> None:
    grid = np.array([0.0, 0.5, 1.0, 2.0, 3.0])
    values = -(grid - 0.8) ** 2            # a parabola peaking at 0.8 on an unequal grid
    assert _best_on_grid(grid, values) == pytest.approx(0.8)
    values = -(grid - 1.6) ** 2            # the best point 2.0, neighbours 1.0 and 3.0
    assert _best_on_grid(grid, values) == pytest.approx(1.6)
    assert _best_on_grid(grid, -grid) == 0.0                  # at an end: that end
    assert _best_on_grid(grid, grid) == 3.0
    with_nan = -(grid - 0.8) ** 2
    with_nan[4] = np.nan                   # a NaN score is never the best
    assert _best_on_grid(grid, with_nan) == pytest.approx(0.8)
    with_nan[3] = np.nan                   # a NaN neighbour: the best grid point itself
    assert _best_on_grid(grid, with_nan) == 1.0
    assert _best_on_grid(grid, np.full(5, np.nan)) == 0.0


def test_no_blur_model_leaves_the_registration_as_it_was() -> None:
    """``detector_blur_px`` 0 and None (the default) give the same registration to the bit."""
    from regkit.registration import register_2d3d
    from regkit.registration.levels import LevelOptions

    ct, true, images, _ = _crop_biplane(40)
    start = _moved(ct, true, 1.5, 4.0)
    levels = (LevelOptions(shrink=2.0, max_voxels=40 * 40, method="powell",
                           options={"max_evaluations": 20}, rot_step_deg=1.0,
                           trans_step_mm=2.0),) * 2
    runs = [register_2d3d(ct, start[:1], images[:1], seed=0,
                          options={"levels": levels, "detector_blur_px": blur})
            for blur in (None, 0, 0.0)]
    for other in runs[1:]:
        np.testing.assert_array_equal(other.world_correction, runs[0].world_correction)
        assert other.final_score == runs[0].final_score
