"""The PyTorch backend beyond the conformance suite: gradients, dtypes, chunking, devices."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import regkit.render
from regkit.errors import BackendUnavailableError, FrameError, InputError, ShapeError
from regkit.geometry.camera import Camera
from regkit.geometry.transforms import rigid_from_params
from regkit.render import TorchRenderer, Views, renderers
from regkit.volume import Volume

Tools = SimpleNamespace
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _small_scene(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, np.ndarray,
                                                               torch.Tensor, torch.Tensor]:
    """A smooth 8³ μ volume (1.5 mm voxels, centred on the origin) and a 6 × 6 view of it.

    Returns:
        μ ``(8, 8, 8)``, ``world_from_index``, K ``(1, 3, 3)`` and ``camera_from_world``
        ``(1, 4, 4)`` (an oblique pose 60 mm away whose rays also leave through side faces).
    """
    n = 8
    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    aff[:3, 3] = -1.5 * (n - 1) / 2
    idx = torch.arange(n, dtype=torch.float64)
    i, j, k = torch.meshgrid(idx, idx, idx, indexing="ij")
    mu = 0.02 * (1.0 + 0.5 * torch.sin(0.7 * i + 0.3) * torch.cos(0.5 * j - 0.2)
                 + 0.3 * torch.cos(0.6 * k + 0.4 * i))
    direction = np.array([0.35, 1.0, 0.25])
    direction /= np.linalg.norm(direction)
    z = direction
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z])
    pose[:3, 3] = -pose[:3, :3] @ (-60.0 * direction)
    kmat = np.array([[22.0, 0.0, 3.0], [0.0, 22.0, 3.0], [0.0, 0.0, 1.0]])
    return (mu.to(dtype), aff, torch.tensor(kmat[None], dtype=torch.float64),
            torch.tensor(pose[None], dtype=torch.float64))


# ------------------------------------------------------------------------------------ gradients


def test_gradcheck_pose_parameters() -> None:
    """Gradcheck of d DRR / d (rotation vector, translation) of a pose correction, float64."""
    mu, aff, kmat, pose = _small_scene()
    renderer = TorchRenderer.from_tensor(mu, aff, step_mm=0.4)

    def render(params: torch.Tensor) -> torch.Tensor:
        corrected = pose @ rigid_from_params(params)[None]
        return renderer.drr(Views(kmat, corrected, 6, 6))

    params = torch.tensor([0.02, -0.03, 0.01, 0.4, -0.3, 0.2], dtype=torch.float64,
                          requires_grad=True)
    image = render(params)
    assert image.shape == (1, 6, 6)
    assert image.dtype == torch.float64
    # some miss
    assert float(image.detach().min()) == 0.0
    assert float(image.detach().max()) > 0.1
    assert torch.autograd.gradcheck(render, (params,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_volume() -> None:
    """Gradcheck of d DRR / d μ (every voxel), float64.

    The DRR is linear in μ, so this checks the weights.
    """
    mu, aff, kmat, pose = _small_scene()
    views = Views(kmat, pose, 6, 6)

    def render(volume: torch.Tensor) -> torch.Tensor:
        return TorchRenderer.from_tensor(volume, aff, step_mm=0.5).drr(views)

    assert torch.autograd.gradcheck(render, (mu.clone().requires_grad_(True),), eps=1e-6,
                                    atol=1e-7, rtol=1e-4, fast_mode=True)


def test_gradcheck_resample_transform() -> None:
    """Gradcheck of d resampled / d transform parameters and / d moving volume, float64."""
    mu, aff, _, _ = _small_scene()
    fixed_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed_aff[:3, 3] = -3.0

    def warp(params: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
        renderer = TorchRenderer.from_tensor(volume, aff)
        return renderer.resample((4, 4, 4), fixed_aff, rigid_from_params(params)[None]).values

    params = torch.tensor([0.05, 0.02, -0.04, 0.3, 0.1, -0.2], dtype=torch.float64,
                          requires_grad=True)
    volume = mu.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(warp, (params, volume), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_volume_gradients_collect_on_the_leaf(ellipsoid_volume: Volume,
                                              cameras: list[Camera]) -> None:
    """``requires_grad=True``: μ is a leaf whose ``.grad`` fills, float32, no NaN.

    A pose tensor with ``requires_grad`` gets its gradient in the same backward pass.
    """
    renderer = TorchRenderer(ellipsoid_volume, requires_grad=True)
    assert renderer.mu.is_leaf
    assert renderer.mu.requires_grad
    views = Views.from_cameras(cameras[:2])
    pose = torch.tensor(views.camera_from_world, dtype=torch.float32, requires_grad=True)
    image = renderer.drr(Views(views.intrinsic, pose, views.height, views.width))
    assert image.dtype == torch.float32
    assert image.requires_grad
    image.sum().backward()
    grad = renderer.mu.grad
    assert grad is not None
    assert bool(torch.isfinite(grad).all())
    assert float(grad.abs().max()) > 0
    assert pose.grad is not None
    assert bool(torch.isfinite(pose.grad).all())
    assert float(pose.grad[:, :3, 3].abs().max()) > 0


def test_bone_drr_is_differentiable_in_the_volume(two_bones_volume: Volume,
                                                  cameras: list[Camera]) -> None:
    renderer = TorchRenderer(two_bones_volume, requires_grad=True)
    renderer.drr(Views.from_cameras(cameras[:1]), bones=[2]).sum().backward()
    grad = renderer.mu.grad
    assert grad is not None
    labels = np.asarray(two_bones_volume.labels)
    assert float(grad[torch.from_numpy(labels == 1)].abs().max()) == 0.0
    assert float(grad[torch.from_numpy(labels == 2)].abs().max()) > 0.0


# ------------------------------------------------------------------------------------ numerics


def test_float64_matches_float32(ellipsoid_volume: Volume, cameras: list[Camera]) -> None:
    views = Views.from_cameras(cameras)
    single = TorchRenderer(ellipsoid_volume).drr(views)
    double = TorchRenderer(ellipsoid_volume, dtype=torch.float64).drr(views)
    assert single.dtype == torch.float32
    assert double.dtype == torch.float64
    np.testing.assert_allclose(_np(single), _np(double), rtol=1e-4, atol=1e-6)
    depth = TorchRenderer(ellipsoid_volume, dtype=torch.float64).depth(views, [1])
    assert depth.front.dtype == torch.float64


def test_results_do_not_depend_on_chunking(two_bones_volume: Volume,
                                           cameras: list[Camera]) -> None:
    """Tiny ray and sample blocks give the same results as the defaults.

    Many plane blocks, with partial cells split across blocks, give the same images, depths and
    resamplings as the defaults.
    """
    views = Views.from_cameras(cameras[1:3])
    big = TorchRenderer(two_bones_volume)
    small = TorchRenderer(two_bones_volume, chunk_rays=97)
    small._samples_per_block = 97 * 7
    np.testing.assert_allclose(_np(small.drr(views)), _np(big.drr(views)), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(_np(small.drr(views, bones=[1])), _np(big.drr(views, bones=[1])),
                               rtol=1e-5, atol=1e-6)
    d_small, d_big = small.depth(views, [1, 2]), big.depth(views, [1, 2])
    np.testing.assert_array_equal(_np(d_small.layers), _np(d_big.layers))
    np.testing.assert_allclose(_np(d_small.front), _np(d_big.front), atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(_np(d_small.back), _np(d_big.back), atol=1e-4, equal_nan=True)


def test_views_along_each_axis_in_one_batch(tools: Tools, ellipsoid_volume: Volume,
                                            ellipsoid: Any) -> None:
    """A batch whose views march along different index axes equals the views one by one."""
    aff = ellipsoid_volume.world_from_index
    cams = [tools.look_at(ellipsoid.center - 200.0 * aff[:3, a] / np.linalg.norm(aff[:3, a]),
                          ellipsoid.center, focal=300.0, width=20, height=16) for a in range(3)]
    renderer = TorchRenderer(ellipsoid_volume)
    together = _np(renderer.drr(Views.from_cameras(cams)))
    for b, cam in enumerate(cams):
        np.testing.assert_allclose(together[b], _np(renderer.drr(Views.from_cameras(cam)))[0],
                                   rtol=1e-5, atol=1e-6)
        origin, dirs = cam.rays()
        chord = ellipsoid.chord(origin, dirs.reshape(-1, 3))
        assert np.abs(together[b].reshape(-1) - tools.MU * chord).max() < 0.25 * tools.MU * 12


def test_step_bounds_the_cell_length(ellipsoid_volume: Volume, cameras: list[Camera]) -> None:
    """Every ray's cell is at most ``step_mm`` long (and not needlessly shorter)."""
    from regkit.render import _torch_kernels as kern

    renderer = TorchRenderer(ellipsoid_volume, step_mm=0.37)
    views = Views.from_cameras(cameras)
    k, t = renderer._poses(views)
    uv = torch.stack(torch.meshgrid(torch.arange(36.0) + 0.5, torch.arange(40.0) + 0.5,
                                    indexing="ij")[::-1], dim=-1).reshape(1, -1, 2).double()
    o, d = renderer._rays(k, t, uv)
    for (axis, cells), members in renderer._groups(k, t, views, None).items():
        rays = renderer._group_rays(o, d, members, axis, cells)
        step = _np(rays.cell_mm)
        assert step.max() <= 0.37 * (1 + 1e-9)
        assert step.max() > 0.37 * 8 / 9 * 0.9
        assert isinstance(rays, kern.PlaneRays)


def test_hu_volume_is_converted_and_resample_keeps_hu(two_bones_volume: Volume,
                                                      cameras: list[Camera]) -> None:
    views = Views.from_cameras(cameras[:1])
    hu = TorchRenderer(two_bones_volume)
    mu = TorchRenderer(two_bones_volume.to_mu(0.02))
    np.testing.assert_allclose(_np(hu.drr(views)), _np(mu.drr(views)), rtol=1e-6, atol=1e-7)
    doubled = TorchRenderer(two_bones_volume, mu_water=0.04)
    np.testing.assert_allclose(_np(doubled.drr(views)), 2 * _np(hu.drr(views)), rtol=1e-5,
                               atol=1e-6)
    same = hu.resample(two_bones_volume.shape, two_bones_volume.world_from_index,
                       np.eye(4)[None])
    np.testing.assert_allclose(_np(same.values[0]), np.asarray(two_bones_volume.data))


def test_from_tensor_matches_volume(ellipsoid_volume: Volume, cameras: list[Camera]) -> None:
    views = Views.from_cameras(cameras[:2])
    tensor = torch.from_numpy(np.array(ellipsoid_volume.data))
    a = TorchRenderer.from_tensor(tensor, ellipsoid_volume.world_from_index,
                                  labels=np.asarray(ellipsoid_volume.labels))
    b = TorchRenderer(ellipsoid_volume)
    np.testing.assert_allclose(_np(a.drr(views)), _np(b.drr(views)), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(_np(a.depth(views, [1]).layers),
                                  _np(b.depth(views, [1]).layers))


def test_resample_batches_and_fills(grid: tuple[tuple[int, int, int], np.ndarray]) -> None:
    """B transforms at once equal one at a time; float64 stays float64.

    Translations by whole voxels along an axis shift the array.
    """
    shape, aff = grid
    rng = np.random.default_rng(1)
    data = rng.random(shape).astype(np.float32)
    renderer = TorchRenderer(Volume(data, aff, units="other"))
    shift = np.eye(4)
    shift[:3, 3] = 2.0 * aff[:3, 0]      # two voxels along i, in world mm
    maps = np.stack([np.eye(4), shift])
    both = renderer.resample(shape, aff, maps, fill=-1.0)
    one = renderer.resample(shape, aff, shift[None], fill=-1.0)
    np.testing.assert_allclose(_np(both.values[1]), _np(one.values[0]))
    # fixed voxel i sees moving voxel i − 2: the first two planes lie outside
    np.testing.assert_allclose(_np(both.values[1])[2:], data[:-2], atol=1e-5)
    assert not bool(both.mask[1, :2].any())
    assert bool(both.mask[1, 2:].all())
    assert float(both.values[1, :2].max()) == -1.0
    r64 = TorchRenderer(Volume(data, aff, units="other"), dtype=torch.float64)
    assert r64.resample(shape, aff, maps).values.dtype == torch.float64


# ------------------------------------------------------------------------------------ construction


def test_registry_and_package_exports() -> None:
    assert renderers.get("torch") is TorchRenderer
    assert TorchRenderer.differentiable
    assert TorchRenderer.devices == ("cpu", "cuda")
    assert "TorchRenderer" in regkit.render.__all__


@pytest.mark.slow
def test_import_does_not_load_moderngl() -> None:
    import subprocess
    import sys

    code = ("import sys, regkit.render; from regkit.render import TorchRenderer; "
            "assert 'moderngl' not in sys.modules, 'moderngl was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_constructor_refuses_bad_options(ellipsoid_volume: Volume) -> None:
    with pytest.raises(InputError):
        TorchRenderer(ellipsoid_volume, step_mm=0.0)
    with pytest.raises(InputError):
        TorchRenderer(ellipsoid_volume, step_mm=float("nan"))
    with pytest.raises(InputError):
        TorchRenderer(ellipsoid_volume, dtype=torch.int32)
    with pytest.raises(InputError):
        TorchRenderer(ellipsoid_volume, chunk_rays=0)
    with pytest.raises(InputError):
        TorchRenderer(ellipsoid_volume, device="mps")
    with pytest.raises(InputError):
        TorchRenderer(np.zeros((4, 4, 4)))
    with pytest.raises(ShapeError):
        TorchRenderer.from_tensor(torch.zeros(4, 4), np.eye(4))
    with pytest.raises(ShapeError, match="at least one voxel"):
        TorchRenderer.from_tensor(torch.zeros(0, 4, 4), np.eye(4))
    with pytest.raises(InputError):
        TorchRenderer.from_tensor(torch.full((2, 2, 2), float("nan")), np.eye(4))
    with pytest.raises(InputError):
        TorchRenderer.from_tensor(torch.zeros(2, 2, 2), np.zeros((4, 4)))
    with pytest.raises(ShapeError):
        TorchRenderer.from_tensor(torch.zeros(2, 2, 2), np.eye(4), labels=np.zeros((2, 2)))
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError):
            TorchRenderer(ellipsoid_volume, device="cuda")


def test_non_rigid_pose_and_bad_intrinsics(ellipsoid_volume: Volume,
                                           cameras: list[Camera]) -> None:
    renderer = TorchRenderer(ellipsoid_volume)
    views = Views.from_cameras(cameras[:1])
    scaled = views.camera_from_world.copy()
    scaled[0, :3, :3] *= 1.01
    with pytest.raises(FrameError):
        renderer.drr(Views(views.intrinsic, scaled, views.height, views.width))
    bad_k = views.intrinsic.copy()
    bad_k[0, 0, 0] = -bad_k[0, 0, 0]
    with pytest.raises(InputError):
        renderer.drr(Views(bad_k, views.camera_from_world, views.height, views.width))
    with pytest.raises(InputError):
        renderer.drr("not views")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@CUDA
def test_cuda_matches_cpu(ellipsoid_volume: Volume, cameras: list[Camera]) -> None:
    views = Views.from_cameras(cameras)
    cpu = TorchRenderer(ellipsoid_volume)
    gpu = TorchRenderer(ellipsoid_volume, device="cuda")
    image = gpu.drr(views)
    assert image.device.type == "cuda"
    np.testing.assert_allclose(_np(image), _np(cpu.drr(views)), rtol=1e-4, atol=1e-5)
    d_gpu, d_cpu = gpu.depth(views, [1]), cpu.depth(views, [1])
    np.testing.assert_array_equal(_np(d_gpu.layers), _np(d_cpu.layers))
    np.testing.assert_allclose(_np(d_gpu.front), _np(d_cpu.front), atol=1e-3, equal_nan=True)
    res = gpu.resample(ellipsoid_volume.shape, ellipsoid_volume.world_from_index,
                       np.eye(4)[None])
    assert res.values.device.type == "cuda"


@pytest.mark.gpu
@CUDA
def test_cuda_gradients() -> None:
    mu, aff, kmat, pose = _small_scene(torch.float32)
    volume = mu.cuda().requires_grad_(True)
    renderer = TorchRenderer.from_tensor(volume, aff)
    params = torch.zeros(6, dtype=torch.float64, device="cuda", requires_grad=True)
    corrected = pose.cuda() @ rigid_from_params(params)[None]
    renderer.drr(Views(kmat.cuda(), corrected, 6, 6)).sum().backward()
    assert volume.grad is not None
    assert params.grad is not None
    assert bool(torch.isfinite(params.grad).all())


def test_resample_without_the_packed_fast_path_fills_its_output(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Volumes too big for the packed fast path take the general path; its values must land."""
    import regkit.render.torch_backend as tb
    from regkit.volume import Volume

    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(12, 10, 8)).astype(np.float32), np.eye(4), units="mu")
    shift = np.eye(4)
    shift[:3, 3] = [0.3, -0.2, 0.1]
    poses = np.stack([np.eye(4), shift])
    fast = tb.TorchRenderer(vol).resample(vol.shape, vol.world_from_index, poses)
    monkeypatch.setattr(tb, "_MAX_PACKED_VOXELS", 1)
    slow = tb.TorchRenderer(vol).resample(vol.shape, vol.world_from_index, poses)
    assert torch.isfinite(slow.values).all()
    torch.testing.assert_close(slow.values, fast.values, atol=1e-5, rtol=1e-5)
    assert torch.equal(slow.mask, fast.mask)


def test_depth_stack_windows_give_the_depth_of_each_bone(two_bones_volume: Volume,
                                                         cameras: list[Camera]) -> None:
    """Per-bone windowing samples the planes that ``depth`` samples for that bone alone.

    Windowing: rays through the bone's box, on a crop of its mask. The same crossings to rounding,
    in float64 too.
    """
    views = Views.from_cameras(cameras)
    renderer = TorchRenderer(two_bones_volume, dtype=torch.float64, chunk_rays=500)
    stack = renderer.depth_stack(views, [1, 2], layers=3)
    assert stack.front.dtype == torch.float64
    for row, bone in enumerate([1, 2]):
        alone = renderer.depth(views, [bone], layers=3)
        assert torch.equal(stack.layers[:, row], alone.layers)
        torch.testing.assert_close(stack.front[:, row], alone.front, rtol=0, atol=1e-9,
                                   equal_nan=True)
        torch.testing.assert_close(stack.back[:, row], alone.back, rtol=0, atol=1e-9,
                                   equal_nan=True)


def test_close_drops_the_caches(two_bones_volume: Volume, cameras: list[Camera]) -> None:
    views = Views.from_cameras(cameras[:1])
    renderer = TorchRenderer(two_bones_volume)
    renderer.drr(views, bones=[1])
    renderer.depth(views, [1, 2])
    renderer.resample((4, 4, 4), two_bones_volume.world_from_index, np.eye(4)[None])
    assert renderer._bone_mask
    assert renderer._bone_mu
    assert renderer._packed is not None
    renderer.close()
    assert renderer.closed
    assert not renderer._bone_mask
    assert not renderer._bone_mu
    assert renderer._packed is None
    assert renderer._raw is None
    with pytest.raises(InputError, match="TorchRenderer has been closed"):
        renderer.depth(views, [1])
