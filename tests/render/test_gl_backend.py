"""The OpenGL backend's own behaviour.

Refusals, laziness, releasing, exactness, and its agreement with the PyTorch backend (the
conformance suite checks both against closed-form ground truth).

Every test that needs a GL context skips where none can be made (``test_gl_required`` turns that
into a failure in CI). The volumes are small and synthetic so the whole file runs in seconds on
llvmpipe.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from regkit.errors import BackendUnavailableError, InputError, RegkitError, ShapeError
from regkit.geometry.camera import Camera
from regkit.geometry.transforms import rigid_from_params
from regkit.render.base import DepthMaps, Resampled, Views, renderers
from regkit.render.gl import GLRenderer
from regkit.render.gl import context as gl_context
from regkit.render.torch_backend import TorchRenderer
from regkit.volume import Volume

pytestmark = pytest.mark.gl

SHAPE = (34, 30, 26)


def _gl_or_skip() -> None:
    if not gl_context.gl_available():
        pytest.skip(f"no OpenGL context here: {gl_context.unavailable_reason()}")


@pytest.fixture(scope="module")
def labelled_volume(tools: SimpleNamespace) -> Volume:
    """HU data with smooth structure and two labelled, non-convex bones (labels 3 and 7)."""
    rng = np.random.default_rng(7)
    blob = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.0)
    hu = (blob / blob.std() * 400.0).astype(np.float32)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[blob > np.quantile(blob, 0.85)] = 3
    labels[blob < np.quantile(blob, 0.08)] = 7
    aff = tools.grid_affine(SHAPE, (1.1, 0.9, 1.6), (0.2, -0.3, 0.25), (4.0, -2.0, 1.0))
    return Volume(hu, aff, labels=labels, units="HU")


@pytest.fixture(scope="module")
def views(tools: SimpleNamespace, labelled_volume: Volume) -> Views:
    """Three oblique views from 300 mm, 32 × 28 pixels."""
    centre = labelled_volume.center_world
    directions = (np.array([0.2, 1.0, -0.1]), np.array([1.0, -0.3, 0.4]),
                  np.array([-0.3, 0.2, 1.0]))
    cams = [tools.look_at(centre - 300.0 * d / np.linalg.norm(d), centre, focal=500.0,
                          width=32, height=28) for d in directions]
    return Views.from_cameras(cams)


@pytest.fixture(scope="module")
def gl(labelled_volume: Volume) -> Iterator[GLRenderer]:
    _gl_or_skip()
    with GLRenderer(labelled_volume) as renderer:
        yield renderer


@pytest.fixture(scope="module")
def torch_renderer(labelled_volume: Volume) -> TorchRenderer:
    return TorchRenderer(labelled_volume)


# ---------------------------------------------------------------------------------- refusals


def test_requires_grad_is_refused_before_any_gl(labelled_volume: Volume) -> None:
    with pytest.raises(InputError, match="not differentiable; use backend='torch'"):
        GLRenderer(labelled_volume, requires_grad=True)


@pytest.mark.parametrize(("option", "value"), [
    ("device", "cuda"), ("dtype", torch.int32), ("step_mm", 0.0), ("step_mm", float("nan")),
    ("texture_format", "float16"), ("filtering", "linear"),
])
def test_bad_options_are_refused(labelled_volume: Volume, option: str, value: object) -> None:
    with pytest.raises(InputError):
        GLRenderer(labelled_volume, **{option: value})  # type: ignore[arg-type]


def test_a_plain_array_is_not_a_volume() -> None:
    with pytest.raises(InputError, match="Volume"):
        GLRenderer(np.zeros((4, 4, 4)))


def test_registered_and_declared() -> None:
    assert renderers.get("gl") is GLRenderer
    assert GLRenderer.differentiable is False
    assert GLRenderer.devices == ("cpu",)


@pytest.mark.slow
def test_import_does_not_load_moderngl() -> None:
    code = textwrap.dedent("""
        import sys
        import regkit, regkit.render, regkit.render.base, regkit.render.select
        import regkit.render.gl, regkit.render.gl.backend, regkit.render.gl.context
        from regkit.render.base import renderers
        assert "gl" in renderers.names()
        assert "moderngl" not in sys.modules, "moderngl imported"
        assert "glcontext" not in sys.modules, "glcontext imported"
        import regkit.render.gl.context as c
        assert c._ctx is None, "context created at import"
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_bad_calls_are_refused(gl: GLRenderer, views: Views) -> None:
    with pytest.raises(InputError, match="roi"):
        gl.drr(views, roi=(30, 0, 8, 8))
    with pytest.raises(InputError, match="either roi or pixels"):
        gl.drr(views, roi=(0, 0, 4, 4), pixels=np.zeros((3, 2)))
    with pytest.raises(ShapeError):
        gl.drr(views, pixels=np.zeros((2, 5, 2)))
    with pytest.raises(InputError, match="do not occur"):
        gl.depth(views, [3, 99])
    with pytest.raises(InputError, match="positive"):
        gl.depth(views, [0])
    with pytest.raises(InputError, match="layers"):
        gl.depth(views, [3], layers=0)
    with pytest.raises(InputError, match="views"):
        gl.drr(np.eye(4))  # type: ignore[arg-type]
    with pytest.raises(ShapeError):
        gl.resample(SHAPE, np.eye(4), np.eye(4))
    singular = np.zeros((1, 4, 4))
    with pytest.raises(InputError, match="singular"):
        gl.resample(SHAPE, np.eye(4), singular)


def test_bones_need_a_label_map(labelled_volume: Volume, views: Views) -> None:
    _gl_or_skip()
    with GLRenderer(labelled_volume.with_labels(None)) as renderer, \
            pytest.raises(InputError, match="no label map"):
        renderer.drr(views, bones=[3])


# ---------------------------------------------------------------------------------- life cycle


def test_close_releases_and_refuses_later_calls(labelled_volume: Volume, views: Views) -> None:
    _gl_or_skip()
    renderer = GLRenderer(labelled_volume)
    renderer.depth(views, [3])
    renderer.resample(SHAPE, labelled_volume.world_from_index, np.eye(4)[None])
    objects = list(renderer._gl_objects)
    assert objects
    renderer.close()
    renderer.close()  # idempotent
    assert renderer.closed
    assert not renderer._gl_objects
    assert all(type(o.mglo).__name__ == "InvalidObject" for o in objects)
    with pytest.raises(RegkitError, match="closed"):
        renderer.drr(views)


def test_garbage_collection_releases(labelled_volume: Volume) -> None:
    _gl_or_skip()
    renderer = GLRenderer(labelled_volume)
    objects = list(renderer._gl_objects)
    del renderer
    gc.collect()
    assert all(type(o.mglo).__name__ == "InvalidObject" for o in objects)


def test_works_from_another_thread(gl: GLRenderer, views: Views) -> None:
    expected = gl.drr(views)
    out: dict[str, torch.Tensor] = {}
    worker = threading.Thread(target=lambda: out.setdefault("drr", gl.drr(views)))
    worker.start()
    worker.join()
    assert torch.equal(out["drr"], expected)


# ---------------------------------------------------------------------------------- outputs


def test_output_types(gl: GLRenderer, views: Views, labelled_volume: Volume) -> None:
    b, h, w = views.batch, views.height, views.width
    img = gl.drr(views)
    assert img.shape == (b, h, w)
    assert img.dtype == torch.float32
    assert img.device.type == "cpu"
    assert gl.drr(views, roi=(3, 4, 10, 6)).shape == (b, 6, 10)
    assert gl.drr(views, pixels=np.full((5, 2), 8.5)).shape == (b, 5)
    d = gl.depth(views, [3, 7], layers=3)
    assert isinstance(d, DepthMaps)
    assert d.front.shape == d.back.shape == (b, 3, h, w)
    assert d.front.dtype == torch.float32
    assert d.layers.shape == (b, h, w)
    assert d.layers.dtype == torch.uint8
    idx = gl.bone_index(views, [3, 7])
    assert idx.shape == (b, h, w)
    assert idx.dtype == torch.int32
    assert set(torch.unique(idx).tolist()) <= {0, 3, 7}
    res = gl.resample((5, 6, 7), labelled_volume.world_from_index, np.eye(4)[None].repeat(2, 0))
    assert isinstance(res, Resampled)
    assert res.values.shape == res.mask.shape == (2, 5, 6, 7)
    assert res.values.dtype == torch.float32
    assert res.mask.dtype == torch.bool


def test_roi_pixels_and_batches_are_consistent(gl: GLRenderer, views: Views) -> None:
    # A ROI samples exactly the points of the full image; a pixel list adds its own rays to
    # those that choose the marching plan, so it may sample other points (equal to within the
    # quadrature's accuracy).
    full = gl.drr(views)
    torch.testing.assert_close(gl.drr(views, roi=(5, 7, 12, 9)), full[:, 7:16, 5:17],
                               rtol=1e-6, atol=1e-7)
    rows, cols = np.meshgrid(np.arange(3, 9), np.arange(10, 14), indexing="ij")
    pix = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    torch.testing.assert_close(gl.drr(views, pixels=pix),
                               full[:, rows.ravel(), cols.ravel()], rtol=2e-3, atol=1e-5)
    one = Views(views.intrinsic[1:2], views.camera_from_world[1:2], views.height, views.width)
    torch.testing.assert_close(gl.drr(one)[0], full[1], rtol=1e-6, atol=1e-7)


def test_bone_drr_is_the_drr_of_the_masked_volume(labelled_volume: Volume,
                                                  views: Views) -> None:
    _gl_or_skip()
    assert labelled_volume.labels is not None
    mu = labelled_volume.to_mu().data * np.isin(labelled_volume.labels, [3])
    masked = Volume(mu.astype(np.float32), labelled_volume.world_from_index, units="mu")
    with GLRenderer(labelled_volume) as a, GLRenderer(masked) as b:
        torch.testing.assert_close(a.drr(views, bones=[3]), b.drr(views), rtol=1e-4,
                                   atol=1e-6)


def test_unorm16_drr_is_within_its_documented_bound_of_float32(labelled_volume: Volume,
                                                               views: Views) -> None:
    """The default R16 μ texels move a DRR by at most Σ (max μ / 131070) · weight · h per ray."""
    _gl_or_skip()
    with GLRenderer(labelled_volume, texture_format="float32") as exact, \
            GLRenderer(labelled_volume) as fast:
        assert fast.texture_format == "unorm16"
        for bones in (None, [3]):
            a = exact.drr(views, bones=bones).numpy().astype(np.float64)
            b = fast.drr(views, bones=bones).numpy().astype(np.float64)
            mu = labelled_volume.to_mu().data
            if bones is not None:
                mu = np.where(labelled_volume.labels == 3, mu, 0.0)
            # A ray is at most the box diagonal long; every sample errs by at most max μ / 131070.
            diagonal = float(np.linalg.norm(np.asarray(SHAPE) * labelled_volume.spacing))
            bound = float(mu.max()) / 131070.0 * diagonal + 1e-6 * float(np.abs(a).max())
            assert np.abs(a - b).max() <= bound
            assert np.abs(a - b).max() > 0.0  # the texels really are quantised
            assert (b[a == 0.0] == 0.0).all()  # empty space stays exactly 0


def test_negative_mu_stays_float32(views: Views, labelled_volume: Volume) -> None:
    """μ given with negative values cannot be R16 with an exact zero: it is kept in float32."""
    _gl_or_skip()
    mu = labelled_volume.to_mu().data - 0.001
    volume = Volume(mu, labelled_volume.world_from_index, units="mu")
    with GLRenderer(volume, texture_format="float32") as exact, GLRenderer(volume) as fast:
        assert torch.equal(exact.drr(views), fast.drr(views))


def test_resample_identity_and_fill(gl: GLRenderer, labelled_volume: Volume) -> None:
    aff = labelled_volume.world_from_index
    shift = np.eye(4)
    shift[:3, 3] = aff[:3, :3] @ np.array([SHAPE[0] / 2.0, 0.0, 0.0])  # half the grid along i
    res = gl.resample(SHAPE, aff, np.stack([np.eye(4), shift]), fill=-5.0)
    data = torch.from_numpy(np.array(labelled_volume.data, dtype=np.float32))
    torch.testing.assert_close(res.values[0], data, rtol=0, atol=1e-2)
    assert bool(res.mask[0].all())
    # Moved by half the extent: the fixed voxel i sees moving voxel i - 17.
    assert not bool(res.mask[1, :16].any())
    assert bool(res.mask[1, 17:].all())
    assert bool((res.values[1, :16] == -5.0).all())
    torch.testing.assert_close(res.values[1, 17:], data[:-17], rtol=0, atol=1e-2)


def test_resample_float64_dtype(labelled_volume: Volume) -> None:
    _gl_or_skip()
    with GLRenderer(labelled_volume, dtype=torch.float64) as renderer:
        res = renderer.resample((4, 4, 5), labelled_volume.world_from_index, np.eye(4)[None])
    assert res.values.dtype == torch.float64


# ---------------------------------------------------------------------------------- exactness


def _reference_crossings(mask: np.ndarray, volume: Volume, camera: Camera,
                         pixels: np.ndarray) -> list[tuple[list[float], list[float]]]:
    """Entries and exits of the 0.5 level set of the zero-padded trilinear mask.

    Float64 scipy, sampled every 2 µm and interpolated linearly, clipped to the voxel-edge box.
    """
    origin, _ = camera.rays()
    k_inv = np.linalg.inv(camera.intrinsic)
    rot = camera.camera_from_world[:3, :3]
    index_from_world = volume.index_from_world
    out: list[tuple[list[float], list[float]]] = []
    n = np.asarray(volume.shape, dtype=float)
    for u, v in pixels:
        d = rot.T @ (k_inv @ np.array([u, v, 1.0]))
        d /= np.linalg.norm(d)
        o_i = index_from_world[:3, :3] @ origin + index_from_world[:3, 3]
        d_i = index_from_world[:3, :3] @ d
        with np.errstate(divide="ignore"):
            ta, tb = (-0.5 - o_i) / d_i, (n - 0.5 - o_i) / d_i
        t0, t1 = max(0.0, np.max(np.minimum(ta, tb))), np.min(np.maximum(ta, tb))
        if t1 <= t0:
            out.append(([], []))
            continue
        t = np.arange(t0, t1, 0.002)
        f = ndimage.map_coordinates(mask.astype(float), (o_i + t[:, None] * d_i).T, order=1,
                                    mode="grid-constant") - 0.5
        side = f >= 0
        change = np.flatnonzero(side[1:] != side[:-1])
        tc = t[change] + 0.002 * f[change] / (f[change] - f[change + 1])
        entries, exits = list(tc[side[change + 1]]), list(tc[~side[change + 1]])
        if side[0]:  # inside where the ray enters the box: the box face is the surface
            entries.insert(0, t0)
        if side[-1]:
            exits.append(t1)
        out.append((entries, exits))
    return out


def test_depth_matches_the_exact_level_set(gl: GLRenderer, views: Views,
                                           labelled_volume: Volume) -> None:
    assert labelled_volume.labels is not None
    mask = np.isin(labelled_volume.labels, [3, 7])
    d = gl.depth(views, [3, 7], layers=4)
    camera = Camera(np.asarray(views.intrinsic[0]), np.asarray(views.camera_from_world[0]),
                    views.width, views.height)
    rows, cols = np.meshgrid(np.arange(1, 28, 3), np.arange(1, 32, 3), indexing="ij")
    pixels = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    errors, agree = [], 0
    for (u, v), (ent, ext) in zip(pixels, _reference_crossings(mask, labelled_volume, camera,
                                                               pixels), strict=True):
        r, c = int(v), int(u)
        if int(d.layers[0, r, c]) != len(ent):
            continue  # a sliver thinner than a sampling cell: missed by design
        agree += 1
        for layer in range(min(4, len(ent))):
            errors.append(abs(float(d.front[0, layer, r, c]) - ent[layer]))
            errors.append(abs(float(d.back[0, layer, r, c]) - ext[layer]))
    assert agree >= 0.9 * len(pixels)
    assert len(errors) > 50
    assert max(errors) < 0.01  # mm; the target is 0.05 mm + 0.1 voxel


def test_depth_peeling_orders_layers(gl: GLRenderer, views: Views) -> None:
    d = gl.depth(views, [3, 7], layers=2)
    one = gl.depth(views, [3, 7], layers=1)
    torch.testing.assert_close(one.front[:, 0], d.front[:, 0], equal_nan=True)
    torch.testing.assert_close(one.layers, d.layers)
    assert bool((d.layers >= 2).any())
    both = ~d.front[:, 1].isnan()
    assert bool((d.back[:, 0][both] < d.front[:, 1][both]).all())
    hit = d.layers > 0
    assert bool((d.front[:, 0][hit] < d.back[:, 0][hit]).all())
    assert bool(d.front[:, 0][~hit].isnan().all())


# ---------------------------------------------------------------------------------- vs PyTorch


def test_drr_agrees_with_torch(gl: GLRenderer, torch_renderer: TorchRenderer,
                                views: Views) -> None:
    a, b = gl.drr(views), torch_renderer.drr(views)
    assert float((a - b).abs().max() / b.abs().max()) < 5e-3
    hit = b > 0.05 * float(b.max())
    assert float(((a - b).abs() / b)[hit].max()) < 5e-3
    a, b = gl.drr(views, bones=[7]), torch_renderer.drr(views, bones=[7])
    assert float((a - b).abs().max()) <= 5e-3 * float(b.abs().max())


def test_depth_and_bone_index_agree_with_torch(gl: GLRenderer, torch_renderer: TorchRenderer,
                                               views: Views, labelled_volume: Volume) -> None:
    voxel = float(labelled_volume.spacing.min())
    a, b = gl.depth(views, [3, 7], layers=3), torch_renderer.depth(views, [3, 7], layers=3)
    assert float((a.layers != b.layers).float().mean()) < 0.01
    for x, y in ((a.front, b.front), (a.back, b.back)):
        both = ~x.isnan() & ~y.isnan()
        assert int(both.sum()) > 100
        assert float((x - y)[both].abs().median()) <= 0.1 * voxel
    same = gl.bone_index(views, [3, 7]) == torch_renderer.bone_index(views, [3, 7])
    assert float(same.float().mean()) > 0.99


@pytest.fixture(scope="module")
def gl_exact(labelled_volume: Volume) -> Iterator[GLRenderer]:
    """The renderer computing every trilinear sample in float from the texels."""
    _gl_or_skip()
    with GLRenderer(labelled_volume, filtering="exact") as renderer:
        yield renderer


@pytest.mark.parametrize("filtering", ["auto", "exact"])
def test_resample_agrees_with_torch(gl: GLRenderer, gl_exact: GLRenderer,
                                    torch_renderer: TorchRenderer, tools: SimpleNamespace,
                                    labelled_volume: Volume, filtering: str) -> None:
    if filtering == "exact":
        gl = gl_exact
    rng = np.random.default_rng(3)
    maps = np.stack([np.asarray(rigid_from_params(np.r_[rng.normal(0, 0.1, 3),
                                                        rng.normal(0, 4.0, 3)],
                                                  center=labelled_volume.center_world))
                     for _ in range(3)])
    fixed = tools.grid_affine((20, 22, 18), (1.5, 1.3, 1.7), (0.0, 0.1, 0.0), (4.0, -2.0, 1.0))
    a = gl.resample((20, 22, 18), fixed, maps, fill=-1000.0)
    b = torch_renderer.resample((20, 22, 18), fixed, maps, fill=-1000.0)
    assert float((a.mask != b.mask).float().mean()) < 1e-3
    both = a.mask & b.mask
    torch.testing.assert_close(a.values[both], b.values[both].to(torch.float32), rtol=1e-4,
                               atol=0.05)


def test_the_filtering_probe_tells_float_from_fixed_point_weights() -> None:
    _gl_or_skip()
    errors = {fmt: gl_context.filtering_error(fmt) for fmt in ("f4", "f2", "nu2", "nu1")}
    assert all(0.0 <= e < 2.0 / 256.0 for e in errors.values()), errors
    renderer = gl_context.context_info()["GL_RENDERER"]
    if "llvmpipe" not in renderer:
        pytest.skip(f"the expected answers are llvmpipe's; this is {renderer}: {errors}")
    # llvmpipe interpolates float and 16-bit texels in float, 8-bit ones in steps of 1/256
    for fmt in ("f4", "f2", "nu2"):
        assert errors[fmt] < 1e-6, errors
    assert errors["nu1"] > 1e-3, errors
    assert gl_context.texture_filtering_is_exact("f4")
    assert not gl_context.texture_filtering_is_exact("nu1")


def test_exact_filtering_equals_a_float_texture_unit(gl: GLRenderer, gl_exact: GLRenderer,
                                                     views: Views) -> None:
    # where the texture unit interpolates in float, the kernels' own interpolation agrees with it
    _gl_or_skip()
    if not (gl_context.texture_filtering_is_exact("nu2")
            and gl_context.texture_filtering_is_exact("f2")):
        pytest.skip("this driver's texture unit weighs texels in fixed point")
    assert gl_exact._exact_filter("nu2")
    assert not gl._exact_filter("nu2")
    torch.testing.assert_close(gl_exact.drr(views), gl.drr(views), rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(gl_exact.drr(views, bones=[3]), gl.drr(views, bones=[3]),
                               rtol=2e-6, atol=1e-7)
    a, b = gl_exact.depth(views, [3, 7]), gl.depth(views, [3, 7])
    torch.testing.assert_close(a.front, b.front, rtol=0, atol=1e-4, equal_nan=True)
    torch.testing.assert_close(a.back, b.back, rtol=0, atol=1e-4, equal_nan=True)


def test_no_context_means_backend_unavailable(labelled_volume: Volume,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_egl() -> None:
        raise BackendUnavailableError("no headless EGL context (test)")

    monkeypatch.setattr(gl_context, "_ctx", None)
    monkeypatch.setattr(gl_context, "_failure", None)
    monkeypatch.setattr(gl_context, "_programs", {})
    monkeypatch.setattr(gl_context, "_create", no_egl)
    with pytest.raises(BackendUnavailableError, match=r"no headless EGL context \(test\)"):
        GLRenderer(labelled_volume)
    assert not gl_context.gl_available()
    assert "EGL" in str(gl_context.unavailable_reason())


def test_volume_larger_than_the_texture_limit() -> None:
    _gl_or_skip()
    with gl_context.gl_session() as ctx:
        limit = int(ctx.info["GL_MAX_3D_TEXTURE_SIZE"])
    too_long = Volume(np.zeros((limit - 1, 2, 2), np.float32), np.eye(4), units="mu")
    with pytest.raises(BackendUnavailableError, match="texture size"):
        GLRenderer(too_long)


def test_outputs_split_over_several_dispatches(labelled_volume: Volume, views: Views) -> None:
    """Outputs larger than one storage buffer binding are written in several dispatches.

    The result does not depend on the split.
    """
    _gl_or_skip()
    maps = np.stack([np.eye(4)] * 3)
    maps[1, :3, 3] = [2.0, -1.0, 0.5]
    with GLRenderer(labelled_volume) as whole, GLRenderer(labelled_volume) as split:
        split._ssbo_limit = 4 * 30 * 28  # a few rows of a view, or of a slab
        torch.testing.assert_close(split.drr(views), whole.drr(views))
        a, b = split.depth(views, [3, 7], layers=2), whole.depth(views, [3, 7], layers=2)
        torch.testing.assert_close(a.front, b.front, equal_nan=True)
        torch.testing.assert_close(a.layers, b.layers)
        torch.testing.assert_close(split.bone_index(views, [3, 7]), whole.bone_index(views, [3, 7]))
        ra = split.resample(SHAPE, labelled_volume.world_from_index, maps)
        rb = whole.resample(SHAPE, labelled_volume.world_from_index, maps)
        torch.testing.assert_close(ra.values, rb.values)
        torch.testing.assert_close(ra.mask, rb.mask)


# ------------------------------------------------------------------------- depth per bone


@pytest.fixture(scope="module")
def many_bones(tools: SimpleNamespace) -> Volume:
    """Twelve small labelled blobs scattered through a grid (a hand's worth of small bones)."""
    rng = np.random.default_rng(11)
    shape = (40, 36, 30)
    labels = np.zeros(shape, dtype=np.uint8)
    x = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    for label in range(1, 13):
        centre = rng.uniform(5.0, np.array(shape) - 5.0)
        radii = rng.uniform(1.5, 4.5, size=3)
        labels[(((x - centre) / radii) ** 2).sum(-1) <= 1.0] = label
    hu = np.where(labels > 0, 900.0, 0.0).astype(np.float32)
    aff = tools.grid_affine(shape, (0.9, 1.1, 1.3), (0.1, 0.25, -0.2), (-3.0, 2.0, 5.0))
    return Volume(hu, aff, labels=labels, units="HU")


def _many_views(tools: SimpleNamespace, volume: Volume) -> Views:
    """Four views: three around the grid and one very close.

    The close one is so near that part of the grid lies behind its source plane and some bones
    fall off its small detector.
    """
    centre = volume.center_world
    cams = [tools.look_at(centre - 260.0 * d / np.linalg.norm(d), centre, focal=420.0,
                          width=44, height=38)
            for d in (np.array([0.1, 1.0, 0.2]), np.array([1.0, 0.4, -0.3]),
                      np.array([-0.2, 0.3, 1.0]))]
    inside = np.array([0.0, 12.0, 0.0])
    cams.append(tools.look_at(centre - inside, centre + 0.1 * inside, focal=30.0, width=44,
                              height=38))
    return Views.from_cameras(cams)


def _loop(renderer: GLRenderer, views: Views, bones: list[int], layers: int) -> list[DepthMaps]:
    return [renderer.depth(views, [b], layers=layers) for b in bones]


def _assert_same_depths(got: list[DepthMaps], want: list[DepthMaps]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.front.shape == b.front.shape
        assert a.front.dtype == torch.float32
        assert a.layers.dtype == torch.uint8
        torch.testing.assert_close(a.layers, b.layers, rtol=0, atol=0)
        for x, y in ((a.front, b.front), (a.back, b.back)):
            assert torch.equal(torch.isnan(x), torch.isnan(y))
            torch.testing.assert_close(x, y, rtol=0, atol=2e-3, equal_nan=True)


def test_depth_per_bone_is_the_depth_of_each_bone_alone(tools: SimpleNamespace,
                                                          many_bones: Volume) -> None:
    """One dispatch over an atlas of the bones' masks gives what a depth call per bone gives.

    The atlas dispatch marches each bone on its projected window, the depth calls the whole
    detector: same crossings, same counts.
    """
    _gl_or_skip()
    views = _many_views(tools, many_bones)
    bones = list(range(1, 13))
    with GLRenderer(many_bones) as renderer:
        want = _loop(renderer, views, bones, 2)
        got = renderer.depth_per_bone(views, bones, layers=2)
        _assert_same_depths(got, want)
        hits = [int(m.layers.bool().sum()) for m in want]
        assert min(hits) > 0, hits
        assert sum(hits) > 2000, hits
        # the close view: some bones project off its detector, and still come back as misses
        close = [int(m.layers[3].bool().sum()) for m in want]
        assert 0 in close, close
        assert max(close) > 0, close


def test_depth_per_bone_keeps_order_and_repeats(tools: SimpleNamespace,
                                                many_bones: Volume) -> None:
    _gl_or_skip()
    views = _many_views(tools, many_bones)
    with GLRenderer(many_bones) as renderer:
        got = renderer.depth_per_bone(views, [7, 3, 7], layers=1)
        _assert_same_depths(got, _loop(renderer, views, [7, 3, 7], 1))
        got[0].front.fill_(0.0)  # a repeated bone is its own copy
        assert torch.isnan(got[2].front).any()
        assert renderer.depth_per_bone(views, [], layers=2) == []


def test_depth_per_bone_split_over_atlases_and_dispatches(tools: SimpleNamespace,
                                                          many_bones: Volume) -> None:
    """Splitting bones over atlases and rays over dispatches does not change the result.

    Bones that do not fit one texture go in several atlases, rays that do not fit one buffer in
    several dispatches; the result does not depend on either split.
    """
    _gl_or_skip()
    views = _many_views(tools, many_bones)
    bones = list(range(1, 13))
    with GLRenderer(many_bones) as whole, GLRenderer(many_bones) as split:
        split._tex_limit = 24        # a few bones' crops per texture
        split._ssbo_limit = 4 * 5 * 300  # 300 rays of 2 layers per dispatch
        got = split.depth_per_bone(views, bones, layers=2)
        assert len(split._atlases[tuple(bones)]) > 2
        _assert_same_depths(got, whole.depth_per_bone(views, bones, layers=2))


def test_depth_per_bone_refuses_bad_input(many_bones: Volume, tools: SimpleNamespace) -> None:
    _gl_or_skip()
    views = _many_views(tools, many_bones)
    with GLRenderer(many_bones) as renderer:
        with pytest.raises(InputError, match=r"label\(s\) \[40\] do not occur"):
            renderer.depth_per_bone(views, [3, 40])
        with pytest.raises(InputError, match="whole number"):
            renderer.depth_per_bone(views, [3], layers=0)
        with pytest.raises(InputError):
            renderer.depth_per_bone(views, [0])
    with GLRenderer(many_bones.with_labels(None)) as bare, \
            pytest.raises(InputError, match="no label map"):
        bare.depth_per_bone(views, [3])


def test_full_bricks_are_marked_and_skipped_exactly(tools: SimpleNamespace) -> None:
    """A thick solid bone's full mask bricks are marked and stepped over exactly.

    Its mask bricks are 1 everywhere (occupancy 2): rays step over them while inside, and the
    crossings stay those of the box faces (the 0.5 level set of a box of voxels lies half a voxel
    out) and those of the torch backend, which skips nothing.
    """
    _gl_or_skip()
    from regkit.render.gl._textures import _occupancy

    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[2:19, 2:19, 2:19] = True
    any_ = _occupancy(mask, 8)
    every = _occupancy(mask, 8, every=True)
    assert every.sum() > 0
    assert np.all(every <= any_)
    # a brick is full only when every texel it interpolates (its 9³ footprint) is set
    for b in np.argwhere(every):
        foot = tuple(slice(8 * i, 8 * i + 9) for i in b)
        assert mask[foot].all()
        assert mask[foot].shape == (9, 9, 9)
    shape = (40, 40, 40)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[6:34, 8:32, 5:35] = 1
    aff = np.diag([0.5, 0.5, 0.5, 1.0])
    vol = Volume(np.where(labels > 0, 800.0, -1000.0).astype(np.float32), aff, labels=labels)
    cams = [tools.look_at(np.array([10.0, -300.0, 10.0]), np.array([10.0, 10.0, 10.0]),
                          focal=600.0, width=36, height=36),
            tools.look_at(np.array([-200.0, -150.0, 90.0]), np.array([10.0, 10.0, 10.0]),
                          focal=500.0, width=36, height=36)]
    views = Views.from_cameras(cams)
    with GLRenderer(vol) as gl:
        got = gl.depth(views, [1], layers=2)
        per_bone = gl.depth_per_bone(views, [1], layers=2)[0]
    want = TorchRenderer(vol).depth(views, [1], layers=2)
    for a in (got, per_bone):
        torch.testing.assert_close(a.layers, want.layers, rtol=0, atol=0)
        torch.testing.assert_close(a.front, want.front, rtol=0, atol=2e-3, equal_nan=True)
        torch.testing.assert_close(a.back, want.back, rtol=0, atol=2e-3, equal_nan=True)
    # the straight-on view: entry and exit on the faces y = (8 - 0.5) and (31 + 0.5) voxels
    centre = got.layers[0].bool()
    assert centre.sum() > 300
    source_y = -300.0
    along = torch.tensor([0.5 * 7.5 - source_y, 0.5 * 31.5 - source_y])
    front = got.front[0, 0][centre]
    back = got.back[0, 0][centre]
    assert float(front.min()) >= float(along[0]) - 1e-3
    assert float(back.max()) > float(along[1]) - 1e-3


def test_depth_stack_puts_the_bones_on_an_axis(tools: SimpleNamespace,
                                               many_bones: Volume) -> None:
    """``depth_stack`` fills (B, NB, L, H, W) directly on gl and by stacking elsewhere.

    Each row is that bone's own maps, repeats included, and the DepthMaps methods see the bone axis.
    """
    _gl_or_skip()
    views = _many_views(tools, many_bones)
    bones = [5, 2, 5]
    with GLRenderer(many_bones) as renderer:
        stack = renderer.depth_stack(views, bones, layers=2)
        loop = _loop(renderer, views, bones, 2)
        with pytest.raises(InputError, match="no bones"):
            renderer.depth_stack(views, [])
    assert stack.front.shape == (4, 3, 2, 38, 44)
    assert stack.layers.shape == (4, 3, 38, 44)
    rows = [DepthMaps(front=stack.front[:, i], back=stack.back[:, i],
                      layers=stack.layers[:, i]) for i in range(3)]
    _assert_same_depths(rows, loop)
    assert stack.thickness().shape == (4, 3, 38, 44)
    assert stack.hit.shape == (4, 3, 38, 44)
    torch.testing.assert_close(stack.thickness()[:, 1], loop[1].thickness(), rtol=0, atol=4e-3)
    stacked = TorchRenderer(many_bones).depth_stack(views, [2], layers=1)
    assert stacked.front.shape == (4, 1, 1, 38, 44)
    torch.testing.assert_close(stacked.layers[:, 0], loop[1].layers, rtol=0, atol=0)
