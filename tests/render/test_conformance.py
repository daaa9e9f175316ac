"""One conformance suite, run against every registered renderer backend.

Each test body is written once and runs for every name in the renderer registry (the built-in
backends are imported first, plugins come through the entry-point group). A backend is skipped only
where building it raises :class:`~regkit.errors.BackendUnavailableError`.

Ground truth is analytic (ellipsoid chords and surfaces, see ``conftest.py``) or computed
independently of every backend from the sampling model that ``regkit.render.base`` states
(zero-padded trilinear interpolation, clipped to the voxel-edge box) with scipy.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from regkit.errors import FrameError, InputError, ShapeError
from regkit.geometry.camera import Camera
from regkit.geometry.transforms import rigid_from_params
from regkit.render.base import Renderer, Views, default_step_mm, renderers
from regkit.volume import Volume

Factory = Callable[..., Renderer]
Tools = SimpleNamespace


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _rays(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    origin, dirs = camera.rays()
    return origin, dirs.reshape(-1, 3)


# ------------------------------------------------------------------------------------------ DRR


def test_drr_of_ellipsoid_matches_its_chords(
        tools: Tools,
        make: Factory,
        big_ellipsoid_volume: Volume,
        big_ellipsoid: Any,
        big_cameras: list[Camera],
) -> None:
    """DRR of a constant-μ ellipsoid (exact partial volume) = μ × chord, at the default step.

    Rays through the inner part of the ellipsoid (closest approach within 0.6 of its radius) are
    at least ~30 voxels long: the relative error is bounded by 0.5 %, which leaves room for the
    interpolation model's own error (PV-voxelised surfaces blur by about a voxel) plus the
    quadrature's. Rays that pass two voxels clear of it see exactly nothing.
    """
    renderer = make(big_ellipsoid_volume)
    drr = _np(renderer.drr(tools.views_of(big_cameras)))
    assert drr.shape == (4, 40, 48)
    assert drr.dtype == np.float32
    voxel = float(np.max(big_ellipsoid_volume.spacing))
    for b, cam in enumerate(big_cameras):
        origin, dirs = _rays(cam)
        chord = big_ellipsoid.chord(origin, dirs)
        lmin = tools.level_min(big_ellipsoid, origin, dirs)
        inner = lmin < 0.6
        assert inner.sum() > 300
        want = tools.MU * chord[inner]
        rel = np.abs(drr[b].reshape(-1)[inner] - want) / want
        assert rel.max() <= 5e-3, f"view {b}: max relative error {rel.max():.4%}"
        clear = lmin > 1.0 + 2.0 * voxel / float(np.min(big_ellipsoid.radii))
        assert clear.sum() > 20
        assert np.abs(drr[b].reshape(-1)[clear]).max() <= 1e-6


def test_drr_follows_the_sampling_model(
        refs: Any,
        tools: Tools,
        make: Factory,
        ellipsoid_volume: Volume,
        cameras: list[Camera],
) -> None:
    """DRR = ∫ of the zero-padded trilinear μ over the voxel-edge box (scipy reference).

    This isolates the quadrature from the phantom: every ray, grazing ones included, within
    0.5 % plus 5 % of one step's worth of the largest μ (the midpoint rule's error on the kinks of
    a trilinear field is a fraction of a step's contribution), at the default step.
    """
    renderer = make(ellipsoid_volume)
    drr = _np(renderer.drr(tools.views_of(cameras)))
    for b, cam in enumerate(cameras):
        origin, dirs = _rays(cam)
        ref = refs.get(f"ellipsoid-drr-{b}", tools.reference_drr,
                       np.asarray(ellipsoid_volume.data), ellipsoid_volume.world_from_index,
                       origin, dirs)
        err = np.abs(drr[b].reshape(-1) - ref)
        bound = 5e-3 * ref + 0.05 * tools.MU * renderer.step_mm  # type: ignore[attr-defined]
        assert np.all(err <= bound), f"view {b}: worst {np.max(err - bound):.3g} over"


def test_drr_boundary_model_on_a_volume_filled_to_its_edges(
        refs: Any,
        tools: Tools,
        make: Factory,
) -> None:
    """The box clip and the zero padding are rendered exactly as the contract states.

    A volume with μ up to its faces: half the edge value at the edge, nothing beyond.
    """
    shape = (14, 11, 9)
    aff = tools.grid_affine(shape, (1.2, 1.0, 1.4), (0.2, 0.1, -0.3), (1.0, 2.0, -1.0))
    rng = np.random.default_rng(3)
    mu = (0.02 + 0.01 * rng.random(shape)).astype(np.float32)
    volume = Volume(mu, aff, units="mu")
    cams = [tools.look_at(np.array(s, float), np.array([1.0, 2.0, -1.0]), focal=200.0, width=24,
                    height=20) for s in ((120.0, 30.0, 40.0), (-20.0, -110.0, 60.0))]
    renderer = make(volume, step_mm=0.1)
    drr = _np(renderer.drr(tools.views_of(cams)))
    for b, cam in enumerate(cams):
        origin, dirs = _rays(cam)
        ref = refs.get(f"edges-drr-{b}", tools.reference_drr, mu, aff, origin, dirs)
        assert (ref > 0).sum() > 100
        np.testing.assert_allclose(drr[b].reshape(-1), ref, rtol=2e-3, atol=2e-4)


def test_drr_batch_roi_and_pixels_agree(tools: Tools, make: Factory, ellipsoid_volume: Volume,
                                        cameras: list[Camera]) -> None:
    """A batch equals its views one by one; a roi is a crop; pixel lists sample pixel centres."""
    renderer = make(ellipsoid_volume)
    full = _np(renderer.drr(tools.views_of(cameras)))
    for b, cam in enumerate(cameras[:2]):
        np.testing.assert_allclose(_np(renderer.drr(tools.views_of(cam)))[0], full[b], rtol=1e-5,
                                   atol=1e-6)
    roi = _np(renderer.drr(tools.views_of(cameras), roi=(5, 7, 20, 13)))
    assert roi.shape == (4, 13, 20)
    np.testing.assert_allclose(roi, full[:, 7:20, 5:25], rtol=1e-5, atol=1e-6)
    rc = np.array([[3, 4], [17, 30], [35, 39], [0, 0], [20, 21]])
    pix = np.stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5], axis=1)       # (u, v) of pixel centres
    shared = _np(renderer.drr(tools.views_of(cameras), pixels=pix))
    assert shared.shape == (4, 5)
    np.testing.assert_allclose(shared, full[:, rc[:, 0], rc[:, 1]], rtol=1e-5, atol=1e-6)
    per_view = np.repeat(pix[None], 4, axis=0)
    per_view[1] = pix[::-1]
    each = _np(renderer.drr(tools.views_of(cameras), pixels=per_view))
    np.testing.assert_allclose(each[1], full[1, rc[::-1, 0], rc[::-1, 1]], rtol=1e-5,
                               atol=1e-6)


def test_drr_of_bones_masks_voxels_before_interpolation(
        refs: Any,
        tools: Tools,
        make: Factory,
        two_bones_volume: Volume,
        cameras: list[Camera],
) -> None:
    """``bones=[...]`` renders μ·1[label ∈ bones] (HU converted with μ_water = 0.02)."""
    renderer = make(two_bones_volume)
    labels = np.asarray(two_bones_volume.labels)
    mu = 0.02 * (1.0 + np.asarray(two_bones_volume.data, np.float64) / 1000.0)
    views = tools.views_of(cameras[:2])
    both = _np(renderer.drr(views, bones=[2, 1]))
    np.testing.assert_allclose(both, _np(renderer.drr(views)), rtol=1e-5, atol=1e-6)
    one = _np(renderer.drr(views, bones=[2]))
    for b, cam in enumerate(cameras[:2]):
        origin, dirs = _rays(cam)
        ref = refs.get(f"bone2-drr-{b}", tools.reference_drr, mu * (labels == 2),
                       two_bones_volume.world_from_index, origin, dirs)
        assert (ref > 0.05).sum() > 20
        atol = 0.05 * 0.03 * renderer.step_mm  # type: ignore[attr-defined]
        np.testing.assert_allclose(one[b].reshape(-1), ref, rtol=5e-3, atol=atol)


def test_drr_step_refines_towards_the_integral(
        tools: Tools,
        make: Factory,
        ellipsoid_volume: Volume,
        cameras: list[Camera],
) -> None:
    """A finer step changes the DRR by less than the default step's error bound."""
    views = tools.views_of(cameras[:1])
    coarse = _np(make(ellipsoid_volume).drr(views))
    fine = _np(make(ellipsoid_volume, step_mm=0.1).drr(views))
    assert np.abs(coarse - fine).max() <= 5e-3 * np.abs(fine).max()
    assert make(ellipsoid_volume).step_mm == pytest.approx(  # type: ignore[attr-defined]
        default_step_mm(ellipsoid_volume.spacing))


# ------------------------------------------------------------------------------------ depth maps


def _layer_errors(front: np.ndarray, back: np.ndarray, layers: np.ndarray,
                  ref: list[tuple[list[float], list[float]]],
                  min_gap: float) -> tuple[np.ndarray, int, int]:
    """Errors against the reference on rays whose crossings are at least ``min_gap`` apart."""
    errs, compared, skipped = [], 0, 0
    n_layers = front.shape[0]
    for n, (entries, exits) in enumerate(ref):
        crossings = np.sort(np.array(entries + exits))
        if crossings.size > 1 and np.min(np.diff(crossings)) < min_gap:
            skipped += 1  # a sliver thinner than the marching step: may be stepped over
            continue
        compared += 1
        assert layers[n] == len(entries), f"ray {n}: {layers[n]} entries, reference {entries}"
        for k in range(n_layers):
            if k < len(entries):
                errs += [abs(front[k, n] - entries[k]), abs(back[k, n] - exits[k])]
            else:
                assert np.isnan(front[k, n])
                assert np.isnan(back[k, n])
    return np.array(errs), compared, skipped


def test_depth_of_ellipsoid_matches_reference_surface(
        refs: Any,
        tools: Tools,
        make: Factory,
        ellipsoid_volume: Volume,
        ellipsoid: Any,
        cameras: list[Camera],
) -> None:
    """Front/back = the 0.5 level set of the trilinear binary mask.

    Within 0.05 mm + 0.1 voxel of a scipy + brentq reference; and within half a voxel diagonal of
    the analytic surface on rays through the inner part.
    """
    renderer = make(ellipsoid_volume)
    dm = renderer.depth(tools.views_of(cameras), [1], layers=2)
    assert dm.front.shape == (4, 2, 36, 40)
    assert dm.back.shape == (4, 2, 36, 40)
    assert dm.front.dtype == torch.float32
    assert dm.layers.dtype == torch.uint8
    spacing = ellipsoid_volume.spacing
    tol = 0.05 + 0.1 * float(np.max(spacing))
    half_diag = 0.5 * float(np.linalg.norm(spacing))
    mask = np.asarray(ellipsoid_volume.labels)
    step = renderer.step_mm  # type: ignore[attr-defined]
    for b, cam in enumerate(cameras):
        origin, dirs = _rays(cam)
        front = _np(dm.front[b]).reshape(2, -1)
        back = _np(dm.back[b]).reshape(2, -1)
        layers = _np(dm.layers[b]).reshape(-1)
        ref = refs.get(f"ellipsoid-depth-{b}", tools.reference_crossings, mask,
                       ellipsoid_volume.world_from_index, origin, dirs)
        errs, compared, skipped = _layer_errors(front, back, layers, ref, 2.0 * step)
        assert compared > 1300
        assert skipped < 80
        assert errs.max() <= tol, f"view {b}: worst {errs.max():.4f} mm"
        inner = tools.level_min(ellipsoid, origin, dirs) < 0.6
        t_in, t_out = ellipsoid.intersect(origin, dirs)
        assert np.all(layers[inner] == 1)
        assert np.abs(front[0, inner] - t_in[inner]).max() <= half_diag
        assert np.abs(back[0, inner] - t_out[inner]).max() <= half_diag
        miss = tools.level_min(ellipsoid, origin, dirs) > 1.3
        assert np.all(layers[miss] == 0)
        assert np.all(np.isnan(front[:, miss]))


def test_depth_of_a_hollow_shell_has_two_layers(
        refs: Any,
        tools: Tools,
        make: Factory,
        shell_volume: Volume,
        shell: tuple[Any, Any],
        cameras: list[Camera],
) -> None:
    """Rays through the cavity enter and leave twice, nearest first.

    Layers beyond L are counted but not stored.
    """
    outer, inner = shell
    renderer = make(shell_volume)
    views = tools.views_of(cameras[:2])
    dm = renderer.depth(views, [3], layers=2)
    one = renderer.depth(views, [3], layers=1)
    np.testing.assert_array_equal(_np(one.layers), _np(dm.layers))
    np.testing.assert_allclose(_np(one.front[:, 0]), _np(dm.front[:, 0]), equal_nan=True)
    step = renderer.step_mm  # type: ignore[attr-defined]
    for b, cam in enumerate(cameras[:2]):
        origin, dirs = _rays(cam)
        through = tools.level_min(inner, origin, dirs) < 0.5
        assert through.sum() > 40
        layers = _np(dm.layers[b]).reshape(-1)
        assert np.all(layers[through] == 2)
        front = _np(dm.front[b]).reshape(2, -1)
        back = _np(dm.back[b]).reshape(2, -1)
        f0, b0, f1, b1 = front[0, through], back[0, through], front[1, through], back[1, through]
        assert np.all((f0 < b0) & (b0 < f1) & (f1 < b1))
        ref = refs.get(f"shell-depth-{b}", tools.reference_crossings,
                       np.asarray(shell_volume.labels) > 0, shell_volume.world_from_index,
                       origin, dirs)
        errs, compared, _ = _layer_errors(front, back, layers, ref, 2.0 * step)
        assert compared > 1000
        assert errs.max() <= 0.05 + 0.1 * float(np.max(shell_volume.spacing))
        # Nearest first, against the analytic surfaces (outer in, inner out, inner in, outer out).
        o_in, o_out = outer.intersect(origin, dirs)
        i_in, i_out = inner.intersect(origin, dirs)
        half_diag = 0.5 * float(np.linalg.norm(shell_volume.spacing))
        for got, want in ((f0, o_in), (b0, i_in), (f1, i_out), (b1, o_out)):
            assert np.abs(got - want[through]).max() <= half_diag


def test_bone_index_and_depth_per_bone(tools: Tools, make: Factory, two_bones_volume: Volume,
                                       cameras: list[Camera]) -> None:
    """The first bone hit is the one whose own front is nearest.

    Per-bone depth equals depth of that bone alone.
    """
    renderer = make(two_bones_volume)
    views = tools.views_of(cameras)
    index = _np(renderer.bone_index(views, [1, 2]))
    assert index.dtype == np.int32
    assert index.shape == (4, 36, 40)
    per_bone = renderer.depth_per_bone(views, [1, 2], layers=1)
    assert len(per_bone) == 2
    f1, f2 = _np(per_bone[0].front[:, 0]), _np(per_bone[1].front[:, 0])
    np.testing.assert_allclose(f1, _np(renderer.depth(views, [1], layers=1).front[:, 0]),
                               equal_nan=True)
    expect = np.where(np.isnan(f1) & np.isnan(f2), 0,
                      np.where(np.nan_to_num(f1, nan=np.inf) <= np.nan_to_num(f2, nan=np.inf),
                               1, 2))
    assert (expect == 1).sum() > 100
    assert (expect == 2).sum() > 100
    assert np.mean(index == expect) > 0.995
    union = renderer.depth(views, [1, 2], layers=2)
    np.testing.assert_array_equal(_np(union.layers) > 0, index > 0)


# ------------------------------------------------------------------------------------ resampling


def _smooth(tools: Tools, shape: tuple[int, int, int], aff: np.ndarray) -> np.ndarray:
    x = tools.index_centres_world(shape, aff)
    return (100.0 * np.sin(0.11 * x[..., 0] + 0.3) * np.cos(0.07 * x[..., 1])
            + 3.0 * x[..., 2]).astype(np.float32)


def test_resample_identity_and_mask(
        tools: Tools,
        make: Factory,
        grid: tuple[tuple[int, int, int], np.ndarray],
) -> None:
    """Onto its own grid under the identity: the values as stored (not μ), all inside."""
    shape, aff = grid
    data = _smooth(tools, shape, aff)
    renderer = make(Volume(data, aff, units="HU"))
    res = renderer.resample(shape, aff, np.eye(4)[None])
    assert res.values.shape == (1, *shape)
    assert res.values.dtype == torch.float32
    assert res.mask.dtype == torch.bool
    assert bool(res.mask.all())
    np.testing.assert_allclose(_np(res.values[0]), data, rtol=1e-6, atol=1e-3)


def test_resample_round_trip_and_field_of_view(tools: Tools, make: Factory,
                                               grid: tuple[tuple[int, int, int], np.ndarray]
                                               ) -> None:
    """A rigid transform and then its inverse give the volume back (to interpolation error).

    The mask is exactly the analytic field of view: moving index inside [0, n − 1].
    """
    shape, aff = grid
    data = _smooth(tools, shape, aff)
    volume = Volume(data, aff, units="other")
    angle = np.array([0.12, -0.2, 0.17])
    centre = tools.index_centres_world(shape, aff).reshape(-1, 3).mean(axis=0)
    t = np.asarray(rigid_from_params(np.concatenate([angle, [3.3, -2.1, 1.7]]), centre))
    fixed_shape = (30, 34, 28)
    fixed_aff = tools.grid_affine(fixed_shape, (1.3, 1.1, 1.2), (-0.1, 0.05, 0.2), (6.0, -2.0, 3.0))
    forward = make(volume).resample(fixed_shape, fixed_aff, np.stack([t, np.eye(4)]), fill=-7.0)
    values, mask = _np(forward.values), _np(forward.mask)
    # Analytic field of view (float64), away from the 1e-3 voxel rounding slack.
    moving_idx = tools.index_centres_world(fixed_shape, np.linalg.inv(aff) @ np.linalg.inv(t)
                                     @ fixed_aff)
    n = np.asarray(shape, float) - 1.0
    margin = np.minimum(moving_idx, n - moving_idx).min(axis=-1)
    sure = np.abs(margin) > 2e-3
    assert 0.2 < (margin > 0).mean() < 0.95
    np.testing.assert_array_equal(mask[0][sure], (margin > 0)[sure])
    assert np.all(values[0][~mask[0]] == -7.0)
    # The smooth field sampled where inside: close to its analytic value at the mapped point.
    world = tools.index_centres_world(fixed_shape, fixed_aff) @ np.linalg.inv(t)[:3, :3].T \
        + np.linalg.inv(t)[:3, 3]
    truth = (100.0 * np.sin(0.11 * world[..., 0] + 0.3) * np.cos(0.07 * world[..., 1])
             + 3.0 * world[..., 2])
    assert np.abs(values[0] - truth)[mask[0]].max() < 1.5
    # Back again: resample the warped volume (on the fixed grid) with the inverse transform.
    warped = Volume(values[0], fixed_aff, units="other")
    back = make(warped).resample(shape, aff, np.linalg.inv(t)[None])
    # Compare where the whole interpolation stencil of the way back lay inside the forward field
    # of view: voxels 2 voxels inside the moving grid that land 1.5 voxels inside the fixed one.
    own = tools.index_centres_world(shape, np.eye(4))
    in_moving = np.minimum(own - 2.0, n - 2.0 - own).min(axis=-1) > 0
    in_fixed_idx = tools.index_centres_world(shape, np.linalg.inv(fixed_aff) @ t @ aff)
    nf = np.asarray(fixed_shape, float) - 1.0
    in_fixed = np.minimum(in_fixed_idx - 1.5, nf - 1.5 - in_fixed_idx).min(axis=-1) > 0
    core = in_moving & in_fixed
    assert core.sum() > 5000
    assert bool(_np(back.mask[0])[core].all())
    err = np.abs(_np(back.values[0]) - data)[core]
    assert err.max() < 3.0
    assert np.median(err) < 0.5


# ------------------------------------------------------------------------------------ bad input


def test_bad_input_is_refused_clearly(tools: Tools, make: Factory, two_bones_volume: Volume,
                                      ellipsoid_volume: Volume, cameras: list[Camera]) -> None:
    renderer = make(two_bones_volume)
    views = tools.views_of(cameras[:2])
    with pytest.raises(ShapeError):
        Views(np.eye(3)[None].repeat(2, 0), np.eye(4)[None].repeat(3, 0), 10, 10)
    as_lists = Views(np.asarray(views.intrinsic).tolist(),
                     np.asarray(views.camera_from_world).tolist(), views.height, views.width)
    assert torch.equal(renderer.drr(as_lists), renderer.drr(views))
    sized = Views(views.intrinsic, views.camera_from_world,
                  np.array(views.height), torch.tensor(views.width))  # type: ignore[arg-type]
    assert (sized.height, sized.width) == (views.height, views.width)
    with pytest.raises(InputError, match="'height': must be a whole number of pixels"):
        Views(views.intrinsic, views.camera_from_world, 2.5, views.width)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="'intrinsic': must be an array of numbers"):
        Views([["a"]], views.camera_from_world, views.height, views.width)
    bad_pose = views.camera_from_world.copy()
    bad_pose[1, 0, 3] = np.nan
    with pytest.raises(InputError):
        renderer.drr(Views(views.intrinsic, bad_pose, views.height, views.width))
    not_rigid = views.camera_from_world.copy()
    not_rigid[0, :3, :3] *= 1.5
    with pytest.raises((InputError, FrameError)):
        renderer.drr(Views(views.intrinsic, not_rigid, views.height, views.width))
    with pytest.raises(InputError):
        renderer.drr(views, bones=[])
    with pytest.raises(InputError):
        renderer.depth(views, [])
    with pytest.raises(InputError, match="7"):
        renderer.depth(views, [1, 7])
    with pytest.raises(InputError):
        renderer.drr(views, bones=[0])
    with pytest.raises(InputError):
        renderer.depth(views, [1], layers=0)
    with pytest.raises(InputError):
        renderer.drr(views, roi=(30, 0, 20, 10))
    with pytest.raises(InputError):
        renderer.drr(views, roi=(0, 0, 4, 4), pixels=np.zeros((3, 2)))
    with pytest.raises(ShapeError):
        renderer.drr(views, pixels=np.zeros((3, 3)))
    with pytest.raises(ShapeError):
        renderer.drr(views, pixels=np.zeros((5, 3, 2)))
    with pytest.raises(ShapeError):
        renderer.resample((4, 4, 4), np.eye(4), np.eye(4))
    with pytest.raises(InputError):
        renderer.resample((4, 0, 4), np.eye(4), np.eye(4)[None])
    with pytest.raises(InputError):
        renderer.resample((4, 4, 4), np.eye(4), np.full((1, 4, 4), np.nan))
    unlabelled = make(Volume(np.asarray(ellipsoid_volume.data), ellipsoid_volume.world_from_index,
                             units="mu"))
    with pytest.raises(InputError, match="label"):
        unlabelled.depth(views, [1])
    with pytest.raises(InputError, match="label"):
        unlabelled.bone_index(views, [1])
    with pytest.raises(InputError, match="label"):
        unlabelled.drr(views, bones=[1])


def test_declares_what_it_is(make: Factory, ellipsoid_volume: Volume) -> None:
    renderer = make(ellipsoid_volume)
    assert renderer.backend in renderers.names()
    assert isinstance(renderer.differentiable, bool)
    assert "cpu" in renderer.devices or "cuda" in renderer.devices
    if not renderer.differentiable:
        with pytest.raises(InputError):
            make(ellipsoid_volume, requires_grad=True)


def _resample_args(volume: Volume) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    return (4, 5, 6), np.asarray(volume.world_from_index), np.eye(4)[None]


def _with_pose(views: Views, edit: Callable[[np.ndarray, np.ndarray], None]) -> Views:
    k, t = np.array(views.intrinsic), np.array(views.camera_from_world)
    edit(k, t)
    return Views(k, t, views.height, views.width)


def _set(array: np.ndarray, index: tuple[int, ...], value: float) -> None:
    array[index] = value


# (what is wrong, the call, the error class, its key): every backend refuses each the same way.
BAD_CALLS: list[tuple[str, Callable[[Renderer, Views, Volume], Any], type[Exception],
                      str | None]] = [
    ("views not Views", lambda r, *_: r.drr("not views"), InputError, "views"),
    ("views not Views (depth)", lambda r, *_: r.depth(np.eye(4), [1]), InputError, "views"),
    ("NaN pose", lambda r, v, _: r.drr(_with_pose(v, lambda _, t: _set(t, (1, 0, 3), np.nan))),
     InputError, "camera_from_world"),
    ("negative focal length",
     lambda r, v, _: r.drr(_with_pose(v, lambda k, _: _set(k, (0, 0, 0), -400.0))),
     InputError, "intrinsic"),
    ("pose not rigid",
     lambda r, v, _: r.bone_index(_with_pose(v, lambda _, t: _set(t, (0, 0, 0), 1.5)), [1]),
     FrameError, None),
    ("roi off the detector", lambda r, v, _: r.drr(v, roi=(30, 0, 20, 10)), InputError, "roi"),
    ("no bones for depth", lambda r, v, _: r.depth(v, None), InputError, "bones"),  # type: ignore[arg-type]
    ("no bones for bone_index", lambda r, v, _: r.bone_index(v, None), InputError, "bones"),  # type: ignore[arg-type]
    ("roi not four numbers",
     lambda r, v, _: r.drr(v, roi=(0, 0, 4)),  # type: ignore[arg-type]
     InputError, "roi"),
    ("roi and pixels", lambda r, v, _: r.drr(v, roi=(0, 0, 4, 4), pixels=np.zeros((3, 2))),
     InputError, "roi"),
    ("pixels (P, 3)", lambda r, v, _: r.drr(v, pixels=np.zeros((3, 3))), ShapeError, None),
    ("pixels of 5 views for 2", lambda r, v, _: r.drr(v, pixels=np.zeros((5, 3, 2))),
     ShapeError, None),
    ("NaN pixel", lambda r, v, _: r.drr(v, pixels=np.full((3, 2), np.nan)), InputError,
     "pixels"),
    ("no bones (drr)", lambda r, v, _: r.drr(v, bones=[]), InputError, "bones"),
    ("no bones (depth)", lambda r, v, _: r.depth(v, []), InputError, "bones"),
    ("no bones (depth_stack)", lambda r, v, _: r.depth_stack(v, []), InputError, "bones"),
    ("no bones (bone_index)", lambda r, v, _: r.bone_index(v, []), InputError, "bones"),
    ("bone 0", lambda r, v, _: r.depth(v, [0]), InputError, "bones"),
    ("bone not a number",
     lambda r, v, _: r.depth_stack(v, [1, "2"]),  # type: ignore[list-item]
     InputError, "bones"),
    ("bones a number", lambda r, v, _: r.depth(v, 1),  # type: ignore[arg-type]
     InputError, "bones"),
    ("bone not in the label map", lambda r, v, _: r.depth_per_bone(v, [1, 7]), InputError,
     "bones"),
    ("layers 0", lambda r, v, _: r.depth(v, [1], layers=0), InputError, "layers"),
    ("layers 0 (depth_stack)", lambda r, v, _: r.depth_stack(v, [1], layers=0), InputError,
     "layers"),
    ("layers 1.5",
     lambda r, v, _: r.depth_per_bone(v, [1], layers=1.5),  # type: ignore[arg-type]
     InputError, "layers"),
    ("fixed_shape with a 0", lambda r, *_: r.resample((4, 0, 4), np.eye(4), np.eye(4)[None]),
     InputError, "fixed_shape"),
    ("fixed_shape of 2", lambda r, *_: r.resample((4, 4), np.eye(4), np.eye(4)[None]),
     InputError, "fixed_shape"),
    ("grid affine 3x3", lambda r, *_: r.resample((4, 4, 4), np.eye(3), np.eye(4)[None]),
     ShapeError, None),
    ("transforms (4, 4)", lambda r, *_: r.resample((4, 4, 4), np.eye(4), np.eye(4)),
     ShapeError, None),
    ("NaN transform",
     lambda r, *_: r.resample((4, 4, 4), np.eye(4), np.full((1, 4, 4), np.nan)),
     InputError, "fixed_from_moving"),
    ("infinite grid affine",
     lambda r, *_: r.resample((4, 4, 4), np.full((4, 4), np.inf), np.eye(4)[None]),
     InputError, "fixed_world_from_index"),
    ("singular transform",
     lambda r, *_: r.resample((4, 4, 4), np.eye(4), np.zeros((1, 4, 4))), InputError,
     "fixed_from_moving"),
    # parts of the matrices the ray model would ignore (and projection would not)
    ("skewed intrinsic",
     lambda r, v, _: r.drr(_with_pose(v, lambda k, _: _set(k, (0, 0, 1), 200.0))),
     InputError, "intrinsic"),
    ("intrinsic's last row",
     lambda r, v, _: r.drr(_with_pose(v, lambda k, _: _set(k, (1, 2, 2), 2.0))),
     InputError, "intrinsic"),
    ("pose's last row",
     lambda r, v, _: r.depth(_with_pose(v, lambda _, t: _set(t, (0, 3, 0), 0.3)), [1]),
     FrameError, None),
    ("transform's last row",
     lambda r, *_: r.resample((4, 4, 4), np.eye(4), np.array([[[1.0, 0, 0, 0], [0, 1, 0, 0],
                                                                [0, 0, 1, 0], [1, 1, 1, 1]]])),
     InputError, "fixed_from_moving"),
    ("singular grid affine",
     lambda r, *_: r.resample((4, 4, 4), np.zeros((4, 4)), np.eye(4)[None]), InputError,
     "fixed_world_from_index"),
    ("NaN fill",
     lambda r, _, vol: r.resample(*_resample_args(vol), fill=float("nan")), InputError, "fill"),
]


@pytest.mark.parametrize(("call", "error", "key"), [case[1:] for case in BAD_CALLS],
                         ids=[case[0] for case in BAD_CALLS])
def test_every_backend_refuses_the_same_way(tools: Tools, make: Factory,
                                            two_bones_volume: Volume, cameras: list[Camera],
                                            call: Callable[[Renderer, Views, Volume], Any],
                                            error: type[Exception], key: str | None) -> None:
    """Each bad argument raises the same error class with the same ``key`` on every backend.

    The checks live in the contract (``Renderer``), not in each backend.
    """
    renderer = make(two_bones_volume)
    with pytest.raises(error) as caught:
        call(renderer, tools.views_of(cameras[:2]), two_bones_volume)
    assert type(caught.value) is error
    assert getattr(caught.value, "key", None) == key


@pytest.mark.parametrize(("options", "key"), [
    ({"step_mm": 0.0}, "step_mm"), ({"step_mm": float("nan")}, "step_mm"),
    ({"step_mm": True}, "step_mm"), ({"dtype": torch.int32}, "dtype"),
    ({"mu_water": 0.0}, "mu_water"), ({"mu_water": float("inf")}, "mu_water"),
])
def test_every_backend_refuses_the_same_options(make: Factory, ellipsoid_volume: Volume,
                                                options: dict[str, Any], key: str) -> None:
    with pytest.raises(InputError) as caught:
        make(ellipsoid_volume, **options)
    assert caught.value.key == key


def test_gradients_are_given_or_refused_never_dropped(tools: Tools, make: Factory,
                                                      two_bones_volume: Volume,
                                                      cameras: list[Camera]) -> None:
    renderer = make(two_bones_volume)
    views = tools.views_of(cameras[:1])
    pose = torch.tensor(np.asarray(views.camera_from_world), requires_grad=True)
    moved = torch.tensor(np.eye(4)[None], requires_grad=True)
    grid = np.asarray(two_bones_volume.world_from_index)
    wanting = Views(views.intrinsic, pose, views.height, views.width)
    if renderer.differentiable:
        assert renderer.drr(wanting).requires_grad
        assert renderer.resample((4, 4, 4), grid, moved).values.requires_grad
        return
    for call, key in ((lambda: renderer.drr(wanting), "camera_from_world"),
                      (lambda: renderer.resample((4, 4, 4), grid, moved), "fixed_from_moving"),
                      (lambda: renderer.resample((4, 4, 4), torch.tensor(grid, requires_grad=True),
                                                 np.eye(4)[None]), "fixed_world_from_index")):
        with pytest.raises(InputError, match="not differentiable") as caught:
            call()
        assert caught.value.key == key
    with torch.no_grad():      # no gradient asked for: rendered as usual
        assert renderer.drr(wanting).shape == (1, views.height, views.width)
    assert torch.equal(renderer.drr(Views(views.intrinsic, pose.detach(), views.height,
                                          views.width)), renderer.drr(views))


def test_a_plain_array_is_not_a_volume(make: Factory) -> None:
    with pytest.raises(InputError, match="Volume") as caught:
        make(np.zeros((4, 4, 4), dtype=np.float32))
    assert caught.value.key == "volume"


def test_close_is_idempotent_and_later_calls_are_refused(
        tools: Tools, make: Factory, two_bones_volume: Volume, cameras: list[Camera]) -> None:
    views = tools.views_of(cameras[:1])
    with make(two_bones_volume) as renderer:
        assert not renderer.closed
        expected = renderer.drr(views)
        renderer.depth_stack(views, [1, 2])
    assert renderer.closed
    renderer.close()  # idempotent
    assert renderer.closed
    calls: list[Callable[[], Any]] = [
        lambda: renderer.drr(views), lambda: renderer.depth(views, [1]),
        lambda: renderer.depth_stack(views, [1]), lambda: renderer.depth_per_bone(views, [1]),
        lambda: renderer.bone_index(views, [1]),
        lambda: renderer.resample(*_resample_args(two_bones_volume))]
    for call in calls:
        with pytest.raises(InputError, match="closed") as caught:
            call()
        assert caught.value.key == "renderer"
    with make(two_bones_volume) as again:  # a new renderer on the same volume works
        torch.testing.assert_close(again.drr(views), expected)


def test_depth_stack_is_each_bone_alone(tools: Tools, make: Factory, two_bones_volume: Volume,
                                        cameras: list[Camera]) -> None:
    """Each row of ``depth_stack`` is ``depth`` of that bone alone, repeats included.

    Also for a view so close that the bones lie partly behind its source and off its detector.
    """
    near = tools.look_at(np.asarray(two_bones_volume.center_world) - np.array([0.0, 9.0, 0.0]),
                         np.asarray(two_bones_volume.center_world), focal=30.0, width=40,
                         height=36)
    views = tools.views_of([*cameras, near])
    renderer = make(two_bones_volume)
    stack = renderer.depth_stack(views, [2, 1, 2], layers=2)
    assert stack.front.shape == (5, 3, 2, 36, 40)
    assert stack.layers.shape == (5, 3, 36, 40)
    assert stack.layers.dtype == torch.uint8
    for row, bone in enumerate([2, 1, 2]):
        alone = renderer.depth(views, [bone], layers=2)
        assert int(alone.layers.bool().sum()) > 100
        torch.testing.assert_close(stack.layers[:, row], alone.layers, rtol=0, atol=0)
        for got, want in ((stack.front[:, row], alone.front), (stack.back[:, row], alone.back)):
            assert torch.equal(torch.isnan(got), torch.isnan(want))
            torch.testing.assert_close(got, want, rtol=0, atol=2e-3, equal_nan=True)
    stack.front[:, 0].fill_(0.0)
    assert torch.isnan(stack.front[:, 2]).any()  # a repeated bone is its own copy
