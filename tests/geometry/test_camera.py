"""Behavioural tests of regkit.geometry.camera: projection, rays, detector edits, the object."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from regkit.errors import FrameError, InputError, ShapeError
from regkit.geometry.camera import (
    Camera,
    pixel_rays,
    project_points,
    stack_cameras,
)
from regkit.testing.cameras import (
    EXAMPLE_CAMERA_FROM_WORLD,
    EXAMPLE_INTRINSIC,
    example_camera,
    oblique_camera,
)


def project_by_hand(k: np.ndarray, t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """[u·w, v·w, w]ᵀ = K · (camera_from_world · [x; 1])[:3], the convention written out."""
    homog = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    uvw = (k @ (t @ homog.T)[:3]).T
    return uvw[:, :2] / uvw[:, 2:]


# --------------------------------------------------------------------------------------------------
# projection


def test_example_projections_by_hand() -> None:
    cam = example_camera()
    pts = np.array([
        [0.0, 0.0, 0.0],      # camera (0, 0, 850): the principal point
        [10.0, 0.0, 0.0],     # camera (10, 0, 850): u = 128 + 1275·10/850 = 143
        [0.0, 0.0, 20.0],     # 20 mm superior, camera (0, −20, 850): v = 128 − 30 = 98
        [17.0, 150.0, -8.0],  # camera (17, 8, 1000): u = 128 + 21.675, v = 128 + 10.2
        [0.0, -425.0, 10.0],  # halfway to the source, camera (0, −10, 425): v = 128 − 30
        [-34.0, 0.0, -6.0],   # camera (−34, 6, 850): u = 128 − 51, v = 128 + 9
    ])
    expected = np.array([
        [128.0, 128.0],
        [143.0, 128.0],
        [128.0, 98.0],
        [149.675, 138.2],
        [128.0, 98.0],
        [77.0, 137.0],
    ])
    np.testing.assert_allclose(cam.project(pts), expected, atol=1e-9)
    by_hand = project_by_hand(EXAMPLE_INTRINSIC, EXAMPLE_CAMERA_FROM_WORLD, pts)
    np.testing.assert_allclose(cam.project(pts), by_hand, atol=1e-9)


def test_example_source_and_direction() -> None:
    cam = example_camera()
    np.testing.assert_allclose(cam.source_world, [0.0, -850.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(cam.view_direction_world, [0.0, 1.0, 0.0], atol=0)
    np.testing.assert_allclose(cam.world_from_camera @ cam.camera_from_world, np.eye(4),
                               atol=1e-12)
    assert cam.focal_lengths == (1275.0, 1275.0)
    assert cam.principal_point == (128.0, 128.0)
    assert cam.source_to_detector_mm == pytest.approx(1020.0, rel=1e-12)
    assert example_camera(None).source_to_detector_mm is None


def test_points_behind_or_at_the_source_are_nan() -> None:
    cam = example_camera()
    pts = np.array([
        [0.0, -900.0, 0.0],   # 50 mm behind the source
        [5.0, -850.0, 3.0],   # in the source plane (w = 0)
        [0.0, -849.0, 0.0],   # 1 mm in front: fine
        [0.0, -2000.0, 30.0],
    ])
    out = cam.project(pts)
    assert np.isnan(out[[0, 1, 3]]).all()
    np.testing.assert_allclose(out[2], [128.0, 128.0], atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(pts=st.lists(st.tuples(*[st.floats(-300.0, 300.0)] * 3), min_size=1, max_size=8),
       primary=st.floats(-3.0, 3.0), secondary=st.floats(-1.2, 1.2))
def test_project_matches_convention(pts: list[tuple[float, float, float]], primary: float,
                                    secondary: float) -> None:
    cam = oblique_camera(primary, secondary)
    p = np.array(pts)
    np.testing.assert_allclose(cam.project(p),
                               project_by_hand(cam.intrinsic, cam.camera_from_world, p),
                               rtol=1e-10, atol=1e-8)


def test_project_points_batched_numpy_and_torch() -> None:
    cams = [oblique_camera(0.3, 0.1), oblique_camera(-1.2, 0.5), oblique_camera(2.5, -0.7)]
    k, t, _, _ = stack_cameras(cams)
    pts = np.random.default_rng(0).uniform(-100, 100, size=(7, 3))
    out = project_points(k, t, pts)
    assert isinstance(out, np.ndarray)
    assert out.shape == (3, 7, 2)
    for b, cam in enumerate(cams):
        np.testing.assert_allclose(out[b], cam.project(pts), atol=1e-9)
    # one point set per camera
    pts_b = np.random.default_rng(1).uniform(-100, 100, size=(3, 5, 3))
    out = project_points(k, t, pts_b)
    np.testing.assert_allclose(out[2], cams[2].project(pts_b[2]), atol=1e-9)
    # torch in, torch out, same numbers
    out_t = project_points(torch.from_numpy(k), torch.from_numpy(t), torch.from_numpy(pts))
    assert isinstance(out_t, torch.Tensor)
    assert out_t.dtype == torch.float64
    np.testing.assert_allclose(out_t.numpy(), project_points(k, t, pts), atol=1e-9)
    out_32 = project_points(torch.from_numpy(k).float(), torch.from_numpy(t).float(),
                            torch.from_numpy(pts).float())
    assert out_32.dtype == torch.float32
    np.testing.assert_allclose(out_32.numpy(), project_points(k, t, pts), atol=1e-2)


def test_project_shape_errors() -> None:
    cam = example_camera()
    for bad in (np.zeros(3), np.zeros((4, 2)), np.zeros((2, 4, 3))):
        with pytest.raises(ShapeError):
            cam.project(bad)
    with pytest.raises(ShapeError):
        project_points(np.eye(4), EXAMPLE_CAMERA_FROM_WORLD, np.zeros((2, 3)))
    with pytest.raises(ShapeError):
        project_points(EXAMPLE_INTRINSIC, np.eye(3), np.zeros((2, 3)))
    with pytest.raises(ShapeError):
        project_points(EXAMPLE_INTRINSIC, EXAMPLE_CAMERA_FROM_WORLD, np.zeros((2, 2)))


def test_project_points_gradcheck() -> None:
    cam = oblique_camera()
    t = torch.tensor(cam.camera_from_world, requires_grad=True)
    k = torch.tensor(cam.intrinsic, requires_grad=True)
    pts = torch.tensor([[10.0, -20.0, 30.0], [0.0, 5.0, -7.0]], dtype=torch.float64,
                       requires_grad=True)
    assert torch.autograd.gradcheck(project_points, (k, t, pts))


# --------------------------------------------------------------------------------------------------
# rays


@pytest.mark.parametrize("cam", [example_camera(), oblique_camera(),
                                 oblique_camera(-2.9, 1.1, width=5, height=7)],
                         ids=["example", "oblique", "tiny"])
def test_rays_pass_through_pixel_centres(cam: Camera) -> None:
    origin, dirs = cam.rays()
    assert origin.shape == (3,)
    assert dirs.shape == (cam.height, cam.width, 3)
    np.testing.assert_allclose(origin, cam.source_world, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-12)
    rows, cols = np.meshgrid(np.arange(cam.height), np.arange(cam.width), indexing="ij")
    centres = np.stack([cols + 0.5, rows + 0.5], axis=-1).reshape(-1, 2)
    for dist in (300.0, 1500.0):
        pts = origin + dist * dirs.reshape(-1, 3)
        np.testing.assert_allclose(cam.project(pts), centres, atol=1e-7)
    # every ray points forward: away from the source, towards the detector
    assert (dirs.reshape(-1, 3) @ cam.view_direction_world > 0).all()


def test_ray_through_principal_point_is_the_view_direction() -> None:
    cam = oblique_camera()
    _, d = pixel_rays(cam.intrinsic, cam.camera_from_world, cam.height, cam.width,
                      pixels=np.array([cam.principal_point]))
    np.testing.assert_allclose(d[0], cam.view_direction_world, atol=1e-12)


def test_example_rays_by_hand() -> None:
    cam = example_camera()
    _, dirs = cam.rays()
    # pixel [row 127, column 200] has centre (200.5, 127.5): camera direction (72.5, −0.5, 1275)
    d = np.array([72.5, -0.5, 1275.0])
    d /= np.linalg.norm(d)
    # camera x = world x, camera y = world −z, camera z = world y
    np.testing.assert_allclose(dirs[127, 200], [d[0], d[2], -d[1]], atol=1e-12)


def test_pixel_subset_agrees_with_full_grid() -> None:
    cam = oblique_camera()
    _, full = cam.rays()
    rc = np.array([[0, 0], [47, 63], [10, 20], [33, 5]])
    pix = np.stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5], axis=-1)
    origin, sub = pixel_rays(cam.intrinsic, cam.camera_from_world, 0, 0, pixels=pix)
    assert sub.shape == (4, 3)
    np.testing.assert_allclose(origin, cam.source_world, atol=1e-9)
    np.testing.assert_allclose(sub, full[rc[:, 0], rc[:, 1]], atol=1e-12)
    # an off-centre pixel coordinate: project(origin + t·dir) gives it back
    odd = np.array([[3.25, 40.75], [-2.0, 60.0]])
    _, d = pixel_rays(cam.intrinsic, cam.camera_from_world, 0, 0, pixels=odd)
    np.testing.assert_allclose(cam.project(origin + 800.0 * d), odd, atol=1e-8)


def test_pixel_rays_batched_numpy_and_torch() -> None:
    cams = [oblique_camera(0.3, 0.1), oblique_camera(-1.2, 0.5)]
    k, t, h, w = stack_cameras(cams)
    origins, dirs = pixel_rays(k, t, h, w)
    assert origins.shape == (2, 3)
    assert dirs.shape == (2, h, w, 3)
    for b, cam in enumerate(cams):
        o, d = cam.rays()
        np.testing.assert_allclose(origins[b], o, atol=1e-9)
        np.testing.assert_allclose(dirs[b], d, atol=1e-12)
    o_t, d_t = pixel_rays(torch.from_numpy(k), torch.from_numpy(t), h, w)
    assert isinstance(d_t, torch.Tensor)
    assert d_t.dtype == torch.float64
    np.testing.assert_allclose(o_t.numpy(), origins, atol=1e-9)
    np.testing.assert_allclose(d_t.numpy(), dirs, atol=1e-12)
    o_32, d_32 = pixel_rays(torch.from_numpy(k).float(), torch.from_numpy(t).float(), h, w)
    assert d_32.dtype == torch.float32
    assert o_32.dtype == torch.float32
    np.testing.assert_allclose(d_32.numpy(), dirs, atol=1e-5)


def test_pixel_rays_batched_pixels() -> None:
    """Pixels ``(B, P, 2)``: view b traces its own P pixels, not every view's."""
    cams = [oblique_camera(0.3, 0.1), oblique_camera(-1.2, 0.5), oblique_camera(2.0, -0.3)]
    k, t, h, w = stack_cameras(cams)
    pix = np.random.default_rng(4).uniform(0, 40, size=(3, 6, 2))
    origins, dirs = pixel_rays(k, t, h, w, pixels=pix)
    assert origins.shape == (3, 3)
    assert dirs.shape == (3, 6, 3)
    for b, cam in enumerate(cams):
        np.testing.assert_allclose(cam.project(origins[b] + 900.0 * dirs[b]), pix[b], atol=1e-8)
    # one shared pixel list for every view
    origins, dirs = pixel_rays(k, t, h, w, pixels=pix[0])
    assert dirs.shape == (3, 6, 3)
    for b, cam in enumerate(cams):
        np.testing.assert_allclose(cam.project(origins[b] + 900.0 * dirs[b]), pix[0], atol=1e-8)


def test_pixel_rays_shape_errors() -> None:
    with pytest.raises(ShapeError):
        pixel_rays(np.eye(4), EXAMPLE_CAMERA_FROM_WORLD, 2, 2)
    with pytest.raises(ShapeError):
        pixel_rays(EXAMPLE_INTRINSIC, np.eye(3), 2, 2)
    with pytest.raises(ShapeError):
        pixel_rays(EXAMPLE_INTRINSIC, EXAMPLE_CAMERA_FROM_WORLD, 2, 2, pixels=np.zeros((4, 3)))


def test_gradient_flows_to_pose() -> None:
    cam = oblique_camera(width=4, height=3)
    t = torch.tensor(cam.camera_from_world, requires_grad=True)
    k = torch.tensor(cam.intrinsic)
    origin, dirs = pixel_rays(k, t, cam.height, cam.width)
    target = torch.randn(3, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ((dirs * target).sum() + origin.sum()).backward()
    assert t.grad is not None
    assert torch.isfinite(t.grad).all()
    assert t.grad[:3].abs().sum() > 0  # both rotation and translation receive gradient
    assert t.grad[:3, 3].abs().sum() > 0
    t2 = t.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: pixel_rays(k, m, 3, 4), (t2,))


# --------------------------------------------------------------------------------------------------
# crop and downsample


def _grid_pts() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.uniform(-80, 80, size=(20, 3)) + np.array([12.5, -30.25, 101.0])


def test_crop_shifts_projections() -> None:
    cam = oblique_camera()
    sub = cam.crop(u0=10, v0=7, width=30, height=20)
    assert (sub.width, sub.height) == (30, 20)
    assert sub.principal_point == pytest.approx((cam.principal_point[0] - 10,
                                                 cam.principal_point[1] - 7), abs=1e-12)
    np.testing.assert_array_equal(sub.camera_from_world, cam.camera_from_world)
    assert sub.pixel_spacing_mm == cam.pixel_spacing_mm
    pts = _grid_pts()
    np.testing.assert_allclose(sub.project(pts), cam.project(pts) - [10.0, 7.0], atol=1e-9)
    _, full = cam.rays()
    _, part = sub.rays()
    np.testing.assert_allclose(part, full[7:27, 10:40], atol=1e-12)
    # the whole detector is a valid crop and changes nothing
    same = cam.crop(0, 0, cam.width, cam.height)
    np.testing.assert_array_equal(same.intrinsic, cam.intrinsic)
    numpy_int: Any = np.int64(1)  # numpy integers are integers too
    assert cam.crop(numpy_int, 0, 5, 5).intrinsic[0, 2] == cam.intrinsic[0, 2] - 1


@pytest.mark.parametrize("args", [
    (-1, 0, 10, 10), (0, -1, 10, 10), (0, 0, 0, 10), (0, 0, 10, 0), (0, 0, -5, 10),
    (60, 0, 5, 10), (0, 40, 10, 9), (0, 0, 65, 48), (0, 0, 64, 49),
    (2.5, 0, 10, 10), (0, 0, 10.0, 10), (True, 0, 10, 10), ("1", 0, 10, 10),
])
def test_bad_crops(args: tuple[Any, ...]) -> None:
    with pytest.raises(InputError):
        oblique_camera().crop(*args)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_downsample_scales_projections(factor: int) -> None:
    cam = oblique_camera(width=64, height=49)
    small = cam.downsample(factor)
    assert (small.width, small.height) == (64 // factor, 49 // factor)
    pts = _grid_pts()
    np.testing.assert_allclose(small.project(pts), cam.project(pts) / factor, atol=1e-9)
    assert small.pixel_spacing_mm == pytest.approx((3.1 * factor, 2.7 * factor), rel=1e-14)
    assert small.source_to_detector_mm == pytest.approx(cam.source_to_detector_mm, rel=1e-12)
    # a binned pixel's ray goes through the centre of the block it replaces
    _, d_small = small.rays()
    block_centre = np.array([[factor * (2 + 0.5), factor * (3 + 0.5)]])  # column 2, row 3
    _, d_full = pixel_rays(cam.intrinsic, cam.camera_from_world, 0, 0, pixels=block_centre)
    np.testing.assert_allclose(d_small[3, 2], d_full[0], atol=1e-12)


def test_downsample_without_spacing_and_by_one() -> None:
    cam = Camera(EXAMPLE_INTRINSIC, EXAMPLE_CAMERA_FROM_WORLD, 256, 256)
    assert cam.downsample(2).pixel_spacing_mm is None
    np.testing.assert_array_equal(cam.downsample(1).intrinsic, cam.intrinsic)
    numpy_int: Any = np.int32(4)
    assert cam.downsample(numpy_int).width == 64


@pytest.mark.parametrize("factor", [0, -2, 2.5, 2.0, True, "2", None])
def test_bad_downsample(factor: Any) -> None:
    with pytest.raises(InputError, match="positive integer"):
        oblique_camera(width=64, height=48).downsample(factor)


@pytest.mark.parametrize(("width", "height", "factor"),
                         [(64, 48, 49), (48, 64, 49), (64, 48, 65)])
def test_downsample_too_far(width: int, height: int, factor: int) -> None:
    with pytest.raises(InputError, match="no pixel"):
        oblique_camera(width=width, height=height).downsample(factor)


# --------------------------------------------------------------------------------------------------
# the value object


def test_camera_is_frozen() -> None:
    cam = example_camera()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cam.width = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        cam.intrinsic[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        cam.camera_from_world[0, 3] = 1.0
    # it holds its own copy: editing the caller's array afterwards changes nothing
    k = EXAMPLE_INTRINSIC.copy()
    cam = Camera(k, EXAMPLE_CAMERA_FROM_WORLD, 256, 256)
    k[0, 0] = 1.0
    assert cam.intrinsic[0, 0] == 1275.0


def test_camera_constructor_validates() -> None:
    reflected = EXAMPLE_CAMERA_FROM_WORLD.copy()
    reflected[0, 0] = -1.0
    with pytest.raises(FrameError, match="reflection"):
        Camera(EXAMPLE_INTRINSIC, reflected, 256, 256)
    with pytest.raises(ShapeError):
        Camera(np.eye(2), EXAMPLE_CAMERA_FROM_WORLD, 256, 256)
    with pytest.raises(ShapeError):
        Camera(EXAMPLE_INTRINSIC, np.eye(3), 256, 256)
    with pytest.raises(InputError):
        Camera(EXAMPLE_INTRINSIC, EXAMPLE_CAMERA_FROM_WORLD, 0, 256)
    with pytest.raises(InputError):
        Camera(EXAMPLE_INTRINSIC, EXAMPLE_CAMERA_FROM_WORLD, 256, 256, (0.8, -0.8))
    cam = Camera(EXAMPLE_INTRINSIC.tolist(), EXAMPLE_CAMERA_FROM_WORLD.tolist(),
                 256.0, np.int64(128))  # type: ignore[arg-type]
    assert (cam.width, cam.height) == (256, 128)
    assert type(cam.width) is int
    assert type(cam.height) is int


def test_with_pose() -> None:
    cam = example_camera()
    moved = cam.with_pose(oblique_camera().camera_from_world)
    np.testing.assert_array_equal(moved.intrinsic, cam.intrinsic)
    np.testing.assert_array_equal(moved.camera_from_world, oblique_camera().camera_from_world)
    assert moved.pixel_spacing_mm == (0.8, 0.8)
    with pytest.raises(FrameError):
        cam.with_pose(np.diag([2.0, 2.0, 2.0, 1.0]))


def test_summary() -> None:
    s = example_camera().summary()
    assert s["size"] == (256, 256)
    assert s["focal_lengths_px"] == (1275.0, 1275.0)
    assert s["principal_point_px"] == (128.0, 128.0)
    assert s["source_world_mm"] == pytest.approx((0.0, -850.0, 0.0), abs=1e-12)
    assert s["view_direction_world"] == (0.0, 1.0, 0.0)
    assert s["source_to_detector_mm"] == pytest.approx(1020.0)
    s = Camera(EXAMPLE_INTRINSIC, EXAMPLE_CAMERA_FROM_WORLD, 300, 200).summary()
    assert s["size"] == (300, 200)  # (width, height)
    assert s["source_to_detector_mm"] is None
    json.dumps(s)  # plain Python values


def test_stack_cameras() -> None:
    cams = [oblique_camera(0.1), oblique_camera(0.2), oblique_camera(0.3)]
    k, t, h, w = stack_cameras(cams)
    assert k.shape == (3, 3, 3)
    assert t.shape == (3, 4, 4)
    assert (h, w) == (48, 64)
    np.testing.assert_array_equal(t[1], cams[1].camera_from_world)
    with pytest.raises(ShapeError, match="size"):
        stack_cameras([oblique_camera(width=64, height=48), oblique_camera(width=48, height=64)])
    with pytest.raises(ShapeError):
        stack_cameras([oblique_camera(width=64), oblique_camera(width=63)])
    with pytest.raises(ShapeError):
        stack_cameras([])
