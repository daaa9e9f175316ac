"""The pyramid's volume reductions: slab-wise block means, elementwise transforms, level sizes."""

from __future__ import annotations

import numpy as np
import pytest

import regkit.registration.levels as levels
from regkit.errors import InputError
from regkit.registration._radiograph_inputs import check_volume, check_volume_source
from regkit.registration.levels import at_spacing, at_spacing_within, block_mean
from regkit.utils.blocks import block_reduce
from regkit.volume import Volume, hu_to_mu


def _volume(shape: tuple[int, int, int] = (37, 30, 23), seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    hu = rng.normal(0.0, 400.0, size=shape).astype(np.int16)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 30.0)
    return Volume(hu, affine, units="HU")


@pytest.mark.parametrize("slab_bytes", [1, 3000, 50_000, 1 << 30])
def test_block_mean_slab_by_slab_equals_the_whole(monkeypatch: pytest.MonkeyPatch,
                                                  slab_bytes: int) -> None:
    """Any slab size gives the one-pass float64 block mean, to the bit, trailing blocks dropped."""
    data = np.asarray(_volume().data, dtype=np.float32)
    monkeypatch.setattr(levels, "_BLOCK_SLAB_BYTES", slab_bytes)
    got = block_mean(data, [3, 2, 4])
    want = block_reduce(data, [3, 2, 4], "mean", np.float64).astype(np.float32)
    assert got.dtype == np.float32
    assert got.shape == (12, 15, 5)
    np.testing.assert_array_equal(got, want)
    # a closed form: the first block's mean
    np.testing.assert_allclose(got[0, 0, 0], data[:3, :2, :4].astype(np.float64).mean(),
                               rtol=1e-6)


def test_block_mean_transform_is_applied_voxel_by_voxel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transform sees the float32 voxels before averaging, whatever the slabs; input untouched."""
    vol = _volume()
    before = np.array(vol.data, copy=True)
    monkeypatch.setattr(levels, "_BLOCK_SLAB_BYTES", 4000)
    seen: list[tuple[int, ...]] = []

    def square(x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float32
        seen.append(x.shape)
        return x * x

    got = block_mean(vol.data, [2, 2, 1], square)
    x = np.asarray(vol.data, dtype=np.float32)
    want = block_reduce(x * x, [2, 2, 1], "mean", np.float64).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    assert len(seen) > 1
    assert all(s[0] < vol.shape[0] for s in seen)   # slabs, never the whole
    np.testing.assert_array_equal(vol.data, before)
    # factors of 1: the transformed copy, nothing averaged
    np.testing.assert_array_equal(block_mean(vol.data, [1, 1, 1], square), x * x)


@pytest.mark.parametrize("spacing", [0.0, 1.0, 1.6, 3.3, 9.0])
def test_at_spacing_transform_equals_transforming_first(spacing: float) -> None:
    """``at_spacing(v, s, f)`` is ``at_spacing`` of the transformed volume, grid and values."""
    vol = _volume()
    mu = vol.to_mu()
    via = at_spacing(vol, spacing, transform=hu_to_mu)
    direct = at_spacing(mu, spacing)
    np.testing.assert_array_equal(via.world_from_index, direct.world_from_index)
    np.testing.assert_array_equal(via.data, direct.data)


def test_at_spacing_without_smoothing_is_the_block_mean() -> None:
    """``smooth=False``: whole blocks are their mean, nothing else; the default is smoother."""
    rng = np.random.default_rng(3)
    data = rng.normal(0.02, 0.005, size=(40, 36, 11)).astype(np.float32)
    vol = Volume(data, np.diag([0.7, 0.7, 2.5, 1.0]), units="mu")   # the chest CT's spacing
    sharp = at_spacing(vol, 1.4, smooth=False)      # blocks of 2 × 2 × 1, nothing resampled
    smooth = at_spacing(vol, 1.4)
    assert sharp.spacing == pytest.approx([1.4, 1.4, 2.5])
    np.testing.assert_array_equal(sharp.world_from_index, smooth.world_from_index)
    np.testing.assert_array_equal(sharp.data, block_mean(data, [2, 2, 1]))
    # the Gaussian lowers the variance of white noise; without it the blocks keep theirs
    assert float(np.var(smooth.data)) < 0.8 * float(np.var(sharp.data))
    np.testing.assert_allclose(float(np.var(sharp.data)), float(np.var(data)) / 4, rtol=0.1)
    # a volume already at the spacing is the same either way
    np.testing.assert_array_equal(at_spacing(vol, 0.0, smooth=False).data,
                                  at_spacing(vol, 0.0).data)


@pytest.mark.parametrize("cap", [64, 500, 2000, 10_000, 1 << 20])
@pytest.mark.parametrize("spacing", [0.0, 1.2, 4.0])
def test_level_size_is_planned_without_building(cap: int, spacing: float) -> None:
    """The capped level is the one the old two-pass search built: same spacing and grid."""
    vol = _volume().to_mu()
    level, used = at_spacing_within(vol, spacing, cap)
    # the former way: build at the asked spacing, then coarsen by the excess count
    first = at_spacing(vol, spacing)
    count = float(np.prod(first.shape))
    if count <= cap:
        want = spacing
    else:
        coarser = float(np.exp(np.log(first.spacing).mean())) * (count / cap) ** (1.0 / 3.0)
        want = max(spacing, coarser)
    assert used == pytest.approx(want, rel=1e-12)
    assert level.shape == at_spacing(vol, want).shape
    if count > cap:
        assert np.prod(level.shape) <= cap * 1.5   # coarsened to about the cap


def test_volume_source_keeps_hu_and_converts_like_to_mu() -> None:
    """The source check returns the CT as given and a map that matches ``to_mu`` exactly."""
    vol = _volume()
    ct, to_mu = check_volume_source(vol, 0.019)
    assert ct is vol
    assert to_mu is not None
    np.testing.assert_array_equal(to_mu(np.asarray(vol.data, np.float32)),
                                  vol.to_mu(0.019).data)
    mu = vol.to_mu()
    assert check_volume_source(mu, 0.019) == (mu, None)
    np.testing.assert_array_equal(check_volume(vol, 0.019).data, vol.to_mu(0.019).data)


@pytest.mark.parametrize("hu", [np.full((6, 6, 6), 40, np.int16),
                                np.linspace(-3000, -1000, 216).reshape(6, 6, 6)])
def test_volume_source_refuses_a_constant_ct(hu: np.ndarray) -> None:
    """A CT whose μ is constant (below −1000 HU μ clamps to 0) is refused, as before."""
    vol = Volume(hu, np.eye(4), units="HU")
    with pytest.raises(InputError, match="constant"):
        check_volume_source(vol, 0.02)
    with pytest.raises(InputError, match="constant"):
        check_volume(vol, 0.02)
