"""3D–3D registration on the shipped CT crop: recovery, cross-modality, affine, masks, seeds."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch

from regkit.data import chest_ct_crop
from regkit.errors import InputError, ShapeError, UnknownNameError
from regkit.geometry.transforms import rigid_from_params
from regkit.io.nifti import load_nifti
from regkit.metrics import get_metric
from regkit.registration.levels import at_spacing as _at_spacing
from regkit.registration.results import Registration3D3DResult
from regkit.registration.volume_registration import (
    DEFAULT_RIGID_LEVELS,
    LevelOptions,
    Progress,
    Register3D3DOptions,
    _border,
    _build_level,
    _cropped,
    affine_from_params,
    initial_transform,
    mean_target_error,
    register_3d3d,
)
from regkit.volume import Units, Volume

# A non-monotonic remapping of HU (air dark, fat brightest, bone darker than soft tissue): what
# another modality might show; only a statistical metric can match it to the CT.
REMAP_HU = [-1024.0, -500.0, -100.0, 40.0, 300.0, 1500.0, 3071.0]
REMAP_TO = [0.0, 50.0, 900.0, 500.0, 150.0, 250.0, 300.0]


@cache
def _ct() -> Volume:
    paths = chest_ct_crop()
    return load_nifti(paths["ct"], labels=paths["bones"])


@cache
def _fixed() -> Volume:
    return _ct().resample(2.0).with_labels(None)


def _bone_points_moving(true: np.ndarray) -> np.ndarray:
    """Bone voxel centres of the crop (every 7th), in the moving world (mm)."""
    ct = _ct()
    assert ct.labels is not None
    world = ct.index_to_world(np.argwhere(ct.labels > 0)[::7].astype(np.float64))
    return (np.linalg.inv(true) @ np.c_[world, np.ones(len(world))].T).T[:, :3]


def _pair(true: np.ndarray, *, remap: bool = False, noise: float = 20.0, seed: int = 0
          ) -> tuple[Volume, Volume, np.ndarray]:
    """The crop (2 mm grid), a moved copy on an oblique grid, and bone targets (moving world).

    The copy is on a 2.2 x 1.9 x 2.4 mm grid that sees less of it (a cropped field of view), with
    Gaussian noise.
    """
    ct = _ct()
    centre = ct.center_world
    shape = np.array([46, 62, 56])
    spacing = np.array([2.2, 1.9, 2.4])
    grid = np.asarray(rigid_from_params(np.array([0.05, -0.04, 0.03, 0.0, 0.0, 0.0])))
    grid[:3, :3] = grid[:3, :3] @ np.diag(spacing)
    centre_moving = (np.linalg.inv(true) @ np.append(centre + np.array([3.0, -2.0, 4.0]), 1.0))[:3]
    grid[:3, 3] = centre_moving - grid[:3, :3] @ ((shape - 1) / 2.0)
    # moving(y) = CT(true · y): sample the crop on the moving grid placed in the fixed world.
    data = ct.resample_to_grid(tuple(int(n) for n in shape), true @ grid, fill=-1024.0).data
    rng = np.random.default_rng(seed)
    units: Units = "HU"
    if remap:
        data = np.interp(data, REMAP_HU, REMAP_TO)
        units = "other"
        noise = noise / 2
    data = (data + rng.normal(0.0, noise, data.shape)).astype(np.float32)
    return _fixed(), Volume(data, grid, units=units), _bone_points_moving(true)


def _true_rigid() -> np.ndarray:
    # 9.9 degrees about an oblique axis through the crop's centre, and 8.8 mm.
    return np.asarray(rigid_from_params(np.array([0.10, -0.06, 0.12, 6.0, -4.0, 5.0]),
                                        _ct().center_world))


# ------------------------------------------------------------------------------ recovery


def test_recovers_known_rigid_transform() -> None:
    true = _true_rigid()
    fixed, moving, points = _pair(true)
    assert mean_target_error(np.eye(4), true, points) > 8.0
    result = register_3d3d(fixed, moving, seed=3)
    assert isinstance(result, Registration3D3DResult)
    assert mean_target_error(result.fixed_from_moving, true, points) < 1.0
    # The result contract: metric, score in the metric's own sense, counts, history, extras.
    assert result.metric == "ncc"
    assert 0.9 < result.final_score <= 1.0
    assert result.evaluations >= sum(lv["evaluations"] for lv in result.extras["levels"])
    assert len(result.extras["levels"]) == len(DEFAULT_RIGID_LEVELS)
    assert result.extras["seed"] == 3
    assert result.extras["transform"] == "rigid"
    assert all(lv["stop_reasons"] for lv in result.extras["levels"])
    assert {p.level for p in result.history} == {0, 1, 2}
    assert result.history[-1].evaluations <= result.evaluations
    assert np.allclose(result.fixed_from_moving[:3, :3].T @ result.fixed_from_moving[:3, :3],
                       np.eye(3), atol=1e-9)


def test_smoothing_the_finest_level_removes_the_interpolation_bias() -> None:
    # As they are, the noisy moving image's trilinear interpolation biases NCC's optimum by
    # 0.27 mm on this pair (3 noise seeds); smoothed by 0.8 voxel (the default for ncc),
    # 0.01-0.03 mm.
    true = _true_rigid()
    fixed, moving, points = _pair(true)
    smoothed = register_3d3d(fixed, moving, seed=3)
    as_they_are = register_3d3d(fixed, moving, seed=3, options={"fine_sigma_voxels": 0})
    assert smoothed.extras["fine_sigma_voxels"] == 0.8
    assert as_they_are.extras["fine_sigma_voxels"] == 0.0
    tre_smoothed = mean_target_error(smoothed.fixed_from_moving, true, points)
    assert tre_smoothed < 0.05
    assert mean_target_error(as_they_are.fixed_from_moving, true, points) > 3 * tre_smoothed


def test_finest_level_smooths_in_place_and_leaves_the_box_edges_unscored() -> None:
    from scipy.ndimage import gaussian_filter

    fixed, moving, _ = _pair(_true_rigid())
    metric = get_metric("ncc")
    level = LevelOptions(shrink=1.0, max_voxels=10**7)  # every voxel: no stride
    lv = _build_level(level, 2.0, fixed, moving, None, None, metric, Register3D3DOptions(),
                      None, fine_sigma=0.8)
    expected = gaussian_filter(np.asarray(fixed.data, np.float32), 0.8, mode="nearest",
                               truncate=3.0)
    # The grid is the smoothed image less its border: int(3 * 0.8 + 0.5) = 2 voxels.
    np.testing.assert_allclose(lv.fixed_values.numpy(), expected[2:-2, 2:-2, 2:-2], rtol=0,
                               atol=1e-3)
    np.testing.assert_allclose(lv.grid.index_to_world(np.zeros((1, 3))),
                               fixed.index_to_world(np.full((1, 3), 2.0)))
    assert lv.fixed_mask is None
    # The moving image loses the same border: the renderer, bound to it, finds data only on
    # its inner box, and the overlap fraction counts that box, so a perfect overlap is 1.
    grid = moving.world_from_index
    resampled = lv.renderer.resample(moving.shape, grid, np.eye(4)[None])
    assert int(resampled.mask.sum()) == int(np.prod(np.asarray(moving.shape) - 4))
    same = _build_level(level, 2.0, moving, moving, None, None, metric, Register3D3DOptions(),
                        None, fine_sigma=0.8)
    score, overlap = same.scores(np.eye(4)[None])
    assert score[0] > 0.999
    assert overlap[0] == pytest.approx(1.0)
    # Coarser levels are the pyramid's: no extra smoothing, no border.
    coarse = _build_level(LevelOptions(shrink=2.0, max_voxels=10**7), 2.0, fixed, moving, None,
                          None, metric, Register3D3DOptions(), None, fine_sigma=0.8)
    assert coarse.sigma_voxels == 0.0
    assert coarse.grid.shape == _at_spacing(fixed, 4.0).shape
    # The default, as each level used it: 0.8 voxel for linear metrics, none for histogram ones.
    opts = Register3D3DOptions(levels=(
        LevelOptions(shrink=4.0, max_voxels=512, options={"max_evaluations": 20}),
        LevelOptions(shrink=1.0, max_voxels=4096, options={"max_evaluations": 20})))
    for name, sigma in (("ncc", 0.8), ("nmi", 0.0)):
        result = register_3d3d(fixed, moving, metric=name, seed=0, options=opts)
        assert result.extras["fine_sigma_voxels"] == sigma
        assert [lv["sigma_voxels"] for lv in result.extras["levels"]] == [0.0, sigma]


def test_the_border_spares_thin_images_and_partial_views() -> None:
    fixed, moving, _ = _pair(_true_rigid())
    metric = get_metric("ncc")
    level = LevelOptions(shrink=1.0, max_voxels=2000)
    # A thin slab cut from the fixed image, at the identity: the border shrinks both regions
    # alike, so the overlap stays whole (it once fell to about half, under min_overlap).
    slab_shift = np.eye(4)
    slab_shift[2, 3] = 10.0
    slab = Volume(np.ascontiguousarray(fixed.data[:, :, 10:20]),
                  fixed.world_from_index @ slab_shift)
    lv = _build_level(level, 2.0, fixed, slab, None, None, metric, Register3D3DOptions(), None,
                      fine_sigma=0.8)
    _, overlap = lv.scores(np.eye(4)[None])
    assert overlap[0] > 0.95
    # A fixed image 5 voxels thick keeps its middle plane (the border is at most a quarter of
    # an axis), and a strided grid never lands on the unscored border.
    thin = Volume(np.ascontiguousarray(fixed.data[:, :, 10:15]), fixed.world_from_index)
    lv = _build_level(level, 2.0, thin, moving, None, None, metric, Register3D3DOptions(), None,
                      fine_sigma=0.8)
    assert lv.fixed_mask is None
    assert lv.grid.shape[2] >= 1
    # A moving mask is counted on the inner box only.
    mask = np.zeros(slab.shape, dtype=bool)
    mask[:, :, :5] = True
    lv = _build_level(level, 2.0, fixed, slab, None, mask, metric, Register3D3DOptions(), None,
                      fine_sigma=0.8)
    voxel = float(abs(np.linalg.det(slab.world_from_index[:3, :3])))
    inner = mask[2:-2, 2:-2, 2:-2]
    assert lv.region_mm3 == pytest.approx(voxel * np.count_nonzero(inner))


def test_a_capped_moving_image_is_not_smoothed_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    import regkit.registration.volume_registration as vr

    fixed, moving, _ = _pair(_true_rigid())
    monkeypatch.setattr(vr, "_MAX_MOVING_VOXELS", 20000)
    coarse, capped = vr._moving_level(moving, 0.0)
    assert capped
    assert np.prod(coarse.shape) < np.prod(moving.shape)
    lv = _build_level(LevelOptions(shrink=1.0, max_voxels=4096), 2.0, fixed, moving, None, None,
                      get_metric("ncc"), Register3D3DOptions(), None, fine_sigma=0.8)
    border = _border(coarse.shape, 0.8)
    expected = _cropped(coarse, border)                # cropped, not smoothed again
    stored = lv.renderer.resample(expected.shape, expected.world_from_index, np.eye(4)[None])
    # Equal to float32 rounding (HU ~ 1000: 0.002); smoothing again would move it by tens of HU.
    np.testing.assert_allclose(stored.values[0].numpy(), np.asarray(expected.data), rtol=0,
                               atol=0.01)


def test_border_and_crop_helpers() -> None:
    assert _border((100, 100, 100), 0.8) == (2, 2, 2)   # the filter's reach: int(3σ + 0.5)
    assert _border((100, 100, 100), 0.4) == (1, 1, 1)
    assert _border((100, 9, 3), 1.6) == (5, 2, 0)       # at most a quarter of the axis
    assert _border((100, 100, 100), 0.0) == (0, 0, 0)
    volume = Volume(np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8),
                    np.asarray(rigid_from_params(np.array([0.1, 0.2, -0.3, 5.0, 6.0, 7.0]))))
    inner = _cropped(volume, (1, 2, 3))
    assert inner.shape == (4, 3, 2)
    assert inner.data[0, 0, 0] == volume.data[1, 2, 3]
    np.testing.assert_allclose(inner.index_to_world(np.zeros((1, 3))),
                               volume.index_to_world(np.array([[1.0, 2.0, 3.0]])))
    assert _cropped(volume, (0, 0, 0)) is volume


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["nmi", "mattes_mi"])
def test_cross_modality_non_monotonic_remap(metric: str) -> None:
    true = _true_rigid()
    fixed, moving, points = _pair(true, remap=True, seed=1)
    # ncc cannot match a non-monotonic remapping; mutual information can. The crop has no air
    # around it, so a remapped image has no background to find a centre of mass against:
    # start from the world frames as given (8.8 mm and 10 degrees off).
    result = register_3d3d(fixed, moving, metric=metric, init="identity", seed=5)
    assert mean_target_error(result.fixed_from_moving, true, points) < 1.0
    assert result.metric == metric


@pytest.mark.slow
def test_affine_recovers_scaling_and_shear() -> None:
    params = np.array([0.05, -0.03, 0.08, 4.0, -3.0, 2.0, 0.04, -0.03, 0.02, 0.03, -0.02, 0.02])
    true = np.asarray(affine_from_params(params, _ct().center_world))
    fixed, moving, points = _pair(true, seed=2)
    rigid = register_3d3d(fixed, moving, seed=1)
    affine = register_3d3d(fixed, moving, transform="affine", seed=1)
    tre_affine = mean_target_error(affine.fixed_from_moving, true, points)
    assert tre_affine < 1.0
    assert tre_affine < 0.5 * mean_target_error(rigid.fixed_from_moving, true, points)
    stages = [lv["stage"] for lv in affine.extras["levels"]]
    assert stages == ["rigid"] * 3 + ["affine"] * 2
    # Only the rigid finest level is smoothed; the affine refinement scores the images as is.
    assert [lv["sigma_voxels"] for lv in affine.extras["levels"]] == [0.0, 0.0, 0.8, 0.0, 0.0]
    assert affine.extras["transform"] == "affine"


def test_moments_initialisation_handles_a_large_rotation() -> None:
    ct = _ct()
    true = np.asarray(rigid_from_params(np.array([0.0, 0.0, np.radians(90.0), 10.0, 5.0, 0.0]),
                                        ct.center_world))
    fixed, moving, points = _pair(true, seed=4)
    candidates = initial_transform(fixed, moving, "moments")
    assert len(candidates) == 25  # "center" first, then the 24 axis matchings
    assert all(abs(np.linalg.det(c[:3, :3]) - 1) < 1e-9 for c in candidates)
    start = [mean_target_error(c, true, points) for c in candidates]
    assert min(start[1:]) < start[0]
    result = register_3d3d(fixed, moving, init="moments", seed=2)
    assert mean_target_error(result.fixed_from_moving, true, points) < 1.0
    chosen = np.asarray(result.extras["initial_fixed_from_moving"])
    assert any(np.array_equal(chosen, c) for c in candidates[1:])


@pytest.mark.slow
def test_seed_makes_it_deterministic() -> None:
    true = _true_rigid()
    fixed, moving, _ = _pair(true)
    levels = (DEFAULT_RIGID_LEVELS[0], DEFAULT_RIGID_LEVELS[2])
    a = register_3d3d(fixed, moving, seed=11, options={"levels": levels})
    b = register_3d3d(fixed, moving, seed=11, options={"levels": levels})
    c = register_3d3d(fixed, moving, seed=12, options={"levels": levels})
    np.testing.assert_array_equal(a.fixed_from_moving, b.fixed_from_moving)
    assert [p.best for p in a.history] == [p.best for p in b.history]
    assert not np.array_equal(a.fixed_from_moving, c.fixed_from_moving)


def test_threads_are_restored_and_progress_reported() -> None:
    true = _true_rigid()
    fixed, moving, _ = _pair(true)
    before = torch.get_num_threads()
    seen: list[Progress] = []
    levels = (LevelOptions(shrink=4.0, max_voxels=4096, options={"max_evaluations": 60}),)
    register_3d3d(fixed, moving, seed=1, options={"levels": levels, "threads": 1},
                  progress=seen.append)
    assert torch.get_num_threads() == before
    assert seen
    assert seen[-1].levels == 1
    assert seen[-1].metric == "ncc"
    assert [p.evaluations for p in seen] == sorted(p.evaluations for p in seen)


# ---------------------------------------------------------------------------------- masks


def test_fixed_mask_excludes_voxels_from_the_score() -> None:
    true = _true_rigid()
    fixed, moving, _ = _pair(true)
    mask = np.zeros(fixed.shape, dtype=bool)
    mask[:, :, : fixed.shape[2] // 2] = True
    scrambled = np.array(fixed.data)
    scrambled[~mask] = np.random.default_rng(0).uniform(-1000, 3000, int((~mask).sum()))
    metric = get_metric("ncc")
    level = LevelOptions(shrink=1.0, max_voxels=20000)
    opts = Register3D3DOptions()
    candidates = np.stack([true, np.eye(4), true @ np.asarray(rigid_from_params(
        np.array([0.02, 0.0, -0.03, 2.0, 1.0, -1.0])))])
    scores = []
    for image in (fixed, fixed.with_data(scrambled)):
        problem = _build_level(level, 2.0, image, moving, mask, None, metric, opts, None)
        scores.append(problem.scores(candidates))
    np.testing.assert_array_equal(scores[0][0], scores[1][0])  # metric: unchanged
    np.testing.assert_array_equal(scores[0][1], scores[1][1])  # overlap: unchanged
    # End to end: the scrambled half is ignored.
    points = _bone_points_moving(true)
    result = register_3d3d(fixed.with_data(scrambled), moving, fixed_mask=mask, seed=2)
    assert mean_target_error(result.fixed_from_moving, true, points) < 1.0


@pytest.mark.slow
def test_moving_mask_excludes_a_spurious_object() -> None:
    true = _true_rigid()
    fixed, moving, points = _pair(true)
    data = np.array(moving.data)
    data[:16, :20, :] = 2500.0  # a large bright object the fixed image does not have
    mask = np.ones(moving.shape, dtype=bool)
    mask[:19, :23, :] = False
    result = register_3d3d(fixed, moving.with_data(data), moving_mask=mask, seed=4)
    assert mean_target_error(result.fixed_from_moving, true, points) < 1.0


def test_too_little_overlap_scores_badly_but_finitely() -> None:
    true = _true_rigid()
    fixed, moving, _ = _pair(true)
    metric = get_metric("ncc")
    problem = _build_level(LevelOptions(shrink=2.0, max_voxels=8192), 2.0, fixed, moving, None,
                           None, metric, Register3D3DOptions(), None)
    shifted = [np.eye(4) for _ in range(3)]
    shifted[1][0, 3] = 80.0   # most of the moving image leaves the fixed one
    shifted[2][0, 3] = 105.0  # even less overlap
    losses, overlap = problem.matrix_losses(np.stack([true, true @ shifted[1], true @ shifted[2]]))
    assert overlap[0] > 0.9
    assert overlap[1] < 0.5
    assert overlap[2] < overlap[1]
    assert np.isfinite(losses).all()
    assert losses[0] < -0.9               # a real NCC of about 1
    assert losses[1] > 1.0                # worse than any real NCC (loss >= -1 ... 1)
    assert losses[2] > losses[1]          # and worse still with less overlap


# --------------------------------------------------------------------------- bad inputs


def test_a_near_rigid_init_is_snapped_onto_its_rotation() -> None:
    from regkit.geometry.transforms import is_rigid
    from regkit.registration.volume_registration import _rigid_start

    exact = np.asarray(rigid_from_params(np.array([0.3, -0.2, 0.5, 10.0, -5.0, 2.0])))
    written = np.round(exact, 4)                  # a rotation written to 4 decimals
    assert not is_rigid(written)
    start = _rigid_start(written)
    assert is_rigid(start, atol=1e-12)
    np.testing.assert_allclose(start, exact, atol=1e-4)
    np.testing.assert_array_equal(start[:3, 3], written[:3, 3])


def test_bad_inputs_are_refused_clearly() -> None:
    fixed, moving, _ = _pair(_true_rigid())
    with pytest.raises(ShapeError, match="fixed_mask"):
        register_3d3d(fixed, moving, fixed_mask=np.ones((3, 3, 3), bool))
    with pytest.raises(InputError, match="selects no voxel"):
        register_3d3d(fixed, moving, moving_mask=np.zeros(moving.shape, bool))
    with pytest.raises(InputError, match="NaN"):
        register_3d3d(fixed, moving, moving_mask=np.full(moving.shape, np.nan))
    with pytest.raises(InputError, match="zero-variance"):
        register_3d3d(fixed, moving.with_data(np.full(moving.shape, 7.0, np.float32)))
    slab = Volume(np.random.default_rng(0).random((20, 20, 1), dtype=np.float32), np.eye(4))
    with pytest.raises(InputError, match="at least 4 voxels along each axis"):
        register_3d3d(slab, moving)
    with pytest.raises(UnknownNameError, match="ncc"):
        register_3d3d(fixed, moving, metric="ncx")
    with pytest.raises(InputError, match="transform"):
        register_3d3d(fixed, moving, transform="bspline")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="init"):
        register_3d3d(fixed, moving, init="middle")
    with pytest.raises(InputError, match="init"):
        register_3d3d(fixed, moving, init=np.zeros((4, 4)))
    # a scaled or mirrored start stayed in a "rigid" result (scale 2, determinant -1)
    for start, what in ((np.diag([2.0, 2.0, 2.0, 1.0]), "lies 1.0e\\+00 from the nearest"),
                        (np.diag([-1.0, 1.0, 1.0, 1.0]), "holds a reflection")):
        with pytest.raises(InputError, match="'init': a rigid registration needs a rigid") \
                as caught:
            register_3d3d(fixed, moving, init=start)
        assert re.search(what, str(caught.value))
    with pytest.raises(InputError, match="levles"):
        register_3d3d(fixed, moving, options={"levles": ()})
    with pytest.raises(InputError, match="seed"):
        register_3d3d(fixed, moving, seed=-1)
    with pytest.raises(InputError, match="max_voxels"):
        LevelOptions(max_voxels=10)
    with pytest.raises(UnknownNameError):
        LevelOptions(method="newton")
    with pytest.raises(InputError, match="min_overlap"):
        Register3D3DOptions(min_overlap=0.0)
    for bad_sigma in (-0.5, 4.5, float("nan"), True, "1"):
        with pytest.raises(InputError, match="fine_sigma_voxels"):
            Register3D3DOptions(fine_sigma_voxels=bad_sigma)  # type: ignore[arg-type]
    for key in ("max_batch", "threads"):
        for bad in (0, True, 2.0, "2"):
            options: dict[str, Any] = {key: bad}
            with pytest.raises(InputError, match=key):
                Register3D3DOptions(**options)
        options = {key: np.int64(2)}
        assert getattr(Register3D3DOptions(**options), key) == 2      # as 2D-3D accepts


def test_volumes_that_cannot_overlap_are_refused() -> None:
    fixed, moving, _ = _pair(_true_rigid())
    far = np.array(moving.world_from_index)
    far[:3, 3] += [900.0, 0.0, 0.0]
    levels = (LevelOptions(shrink=4.0, max_voxels=4096, options={"max_evaluations": 100}),)
    with pytest.raises(InputError, match="do not overlap"):
        register_3d3d(fixed, Volume(moving.data, far), init="identity", seed=1,
                      options={"levels": levels})


# -------------------------------------------------------------------------- affine maths


def test_affine_from_params_convention() -> None:
    p = np.zeros(12)
    p[6] = np.log(2.0)
    p[9] = 0.5
    m = affine_from_params(p)
    np.testing.assert_allclose(m @ [1.0, 1.0, 0.0, 1.0], [2.5, 1.0, 0.0, 1.0], atol=1e-12)
    rng = np.random.default_rng(0)
    six = rng.normal(size=(5, 6))
    centre = rng.normal(size=3) * 50
    padded = np.concatenate([six, np.zeros((5, 6))], axis=1)
    np.testing.assert_allclose(affine_from_params(padded, centre),
                               rigid_from_params(six, centre), atol=1e-12)
    full = rng.normal(size=(2, 3, 12)) * 0.1
    out = affine_from_params(torch.from_numpy(full))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3, 4, 4)
    lin = out[1, 2, :3, :3].numpy()
    r = np.asarray(rigid_from_params(np.r_[full[1, 2, :3], 0, 0, 0]))[:3, :3]
    h = np.array([[1, full[1, 2, 9], full[1, 2, 10]], [0, 1, full[1, 2, 11]], [0, 0, 1]])
    np.testing.assert_allclose(lin, r @ h @ np.diag(np.exp(full[1, 2, 6:9])), atol=1e-12)
    with pytest.raises(ShapeError):
        affine_from_params(np.zeros(6))
