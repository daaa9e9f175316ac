"""The OpenGL renderer: DRRs, depth maps and resampling in GLSL compute shaders (moderngl, EGL).

Importing this module registers the backend as ``"gl"`` and imports nothing heavy: moderngl is
loaded, and the process's EGL context created, when the first :class:`GLRenderer` is built.

Sampling model: the one of :mod:`regkit.render.torch_backend`, point for point, so that the two
backends sample the same positions and differ only by float32 rounding (DRRs agree to about 1e-5
relative, depths to about 1e-3 mm on the chest CT):

* μ (HU converted with ``mu_water`` as the conventions say; ``"mu"`` and ``"other"`` as given)
  is uploaded once as a 3-D texture with a margin of zero voxels and ``GL_LINEAR`` filtering:
  trilinear interpolation with zero padding (the margin does what ``CLAMP_TO_BORDER`` with
  border 0 would). By default the texels are 16-bit fixed point over [0, max μ] (R16, see
  *Precision*); ``texture_format="float32"`` keeps R32F. Rays are clipped to the voxel-edge
  box ``[-1/2, n - 1/2]`` and to ``t >= 0``.
* **DRR**: each view marches across the planes perpendicular to one index axis, cutting the
  volume's extent along it into equal cells, few enough but none longer than ``step_mm`` along
  any ray (axis and count chosen per view on the host by the PyTorch backend's own function,
  from the rays through the detector's border and any listed pixels); the midpoint rule on the
  cells, the two end cells weighted by their part inside the box. ``bones=[...]`` renders
  μ · 1[label ∈ bones] (the mask applied before interpolation) from a texture cropped to those
  bones.
* **Depth maps come from ray marching, not rasterised depth peeling.** The bone surface of the
  conventions is the 0.5 level set of the trilinearly interpolated binary mask; no triangle mesh
  carries it, and marching it directly gives that very surface where a marching-cubes mesh would
  add its own error. The union mask of the chosen bones (an R16F texture cropped to their
  bounding box, built once per bone set and cached) is sampled by the texture unit on the same
  lattice; each change of side between two samples is refined by 12 bisections and 6 Illinois
  (modified regula falsi) steps on the exact trilinear field, computed in float from the eight
  texels (``texelFetch``), to about 1e-4 mm (float32's resolution a metre from the source).
  Outside the box counts as outside. Crossings thinner than a cell can be missed, as in the
  PyTorch backend. Layers are kept in order of distance.
* **depth_per_bone** packs the chosen bones' own masks into one atlas texture (each crop with
  its zero margin, 2 zero texels apart) and marches every bone, in one dispatch, only on the
  detector window its crop projects into; each bone's maps are those :meth:`depth` gives for
  it alone, on the same lattice (the texture coordinates differ by the atlas offset, so values
  agree to float32 rounding: about 1e-3 mm at a metre). 29 hand bones at 256²: about 60 ms,
  against 1.2 s for a loop over :meth:`depth`.
* **bone_index**: of the chosen bones, the one whose own trilinear mask is largest 1e-4 mm past
  the first entry into the union (ties to the smaller label), from a cropped R8UI/R16UI texture
  of the chosen labels.
* **resample** interpolates the volume's values as stored (HU stays HU) trilinearly at
  ``moving_index_from_fixed_index · (i, j, k)``; the mask is True inside the moving voxel-centre
  box ``[0, n - 1]`` with a slack of 1e-3 voxel (the coordinate clamped to the box there).
* Empty space in bone crops is skipped exactly: an occupancy grid of bricks of 8³ cells lets
  rays step over bricks whose field is 0 everywhere. The full volume is marched without it: a
  CT has little space at exactly μ = 0, and on llvmpipe lanes that leave bricks at different
  samples cost more than the skipping saves.

Precision:
    Texture units do not interpolate exactly everywhere: many GPUs use 8-bit fixed-point
    fractional weights (steps of 1/256 voxel), and Mesa's llvmpipe does so for 8-bit formats,
    while it interpolates float formats (R16F, R32F, used here) in float. DRRs and resampling
    use the texture unit: with 8-bit weights a sample moves by at most 1/512 voxel, far below the
    conformance tolerances. Depths hardly depend on it: crossings are refined on the exact field;
    only where 8-bit weights put a sample within about 0.006 of 0.5 on the wrong side can a
    sliver thinner than a cell be found or missed, or a crossing fall back to the line through
    the two exact values. Geometry is set up in float64 on the host and traced in float32.

    μ in R16 fixed point (the default ``texture_format="unorm16"``): each texel is μ rounded to
    the nearest multiple of max μ / 65535, an error of at most max μ / 131070 per voxel (3.4e-7
    /mm for bone at 3000 HU), unbiased, so that a DRR through hundreds of voxels moves by about
    1e-6 relative (measured on the chest CT: at most 2.6e-6 of the image's maximum, median 8e-7
    relative). llvmpipe filters 16-bit texels 1.5–3× faster than 32-bit ones (measured on 2
    cores: a 256² DRR of the 512 × 512 × 133 CT, 0.46 s of CPU time with R32F and 0.30 s with
    R16 under load; a bare texture-fetch loop 460 ms against 150 ms), so DRRs use it. Masks stay
    R16F (0 and 1 exactly), resampling R32F (values as stored, HU included).

Speed (Mesa llvmpipe on 2 CPU cores, the 512 × 512 × 133 chest CT, AP views from 850 mm at
f = 1275 px for 256², step_mm = 0.75, i.e. one sample per voxel): texture sampling bounds it, at
about 100 M trilinear samples per CPU-second. CPU time per call (wall time on an idle machine is
about half, both cores working): 256² DRR 0.28-0.33 s; 64 views of 128² 6.5 s; 256² depth maps
of one bone 35-40 ms (the union of all 49 bones, 4 layers, 0.2 s); 256² bone_index of 49 bones
0.09 s; resampling a 128³ grid under 64 transforms 2.4 s. Building a renderer takes about 1 s
(HU to μ and the upload); a bone set's crops are built on first use.
"""

from __future__ import annotations

import math
import numbers
import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from regkit.errors import (
    BackendUnavailableError,
    FrameError,
    InputError,
    RegkitError,
    ShapeError,
)
from regkit.render.base import (
    DepthMaps,
    Renderer,
    Resampled,
    Views,
    check_roi,
    default_step_mm,
    renderers,
)
from regkit.render.base import bone_key as _bone_key

__all__ = ["GLRenderer"]

_CROP_BRICK = 8          # occupancy brick of bone crops, cells per axis
_MAX_BONE_SETS = 4       # bone sets whose crops are kept (least recently used dropped)
_ATLAS_GAP = 2           # zero texels between two bones' crops in a depth atlas
_RESAMPLE_TOLERANCE = 1e-3  # slack of the voxel-centre box in resampling, voxels
_TEXTURE_FORMATS = ("unorm16", "float32")
_RIGID_ATOL = 1e-4       # tolerance on camera_from_world's rotation being orthonormal
_NAN = float("nan")


def _not_differentiable() -> InputError:
    return InputError("the OpenGL backend is not differentiable; use backend='torch'",
                      key="requires_grad")


@dataclass
class _Block:
    """A 3-D texture holding a block of voxels, with its occupancy grid and support box.

    Attributes:
        texture: The value (or mask) texture; texel ``t`` is voxel ``origin + t``.
        bricks: R8UI occupancy texture, one texel per brick (None where not needed).
        n_bricks: Brick counts ``(i, j, k)``.
        origin: Volume index of texel (0, 0, 0).
        size: Texture size ``(i, j, k)``.
        support_lo, support_hi: Index-space box outside which the block's field is 0.
        value_scale: A texel ``t`` read by the sampler means the value ``value_scale · t`` (1
            for float textures; see :func:`_encode_unorm16`).
    """

    texture: Any
    bricks: Any
    n_bricks: tuple[int, int, int]
    origin: np.ndarray
    size: tuple[int, int, int]
    support_lo: np.ndarray
    support_hi: np.ndarray
    value_scale: float = 1.0

    def release(self) -> list[Any]:
        objs = [self.texture, self.bricks]
        self.texture = self.bricks = None
        return objs


@dataclass
class _BoneSet:
    """The crops of one set of bones: union mask, labels (bone_index), masked μ (DRRs)."""

    bones: tuple[int, ...]
    lo: np.ndarray      # first voxel index of the bones' bounding box
    hi: np.ndarray      # one past the last
    mask: _Block | None = None
    labels: Any = None
    mu: _Block | None = None

    def release(self) -> list[Any]:
        objs: list[Any] = []
        for block in (self.mask, self.mu):
            if block is not None:
                objs += block.release()
        objs.append(self.labels)
        self.mask = self.mu = self.labels = None
        return objs


@dataclass
class _Atlas:
    """Several bones' own masks packed into one texture, for :meth:`GLRenderer.depth_per_bone`.

    Attributes:
        bones: The labels, in the order of ``boxes``.
        block: The atlas texture and its occupancy grid (``origin`` and support unused).
        boxes: ``(N, 3, 4)`` float32 per bone: the volume index of the atlas's texel (0, 0, 0)
            for that bone, and its support box ``lo``, ``hi`` (index space).
        lo, hi: ``(N, 3)`` each bone's voxel bounding box ``[lo, hi)``.
    """

    bones: tuple[int, ...]
    block: _Block
    boxes: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def release(self) -> list[Any]:
        return self.block.release()


@renderers.register("gl")
class GLRenderer(Renderer):
    """DRRs, depth maps, first-bone maps and resampling with OpenGL compute shaders.

    Bound to one volume; every output is a CPU torch tensor: float32 (``resample`` values in the
    renderer's dtype), ``int32`` for :meth:`bone_index`, ``uint8`` layer counts, ``bool`` masks.
    Not differentiable. See the module docstring for the sampling model and its precision.

    Use it as a context manager, or call :meth:`close`, to free its GL textures at once; they are
    freed when it is garbage-collected otherwise.

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
                 texture_format: str = "unorm16"):
        self._closed = True  # until the GL objects exist
        self._gl_objects: list[Any] = []
        if requires_grad:
            raise _not_differentiable()
        if device is not None and str(device) not in ("cpu", "gl"):
            raise InputError(f"the OpenGL backend returns CPU tensors; device must be None, "
                             f"'cpu' or 'gl', got {device!r}", key="device")
        if dtype not in (None, torch.float32, torch.float64):
            raise InputError(f"must be None, torch.float32 or torch.float64, got {dtype!r}",
                             key="dtype")
        if texture_format not in _TEXTURE_FORMATS:
            raise InputError(f"must be one of {', '.join(_TEXTURE_FORMATS)}, got "
                             f"{texture_format!r}", key="texture_format")
        self.texture_format = texture_format
        from regkit.volume import Volume, hu_to_mu

        if not isinstance(volume, Volume):
            raise InputError(f"expected a regkit Volume, got {type(volume).__name__}",
                             key="volume")
        if step_mm is None:
            step = default_step_mm(volume.spacing)
        elif isinstance(step_mm, bool) or not isinstance(step_mm, numbers.Real) \
                or not (math.isfinite(float(step_mm)) and float(step_mm) > 0):
            raise InputError(f"must be a positive number of mm, got {step_mm!r}", key="step_mm")
        else:
            step = float(step_mm)
        self.volume = volume
        self.shape: tuple[int, int, int] = volume.shape
        self.step_mm = step
        self.mu_water = float(mu_water)
        self.dtype = torch.float32 if dtype is None else dtype
        self._index_from_world = np.linalg.inv(np.asarray(volume.world_from_index, np.float64))
        self._labels: np.ndarray | None = None if volume.labels is None \
            else np.asarray(volume.labels)
        self._label_boxes: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
        self._bone_sets: OrderedDict[tuple[int, ...], _BoneSet] = OrderedDict()
        self._atlases: OrderedDict[tuple[int, ...], list[_Atlas]] = OrderedDict()
        self._scratch: dict[str, Any] = {}
        self._data_block: _Block | None = None
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
            mu = hu_to_mu(volume.data, self.mu_water) if volume.units == "HU" \
                else np.asarray(volume.data, dtype=np.float32)
            n = np.asarray(self.shape, dtype=np.float64)
            self._mu_block = self._upload_block(
                ctx, _padded(mu), origin=np.full(3, -1.0), brick=0,
                support_lo=np.full(3, -0.5), support_hi=n - 0.5, encode=True)
        self._closed = False

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        """Release every GL object of this renderer (idempotent); later calls raise."""
        if self._closed:
            return
        self._closed = True
        self._bone_sets.clear()
        self._atlases.clear()
        self._scratch.clear()
        self._data_block = None
        self._finalizer()

    def __enter__(self) -> GLRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step_mm={self.step_mm:g}"
        return f"GLRenderer(shape={self.shape}, {state})"

    @contextmanager
    def _session(self) -> Iterator[Any]:
        from regkit.render.gl.context import gl_session

        if self._closed:
            raise RegkitError("this GLRenderer has been closed")
        if os.getpid() != self._pid:
            raise RegkitError("this GLRenderer was built in another process (its textures live "
                              "in that process's OpenGL context); build a new one here")
        with gl_session() as ctx:
            yield ctx

    # ------------------------------------------------------------------ GL objects
    def _own(self, obj: Any) -> Any:
        self._gl_objects.append(obj)
        return obj

    def _drop(self, objs: list[Any]) -> None:
        """Release objects this renderer owns (inside a session)."""
        for obj in objs:
            if obj is None:
                continue
            self._gl_objects[:] = [o for o in self._gl_objects if o is not obj]
            obj.release()

    def _upload_block(self, ctx: Any, values: np.ndarray, *, origin: np.ndarray, brick: int,
                      support_lo: np.ndarray, support_hi: np.ndarray,
                      encode: bool = False) -> _Block:
        """Upload ``values`` (a zero-margined block, (i, j, k) C order) and, unless ``brick`` is
        0, its occupancy grid.

        float16 values (0/1 masks) go up as R16F. Other values go up as R32F, or, with
        ``encode`` and the renderer's ``texture_format="unorm16"``, as 16-bit fixed point over
        their range (:func:`_encode_unorm16`; a block with negative values stays R32F).
        """
        import moderngl

        size = values.shape
        scale = 1.0
        if values.dtype == np.float16:
            data, fmt = np.ascontiguousarray(values), "f2"
        else:
            encoded = _encode_unorm16(values) if encode and self.texture_format == "unorm16" \
                else None
            if encoded is None:
                data, fmt = np.ascontiguousarray(values, dtype=np.float32), "f4"
            else:
                (data, scale), fmt = encoded, "nu2"
        tex = self._own(ctx.texture3d((size[2], size[1], size[0]), 1, data, dtype=fmt))
        tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
        tex.repeat_x = tex.repeat_y = tex.repeat_z = False
        bricks, n_bricks = None, (0, 0, 0)
        if brick:
            occ = _occupancy(values != 0, brick)
            if values.dtype == np.float16:  # a 0/1 mask: mark the bricks that are all 1 as 2
                occ += _occupancy(values == 1, brick, every=True)
            bricks = self._own(ctx.texture3d((occ.shape[2], occ.shape[1], occ.shape[0]), 1, occ,
                                             dtype="u1"))
            bricks.filter = (moderngl.NEAREST, moderngl.NEAREST)
            n_bricks = (int(occ.shape[0]), int(occ.shape[1]), int(occ.shape[2]))
        return _Block(tex, bricks, n_bricks, np.asarray(origin, np.float64),
                      (int(size[0]), int(size[1]), int(size[2])),
                      np.asarray(support_lo, np.float64), np.asarray(support_hi, np.float64),
                      value_scale=scale)

    def _buffer(self, ctx: Any, name: str, nbytes: int) -> Any:
        """A scratch buffer of at least ``nbytes``, kept for later calls."""
        buf = self._scratch.get(name)
        if buf is None or buf.size < nbytes:
            self._drop([buf])
            buf = self._own(ctx.buffer(reserve=max(nbytes, 16)))
            self._scratch[name] = buf
        return buf

    def _upload(self, ctx: Any, name: str, array: np.ndarray) -> Any:
        data = np.ascontiguousarray(array)
        buf = self._buffer(ctx, name, data.nbytes)
        buf.write(data)
        return buf

    # ------------------------------------------------------------------ geometry
    def _views_array(self, views: Views, pixels: np.ndarray) -> np.ndarray:
        """``(B, 6, 4)`` float32 per view: the source in index space, ``(fx, fy, cx, cy)``, the
        rows of ``index_from_world[:3, :3] @ world_from_camera[:3, :3]``, and (int32 bits) the
        marching axis and number of cells.

        Args:
            views: The batch.
            pixels: ``(1 or B, P, 2)`` probe pixels ``(u, v)``: the marching plan of view ``b``
                is chosen from its rays through ``pixels[b]`` (or ``pixels[0]``).
        """
        if not isinstance(views, Views):
            raise InputError(f"expected regkit.render.Views, got {type(views).__name__}",
                             key="views")
        k = _as_float64(views.intrinsic, "intrinsic")
        t = _as_float64(views.camera_from_world, "camera_from_world")
        if np.any(k[:, 0, 0] <= 0) or np.any(k[:, 1, 1] <= 0):
            raise InputError("focal lengths must be positive", key="intrinsic")
        rot = t[:, :3, :3]
        gram = np.swapaxes(rot, 1, 2) @ rot - np.eye(3)
        if np.abs(gram).max() > _RIGID_ATOL or np.abs(np.linalg.det(rot) - 1.0).max() > _RIGID_ATOL:
            raise FrameError("camera_from_world must be rigid (orthonormal rotation, det +1)")
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

    def _bind_common(self, ctx: Any, prog: Any, block: _Block, views: np.ndarray) -> None:
        self._upload(ctx, "views", views).bind_to_storage_buffer(1)
        block.texture.use(location=0)
        if block.bricks is not None:
            block.bricks.use(location=1)
        _set(prog, "n_bricks", block.n_bricks)
        _set(prog, "tex_origin", tuple(float(x) for x in block.origin))
        _set(prog, "tex_scale", tuple(1.0 / s for s in block.size))
        _set(prog, "tex_size", block.size)
        _set(prog, "vol_shape", self.shape)
        _set(prog, "support_lo", tuple(float(x) for x in block.support_lo))
        _set(prog, "support_hi", tuple(float(x) for x in block.support_hi))
        _set(prog, "value_scale", block.value_scale)

    def _view_chunks(self, batch: int, bytes_per_view: int) -> Iterator[tuple[int, int]]:
        """View ranges whose outputs fit one storage buffer binding (and one dispatch)."""
        per = max(1, min(batch, 65535, self._ssbo_limit // max(bytes_per_view, 1)))
        for start in range(0, batch, per):
            yield start, min(batch, start + per)

    # ------------------------------------------------------------------ bones
    def _boxes(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Bounding box ``[lo, hi)`` of every positive label present (computed once)."""
        if self._label_boxes is None:
            assert self._labels is not None
            labels = self._labels
            boxes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            if labels.size and int(labels.min()) >= 0 and int(labels.max()) < (1 << 20):
                from scipy import ndimage

                for index, sl in enumerate(ndimage.find_objects(labels)):
                    if sl is not None:
                        boxes[index + 1] = (np.array([s.start for s in sl]),
                                            np.array([s.stop for s in sl]))
            else:
                for value in np.unique(labels):
                    if value > 0:
                        where = np.nonzero(labels == value)
                        boxes[int(value)] = (np.array([w.min() for w in where]),
                                             np.array([w.max() + 1 for w in where]))
            self._label_boxes = boxes
        return self._label_boxes

    def _check_labels(self, bones: tuple[int, ...]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The label boxes, once the volume is known to have a label map holding ``bones``
        (cached bone sets and atlases exist only when it does).

        Raises:
            InputError: no label map, or a label that does not occur.
        """
        if self._labels is None:
            raise InputError("the volume has no label map, so bones cannot be selected",
                             key="bones")
        known = self._boxes()
        missing = [b for b in bones if b not in known]
        if missing:
            shown = sorted(known)
            listing = ", ".join(str(v) for v in shown[:20]) + (" ..." if len(shown) > 20 else "")
            raise InputError(f"label(s) {missing} do not occur in the label map (labels present: "
                             f"{listing or 'none'})", key="bones")
        return known

    def _bone_set(self, bones: Any) -> _BoneSet:
        """The (cached) crops for ``bones``.

        Raises:
            InputError: no label map, a bad label, or a label that does not occur.
        """
        key = _bone_key(bones)
        found = self._bone_sets.get(key)
        if found is not None:
            self._bone_sets.move_to_end(key)
            return found
        known = self._check_labels(key)
        lo = np.min([known[b][0] for b in key], axis=0)
        hi = np.max([known[b][1] for b in key], axis=0)
        entry = _BoneSet(key, lo, hi)
        self._bone_sets[key] = entry
        while len(self._bone_sets) > _MAX_BONE_SETS:
            _, old = self._bone_sets.popitem(last=False)
            self._drop(old.release())
        return entry

    def _crop(self, entry: _BoneSet) -> tuple[np.ndarray, tuple[slice, ...], tuple[slice, ...]]:
        """Which voxels of the bones' box plus a one-voxel margin carry a chosen label.

        Returns:
            ``keep`` (bool, the box plus margin, False outside the volume), and the slices of the
            volume and of ``keep`` that overlap.
        """
        assert self._labels is not None
        size = tuple(int(s) for s in entry.hi - entry.lo + 2)
        src, dst = self._margin_slices(entry.lo, entry.hi)
        keep = np.zeros(size, dtype=bool)
        keep[dst] = np.isin(self._labels[src], entry.bones)
        return keep, src, dst

    def _margin_slices(self, lo: np.ndarray, hi: np.ndarray
                       ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """The box ``[lo, hi)`` plus a one-voxel margin: the slices of the volume it covers
        and where they land in a block of that box (``hi - lo + 2`` per axis)."""
        src, dst = [], []
        for axis in range(3):
            a = int(lo[axis]) - 1
            b = int(hi[axis]) + 1
            a_in, b_in = max(a, 0), min(b, self.shape[axis])
            src.append(slice(a_in, b_in))
            dst.append(slice(a_in - a, b_in - a))
        return tuple(src), tuple(dst)

    def _support(self, entry: _BoneSet) -> dict[str, Any]:
        return {"origin": entry.lo - 1.0, "support_lo": entry.lo - 1.0,
                "support_hi": entry.hi.astype(np.float64)}

    def _mask_block(self, ctx: Any, entry: _BoneSet) -> _Block:
        if entry.mask is None:
            keep, _, _ = self._crop(entry)
            entry.mask = self._upload_block(ctx, keep.astype(np.float16), brick=_CROP_BRICK,
                                            **self._support(entry))
        return entry.mask

    def _label_texture(self, ctx: Any, entry: _BoneSet) -> Any:
        if entry.labels is None:
            import moderngl

            assert self._labels is not None
            keep, src, dst = self._crop(entry)
            top = max(entry.bones)
            dtype, code = (np.uint8, "u1") if top < 256 else \
                ((np.uint16, "u2") if top < 65536 else (np.uint32, "u4"))
            labels = np.zeros(keep.shape, dtype=dtype)
            labels[dst] = np.where(keep[dst], self._labels[src], 0)
            n_i, n_j, n_k = keep.shape
            entry.labels = self._own(ctx.texture3d((n_k, n_j, n_i), 1, labels, dtype=code))
            entry.labels.filter = (moderngl.NEAREST, moderngl.NEAREST)
        return entry.labels

    def _bone_mu_block(self, ctx: Any, entry: _BoneSet) -> _Block:
        if entry.mu is None:
            from regkit.volume import hu_to_mu

            keep, src, dst = self._crop(entry)
            data = np.asarray(self.volume.data)[src]
            data = hu_to_mu(data, self.mu_water) if self.volume.units == "HU" \
                else data.astype(np.float32)
            mu = np.zeros(keep.shape, dtype=np.float32)
            mu[dst] = np.where(keep[dst], data, np.float32(0.0))
            entry.mu = self._upload_block(ctx, mu, brick=_CROP_BRICK, encode=True,
                                          **self._support(entry))
        return entry.mu

    # ------------------------------------------------------------------ DRR
    def drr(self, views: Views, *, roi: tuple[int, int, int, int] | None = None,
            pixels: Any = None, bones: Sequence[int] | None = None) -> torch.Tensor:
        """Line integrals of μ along each pixel's ray (see :meth:`Renderer.drr`).

        Returns:
            float32 CPU tensor ``(B, H, W)``, ``(B, h, w)`` for a ``roi`` or ``(B, P)`` for
            ``pixels``; dimensionless.
        """
        from regkit.render.gl.context import program
        from regkit.render.gl.shaders import drr_source

        if roi is not None and pixels is not None:
            raise InputError("give either roi or pixels, not both", key="roi")
        batch = _batch(views)
        probe = _border_pixels(views.width, views.height)
        if pixels is not None:
            pix = _pixel_list(pixels, batch)
            probe = np.concatenate([np.repeat(probe, pix.shape[0], axis=0), pix], axis=1)
            grid = (0, 0, 0, 0)
            n_per_view = pix.shape[1]
            out_shape: tuple[int, ...] = (batch, n_per_view)
        else:
            grid = check_roi(roi, views.width, views.height)
            n_per_view = grid[2] * grid[3]
            out_shape = (batch, grid[3], grid[2])
        view_data = self._views_array(views, probe)
        result = torch.zeros(out_shape, dtype=torch.float32)
        with self._session() as ctx:
            if bones is None:
                block = self._mu_block
                brick = 0  # a CT has little empty space: one loop is faster than skipping
            else:
                block = self._bone_mu_block(ctx, self._bone_set(bones))
                brick = _CROP_BRICK
            if n_per_view == 0:
                return result
            prog = program(drr_source(pixel_list=pixels is not None, brick=brick))
            self._bind_common(ctx, prog, block, view_data)
            if pixels is not None:
                self._upload(ctx, "pixels", pix).bind_to_storage_buffer(2)
                _set(prog, "n_pixels", n_per_view)
                _set(prog, "pixel_view_stride", n_per_view if pix.shape[0] > 1 else 0)
            else:
                _set(prog, "roi", grid)
            flat = result.numpy().reshape(batch, -1)
            for b0, b1 in self._view_chunks(batch, 4 * n_per_view):
                nbytes = 4 * n_per_view * (b1 - b0)
                out = self._buffer(ctx, "out", nbytes)
                out.bind_to_storage_buffer(0)
                _set(prog, "view_offset", b0)
                prog.run(*_groups(pixels is not None, grid, n_per_view, b1 - b0))
                ctx.memory_barrier()
                out.read_into(flat[b0:b1], size=nbytes)
        return result

    # ------------------------------------------------------------------ depth
    def depth(self, views: Views, bones: Sequence[int], *, layers: int = 2) -> DepthMaps:
        """Front and back crossings of the surface of the union of ``bones`` (depth peeling).

        Returns:
            :class:`DepthMaps`: ``front``/``back`` float32 ``(B, layers, H, W)`` mm from the
            source (NaN where there is no such layer), ``layers`` uint8 ``(B, H, W)``.
        """
        from regkit.render.gl.context import program
        from regkit.render.gl.shaders import depth_source

        n_layers = self._check_layers(layers)
        batch = _batch(views)
        h, w = views.height, views.width
        grid = (0, 0, w, h)
        view_data = self._views_array(views, _border_pixels(w, h))
        rays = h * w
        front = torch.empty((batch, n_layers, h, w), dtype=torch.float32)
        back = torch.empty((batch, n_layers, h, w), dtype=torch.float32)
        count = np.zeros((batch, h, w), dtype=np.uint32)
        with self._session() as ctx:
            block = self._mask_block(ctx, self._bone_set(bones))
            prog = program(depth_source(brick=_CROP_BRICK))
            self._bind_common(ctx, prog, block, view_data)
            _set(prog, "roi", grid)
            _set(prog, "n_layers", n_layers)
            _set(prog, "n_slots", rays)
            f_np = front.numpy().reshape(batch, -1)
            b_np = back.numpy().reshape(batch, -1)
            c_np = count.reshape(batch, -1)
            for b0, b1 in self._view_chunks(batch, 4 * rays * (2 * n_layers + 1)):
                nb = b1 - b0
                size_fb = 4 * rays * n_layers * nb
                f_buf = self._buffer(ctx, "front", size_fb)
                b_buf = self._buffer(ctx, "back", size_fb)
                c_buf = self._buffer(ctx, "count", 4 * rays * nb)
                f_buf.bind_to_storage_buffer(0)
                b_buf.bind_to_storage_buffer(3)
                c_buf.bind_to_storage_buffer(4)
                _set(prog, "view_offset", b0)
                prog.run(*_groups(False, grid, rays, nb))
                ctx.memory_barrier()
                f_buf.read_into(f_np[b0:b1], size=size_fb)
                b_buf.read_into(b_np[b0:b1], size=size_fb)
                c_buf.read_into(c_np[b0:b1], size=4 * rays * nb)
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
        wanted = [_bone_key([b])[0] for b in bones]
        if not wanted:
            self._check_layers(layers)
            _batch(views)
            return []
        stack = self.depth_stack(views, wanted, layers=layers)  # a row per entry, repeats too
        return [DepthMaps(front=stack.front[:, i], back=stack.back[:, i],
                          layers=stack.layers[:, i]) for i in range(len(wanted))]

    @staticmethod
    def _check_layers(layers: Any) -> int:
        if isinstance(layers, bool) or not isinstance(layers, numbers.Integral) or layers < 1:
            raise InputError(f"must be a whole number >= 1, got {layers!r}", key="layers")
        return int(layers)

    def depth_stack(self, views: Views, bones: Sequence[int], *, layers: int = 2) -> DepthMaps:
        """Each bone's own maps on a bone axis (see :meth:`depth_per_bone` for how), written
        straight into ``front``/``back`` ``(B, NB, L, H, W)`` and ``layers`` ``(B, NB, H, W)``.

        Raises:
            InputError: a bad ``layers``, no bones, no label map, a bad label or one that does
                not occur.
        """
        from regkit.render.gl.context import program
        from regkit.render.gl.shaders import depth_atlas_source

        n_layers = self._check_layers(layers)
        batch = _batch(views)
        wanted = [_bone_key([b])[0] for b in bones]
        if not wanted:
            raise InputError("no bones given", key="bones")
        unique = tuple(sorted(set(wanted)))
        h, w = views.height, views.width
        view_data = self._views_array(views, _border_pixels(w, h))
        front = np.full((batch, len(wanted), n_layers, h, w), _NAN, dtype=np.float32)
        back = np.full_like(front, _NAN)
        count = np.zeros((batch, len(wanted), h, w), dtype=np.uint8)
        rows: dict[int, list[int]] = {}
        for i, b in enumerate(wanted):
            rows.setdefault(b, []).append(i)
        bytes_per_ray = 4 * (2 * n_layers + 1)
        max_rays = max(1, min(self._ssbo_limit // bytes_per_ray, 1 << 24))
        with self._session() as ctx:
            atlases = self._atlas_set(ctx, unique)
            prog = program(depth_atlas_source(brick=_CROP_BRICK))
            self._upload(ctx, "views", view_data).bind_to_storage_buffer(1)
            _set(prog, "n_layers", n_layers)
            _set(prog, "vol_shape", self.shape)
            for atlas in atlases:
                windows = self._bone_windows(views, atlas.lo, atlas.hi)      # (B, N, 4)
                view_i, bone_i = np.nonzero((windows[..., 2] > 0) & (windows[..., 3] > 0))
                if view_i.size == 0:
                    continue
                boxes = windows[view_i, bone_i]
                sizes = boxes[:, 2] * boxes[:, 3]
                block = atlas.block
                block.texture.use(location=0)
                block.bricks.use(location=1)
                _set(prog, "n_bricks", block.n_bricks)
                _set(prog, "tex_scale", tuple(1.0 / s for s in block.size))
                _set(prog, "tex_size", block.size)
                _set(prog, "value_scale", block.value_scale)
                self._upload(ctx, "boxes", atlas.boxes).bind_to_storage_buffer(5)
                start = 0
                while start < len(sizes):  # windows in dispatches whose outputs fit a buffer
                    run = np.cumsum(sizes[start:])
                    stop = start + max(1, int(np.searchsorted(run, max_rays, side="right")))
                    part = slice(start, stop)
                    firsts = np.concatenate([[0], np.cumsum(sizes[part])[:-1]])
                    n_rays = int(sizes[part].sum())
                    table = np.zeros((stop - start, 2, 4), dtype=np.int32)
                    table[:, 0] = boxes[part]
                    table[:, 1, 0] = view_i[part]
                    table[:, 1, 1] = bone_i[part]
                    table[:, 1, 2] = firsts
                    self._upload(ctx, "windows", table).bind_to_storage_buffer(2)
                    f_buf = self._buffer(ctx, "front", 4 * n_layers * n_rays)
                    b_buf = self._buffer(ctx, "back", 4 * n_layers * n_rays)
                    c_buf = self._buffer(ctx, "count", 4 * n_rays)
                    f_buf.bind_to_storage_buffer(0)
                    b_buf.bind_to_storage_buffer(3)
                    c_buf.bind_to_storage_buffer(4)
                    _set(prog, "n_windows", stop - start)
                    _set(prog, "n_rays", n_rays)
                    prog.run(*_groups(True, (0, 0, 0, 0), n_rays, 1))
                    ctx.memory_barrier()
                    f_out = np.empty((n_layers, n_rays), dtype=np.float32)
                    b_out = np.empty_like(f_out)
                    c_out = np.empty(n_rays, dtype=np.uint32)
                    f_buf.read_into(f_out, size=f_out.nbytes)
                    b_buf.read_into(b_out, size=b_out.nbytes)
                    c_buf.read_into(c_out, size=c_out.nbytes)
                    for n in range(stop - start):
                        u0, v0, ww, hh = (int(x) for x in table[n, 0])
                        b_view, bone = int(table[n, 1, 0]), atlas.bones[int(table[n, 1, 1])]
                        a, z = int(firsts[n]), int(firsts[n] + ww * hh)
                        for k in rows[bone]:
                            front[b_view, k, :, v0:v0 + hh, u0:u0 + ww] = \
                                f_out[:, a:z].reshape(n_layers, hh, ww)
                            back[b_view, k, :, v0:v0 + hh, u0:u0 + ww] = \
                                b_out[:, a:z].reshape(n_layers, hh, ww)
                            count[b_view, k, v0:v0 + hh, u0:u0 + ww] = \
                                c_out[a:z].reshape(hh, ww)
                    start = stop
        return DepthMaps(front=torch.from_numpy(front), back=torch.from_numpy(back),
                         layers=torch.from_numpy(count))

    def _bone_windows(self, views: Views, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """``(B, N, 4)`` int ``(u0, v0, w, h)``: the pixels whose rays can cross each bone.

        A bone's field is 0 outside the box ``[lo - 1, hi]`` (index space) of its crop, so only
        rays through that box can cross its surface: its window is every pixel whose centre lies
        in the bounding rectangle of the box's projected corners, grown by a pixel for rounding,
        clipped to the detector (empty when it falls off it). The whole detector when a corner
        lies at or behind the source plane.
        """
        k = _as_float64(views.intrinsic, "intrinsic")                       # (B, 3, 3)
        t = _as_float64(views.camera_from_world, "camera_from_world")        # (B, 4, 4)
        wfi = np.asarray(self.volume.world_from_index, dtype=np.float64)
        sel = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=bool)
        box_lo = np.asarray(lo, np.float64) - 1.0
        box_hi = np.asarray(hi, np.float64)
        corners = np.where(sel[None], box_hi[:, None, :], box_lo[:, None, :])  # (N, 8, 3)
        world = corners @ wfi[:3, :3].T + wfi[:3, 3]
        cam = np.einsum("bij,nkj->bnki", t[:, :3, :3], world) + t[:, None, None, :3, 3]
        z = cam[..., 2]
        front_of_source = (z > 1e-9).all(axis=-1)                          # (B, N)
        zs = np.where(z > 1e-9, z, 1.0)
        u = k[:, None, None, 0, 0] * cam[..., 0] / zs + k[:, None, None, 0, 2]
        v = k[:, None, None, 1, 1] * cam[..., 1] / zs + k[:, None, None, 1, 2]
        width, height = views.width, views.height
        u0 = np.clip(np.ceil(u.min(axis=-1) - 0.5) - 1, 0, width)
        u1 = np.clip(np.floor(u.max(axis=-1) - 0.5) + 2, 0, width)
        v0 = np.clip(np.ceil(v.min(axis=-1) - 0.5) - 1, 0, height)
        v1 = np.clip(np.floor(v.max(axis=-1) - 0.5) + 2, 0, height)
        out = np.stack([u0, v0, np.maximum(u1 - u0, 0), np.maximum(v1 - v0, 0)], axis=-1)
        out[~front_of_source] = (0, 0, width, height)
        return out.astype(np.int64)

    def _atlas_set(self, ctx: Any, bones: tuple[int, ...]) -> list[_Atlas]:
        """The (cached) atlases of ``bones``' own masks: one, or more when one texture cannot
        hold them all.

        Raises:
            InputError: no label map, or a label that does not occur.
        """
        found = self._atlases.get(bones)
        if found is not None:
            self._atlases.move_to_end(bones)
            return found
        known = self._check_labels(bones)
        lo = np.array([known[b][0] for b in bones], dtype=np.int64)
        hi = np.array([known[b][1] for b in bones], dtype=np.int64)
        sizes = hi - lo + 2                                                  # crop + margins
        # pack along the axis that wastes least: total = sum along it × max across the others
        cost = [float((sizes[:, a] + _ATLAS_GAP).sum()) * float(np.prod(
            [sizes[:, o].max() for o in range(3) if o != a])) for a in range(3)]
        axis = int(np.argmin(cost))
        groups: list[list[int]] = [[]]
        length = 0
        for i in range(len(bones)):
            need = int(sizes[i, axis]) + _ATLAS_GAP
            if groups[-1] and length + need > self._tex_limit:
                groups.append([])
                length = 0
            groups[-1].append(i)
            length += need
        atlases = []
        for group in groups:
            atlases.append(self._pack_atlas(ctx, [bones[i] for i in group], lo[group], hi[group],
                                            axis))
        self._atlases[bones] = atlases
        while len(self._atlases) > _MAX_BONE_SETS:
            _, old = self._atlases.popitem(last=False)
            for atlas in old:
                self._drop(atlas.release())
        return atlases

    def _pack_atlas(self, ctx: Any, bones: list[int], lo: np.ndarray, hi: np.ndarray,
                    axis: int) -> _Atlas:
        """Upload the masks of ``bones`` side by side along ``axis``, ``_ATLAS_GAP`` zero texels
        apart (on top of each crop's own zero margin), so that no crop's interpolation reaches
        another."""
        assert self._labels is not None
        sizes = hi - lo + 2
        shape = [int(sizes[:, a].max()) for a in range(3)]
        shape[axis] = int((sizes[:, axis] + _ATLAS_GAP).sum())
        values = np.zeros(shape, dtype=np.float16)
        boxes = np.zeros((len(bones), 3, 4), dtype=np.float32)
        at = 0
        for i, b in enumerate(bones):
            src, dst = self._margin_slices(lo[i], hi[i])
            placed = tuple(slice(d.start + at, d.stop + at) if a == axis else d
                           for a, d in enumerate(dst))
            values[placed] = self._labels[src] == b
            offset = np.zeros(3)
            offset[axis] = at
            boxes[i, 0, :3] = lo[i] - 1.0 - offset
            boxes[i, 1, :3] = lo[i] - 1.0
            boxes[i, 2, :3] = hi[i]
            at += int(sizes[i, axis]) + _ATLAS_GAP
        block = self._upload_block(ctx, values, origin=np.zeros(3), brick=_CROP_BRICK,
                                   support_lo=np.zeros(3), support_hi=np.zeros(3))
        return _Atlas(tuple(bones), block, boxes, lo, hi)

    # ------------------------------------------------------------------ bone index
    def bone_index(self, views: Views, bones: Sequence[int]) -> torch.Tensor:
        """``(B, H, W)`` int32: the bone that dominates each ray's first entry into the union of
        ``bones``, 0 where the ray enters none."""
        from regkit.render.gl.context import program
        from regkit.render.gl.shaders import bone_index_source

        batch = _batch(views)
        h, w = views.height, views.width
        grid = (0, 0, w, h)
        view_data = self._views_array(views, _border_pixels(w, h))
        result = torch.zeros((batch, h, w), dtype=torch.int32)
        with self._session() as ctx:
            entry = self._bone_set(bones)
            block = self._mask_block(ctx, entry)
            labels = self._label_texture(ctx, entry)
            prog = program(bone_index_source(brick=_CROP_BRICK))
            self._bind_common(ctx, prog, block, view_data)
            labels.use(location=2)
            _set(prog, "roi", grid)
            flat = result.numpy().reshape(batch, -1)
            for b0, b1 in self._view_chunks(batch, 4 * h * w):
                nbytes = 4 * h * w * (b1 - b0)
                out = self._buffer(ctx, "out", nbytes)
                out.bind_to_storage_buffer(0)
                _set(prog, "view_offset", b0)
                prog.run(*_groups(False, grid, h * w, b1 - b0))
                ctx.memory_barrier()
                out.read_into(flat[b0:b1], size=nbytes)
        return result

    # ------------------------------------------------------------------ resampling
    def _data_texture(self, ctx: Any) -> _Block:
        """The volume's values as stored (float32), for resampling; uploaded on first use."""
        if self._data_block is None:
            data = np.asarray(self.volume.data, dtype=np.float32)
            n = np.asarray(self.shape, dtype=np.float64)
            self._data_block = self._upload_block(
                ctx, _padded(data), origin=np.full(3, -1.0), brick=0,
                support_lo=np.zeros(3), support_hi=n - 1.0)
        return self._data_block

    def resample(self, fixed_shape: Sequence[int], fixed_world_from_index: Any,
                 fixed_from_moving: Any, *, fill: float = 0.0) -> Resampled:
        """Warp the bound volume onto a fixed grid under B transforms, trilinearly.

        Values are the volume's own (HU stays HU); see :meth:`Renderer.resample`.

        Returns:
            :class:`Resampled`: ``values`` ``(B, I, J, K)`` in the renderer's dtype, ``mask``
            bool.
        """
        from regkit.render.gl.context import program
        from regkit.render.gl.shaders import resample_source

        shape = _grid_shape(fixed_shape)
        fixed = _as_float64(fixed_world_from_index, "fixed_world_from_index")
        if fixed.shape != (4, 4):
            raise ShapeError(f"fixed_world_from_index must be 4x4, got shape {fixed.shape}")
        maps = _as_float64(fixed_from_moving, "fixed_from_moving")
        if maps.ndim != 3 or maps.shape[1:] != (4, 4) or maps.shape[0] < 1:
            raise ShapeError(f"fixed_from_moving must have shape (B, 4, 4), got {maps.shape}")
        if isinstance(fill, bool) or not isinstance(fill, numbers.Real) \
                or not math.isfinite(float(fill)):
            raise InputError(f"must be a finite number, got {fill!r}", key="fill")
        if np.any(np.abs(np.linalg.det(maps[:, :3, :3])) < 1e-12):
            raise InputError("a transform is singular", key="fixed_from_moving")
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
        slabs_per_dispatch = max(1, min(65535, self._ssbo_limit // (4 * per_slab)))
        with self._session() as ctx:
            block = self._data_texture(ctx)
            prog = program(resample_source())
            self._upload(ctx, "maps", rows).bind_to_storage_buffer(1)
            block.texture.use(location=0)
            _set(prog, "grid", shape)
            _set(prog, "row_len", row_len)
            _set(prog, "upper", tuple(float(n - 1) for n in self.shape))
            _set(prog, "tolerance", _RESAMPLE_TOLERANCE)
            _set(prog, "fill", float(fill))
            _set(prog, "tex_origin", tuple(float(x) for x in block.origin))
            _set(prog, "tex_scale", tuple(1.0 / s for s in block.size))
            for g0 in range(0, batch * n_i, slabs_per_dispatch):
                g1 = min(batch * n_i, g0 + slabs_per_dispatch)
                count = per_slab * (g1 - g0)
                v_buf = self._buffer(ctx, "values", 4 * count)
                m_buf = self._buffer(ctx, "inside", count)
                v_buf.bind_to_storage_buffer(0)
                m_buf.bind_to_storage_buffer(3)
                _set(prog, "slab_offset", g0)
                prog.run(math.ceil(row_len // 4 / 8), math.ceil(n_j / 8), g1 - g0)
                ctx.memory_barrier()
                v_buf.read_into(v_np[g0:g1], size=4 * count)
                m_buf.read_into(m_np[g0:g1], size=count)
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


def _padded(values: np.ndarray) -> np.ndarray:
    """``values`` with one voxel of zeros on every side, float32."""
    out = np.zeros(tuple(s + 2 for s in values.shape), dtype=np.float32)
    out[1:-1, 1:-1, 1:-1] = values
    return out


def _encode_unorm16(values: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Non-negative ``values`` as uint16 texels, with the scale that reads them back.

    The sampler returns ``t / 65535`` in [0, 1] for a texel ``t``; ``value ≈ scale · sample``
    with ``scale`` the block's maximum, so 0 stays exactly 0 (the zero margin and empty space)
    and rounding to nearest bounds the error by ``scale / 131070``. None when the values cannot
    be encoded so (negative or non-finite ones): they stay float32.
    """
    v = np.asarray(values, dtype=np.float32)
    if v.size == 0:
        return None
    lo, hi = float(v.min()), float(v.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0:
        return None
    if hi == 0.0:
        return np.zeros(v.shape, dtype=np.uint16), 1.0
    t = np.empty(v.shape, dtype=np.uint16)
    np.rint(v * np.float32(65535.0 / hi), out=t, casting="unsafe")
    return t, hi


def _occupancy(flags: np.ndarray, brick: int, every: bool = False) -> np.ndarray:
    """uint8 per brick of ``brick`` cells per axis: 1 where any texel it interpolates is set
    (``every``: where all of them are, texels past the block's end counting as unset).

    Cell ``c`` interpolates texels ``c`` and ``c + 1``, so brick ``b`` reads texels
    ``[b·brick, (b + 1)·brick]``, one shared with the next brick.
    """
    occ = flags
    for axis in range(3):
        size = occ.shape[axis]
        n_b = max(1, math.ceil((size - 1) / brick))
        pad = n_b * brick + 1 - size
        if pad > 0:
            widths = [(0, 0)] * 3
            widths[axis] = (0, pad)
            occ = np.pad(occ, widths)
        body = np.moveaxis(occ, axis, 0)
        shaped = body[: n_b * brick].reshape(n_b, brick, *body.shape[1:])
        if every:
            blocks = shaped.all(axis=1) & body[brick:: brick][:n_b]
        else:
            blocks = shaped.any(axis=1) | body[brick:: brick][:n_b]
        occ = np.moveaxis(blocks, 0, axis)
    return np.ascontiguousarray(occ, dtype=np.uint8)


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


def _border_pixels(width: int, height: int) -> np.ndarray:
    """``(1, N, 2)`` centres ``(u, v)`` of the detector's outermost pixels: the rays that bound
    a view, from which its marching plan is chosen (so a pixel's value never depends on a roi or
    on the other views of a batch)."""
    u = np.arange(width) + 0.5
    v = np.arange(height) + 0.5
    edges = [np.stack([u, np.full_like(u, 0.5)], axis=-1),
             np.stack([u, np.full_like(u, height - 0.5)], axis=-1),
             np.stack([np.full_like(v, 0.5), v], axis=-1),
             np.stack([np.full_like(v, width - 0.5), v], axis=-1)]
    return np.concatenate(edges)[None]


def _as_float64(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"must be an array of numbers, got {type(x).__name__}",
                         key=name) from None
    if not np.isfinite(arr).all():
        raise InputError("contains NaN or infinite values", key=name)
    return arr


def _batch(views: Any) -> int:
    if not isinstance(views, Views):
        raise InputError(f"expected regkit.render.Views, got {type(views).__name__}",
                         key="views")
    return views.batch




def _set(prog: Any, name: str, value: Any) -> None:
    """Set a uniform if the compiler kept it."""
    try:
        member = prog[name]
    except KeyError:
        return
    member.value = value


def _groups(pixel_list: bool, grid: tuple[int, int, int, int], n_per_view: int,
            views: int) -> tuple[int, int, int]:
    """Work groups of a dispatch (8×8 invocations each)."""
    if pixel_list:
        gx = 32  # rows of 256 invocations
        return gx, max(1, math.ceil(n_per_view / (gx * 64))), views
    return math.ceil(grid[2] / 8), math.ceil(grid[3] / 8), views


def _pixel_list(pixels: Any, batch: int) -> np.ndarray:
    pix = _as_float64(pixels, "pixels")
    if pix.ndim == 2:
        pix = pix[None]
    if pix.ndim != 3 or pix.shape[-1] != 2 or pix.shape[0] not in (1, batch):
        raise ShapeError(f"pixels must have shape (P, 2) or (B, P, 2) with B = {batch}, got "
                         f"{tuple(np.shape(pixels))}")
    return np.ascontiguousarray(pix, dtype=np.float32)


def _grid_shape(shape: Any) -> tuple[int, int, int]:
    try:
        values = list(shape)
    except TypeError:
        raise InputError(f"must be (I, J, K), got {shape!r}", key="fixed_shape") from None
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                               or int(v) < 1 for v in values):
        raise InputError(f"must be three whole numbers >= 1, got {shape!r}", key="fixed_shape")
    return int(values[0]), int(values[1]), int(values[2])
