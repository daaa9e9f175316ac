"""The PyTorch renderer (``"torch"``): differentiable DRRs, depth maps and resampling.

Runs wherever PyTorch runs (CPU, CUDA), in float32 or float64, and carries gradients to the poses
(a ``camera_from_world`` tensor with ``requires_grad``) and to the volume (``requires_grad=True``,
or a μ tensor given to :meth:`TorchRenderer.from_tensor`).

Sampling model: the one of ``docs/renderers.md``, shared with the OpenGL backend so that both
render the same field at the same points: trilinear μ with zero padding, rays clipped to the
voxel-edge box, the midpoint rule on cells of at most ``step_mm`` across the planes of the axis a
view looks most along (:func:`regkit.render.sampling.choose_axes`), depth maps from marching the
0.5 level set of the bones' trilinear mask, each crossing refined by 24 bisections in float64.
Here a mid-plane's trilinear interpolation is bilinear interpolation in a slice blended once per
plane, which :func:`torch.nn.functional.grid_sample` does for a whole batch of rays (see
:mod:`regkit.render._torch_kernels`).

Memory: rays are marched in blocks of at most ``chunk_rays`` rays and about 1 M samples on the
CPU (16 M on CUDA), some 16 bytes a sample, plus one block of blended slices; a 512² DRR of a
512³ volume needs a few hundred MB beyond the volume. With gradients, autograd keeps every block's
grid and slices. Resampling without gradients keeps a padded 4-fold copy of the volume (volumes of
up to 2²⁴ voxels; larger ones take the slower 8-gather path).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

import numpy as np
import torch

from regkit.errors import BackendUnavailableError, InputError, ShapeError
from regkit.geometry.camera import pixel_rays
from regkit.render import _torch_kernels as kern
from regkit.render._checks import (
    check_dtype,
    check_step_mm,
    common_options,
    label_boxes,
    volume_mu,
)
from regkit.render.base import DepthMaps, Renderer, Resampled, Views, renderers
from regkit.render.sampling import TINY_DIRECTION, border_pixels
from regkit.utils.checks import is_whole

__all__ = ["TorchRenderer"]

_CPU_SAMPLES_PER_BLOCK = 1 << 20
_CUDA_SAMPLES_PER_BLOCK = 1 << 24
_CPU_RAYS_PER_BLOCK = 1 << 16
_CUDA_RAYS_PER_BLOCK = 1 << 20
_RESAMPLE_POINTS_PER_BLOCK = 1 << 16
_MAX_PACKED_VOXELS = 1 << 24  # the fast resampling path keeps 4 copies of the volume
_RESAMPLE_TOLERANCE = 1e-3  # voxels of slack around the moving voxel-centre box
_MAX_CACHED_BONE_SETS = 4
_BONE_MARGIN = 2  # voxels around a bone where its trilinear mask may still reach 0.5
_NAN = float("nan")


def _device(device: Any) -> torch.device:
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError):
        raise InputError(f"not a torch device: {device!r}", key="device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "renderer backend 'torch' is unavailable on 'cuda': this PyTorch build sees no "
                "CUDA device")
    elif dev.type != "cpu":
        raise InputError(f"the torch backend runs on 'cpu' or 'cuda', got {device!r}",
                         key="device")
    return dev


def _compact_labels(labels: np.ndarray) -> np.ndarray:
    """The label map in the smallest integer dtype torch holds that fits its values."""
    lo = int(labels.min()) if labels.size else 0
    hi = int(labels.max()) if labels.size else 0
    for dt in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.array(labels, dtype=dt, order="C")
    return np.array(labels, dtype=np.int64, order="C")


def _int3(values: np.ndarray) -> tuple[int, int, int]:
    """A voxel index triple as plain ints."""
    return int(values[0]), int(values[1]), int(values[2])


def _pixel_centres(u0: int, v0: int, w: int, h: int, device: torch.device) -> torch.Tensor:
    """``(1, h·w, 2)`` float64 pixel centres ``(u, v)`` of the block, row-major."""
    v, u = torch.meshgrid(torch.arange(v0, v0 + h, dtype=torch.float64, device=device) + 0.5,
                          torch.arange(u0, u0 + w, dtype=torch.float64, device=device) + 0.5,
                          indexing="ij")
    return torch.stack([u, v], dim=-1).reshape(1, h * w, 2)


@renderers.register("torch")
class TorchRenderer(Renderer):
    """DRRs, depth maps, first-bone maps and resampling in PyTorch, differentiable.

    See the module docstring for the sampling model. Outputs are tensors on ``device`` in
    ``dtype`` (``int32`` for :meth:`bone_index`, ``uint8`` layer counts, ``bool`` masks).

    Args:
        volume: A :class:`~regkit.volume.Volume`. Units ``"HU"`` are converted to μ (1/mm) with
            ``mu_water``; ``"mu"`` and ``"other"`` are used as given (as μ).
        step_mm: Largest step along a ray, mm (default: half the smallest voxel spacing).
        device: ``"cpu"`` (default) or a CUDA device.
        dtype: ``torch.float32`` (default) or ``torch.float64``: the dtype of every computation
            on volume values and of the outputs.
        requires_grad: Make μ a leaf tensor that collects gradients (read them from
            :attr:`mu` ``.grad``). Gradients to the pose need nothing but a pose tensor with
            ``requires_grad``.
        chunk_rays: Rays marched at once (bounds the memory; default 65536 on the CPU, 2²⁰ on
            CUDA).
        mu_water: Attenuation of water in 1/mm, for HU volumes.

    :meth:`close` (or leaving a ``with`` block) drops the cached masks, masked μ and packed
    copies; the renderer then refuses every call.

    Raises:
        InputError: a bad option or volume.
        BackendUnavailableError: a CUDA device was asked for and there is none.
    """

    backend: ClassVar[str] = "torch"
    differentiable: ClassVar[bool] = True
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    device: torch.device
    dtype: torch.dtype
    shape: tuple[int, int, int]
    world_from_index: np.ndarray
    spacing: np.ndarray
    step_mm: float
    chunk_rays: int
    _mu_source: torch.Tensor
    _index_from_world: np.ndarray
    _samples_per_block: int
    _labels_np: np.ndarray | None
    _labels: torch.Tensor | None
    _boxes: dict[int, tuple[np.ndarray, np.ndarray]] | None
    _raw_np: np.ndarray | None
    _raw: torch.Tensor | None
    _packed: torch.Tensor | None
    _cache_values: bool
    _bone_mu: OrderedDict[tuple[int, ...], torch.Tensor]
    _bone_mask: OrderedDict[tuple[int, ...], torch.Tensor]

    def __init__(self, volume: Any, *, step_mm: float | None = None, device: Any = None,
                 dtype: Any = torch.float32, requires_grad: bool = False,
                 chunk_rays: int | None = None, mu_water: float = 0.02):
        opts = common_options(self.backend, self.differentiable, volume, step_mm=step_mm,
                              dtype=dtype, requires_grad=requires_grad, mu_water=mu_water,
                              hint=" (use TorchRenderer.from_tensor for a tensor of μ)")
        dev, dt = _device(device), opts.dtype
        mu_np = volume_mu(volume, opts.mu_water,
                          np.float64 if dt == torch.float64 else np.float32)
        if not mu_np.flags.writeable or not mu_np.flags.c_contiguous:
            mu_np = np.array(mu_np, order="C")  # torch cannot wrap read-only memory
        mu = torch.from_numpy(mu_np).to(device=dev, dtype=dt)
        if requires_grad:
            mu.requires_grad_(True)
        self._setup(mu, volume.world_from_index, volume.labels, step_mm=opts.step_mm,
                    device=dev, dtype=dt, chunk_rays=chunk_rays, raw=np.asarray(volume.data))

    @classmethod
    def from_tensor(cls, mu: torch.Tensor, world_from_index: Any, *, labels: Any = None,
                    step_mm: float | None = None, device: Any = None, dtype: Any = None,
                    chunk_rays: int | None = None) -> TorchRenderer:
        """A renderer on a tensor of μ, so that gradients reach that tensor.

        Args:
            mu: ``(I, J, K)`` attenuation in 1/mm (may require grad; it is read afresh at every
                call, so the graph from it is rebuilt each time).
            world_from_index: ``(4, 4)`` index → RAS+ world (mm) affine of the grid.
            labels: Optional ``(I, J, K)`` integer label map.
            step_mm: Largest step along a ray, mm (default: half the smallest voxel spacing),
                as in the constructor.
            device: Default: the tensor's device.
            dtype: Default: the tensor's dtype if float32 or float64, else float32.
            chunk_rays: Rays marched at once (bounds the memory; default 65536 on the CPU, 2²⁰
                on CUDA), as in the constructor.

        Returns:
            The renderer. :meth:`resample` resamples ``mu`` itself.
        """
        if not isinstance(mu, torch.Tensor):
            raise InputError(f"mu must be a torch tensor, got {type(mu).__name__}", key="mu")
        if mu.ndim != 3 or not mu.is_floating_point() or 0 in mu.shape:
            raise ShapeError(f"mu must be a real (I, J, K) tensor of at least one voxel per "
                             f"axis, got shape {tuple(mu.shape)} and dtype {mu.dtype}")
        if not bool(torch.isfinite(mu.detach()).all()):
            raise InputError("contains NaN or infinite values", key="mu")
        dev = _device(mu.device if device is None else device)
        if dtype is None:
            dtype = mu.dtype if mu.dtype in (torch.float32, torch.float64) else torch.float32
        dt = check_dtype(dtype)
        affine = np.asarray(world_from_index, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all():
            raise InputError(f"must be a finite 4x4 matrix, got shape {affine.shape}",
                             key="world_from_index")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise InputError("3x3 part is not invertible", key="world_from_index")
        lab = None
        if labels is not None:
            lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
            if lab.shape != tuple(mu.shape) or not np.issubdtype(lab.dtype, np.integer):
                raise ShapeError(f"labels must be an integer array of shape {tuple(mu.shape)}, "
                                 f"got {lab.dtype} {lab.shape}")
        obj = cls.__new__(cls)
        obj._setup(mu, affine, lab, step_mm=step_mm, device=dev, dtype=dt,
                   chunk_rays=chunk_rays, raw=None)
        return obj

    def _setup(self, mu: torch.Tensor, world_from_index: Any, labels: np.ndarray | None, *,
               step_mm: float | None, device: torch.device, dtype: torch.dtype,
               chunk_rays: int | None, raw: np.ndarray | None) -> None:
        self.device = device
        self.dtype = dtype
        self._mu_source = mu
        self.shape = (int(mu.shape[0]), int(mu.shape[1]), int(mu.shape[2]))
        self.world_from_index = np.array(world_from_index, dtype=np.float64)
        self._index_from_world = np.linalg.inv(self.world_from_index)
        self.spacing = np.linalg.norm(self.world_from_index[:3, :3], axis=0)
        self.step_mm = check_step_mm(step_mm, self.spacing)
        cuda = device.type == "cuda"
        if chunk_rays is None:
            chunk_rays = _CUDA_RAYS_PER_BLOCK if cuda else _CPU_RAYS_PER_BLOCK
        if not is_whole(chunk_rays) \
                or chunk_rays < 1:
            raise InputError(f"must be a whole number >= 1, got {chunk_rays!r}",
                             key="chunk_rays")
        self.chunk_rays = int(chunk_rays)
        self._samples_per_block = _CUDA_SAMPLES_PER_BLOCK if cuda else _CPU_SAMPLES_PER_BLOCK
        self._labels_np = None if labels is None else _compact_labels(np.asarray(labels))
        self._labels = None
        if self._labels_np is not None:
            self._labels = torch.from_numpy(self._labels_np).to(device)
        self._boxes = None
        self._raw_np = raw
        self._raw = None
        self._packed = None
        # Values derived from μ are cached only when μ is ours (a Volume's copy), not a tensor the
        # caller may change in place.
        self._cache_values = raw is not None
        self._bone_mu = OrderedDict()
        self._bone_mask = OrderedDict()

    def __repr__(self) -> str:
        return (f"TorchRenderer(shape={self.shape}, step_mm={self.step_mm:g}, "
                f"device={self.device}, dtype={self.dtype})")

    # ------------------------------------------------------------------ volume access
    @property
    def mu(self) -> torch.Tensor:
        """``(I, J, K)`` attenuation in 1/mm on the renderer's device and dtype."""
        return self._mu_source.to(device=self.device, dtype=self.dtype)

    def _label_values(self) -> frozenset[int] | None:
        return None if self._labels_np is None else frozenset(self._label_boxes())

    def _label_boxes(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Voxel bounding box ``[lo, hi)`` of every positive label (computed once)."""
        if self._boxes is None:
            assert self._labels_np is not None
            self._boxes = label_boxes(self._labels_np)
        return self._boxes

    def _release(self) -> None:
        """Drop every cache (bone masks, masked μ, packed and raw copies, label boxes)."""
        self._bone_mu.clear()
        self._bone_mask.clear()
        self._packed = self._raw = self._boxes = None

    def _mask_for(self, key: tuple[int, ...]) -> torch.Tensor:
        """``(I, J, K)`` uint8: 1 where the label is one of ``key`` (cached)."""
        found = self._bone_mask.get(key)
        if found is None:
            assert self._labels is not None
            wanted = torch.tensor(key, device=self.device, dtype=self._labels.dtype)
            found = torch.isin(self._labels, wanted).to(torch.uint8)
            self._bone_mask[key] = found
            while len(self._bone_mask) > _MAX_CACHED_BONE_SETS:
                self._bone_mask.popitem(last=False)
        else:
            self._bone_mask.move_to_end(key)
        return found

    def _mu_for(self, key: tuple[int, ...] | None) -> torch.Tensor:
        mu = self.mu
        if key is None:
            return mu
        if mu.requires_grad or not self._cache_values:
            return mu * self._mask_for(key).to(mu.dtype)
        found = self._bone_mu.get(key)
        if found is None:
            found = mu * self._mask_for(key).to(mu.dtype)
            self._bone_mu[key] = found
            while len(self._bone_mu) > 1:
                self._bone_mu.popitem(last=False)
        return found

    # ------------------------------------------------------------------ rays
    def _poses(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """``views``' K and poses, checked (as the public methods check them), on the device."""
        checked = self._views(views)
        return self._on_device(checked)

    def _on_device(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked views' float64 K and poses on the renderer's device (graphs kept)."""
        return views.intrinsic.to(self.device), views.camera_from_world.to(self.device)

    def _rays(self, k: torch.Tensor, t: torch.Tensor,
              uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sources ``(B, 3)`` and directions ``(B, P, 3)`` (voxels per mm) in index space."""
        src_world, d_world = pixel_rays(k, t, 0, 0, pixels=uv)           # (B, 3), (B, P, 3)
        a = torch.from_numpy(self._index_from_world).to(device=self.device)
        o = src_world @ a[:3, :3].T + a[:3, 3]
        d = d_world @ a[:3, :3].T
        return o, d

    def _groups(self, k: torch.Tensor, t: torch.Tensor, views: Views,
                uv: torch.Tensor | None) -> dict[tuple[int, int], list[int]]:
        """Views grouped by how they are marched: ``{(axis, n_cells): [view, ...]}``.

        The choice depends on each view alone (its whole detector's border, and ``uv`` when given),
        never on the other views of the batch or on a roi, so that a pixel's value does not
        depend on what else is rendered with it.
        """
        probe = torch.from_numpy(border_pixels(views.width, views.height)).to(self.device)
        if uv is not None:
            probe = torch.cat([probe.expand(uv.shape[0], -1, -1), uv.detach()], dim=1)
        _, d = self._rays(k.detach(), t.detach(), probe)
        groups: dict[tuple[int, int], list[int]] = {}
        for b, key in enumerate(kern.choose_axes(d, self.shape, self.step_mm)):
            groups.setdefault(key, []).append(b)
        return groups

    def _group_rays(self, o: torch.Tensor, d: torch.Tensor, members: list[int], axis: int,
                    n_cells: int) -> kern.PlaneRays:
        og, dg, _ = _group_origins(o, d, members)
        return kern.plane_rays(og, dg, self.shape, axis, n_cells, self.dtype)

    # ------------------------------------------------------------------ DRR
    def _drr(self, views: Views, *, roi: tuple[int, int, int, int] | None,
             pixels: torch.Tensor | None, bones: tuple[int, ...] | None) -> torch.Tensor:
        """Line integrals of μ along each pixel's ray (see :meth:`Renderer.drr`).

        In the renderer's dtype and on its device, differentiable with respect to the pose, the
        intrinsics, the pixel coordinates and (see the class) the volume.
        """
        k, t = self._on_device(views)
        if pixels is not None:
            uv = pixels.to(self.device)
        else:
            assert roi is not None
            uv = _pixel_centres(*roi, self.device)
        vol = self._mu_for(bones)
        grad = torch.is_grad_enabled() and (vol.requires_grad or k.requires_grad
                                            or t.requires_grad or uv.requires_grad)
        with torch.set_grad_enabled(grad):
            o, d = self._rays(k, t, uv)
            batch, n_pix = d.shape[0], d.shape[1]
            per_view: list[torch.Tensor | None] = [None] * batch
            groups = self._groups(k, t, views, uv if pixels is not None else None)
            for (axis, cells), members in groups.items():
                rays = self._group_rays(o, d, members, axis, cells)
                vals = kern.march_integrals(vol, rays,
                                            samples_per_block=self._samples_per_block,
                                            rays_per_block=self.chunk_rays)
                vals = vals.view(len(members), n_pix)
                for n, b in enumerate(members):
                    per_view[b] = vals[n]
            return torch.stack([v for v in per_view if v is not None])

    # ------------------------------------------------------------------ depth
    def _crossings(self, views: Views, key: tuple[int, ...]) -> tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """All crossings of the union's surface, sorted by ray then distance.

        Returns:
            ``ray`` (N,) global ray index ``view · H·W + pixel``, ``t`` (N,) float64 mm,
            ``entry`` (N,) bool, sources ``o`` (B, 3) and directions ``d`` (B, P, 3) in index
            space, and the number of rays.
        """
        k, t = self._on_device(views)
        mask = self._mask_for(key)
        uv = _pixel_centres(0, 0, views.width, views.height, self.device)
        with torch.no_grad():
            o, d = self._rays(k.detach(), t.detach(), uv)
            n_pix = d.shape[1]
            found = []
            for (axis, cells), members in self._groups(k, t, views, None).items():
                lo, hi = self._margin_box(key)
                rays = kern.restrict_to_box(self._group_rays(o, d, members, axis, cells),
                                            _int3(lo), _int3(hi))
                r, tt, entry = kern.march_crossings(
                    mask, rays, samples_per_block=self._samples_per_block,
                    rays_per_block=self.chunk_rays)
                view = torch.tensor(members, device=self.device)[r // n_pix]
                found.append((view * n_pix + r % n_pix, tt, entry))
            ray, tt, entry = _sorted_crossings(found)
        return ray, tt, entry, o, d, d.shape[0] * n_pix

    @staticmethod
    def _ranks(ray: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
        """Rank of each flagged crossing among the flagged ones of its ray (sorted input)."""
        f = flag.long()
        before = f.cumsum(0) - f
        start = torch.searchsorted(ray, ray)
        return before - before[start]

    def _layered(self, views: Views, ray: torch.Tensor, t: torch.Tensor, entry: torch.Tensor,
                 layers: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sorted crossings as depth maps.

        ``front``, ``back`` ``(B, layers, H, W)`` mm in the renderer's dtype (NaN where no such
        layer) and entry counts ``(B, H, W)`` int64.
        """
        batch, h, w = views.batch, views.height, views.width
        n_rays = batch * h * w
        front = torch.full((n_rays, layers), _NAN, dtype=torch.float64, device=self.device)
        back = torch.full_like(front, _NAN)
        rank_in = self._ranks(ray, entry)
        rank_out = self._ranks(ray, ~entry)
        sel = entry & (rank_in < layers)
        front[ray[sel], rank_in[sel]] = t[sel]
        sel = ~entry & (rank_out < layers)
        back[ray[sel], rank_out[sel]] = t[sel]
        count = torch.bincount(ray[entry], minlength=n_rays)

        def layout(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, h, w, layers).permute(0, 3, 1, 2).contiguous().to(self.dtype)

        return layout(front), layout(back), count.view(batch, h, w)

    def _depth(self, views: Views, bones: tuple[int, ...], layers: int) -> DepthMaps:
        """Front and back crossings of the union of ``bones`` (see :meth:`Renderer.depth`).

        In the renderer's dtype; no gradients.
        """
        ray, t, entry, _, _, _ = self._crossings(views, bones)
        front, back, count = self._layered(views, ray, t, entry, layers)
        return DepthMaps(front=front, back=back, layers=count)

    def _depth_stack(self, views: Views, bones: tuple[int, ...], layers: int) -> DepthMaps:
        """Each bone's own maps (see :meth:`Renderer.depth_stack`), marched bone by bone.

        Each bone is marched only by the rays that cross its box (its voxels' bounding box with a
        margin of 2 voxels) and only across it, on a crop of its own mask.

        The planes, so every sample, are those of :meth:`depth` for that bone alone: the crop
        spans the whole volume along the marching axis and the box across it, and a bone's
        trilinear mask is below 0.5 outside its box; the results agree to rounding.
        """
        k, t = self._on_device(views)
        batch, h, w = views.batch, views.height, views.width
        front = torch.full((batch, len(bones), layers, h, w), _NAN, dtype=self.dtype,
                           device=self.device)
        back = torch.full_like(front, _NAN)
        count = torch.zeros((batch, len(bones), h, w), dtype=torch.int64, device=self.device)
        uv = _pixel_centres(0, 0, w, h, self.device)
        with torch.no_grad():
            o, d = self._rays(k.detach(), t.detach(), uv)
            groups = [(axis, cells, *_group_origins(o, d, members))
                      for (axis, cells), members in self._groups(k, t, views, None).items()]
            for i, bone in enumerate(bones):
                box = self._margin_box((bone,))
                found = [self._bone_crossings(bone, box, axis, cells, og, dg, ids)
                         for axis, cells, og, dg, ids in groups]
                ray, tt, entry = _sorted_crossings(found)
                front[:, i], back[:, i], count[:, i] = self._layered(views, ray, tt, entry,
                                                                     layers)
        return DepthMaps(front=front, back=back, layers=count)

    def _margin_box(self, key: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``[lo, hi)``: the voxel box of the bones of ``key``, grown by :data:`_BONE_MARGIN`.

        Clipped to the volume. The trilinear mask is below 0.5 more than a voxel away from the
        bones, so depth rays are marched only across this box
        (:func:`~regkit.render._torch_kernels.restrict_to_box`): the same crossings, found at a
        fraction of the cost for a small bone.
        """
        boxes = self._label_boxes()
        lo = np.min([boxes[b][0] for b in key], axis=0)
        hi = np.max([boxes[b][1] for b in key], axis=0)
        return (np.maximum(lo - _BONE_MARGIN, 0),
                np.minimum(hi + _BONE_MARGIN, np.asarray(self.shape)))

    def _bone_crossings(self, bone: int, box: tuple[np.ndarray, np.ndarray], axis: int,
                        cells: int, og: torch.Tensor, dg: torch.Tensor, ids: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The crossings of one bone's surface by the rays of a group.

        The rays are ``og + t·dg`` (global ray indices ``ids``), of a group marched along ``axis``
        in ``cells`` cells.

        Only the rays through the box are marched, on a crop of the bone's mask that keeps the
        whole volume along ``axis`` (so its planes are the volume's) and the box across it.
        """
        lo, hi = box
        sel = _box_hits(og, dg, lo, hi)
        if sel.numel() == 0:
            return _no_crossings(self.device)
        assert self._labels is not None
        shift = np.where(np.arange(3) == axis, 0, lo)
        crop_shape = _triple(np.where(np.arange(3) == axis, self.shape, hi - lo))
        crop = torch.zeros(crop_shape, dtype=torch.uint8, device=self.device)
        box_labels = self._labels[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi,
                                                                              strict=True))]
        crop[tuple(slice(int(a), int(b)) for a, b in zip(lo - shift, hi - shift, strict=True))] \
            = (box_labels == bone).to(torch.uint8)
        offset = torch.from_numpy(shift.astype(np.float64)).to(self.device)
        rays = kern.plane_rays(og[sel] - offset, dg[sel], crop_shape, axis, cells, self.dtype)
        rays = kern.restrict_to_box(rays, _triple(lo - shift), _triple(hi - shift))
        r, t, entry = kern.march_crossings(crop, rays, samples_per_block=self._samples_per_block,
                                           rays_per_block=self.chunk_rays)
        return ids[sel[r]], t, entry

    def _bone_index(self, views: Views, bones: tuple[int, ...]) -> torch.Tensor:
        """``(B, H, W)`` int32: the bone that dominates each ray's first entry, 0 where none."""
        ray, t, entry, o, d, n_rays = self._crossings(views, bones)
        out = torch.zeros(n_rays, dtype=torch.int32, device=self.device)
        first = entry & (self._ranks(ray, entry) == 0)
        if bool(first.any()):
            assert self._labels is not None
            r = ray[first]
            n_pix = d.shape[1]
            dirs = d.reshape(-1, 3)[r]
            # A hair past the crossing (1e-4 mm), so that the point is on the bone side.
            pts = o[r // n_pix] + (t[first] + 1e-4)[:, None] * dirs
            labs, weights = kern.corner_labels(self._labels, pts)
            scores = torch.stack([(weights * (labs == b)).sum(dim=1) for b in bones], dim=1)
            best = torch.tensor(bones, device=self.device, dtype=torch.int32)[scores.argmax(dim=1)]
            out[r] = best
        return out

    # ------------------------------------------------------------------ resampling
    def _resample_source(self) -> torch.Tensor:
        if self._raw_np is None:
            return self.mu
        if self._raw is None:
            raw = np.array(self._raw_np, dtype=self._raw_np.dtype, order="C")
            self._raw = torch.from_numpy(raw).to(
                device=self.device, dtype=self.dtype)
        return self._raw

    def _resample(self, shape: tuple[int, int, int], fixed_world_from_index: torch.Tensor,
                  fixed_from_moving: torch.Tensor, fill: float) -> Resampled:
        """Warp the bound volume onto a fixed grid under B transforms, trilinearly.

        Values are the volume's own (HU stays HU; μ for :meth:`from_tensor`) in the renderer's
        dtype, differentiable with respect to the transforms and (see the class) the volume.
        See :meth:`Renderer.resample` and the module docstring for the mask.
        """
        fixed = fixed_world_from_index.to(self.device)
        maps = fixed_from_moving.to(self.device)
        src = self._resample_source()
        index_from_world = torch.from_numpy(self._index_from_world).to(self.device)
        index_maps = index_from_world @ torch.linalg.inv(maps) @ fixed   # (B, 4, 4)
        grad = torch.is_grad_enabled() and (src.requires_grad or index_maps.requires_grad)
        batch = maps.shape[0]
        values = torch.empty((batch, *shape), dtype=self.dtype, device=self.device)
        mask = torch.empty((batch, *shape), dtype=torch.bool, device=self.device)
        packed = None
        if not grad and src.numel() <= _MAX_PACKED_VOXELS:
            packed = self._packed
            if packed is None:
                packed = kern.pack_quads(src.detach())
                if self._cache_values:
                    self._packed = packed
        pieces = []
        with torch.set_grad_enabled(grad):
            for b in range(batch):
                res = kern.resample_affine(
                    src, packed, index_maps[b, :3].to(self.dtype), shape, fill=fill,
                    tolerance=_RESAMPLE_TOLERANCE, points_per_block=_RESAMPLE_POINTS_PER_BLOCK,
                    out_values=values[b], out_mask=mask[b])
                if not grad and res.data_ptr() != values[b].data_ptr():
                    values[b].copy_(res)  # the general path returns a new tensor
                pieces.append(res)
            if grad:
                values = torch.stack(pieces)
        return Resampled(values=values, mask=mask)


# ---------------------------------------------------------------------------------- helpers


def _group_origins(o: torch.Tensor, d: torch.Tensor, members: list[int]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rays of the views ``members``, one row each.

    Origins and directions ``(R, 3)`` (index space) and global ray indices ``view · P + pixel``
    ``(R,)``.
    """
    idx = torch.tensor(members, device=d.device)
    n_pix = d.shape[1]
    og = o.index_select(0, idx)[:, None, :].expand(-1, n_pix, -1).reshape(-1, 3)
    dg = d.index_select(0, idx).reshape(-1, 3)
    ids = (idx[:, None] * n_pix + torch.arange(n_pix, device=d.device)[None]).reshape(-1)
    return og, dg, ids


def _box_hits(o: torch.Tensor, d: torch.Tensor, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    """Indices of the rays ``o + t·d`` (``t >= 0``) that cross the index box ``[lo − ½, hi − ½]``.

    Every ray :func:`~regkit.render._torch_kernels.restrict_to_box` keeps for it (the same
    arithmetic, on the same tiny-safe directions).
    """
    d = torch.where(d.abs() < TINY_DIRECTION, torch.full_like(d, TINY_DIRECTION), d)
    t1 = (torch.from_numpy(lo - 0.5).to(o) - o) / d
    t2 = (torch.from_numpy(hi - 0.5).to(o) - o) / d
    near = torch.minimum(t1, t2).max(dim=-1).values.clamp(min=0.0)
    far = torch.maximum(t1, t2).min(dim=-1).values
    return (far > near).nonzero()[:, 0]


def _triple(x: np.ndarray) -> tuple[int, int, int]:
    return int(x[0]), int(x[1]), int(x[2])


def _no_crossings(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.zeros(0, dtype=torch.long, device=device),
            torch.zeros(0, dtype=torch.float64, device=device),
            torch.zeros(0, dtype=torch.bool, device=device))


def _sorted_crossings(found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crossings ``(ray, t, entry)`` of several groups in one list, sorted by ray, then t."""
    ray = torch.cat([f[0] for f in found])
    t = torch.cat([f[1] for f in found])
    entry = torch.cat([f[2] for f in found])
    order = torch.argsort(t, stable=True)
    order = order[torch.argsort(ray[order], stable=True)]
    return ray[order], t[order], entry[order]
