"""The radiograph degradation model: what it keeps and what it draws."""

from __future__ import annotations

import numpy as np
from regkit_recon.groundtruth.degrade import DegradeRanges, degrade


def _noiseless(exposure: float, gamma: float, scatter: float = 0.0) -> DegradeRanges:
    """Ranges pinned to one value each, with a dose so high that the noise is ~1e-6."""
    return DegradeRanges(photons=(1e12, 1e12), exposure=(exposure, exposure),
                         blur_px=(0.0, 0.0), scatter_fraction=(scatter, scatter),
                         scatter_sigma=(0.1, 0.1), heel=(0.0, 0.0), collimation=(0.0, 0.0),
                         leakage=(0.02, 0.02), gamma=(gamma, gamma))


def _ramp() -> np.ndarray:
    """Line integrals from air (0) through a thin finger (~0.05) to thick bone (3)."""
    return np.tile(np.linspace(0.0, 3.0, 64, dtype=np.float32), (64, 1))


def test_overexposure_keeps_air_and_thin_anatomy_apart() -> None:
    # 1.4x the nominal exposure puts air at -log(1.4) and everything thinner than 0.34 below
    # zero; the tone curve must still tell them apart (format version 2 clipped them to 0)
    clean = _ramp()
    for gamma in (0.8, 1.0, 1.25):
        image, params = degrade(clean, np.random.default_rng(0), _noiseless(1.4, gamma))
        row = image[32].astype(np.float64)
        assert params["exposure"] == 1.4
        assert params["gamma"] == gamma
        assert np.all(np.diff(row) > 0), f"not strictly increasing at gamma {gamma}"
        assert row[0] < -0.1                      # air lies below zero, not at it
        assert np.count_nonzero(row == 0.0) == 0


def test_without_exposure_error_the_curve_is_the_clean_drr_under_gamma() -> None:
    clean = _ramp()
    image, params = degrade(clean, np.random.default_rng(1), _noiseless(1.0, 1.25))
    s = params["tone_scale"]
    assert s == np.percentile(clean, 99.0)
    expect = s * (clean / s) ** 1.25
    np.testing.assert_allclose(image, expect, atol=1e-4)


def test_scatter_lowers_contrast_but_keeps_order() -> None:
    clean = _ramp()
    plain, _ = degrade(clean, np.random.default_rng(2), _noiseless(1.0, 1.0))
    scattered, _ = degrade(clean, np.random.default_rng(2), _noiseless(1.0, 1.0, scatter=0.3))
    assert scattered[32, -1] < plain[32, -1] - 0.2    # scatter fills in the thickest bone
    assert np.all(np.diff(scattered[32].astype(np.float64)) > 0)


def test_default_draws_are_finite_and_recorded() -> None:
    clean = _ramp()
    before = clean.copy()
    image, params = degrade(clean, np.random.default_rng(3))
    assert image.dtype == np.float32
    assert image.shape == clean.shape
    assert np.isfinite(image).all()
    for key in ("photons", "exposure", "blur_px", "scatter_fraction", "scatter_sigma_px",
                "heel", "heel_direction_deg", "collimation_px", "leakage", "gamma",
                "tone_scale"):
        assert key in params
    np.testing.assert_array_equal(clean, before)                # the input is untouched
