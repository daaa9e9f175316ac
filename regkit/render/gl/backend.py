"""The OpenGL renderer: DRRs, depth maps and resampling in GLSL compute shaders (moderngl, EGL).

Importing this module registers the backend as ``"gl"`` and imports nothing heavy: moderngl is
loaded, and the process's EGL context created, when the first :class:`GLRenderer` is built. Its
textures are kept by :mod:`regkit.render.gl._textures`, its per-bone atlases by
:mod:`regkit.render.gl._atlas`, and every kernel runs through :mod:`regkit.render.gl._dispatch`.

Sampling model: the one of ``docs/renderers.md``, point for point, shared with the PyTorch
backend, so that the two sample the same positions and differ only by float32 rounding. Here:

* μ is uploaded once as a 3-D texture with a margin of zero voxels and ``GL_LINEAR`` filtering
  (the margin does what ``CLAMP_TO_BORDER`` with border 0 would), 16-bit fixed point over
  [0, max μ] by default (see *Precision*); ``texture_format="float32"`` keeps R32F.
* The marching axis and cell count of each view are chosen on the host by
  :func:`regkit.render.sampling.choose_axes`, as the PyTorch backend does; ``bones=[...]``
  DRRs read a texture cropped to those bones.
* Depth maps march the union mask of the chosen bones (an R16F texture cropped to their box,
  cached per bone set); each crossing is refined by 12 bisections and 6 Illinois steps on the
  exact trilinear field computed in float from the eight texels (``texelFetch``), to about
  1e-4 mm a metre from the source. ``depth_stack`` packs the bones' own masks into one atlas
  texture (each crop with its zero margin, 2 zero texels apart) and marches every bone, in one
  dispatch, only on the detector window its crop projects into.
* ``bone_index`` reads a cropped R8UI/R16UI texture of the chosen labels.
* Empty space in bone crops is skipped exactly: an occupancy grid of bricks of 8³ cells lets
  rays step over bricks whose field is 0 everywhere. The full volume is marched without it: a
  CT has little space at exactly μ = 0, and on llvmpipe lanes that leave bricks at different
  samples cost more than the skipping saves.

Precision:
    Texture units do not interpolate exactly everywhere: many GPUs weigh texels in 8-bit fixed
    point (steps of 1/256 voxel; measured on an NVIDIA H200, driver 580: resampled HU off by up
    to 2.7, bone DRRs by 9e-4 relative, depth layers out of order where a sliver was found by
    the unit and refined on the exact field), and Mesa's llvmpipe does so for 8-bit formats,
    while it interpolates float and 16-bit formats (used here) in float. So every kernel samples
    through one function that either asks the texture unit or, with ``EXACT_FILTER``,
    interpolates the eight texels in float itself; ``filtering="auto"`` (the default) measures
    the unit once per context and format (``texture_filtering_is_exact`` in
    :mod:`regkit.render.gl.context`) and takes the unit only where it is exact. Depth crossings are
    refined on the exact field either way. Geometry is set up in float64 on the host and traced
    in float32.

    μ in R16 fixed point (the default ``texture_format="unorm16"``): each texel is μ rounded to
    the nearest multiple of max μ / 65535, an error of at most max μ / 131070 per voxel (3.4e-7
    /mm for bone at 3000 HU), unbiased, so that a DRR through hundreds of voxels moves by about
    1e-6 relative. llvmpipe filters 16-bit texels 1.5–3× faster than 32-bit ones, so DRRs use
    it. Masks stay R16F (0 and 1 exactly), resampling R32F (values as stored, HU included).

Measured agreement and speed: ``docs/decisions/gl-renderer.md``.
"""

from __future__ import annotations

import math
import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch

from regkit.errors import BackendUnavailableError, InputError, RegkitError
from regkit.render._checks import bone_list, common_options
from regkit.render.base import DepthMaps, Renderer, Resampled, Views, renderers
from regkit.render.gl._atlas import Atlas, atlas_set, bone_windows
from regkit.render.gl._dispatch import ScratchBuffers, dispatch, even_chunks, packed_chunks
from regkit.render.gl._dispatch import groups as _groups
from regkit.render.gl._dispatch import set_uniform as _set
from regkit.render.gl._textures import CROP_BRICK, TEXTURE_FORMATS, Block, GLObjects, VolumeTextures
from regkit.render.sampling import border_pixels as _border_pixels

__all__ = ["FILTERINGS", "GLRenderer"]

FILTERINGS = ("auto", "exact", "texture-unit")  # how trilinear samples are computed
_RESAMPLE_TOLERANCE = 1e-3  # slack of the voxel-centre box in resampling, voxels
_NAN = float("nan")


@renderers.register("gl")
class GLRenderer(Renderer):
    """DRRs, depth maps, first-bone maps and resampling with OpenGL compute shaders.

    Bound to one volume; every output is a CPU torch tensor: float32 (``resample`` values in the
    renderer's dtype), ``int32`` for :meth:`bone_index`, ``uint8`` layer counts, ``bool`` masks.
    Not differentiable. See the module docstring for the sampling model and its precision.

    Use it as a context manager, or call :meth:`close`, to free its GL textures at once (a
    closed renderer refuses every call); they are freed when it is garbage-collected otherwise.

    Args:
        volume: A :class:`~regkit.volume.Volume`. Units ``"HU"`` are converted to μ with
            ``mu_water``; ``"mu"`` and ``"other"`` are used as given (as μ).
        step_mm: Largest step along a ray, mm (default: half the smallest voxel spacing).
        device: ``None``, ``"cpu"`` or ``"gl"``: results always come back on the CPU.
        dtype: dtype of :meth:`resample` values: None or ``torch.float32``, or ``torch.float64``
            (computed in float32 either way).
        requires_grad: Must be False: this backend is not differentiable.
        mu_water: Attenuation of water in 1/mm, for HU volumes.
        texture_format: How the μ that DRRs integrate is stored in its 3-D textures:
            ``"unorm16"`` (default: 16-bit fixed point scaled to the block's maximum, an
            absolute error of at most max / 131070 per voxel, about 5e-7 /mm for a CT with
            bone at 3000 HU; Mesa's llvmpipe filters it 1.5–3× faster than float32) or
            ``"float32"`` (the μ values exactly). μ with negative values (only a ``"mu"`` volume
            given so) stays float32 either way, so that outside the data stays exactly 0.
            Resampling always reads float32 texels.
        filtering: How trilinear samples are computed: ``"auto"`` (default: by the texture
            unit where it interpolates the texture's format in float, as Mesa's llvmpipe does,
            else in float from the eight texels; measured once per context by
            :func:`~regkit.render.gl.context.texture_filtering_is_exact`), ``"exact"`` (always
            from the texels) or ``"texture-unit"`` (always by the unit: faster on a GPU whose
            unit weighs texels in fixed point, at up to 1/512 of a voxel step in each value).

    Raises:
        InputError: ``requires_grad=True`` (before anything is built), a bad option or volume.
        BackendUnavailableError: no OpenGL 4.3 EGL context can be made here (the message says
            why), or the volume exceeds the driver's 3-D texture size.
    """

    backend: ClassVar[str] = "gl"
    differentiable: ClassVar[bool] = False
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, volume: Any, *, step_mm: float | None = None, device: Any = None,
                 dtype: Any = None, requires_grad: bool = False, mu_water: float = 0.02,
                 texture_format: str = "unorm16", filtering: str = "auto"):
        self._closed = True  # until the GL objects exist
        self._gl_objects: list[Any] = []
        opts = common_options(self.backend, self.differentiable, volume, step_mm=step_mm,
                              dtype=dtype, requires_grad=requires_grad, mu_water=mu_water)
        if device is not None and str(device) not in ("cpu", "gl"):
            raise InputError(f"the OpenGL backend returns CPU tensors; device must be None, "
                             f"'cpu' or 'gl', got {device!r}", key="device")
        if texture_format not in TEXTURE_FORMATS:
            raise InputError(f"must be one of {', '.join(TEXTURE_FORMATS)}, got "
                             f"{texture_format!r}", key="texture_format")
        if filtering not in FILTERINGS:
            raise InputError(f"must be one of {', '.join(FILTERINGS)}, got {filtering!r}",
                             key="filtering")
        self.texture_format = texture_format
        self.filtering = filtering
        self.volume = volume
        self.shape: tuple[int, int, int] = volume.shape
        self.step_mm = opts.step_mm
        self.mu_water = opts.mu_water
        self.dtype = opts.dtype
        self._index_from_world = np.linalg.inv(np.asarray(volume.world_from_index, np.float64))
        owned = GLObjects(self._gl_objects)
        self._textures = VolumeTextures(volume, owned, mu_water=self.mu_water,
                                        texture_format=texture_format)
        self._atlases: OrderedDict[tuple[int, ...], list[Atlas]] = OrderedDict()
        self._scratch = ScratchBuffers(owned)
        self._finalizer = weakref.finalize(self, _release_objects, self._gl_objects)
        self._pid = os.getpid()

        from regkit.render.gl.context import gl_session

        with gl_session() as ctx:
            limit = int(ctx.info["GL_MAX_3D_TEXTURE_SIZE"])
            if max(self.shape) + 2 > limit:
                raise BackendUnavailableError(
                    f"renderer backend 'gl' is unavailable: the volume {self.shape} exceeds the "
                    f"driver's 3-D texture size limit of {limit - 2} voxels per axis")
            self._ssbo_limit = int(ctx.info["GL_MAX_SHADER_STORAGE_BLOCK_SIZE"])
            self._tex_limit = limit
            self._mu_block = self._textures.volume_mu(ctx)
        self._closed = False

    # ------------------------------------------------------------------ life cycle
    def _label_values(self) -> frozenset[int] | None:
        return None if self._textures.labels is None else frozenset(self._textures.boxes())

    def _release(self) -> None:
        """Release every GL object of this renderer (through :meth:`close`)."""
        self._textures.clear()
        self._atlases.clear()
        self._scratch.clear()
        self._finalizer()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step_mm={self.step_mm:g}"
        return f"GLRenderer(shape={self.shape}, {state})"

    @contextmanager
    def _session(self) -> Iterator[Any]:
        from regkit.render.gl.context import gl_session

        self._check_open()
        if os.getpid() != self._pid:
            raise RegkitError("this GLRenderer was built in another process (its textures live "
                              "in that process's OpenGL context); build a new one here")
        with gl_session() as ctx:
            yield ctx

    # ------------------------------------------------------------------ geometry
    def _views_array(self, views: Views, pixels: np.ndarray) -> np.ndarray:
        """``(B, 6, 4)`` float32: each view's source, intrinsics, rotation and marching plan.

        Per view: the source in index space, ``(fx, fy, cx, cy)``, the rows of
        ``index_from_world[:3, :3] @ world_from_camera[:3, :3]``, and (int32 bits) the marching axis
        and number of cells.

        Args:
            views: The batch.
            pixels: ``(1 or B, P, 2)`` probe pixels ``(u, v)``: the marching plan of view ``b``
                is chosen from its rays through ``pixels[b]`` (or ``pixels[0]``).
        """
        k, t = _numpy(views.intrinsic), _numpy(views.camera_from_world)
        rot_t = np.swapaxes(t[:, :3, :3], 1, 2)                  # world_from_camera rotation
        source = -(rot_t @ t[:, :3, 3:])[..., 0]                # (B, 3) world
        a = self._index_from_world
        lin = a[:3, :3] @ rot_t                                 # (B, 3, 3) camera -> index
        out = np.zeros((views.batch, 6, 4), dtype=np.float32)
        out[:, 0, :3] = source @ a[:3, :3].T + a[:3, 3]
        out[:, 1] = np.stack([k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]], axis=1)
        out[:, 2:5, :3] = lin
        uv = np.broadcast_to(pixels, (views.batch, *pixels.shape[1:]))
        c = np.stack([(uv[..., 0] - k[:, None, 0, 2]) / k[:, None, 0, 0],
                      (uv[..., 1] - k[:, None, 1, 2]) / k[:, None, 1, 1],
                      np.ones(uv.shape[:2])], axis=-1)                     # (B, P, 3) camera
        d = (c / np.linalg.norm(c, axis=-1, keepdims=True)) @ np.swapaxes(lin, 1, 2)
        planes = np.zeros((views.batch, 4), dtype=np.int32)
        planes[:, :2] = _marching_plans(d, self.shape, self.step_mm)
        out[:, 5] = planes.view(np.float32)
        return out

    def _exact_filter(self, fmt: str) -> bool:
        """Whether kernels reading ``fmt`` texels interpolate them in float themselves."""
        if self.filtering == "auto":
            from regkit.render.gl.context import texture_filtering_is_exact

            return not texture_filtering_is_exact(fmt)
        return self.filtering == "exact"

    def _block_uniforms(self, block: Block) -> dict[str, Any]:
        """The uniforms through which the marching kernels read ``block``."""
        return {"n_bricks": block.n_bricks,
                "tex_origin": tuple(float(x) for x in block.origin),
                "tex_scale": tuple(1.0 / s for s in block.size),
                "tex_size": block.size,
                "vol_shape": self.shape,
                "support_lo": tuple(float(x) for x in block.support_lo),
                "support_hi": tuple(float(x) for x in block.support_hi),
                "value_scale": block.value_scale}

    # ------------------------------------------------------------------ DRR
    def _drr(self, views: Views, *, roi: tuple[int, int, int, int] | None,
             pixels: torch.Tensor | None, bones: tuple[int, ...] | None) -> torch.Tensor:
        """Line integrals of μ along each pixel's ray (see :meth:`Renderer.drr`).

        A float32 CPU tensor, one row per view.
        """
        from regkit.render.gl.context import program
        from regkit.render.gl.shaders import drr_source

        batch = views.batch
        probe = _border_pixels(views.width, views.height)
        if pixels is not None:
            pix = np.ascontiguousarray(_numpy(pixels), dtype=np.float32)
            probe = np.concatenate([np.repeat(probe, pix.shape[0], axis=0), pix], axis=1)
            grid = (0, 0, 0, 0)
            n_per_view = pix.shape[1]
        else:
            assert roi is not None
            grid = roi
            n_per_view = grid[2] * grid[3]
        view_data = self._views_array(views, probe)
        result = torch.zeros((batch, n_per_view), dtype=torch.float32)
        with self._session() as ctx:
            if bones is None:
                block = self._mu_block
                brick = 0  # a CT has little empty space: one loop is faster than skipping
            else:
                block = self._textures.bone_mu(ctx, self._textures.bone_set(bones))
                brick = CROP_BRICK
            if n_per_view == 0:
                return result
            prog = program(drr_source(pixel_list=pixels is not None, brick=brick,
                                      exact_filter=self._exact_filter(block.texel_format)))
            inputs = {"views": (1, view_data)}
            uniforms = self._block_uniforms(block)
            if pixels is not None:
                inputs["pixels"] = (2, pix)
                uniforms["n_pixels"] = n_per_view
                uniforms["pixel_view_stride"] = n_per_view if pix.shape[0] > 1 else 0
            else:
                uniforms["roi"] = grid
            dispatch(ctx, prog, self._scratch, even_chunks(batch, 4 * n_per_view, self._ssbo_limit),
                     lambda b0, b1: _groups(pixels is not None, grid, n_per_view, b1 - b0),
                     outputs={"out": (0, result.numpy())}, inputs=inputs,
                     textures=(block.texture, block.bricks), uniforms=uniforms,
                     offset="view_offset")
        return result

    # ------------------------------------------------------------------ depth
    def _depth(self, views: Views, bones: tuple[int, ...], layers: int) -> DepthMaps:
        """Ray-marched front and back crossings of the surface of the union of ``bones``.

        ``front``/``back`` float32 ``(B, layers, H, W)`` mm from the source (NaN where there is no
        such layer), ``layers`` uint8 ``(B, H, W)``.
        """
        from regkit.render.gl.context import program
        from regkit.render.gl.shaders import depth_source

        n_layers = layers
        batch = views.batch
        h, w = views.height, views.width
        grid = (0, 0, w, h)
        view_data = self._views_array(views, _border_pixels(w, h))
        rays = h * w
        front = torch.empty((batch, n_layers, h, w), dtype=torch.float32)
        back = torch.empty((batch, n_layers, h, w), dtype=torch.float32)
        count = np.zeros((batch, h, w), dtype=np.uint32)
        with self._session() as ctx:
            block = self._textures.mask(ctx, self._textures.bone_set(bones))
            prog = program(depth_source(brick=CROP_BRICK,
                                        exact_filter=self._exact_filter(block.texel_format)))
            outputs = {"front": (0, front.numpy().reshape(batch, -1)),
                       "back": (3, back.numpy().reshape(batch, -1)),
                       "count": (4, count.reshape(batch, -1))}
            dispatch(ctx, prog, self._scratch,
                     even_chunks(batch, 4 * rays * (2 * n_layers + 1), self._ssbo_limit),
                     lambda b0, b1: _groups(False, grid, rays, b1 - b0), outputs=outputs,
                     inputs={"views": (1, view_data)}, textures=(block.texture, block.bricks),
                     uniforms={**self._block_uniforms(block), "roi": grid, "n_layers": n_layers,
                               "n_slots": rays},
                     offset="view_offset")
        layers_t = torch.from_numpy(np.minimum(count, 255).astype(np.uint8))
        return DepthMaps(front=front, back=back, layers=layers_t)

    def depth_per_bone(self, views: Views, bones: Sequence[int], *,
                       layers: int = 2) -> list[DepthMaps]:
        """One :class:`DepthMaps` per bone, in the order given, all in one dispatch.

        Each bone's maps are those of ``depth(views, [b], layers=layers)`` (its own surface, on
        the same sampling lattice, up to float32 rounding in the texture coordinates): the bones'
        own mask crops are packed into one atlas texture, and each bone is marched only on the
        detector window its crop projects into (every ray outside it misses that bone, so the
        window changes no result). For many small bones on a large detector this costs a small
        fraction of a loop over :meth:`depth`.

        Returns:
            A list of :class:`DepthMaps` (``front``/``back`` float32 ``(B, layers, H, W)``,
            ``layers`` uint8 ``(B, H, W)``), one per entry of ``bones``; a repeated bone gets
            its own copy.

        Raises:
            InputError: a bad ``layers``, no label map, a bad label or one that does not occur.
        """
        wanted = bone_list(bones)
        if not wanted:
            return super().depth_per_bone(views, wanted, layers=layers)
        stack = self.depth_stack(views, wanted, layers=layers)  # a row per entry, repeats too
        return [DepthMaps(front=stack.front[:, i], back=stack.back[:, i],
                          layers=stack.layers[:, i]) for i in range(len(wanted))]

    def _depth_stack(self, views: Views, bones: tuple[int, ...], layers: int) -> DepthMaps:
        """Each bone's own maps on a bone axis (see :meth:`depth_per_bone` for how).

        Written straight into ``front``/``back`` ``(B, NB, L, H, W)`` and ``layers``
        ``(B, NB, H, W)``, one row per bone of ``bones`` (distinct, sorted).
        """
        from regkit.render.gl.context import program
        from regkit.render.gl.shaders import depth_atlas_source

        n_layers = layers
        batch = views.batch
        h, w = views.height, views.width
        view_data = self._views_array(views, _border_pixels(w, h))
        intrinsic = _numpy(views.intrinsic)
        camera_from_world = _numpy(views.camera_from_world)
        front = np.full((batch, len(bones), n_layers, h, w), _NAN, dtype=np.float32)
        back = np.full_like(front, _NAN)
        count = np.zeros((batch, len(bones), h, w), dtype=np.uint8)
        rows = {b: i for i, b in enumerate(bones)}
        bytes_per_ray = 4 * (2 * n_layers + 1)
        max_rays = max(1, min(self._ssbo_limit // bytes_per_ray, 1 << 24))
        with self._session() as ctx:
            atlases = atlas_set(ctx, self._textures, self._atlases, bones, self._tex_limit)
            self._scratch.upload(ctx, "views", view_data).bind_to_storage_buffer(1)
            for atlas in atlases:
                prog = program(depth_atlas_source(
                    brick=CROP_BRICK, exact_filter=self._exact_filter(atlas.block.texel_format)))
                windows = bone_windows(intrinsic, camera_from_world, w, h,
                                       self.volume.world_from_index, atlas.lo, atlas.hi)
                self._depth_windows(ctx, prog, atlas, windows, n_layers, max_rays, rows,
                                    (front, back, count))
        return DepthMaps(front=torch.from_numpy(front), back=torch.from_numpy(back),
                         layers=torch.from_numpy(count))

    def _depth_windows(self, ctx: Any, prog: Any, atlas: Atlas, windows: np.ndarray,
                       n_layers: int, max_rays: int, rows: dict[int, int],
                       maps: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """March the bones of ``atlas`` on their windows and write each bone's maps into ``maps``.

        The windows are ``(B, N, 4)`` (see :func:`~regkit.render.gl._atlas.bone_windows`), marched
        with at most ``max_rays`` rays per dispatch; bone ``b``'s maps go into entry ``rows[b]``
        of ``maps`` (front, back, count).
        """
        view_i, bone_i = np.nonzero((windows[..., 2] > 0) & (windows[..., 3] > 0))
        if view_i.size == 0:
            return
        boxes = windows[view_i, bone_i]                                     # (n, 4)
        sizes = boxes[:, 2] * boxes[:, 3]
        firsts = np.cumsum(sizes) - sizes           # each window's first ray, over the atlas
        front, back, count = maps

        def rays_in(start: int, stop: int) -> int:
            return int(firsts[stop - 1] + sizes[stop - 1] - firsts[start])

        def prepare(start: int, stop: int) -> None:
            table = np.zeros((stop - start, 2, 4), dtype=np.int32)
            table[:, 0] = boxes[start:stop]
            table[:, 1, 0] = view_i[start:stop]
            table[:, 1, 1] = bone_i[start:stop]
            table[:, 1, 2] = firsts[start:stop] - firsts[start]
            self._scratch.upload(ctx, "windows", table).bind_to_storage_buffer(2)
            _set(prog, "n_windows", stop - start)
            _set(prog, "n_rays", rays_in(start, stop))

        def layered(start: int, stop: int) -> np.ndarray:
            return np.empty((n_layers, rays_in(start, stop)), dtype=np.float32)

        def counts(start: int, stop: int) -> np.ndarray:
            return np.empty(rays_in(start, stop), dtype=np.uint32)

        def scatter(start: int, stop: int, out: list[np.ndarray]) -> None:
            f_out, b_out, c_out = out
            for n in range(start, stop):
                u0, v0, ww, hh = (int(x) for x in boxes[n])
                b_view, bone = int(view_i[n]), atlas.bones[int(bone_i[n])]
                a = int(firsts[n] - firsts[start])
                z, k = a + ww * hh, rows[bone]
                front[b_view, k, :, v0:v0 + hh, u0:u0 + ww] = \
                    f_out[:, a:z].reshape(n_layers, hh, ww)
                back[b_view, k, :, v0:v0 + hh, u0:u0 + ww] = \
                    b_out[:, a:z].reshape(n_layers, hh, ww)
                count[b_view, k, v0:v0 + hh, u0:u0 + ww] = \
                    np.minimum(c_out[a:z], 255).reshape(hh, ww)

        block = atlas.block
        dispatch(ctx, prog, self._scratch, packed_chunks(sizes, max_rays),
                 lambda start, stop: _groups(True, (0, 0, 0, 0), rays_in(start, stop), 1),
                 outputs={"front": (0, layered), "back": (3, layered), "count": (4, counts)},
                 inputs={"boxes": (5, atlas.boxes)}, textures=(block.texture, block.bricks),
                 uniforms={**self._block_uniforms(block), "n_layers": n_layers},
                 prepare=prepare, finish=scatter)

    # ------------------------------------------------------------------ bone index
    def _bone_index(self, views: Views, bones: tuple[int, ...]) -> torch.Tensor:
        """``(B, H, W)`` int32: the first bone each ray enters, 0 where it enters none.

        The bone that dominates each ray's first entry into the union of ``bones``.
        """
        from regkit.render.gl.context import program
        from regkit.render.gl.shaders import bone_index_source

        batch = views.batch
        h, w = views.height, views.width
        grid = (0, 0, w, h)
        view_data = self._views_array(views, _border_pixels(w, h))
        result = torch.zeros((batch, h, w), dtype=torch.int32)
        with self._session() as ctx:
            entry = self._textures.bone_set(bones)
            block = self._textures.mask(ctx, entry)
            labels = self._textures.label_texture(ctx, entry)
            prog = program(bone_index_source(
                brick=CROP_BRICK, exact_filter=self._exact_filter(block.texel_format)))
            dispatch(ctx, prog, self._scratch, even_chunks(batch, 4 * h * w, self._ssbo_limit),
                     lambda b0, b1: _groups(False, grid, h * w, b1 - b0),
                     outputs={"out": (0, result.numpy().reshape(batch, -1))},
                     inputs={"views": (1, view_data)},
                     textures=(block.texture, block.bricks, labels),
                     uniforms={**self._block_uniforms(block), "roi": grid},
                     offset="view_offset")
        return result

    # ------------------------------------------------------------------ resampling
    def _resample(self, shape: tuple[int, int, int], fixed_world_from_index: torch.Tensor,
                  fixed_from_moving: torch.Tensor, fill: float) -> Resampled:
        """Warp the bound volume onto a fixed grid under B transforms, trilinearly.

        Values as stored (HU stays HU) in the renderer's dtype, computed in float32; mask bool.
        """
        from regkit.render.gl.context import program
        from regkit.render.gl.shaders import resample_source

        fixed = _numpy(fixed_world_from_index)
        maps = _numpy(fixed_from_moving)
        index_maps = self._index_from_world @ np.linalg.inv(maps) @ fixed  # (B, 4, 4)
        rows = np.ascontiguousarray(index_maps[:, :3, :], dtype=np.float32).reshape(-1, 4)
        batch = maps.shape[0]
        n_i, n_j, n_k = shape
        row_len = (n_k + 3) // 4 * 4
        per_slab = n_j * row_len  # one i-slab of one transform
        if 4 * per_slab > self._ssbo_limit or n_j > 8 * 65535 or row_len > 32 * 65535:
            raise InputError(f"a slab of the fixed grid {shape} exceeds what one OpenGL dispatch "
                             f"can write ({self._ssbo_limit} bytes)", key="fixed_shape")
        values = torch.empty((batch, n_i, n_j, row_len), dtype=torch.float32)
        inside = torch.empty((batch, n_i, n_j, row_len), dtype=torch.bool)
        v_np = values.numpy().reshape(batch * n_i, per_slab)
        m_np = inside.numpy().view(np.uint8).reshape(batch * n_i, per_slab)
        with self._session() as ctx:
            block = self._textures.data(ctx)
            prog = program(resample_source(exact_filter=self._exact_filter(block.texel_format)))
            dispatch(ctx, prog, self._scratch,
                     even_chunks(batch * n_i, 4 * per_slab, self._ssbo_limit),
                     lambda g0, g1: (math.ceil(row_len // 4 / 8), math.ceil(n_j / 8), g1 - g0),
                     outputs={"values": (0, v_np), "inside": (3, m_np)},
                     inputs={"maps": (1, rows)}, textures=(block.texture,),
                     uniforms={"grid": shape, "row_len": row_len,
                               "upper": tuple(float(n - 1) for n in self.shape),
                               "tolerance": _RESAMPLE_TOLERANCE, "fill": fill,
                               "tex_origin": tuple(float(x) for x in block.origin),
                               "tex_scale": tuple(1.0 / s for s in block.size)},
                     offset="slab_offset")
        if row_len != n_k:
            values = values[..., :n_k].contiguous()
            inside = inside[..., :n_k].contiguous()
        if self.dtype != torch.float32:
            values = values.to(self.dtype)
        return Resampled(values=values, mask=inside)


# ---------------------------------------------------------------------------------- helpers


def _release_objects(objects: list[Any]) -> None:
    """Finalizer: release a renderer's GL objects (from close(), garbage collection or exit)."""
    from regkit.render.gl.context import release_later

    live = list(objects)
    objects.clear()
    release_later(live)


def _marching_plans(d: np.ndarray, shape: tuple[int, int, int], step_mm: float) -> np.ndarray:
    """``(B, 2)`` int: the marching axis and number of cells of each view.

    The rule is part of the sampling model the two backends share: both call
    :func:`regkit.render.sampling.choose_axes`, so they always sample the same points.

    Args:
        d: ``(B, P, 3)`` directions (voxels per mm) of each view's probe rays.
        shape: Volume shape ``(I, J, K)``.
        step_mm: Largest step along a ray, mm.
    """
    from regkit.render.sampling import choose_axes

    return np.asarray(choose_axes(d, shape, step_mm),
                      dtype=np.int32).reshape(-1, 2)


def _numpy(x: torch.Tensor) -> np.ndarray:
    """A checked float64 tensor as a numpy array (the GL kernels take no gradients)."""
    return x.detach().cpu().numpy()
