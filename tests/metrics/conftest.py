"""Shared fixtures of the metric tests: the built-in names, small-image options, test images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from regkit.metrics import Metric, get_metric

BUILTIN = ["gc", "gncc", "lncc", "masked_ncc", "mattes_mi", "ncc", "nmi", "ssd"]

# Options that suit the tiny images of these tests (a patch and histograms that fit them).
SMALL_OPTIONS: dict[str, dict[str, Any]] = {
    "lncc": {"patch_size": 3},
    "nmi": {"bins": 8},
    "mattes_mi": {"bins": 8},
}


@pytest.fixture(params=BUILTIN)
def name(request: pytest.FixtureRequest) -> str:
    """Each built-in metric name in turn."""
    return str(request.param)


@pytest.fixture
def build() -> Callable[..., Metric]:
    """``build(name, **options)``: the metric, with small-image defaults unless overridden."""

    def make(metric_name: str, **options: Any) -> Metric:
        return get_metric(metric_name, **{**SMALL_OPTIONS.get(metric_name, {}), **options})

    return make


@pytest.fixture
def score() -> Callable[..., torch.Tensor]:
    """``score(metric, fixed, moving, mask=None)``; an all-true mask where one is required."""

    def call(metric: Metric, fixed: torch.Tensor, moving: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None and metric.requires_mask:
            mask = torch.ones(moving.shape[1:], dtype=torch.bool, device=moving.device)
        return metric(fixed, moving, mask)

    return call


@pytest.fixture
def smooth() -> Callable[..., torch.Tensor]:
    """``smooth(shape, seed=0, sigma=3.0)``: Gaussian-smoothed noise, float64, unit-ish range."""

    def make(shape: tuple[int, ...], seed: int = 0, sigma: float = 3.0) -> torch.Tensor:
        rng = np.random.default_rng(seed)
        img = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
        img = (img - img.min()) / (img.max() - img.min())
        return torch.from_numpy(img)

    return make


@pytest.fixture
def labels() -> Callable[..., np.ndarray]:
    """``labels(shape, levels, seed=0, block=4)``: a piecewise-constant int label image."""

    def make(shape: tuple[int, ...], levels: int, seed: int = 0, block: int = 4) -> np.ndarray:
        rng = np.random.default_rng(seed)
        coarse = rng.integers(0, levels, size=tuple(-(-s // block) for s in shape))
        for axis in range(len(shape)):
            coarse = np.repeat(coarse, block, axis=axis)
        return coarse[tuple(slice(0, s) for s in shape)]

    return make
