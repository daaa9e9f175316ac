"""The refinement's collimated-field mask, on shipped radiographs and on images made to measure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from regkit_recon.data import demo_hand
from regkit_recon.groundtruth.sample import read_sample
from regkit_recon.reconstruct.refine import _field_mask


def _margins(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = mask.shape
    return int(cols[0]), int(w - 1 - cols[-1]), int(rows[0]), int(h - 1 - rows[-1])


@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_field_is_the_recorded_collimation_of_the_demo(index: int) -> None:
    sample = read_sample(demo_hand() / "samples" / f"{index:06d}.npz")
    recorded = json.loads(sample["meta"])["degrade"]["collimation_px"]   # left right top bottom
    mask = _field_mask(sample["image"])
    assert list(_margins(mask)) == recorded
    left, right, top, bottom = recorded
    h, w = mask.shape
    inside = mask[top:h - bottom, left:w - right]
    assert inside.mean() > 0.97                 # air and anatomy inside the field are kept


def _hand(h: int = 120, w: int = 100) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.normal(-0.3, 0.01, (h, w))     # over-exposed air lies below zero
    image[30:90, 35:65] += 1.2                 # anatomy, brighter than air
    return image


def test_collimator_bands_are_cut_and_an_open_field_is_kept() -> None:
    open_field = _field_mask(_hand())
    assert _margins(open_field) == (0, 0, 0, 0)
    assert open_field.mean() > 0.98
    image = _hand()
    image[:9] = 3.6                            # the collimator's shadow, top and right
    image[:, -6:] = 3.4
    mask = _field_mask(image)
    assert _margins(mask) == (0, 6, 9, 0)
    assert mask[9:, :-6].mean() > 0.98


def test_flat_saturated_air_is_left_out() -> None:
    image = _hand()
    image[image < -0.29] = -0.29               # a detector saturating in the open beam
    mask = _field_mask(image)
    assert not mask[image == -0.29].any()
    assert mask[30:90, 35:65].all()


def test_nan_pixels_are_never_in_the_field() -> None:
    image = _hand()
    image[50, 50] = np.nan
    mask = _field_mask(image)
    assert not mask[50, 50]
    assert mask[30:90, 35:65].sum() == 60 * 30 - 1
