"""The PyTorch renderer (``"torch"``): differentiable DRRs, depth maps and resampling.

Runs wherever PyTorch runs (CPU, CUDA), in float32 or float64, and carries gradients to the poses
(a ``camera_from_world`` tensor with ``requires_grad``) and to the volume (``requires_grad=True``,
or a μ tensor given to :meth:`TorchRenderer.from_tensor`).

Sampling model (shared with the OpenGL backend, so that both render the same field):
    * **The μ field.** μ(x) at an index-space point x is the trilinear interpolation of the voxel
      values with **zero padding**: the volume is taken to be surrounded by voxels of value 0, so
      between the outermost voxel centre (index ``n − 1``) and the padding centre (index ``n``)
      the field falls linearly to 0; at the voxel edge ``n − ½`` it is half the edge voxel's
      value. Rays are **clipped to the voxel-edge box** ``[−½, n − ½]`` on every axis, and to
      ``t ≥ 0`` (in front of the source): nothing outside the box contributes.
    * **DRR.** Pixel value = ``∫ μ dl`` (μ in 1/mm, l in mm) along the ray through the pixel
      centre, by the midpoint rule on cells no longer than ``step_mm`` along the ray. The cells
      are the slabs between equally spaced planes perpendicular to the index axis a view's rays
      run most along; each is sampled where the ray crosses its mid-plane, and the two end cells
      are weighted by the part of them inside the box (so the weights add up to the clipped
      length exactly). The number of cells per voxel is the least multiple of 1/32 that keeps
      every ray of the view's whole detector at or under ``step_mm``: it depends on the view
      alone, so a pixel's value does not depend on the roi, the pixel list or the other views of
      the batch. On a mid-plane, trilinear interpolation is bilinear interpolation in a slice
      (blended once per plane from the two voxel slices around it), which
      :func:`torch.nn.functional.grid_sample` does for all the rays of a batch at once (see
      :mod:`regkit.render._torch_kernels`). The OpenGL backend integrates the same field with
      ``ceil(L / step_mm)`` equal segments per ray instead: the two agree to the quadrature
      error, a fraction of a percent at the default step.
    * **Bones in a DRR.** ``bones=[...]`` renders μ · 1[label ∈ bones]: the label mask is applied
      to the voxels **before** interpolation (one masked volume, interpolated as above).
    * **Depth maps.** The surface of a set of bones is the 0.5 level set of the union's binary
      mask (1 in a voxel whose label is one of the bones), interpolated trilinearly with zero
      padding, outside the box counting as 0. Each ray samples it on the same mid-planes as the
      DRR (at most ``step_mm`` apart); a change of side between two samples is refined by 24
      bisection steps on the exact trilinear field (float64), i.e. to ``step_mm · 2⁻²⁴``.
      Crossings thinner than a step can be missed. Layer ``l`` holds the ``l``-th entry and exit
      in order of distance; ``layers`` counts every entry. Depth maps carry no gradients.
    * **bone_index** is the label of the bone that dominates the first crossing into the union:
      of the given bones, the one whose own trilinear mask is largest at that point (for bones
      that do not touch this is the bone the ray enters first).
    * **Resampling** interpolates the volume's values **as stored** (HU stays HU; the μ tensor for
      :meth:`TorchRenderer.from_tensor`) trilinearly at ``moving_index_from_fixed_index ·
      (i, j, k)`` for every fixed voxel. The mask is True where that point lies inside the moving
      volume's voxel-centre box ``[0, n − 1]`` on every axis, with a slack of 1e-3 voxel for
      rounding (inside the slack the coordinate is clamped to the box); ``fill`` elsewhere.

Memory: rays are marched in blocks of at most ``chunk_rays`` rays and about 1 M samples on the
CPU (16 M on CUDA), some 16 bytes a sample, plus one block of blended slices; a 512² DRR of a
512³ volume needs a few hundred MB beyond the volume. With gradients, autograd keeps every block's
grid and slices. Resampling without gradients keeps a padded 4-fold copy of the volume (volumes of
up to 2²⁴ voxels; larger ones take the slower 8-gather path).
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from regkit.errors import BackendUnavailableError, FrameError, InputError, ShapeError
from regkit.render import _torch_kernels as kern
from regkit.render.base import (
    DepthMaps,
    Renderer,
    Resampled,
    Views,
    check_grid_shape,
    check_roi,
    default_step_mm,
    renderers,
)
from regkit.render.base import (
    bone_key as _bone_key,
)

__all__ = ["TorchRenderer"]

_CPU_SAMPLES_PER_BLOCK = 1 << 20
_CUDA_SAMPLES_PER_BLOCK = 1 << 24
_CPU_RAYS_PER_BLOCK = 1 << 16
_CUDA_RAYS_PER_BLOCK = 1 << 20
_RESAMPLE_POINTS_PER_BLOCK = 1 << 16
_MAX_PACKED_VOXELS = 1 << 24  # the fast resampling path keeps 4 copies of the volume
_RESAMPLE_TOLERANCE = 1e-3  # voxels of slack around the moving voxel-centre box
_RIGID_ATOL = 1e-4
_MAX_CACHED_BONE_SETS = 4
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


def _dtype(dtype: Any) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"must be torch.float32 or torch.float64, got {dtype!r}", key="dtype")
    return dtype


def _as_tensor64(x: Any, name: str, device: torch.device) -> torch.Tensor:
    """``x`` as a float64 tensor on ``device`` (keeps the autograd graph of a tensor)."""
    if isinstance(x, torch.Tensor):
        t = x.to(device=device, dtype=torch.float64)
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"must be an array of numbers, got {type(x).__name__}",
                             key=name) from None
        t = torch.from_numpy(np.array(arr, dtype=np.float64, copy=True)).to(device)
    if not bool(torch.isfinite(t.detach()).all()):
        raise InputError("contains NaN or infinite values", key=name)
    return t




def _compact_labels(labels: np.ndarray) -> np.ndarray:
    """The label map in the smallest integer dtype torch holds that fits its values."""
    lo = int(labels.min()) if labels.size else 0
    hi = int(labels.max()) if labels.size else 0
    for dt in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.array(labels, dtype=dt, order="C")
    return np.array(labels, dtype=np.int64, order="C")


def _present_labels(labels: np.ndarray) -> frozenset[int]:
    if labels.size == 0:
        return frozenset()
    lo, hi = int(labels.min()), int(labels.max())
    if lo >= 0 and hi < (1 << 20):
        counts = np.bincount(labels.ravel().astype(np.int64, copy=False), minlength=hi + 1)
        return frozenset(int(v) for v in np.flatnonzero(counts))
    return frozenset(int(v) for v in np.unique(labels))


def _border_pixels(width: int, height: int, device: torch.device) -> torch.Tensor:
    """``(1, N, 2)`` float64 centres ``(u, v)`` of the detector's outermost pixels."""
    u = torch.arange(width, dtype=torch.float64, device=device) + 0.5
    v = torch.arange(height, dtype=torch.float64, device=device) + 0.5
    top = torch.stack([u, torch.full_like(u, 0.5)], dim=-1)
    bottom = torch.stack([u, torch.full_like(u, height - 0.5)], dim=-1)
    left = torch.stack([torch.full_like(v, 0.5), v], dim=-1)
    right = torch.stack([torch.full_like(v, width - 0.5), v], dim=-1)
    return torch.cat([top, bottom, left, right])[None]


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
    _present: frozenset[int] | None
    _raw_np: np.ndarray | None
    _raw: torch.Tensor | None
    _packed: torch.Tensor | None
    _cache_values: bool
    _bone_mu: OrderedDict[tuple[int, ...], torch.Tensor]
    _bone_mask: OrderedDict[tuple[int, ...], torch.Tensor]
    _bone_box: dict[tuple[int, ...], tuple[tuple[int, int, int], tuple[int, int, int]]]

    def __init__(self, volume: Any, *, step_mm: float | None = None, device: Any = None,
                 dtype: Any = torch.float32, requires_grad: bool = False,
                 chunk_rays: int | None = None, mu_water: float = 0.02):
        from regkit.volume import Volume, hu_to_mu

        if not isinstance(volume, Volume):
            raise InputError(f"expected a regkit Volume, got {type(volume).__name__} (use "
                             "TorchRenderer.from_tensor for a tensor of μ)", key="volume")
        dev, dt = _device(device), _dtype(dtype)
        if volume.units == "HU":
            mu_np = hu_to_mu(volume.data, mu_water)
        else:
            mu_np = np.asarray(volume.data, dtype=np.float64 if dt == torch.float64
                               else np.float32)
        if not mu_np.flags.writeable or not mu_np.flags.c_contiguous:
            mu_np = np.array(mu_np, order="C")  # torch cannot wrap read-only memory
        mu = torch.from_numpy(mu_np).to(device=dev, dtype=dt)
        if requires_grad:
            mu.requires_grad_(True)
        self._setup(mu, volume.world_from_index, volume.labels, step_mm=step_mm, device=dev,
                    dtype=dt, chunk_rays=chunk_rays, raw=np.asarray(volume.data))

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
            step_mm, chunk_rays: As in the constructor.
            device: Default: the tensor's device.
            dtype: Default: the tensor's dtype if float32 or float64, else float32.

        Returns:
            The renderer. :meth:`resample` resamples ``mu`` itself.
        """
        if not isinstance(mu, torch.Tensor):
            raise InputError(f"mu must be a torch tensor, got {type(mu).__name__}", key="mu")
        if mu.ndim != 3 or not mu.is_floating_point():
            raise ShapeError(f"mu must be a real (I, J, K) tensor, got shape {tuple(mu.shape)} "
                             f"and dtype {mu.dtype}")
        if not bool(torch.isfinite(mu.detach()).all()):
            raise InputError("contains NaN or infinite values", key="mu")
        dev = _device(mu.device if device is None else device)
        if dtype is None:
            dtype = mu.dtype if mu.dtype in (torch.float32, torch.float64) else torch.float32
        dt = _dtype(dtype)
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
        if step_mm is None:
            self.step_mm = default_step_mm(self.spacing)
        else:
            if isinstance(step_mm, bool) or not isinstance(step_mm, numbers.Real) \
                    or not (math.isfinite(float(step_mm)) and float(step_mm) > 0):
                raise InputError(f"must be a positive number of mm, got {step_mm!r}",
                                 key="step_mm")
            self.step_mm = float(step_mm)
        cuda = device.type == "cuda"
        if chunk_rays is None:
            chunk_rays = _CUDA_RAYS_PER_BLOCK if cuda else _CPU_RAYS_PER_BLOCK
        if isinstance(chunk_rays, bool) or not isinstance(chunk_rays, numbers.Integral) \
                or chunk_rays < 1:
            raise InputError(f"must be a whole number >= 1, got {chunk_rays!r}",
                             key="chunk_rays")
        self.chunk_rays = int(chunk_rays)
        self._samples_per_block = _CUDA_SAMPLES_PER_BLOCK if cuda else _CPU_SAMPLES_PER_BLOCK
        self._labels_np = None if labels is None else _compact_labels(np.asarray(labels))
        self._labels = None
        if self._labels_np is not None:
            self._labels = torch.from_numpy(self._labels_np).to(device)
        self._present = None
        self._raw_np = raw
        self._raw = None
        self._packed = None
        # Values derived from μ are cached only when μ is ours (a Volume's copy), not a tensor the
        # caller may change in place.
        self._cache_values = raw is not None
        self._bone_mu = OrderedDict()
        self._bone_mask = OrderedDict()
        self._bone_box = {}

    def __repr__(self) -> str:
        return (f"TorchRenderer(shape={self.shape}, step_mm={self.step_mm:g}, "
                f"device={self.device}, dtype={self.dtype})")

    # ------------------------------------------------------------------ volume access
    @property
    def mu(self) -> torch.Tensor:
        """``(I, J, K)`` attenuation in 1/mm on the renderer's device and dtype."""
        return self._mu_source.to(device=self.device, dtype=self.dtype)

    def _bones(self, bones: Any) -> tuple[int, ...]:
        key = _bone_key(bones)
        if self._labels_np is None:
            raise InputError("the volume has no label map, so bones cannot be selected",
                             key="bones")
        if self._present is None:
            self._present = _present_labels(self._labels_np)
        missing = [b for b in key if b not in self._present]
        if missing:
            shown = sorted(self._present - {0})
            listing = ", ".join(str(v) for v in shown[:20]) + (" ..." if len(shown) > 20 else "")
            raise InputError(f"label(s) {missing} do not occur in the label map (labels present: "
                             f"{listing or 'none'})", key="bones")
        return key

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

    def _mask_box(self, key: tuple[int, ...]) -> tuple[tuple[int, int, int],
                                                         tuple[int, int, int]]:
        """Index box ``[lo, hi)`` of the union of ``key`` with a 2-voxel margin (cached).

        The trilinear mask is below 0.5 more than a voxel away from the bones, so depth rays
        are marched only across this box (:func:`~regkit.render._torch_kernels.restrict_to_box`):
        the same crossings, found at a fraction of the cost for a small bone.
        """
        found = self._bone_box.get(key)
        if found is None:
            mask = self._mask_for(key)
            lo: list[int] = []
            hi: list[int] = []
            for ax in range(3):
                nz = torch.nonzero(mask.amax(dim=tuple(a for a in range(3) if a != ax)))
                if nz.numel() == 0:
                    lo, hi = [0, 0, 0], [0, 0, 0]
                    break
                lo.append(max(int(nz.min()) - 2, 0))
                hi.append(min(int(nz.max()) + 3, self.shape[ax]))
            found = ((lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2]))
            self._bone_box[key] = found
        return found

    def _mu_for(self, bones: Any) -> torch.Tensor:
        mu = self.mu
        if bones is None:
            return mu
        key = self._bones(bones)
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
        if not isinstance(views, Views):
            raise InputError(f"expected regkit.render.Views, got {type(views).__name__}",
                             key="views")
        k = _as_tensor64(views.intrinsic, "intrinsic", self.device)
        t = _as_tensor64(views.camera_from_world, "camera_from_world", self.device)
        kd = k.detach()
        if bool(((kd[:, 0, 0] <= 0) | (kd[:, 1, 1] <= 0)).any()):
            raise InputError("focal lengths must be positive", key="intrinsic")
        rot = t.detach()[:, :3, :3]
        err = (rot.transpose(-1, -2) @ rot - torch.eye(3, dtype=rot.dtype, device=rot.device))
        if float(err.abs().max()) > _RIGID_ATOL or \
                float((torch.linalg.det(rot) - 1.0).abs().max()) > _RIGID_ATOL:
            raise FrameError("camera_from_world must be rigid (orthonormal rotation, det +1)")
        return k, t

    def _pixels(self, views: Views, roi: Any, pixels: Any,
                batch: int) -> tuple[torch.Tensor, tuple[int, ...]]:
        if roi is not None and pixels is not None:
            raise InputError("give either roi or pixels, not both", key="roi")
        if pixels is not None:
            uv = _as_tensor64(pixels, "pixels", self.device)
            if uv.ndim == 2:
                uv = uv[None]
            if uv.ndim != 3 or uv.shape[-1] != 2 or uv.shape[0] not in (1, batch):
                raise ShapeError(f"pixels must have shape (P, 2) or (B, P, 2) with B = {batch}, "
                                 f"got {tuple(np.shape(pixels))}")
            return uv, (batch, int(uv.shape[1]))
        u0, v0, w, h = check_roi(roi, views.width, views.height)
        return _pixel_centres(u0, v0, w, h, self.device), (batch, h, w)

    def _rays(self, k: torch.Tensor, t: torch.Tensor,
              uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sources ``(B, 3)`` and directions ``(B, P, 3)`` (voxels per mm) in index space."""
        rot = t[:, :3, :3]
        src_world = -(rot.transpose(-1, -2) @ t[:, :3, 3:])[..., 0]
        x = (uv[..., 0] - k[:, None, 0, 2]) / k[:, None, 0, 0]
        y = (uv[..., 1] - k[:, None, 1, 2]) / k[:, None, 1, 1]
        d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)          # (B, P, 3)
        d_world = d_cam @ rot                                             # Rᵀ d per row
        d_world = d_world / d_world.norm(dim=-1, keepdim=True)
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
        probe = _border_pixels(views.width, views.height, self.device)
        if uv is not None:
            probe = torch.cat([probe.expand(uv.shape[0], -1, -1), uv.detach()], dim=1)
        _, d = self._rays(k.detach(), t.detach(), probe)
        groups: dict[tuple[int, int], list[int]] = {}
        for b, key in enumerate(kern.choose_axes(d, self.shape, self.step_mm)):
            groups.setdefault(key, []).append(b)
        return groups

    def _group_rays(self, o: torch.Tensor, d: torch.Tensor, members: list[int], axis: int,
                    n_cells: int) -> kern.PlaneRays:
        idx = torch.tensor(members, device=self.device)
        n_pix = d.shape[1]
        og = o.index_select(0, idx)[:, None, :].expand(-1, n_pix, -1).reshape(-1, 3)
        dg = d.index_select(0, idx).reshape(-1, 3)
        return kern.plane_rays(og, dg, self.shape, axis, n_cells, self.dtype)

    # ------------------------------------------------------------------ DRR
    def drr(self, views: Views, *, roi: tuple[int, int, int, int] | None = None,
            pixels: Any = None, bones: Sequence[int] | None = None) -> torch.Tensor:
        """Line integrals of μ along each pixel's ray (see :meth:`Renderer.drr`).

        Returns:
            ``(B, H, W)``, ``(B, h, w)`` for a ``roi`` or ``(B, P)`` for ``pixels``; the
            renderer's dtype and device, dimensionless. Differentiable with respect to the pose,
            the intrinsics, the pixel coordinates and (see the class) the volume.
        """
        k, t = self._poses(views)
        uv, out_shape = self._pixels(views, roi, pixels, k.shape[0])
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
            out = torch.stack([v for v in per_view if v is not None])
        return out.reshape(out_shape)

    # ------------------------------------------------------------------ depth
    def _crossings(self, views: Views, key: tuple[int, ...]) -> tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """All crossings of the union's surface, sorted by ray then distance.

        Returns:
            ``ray`` (N,) global ray index ``view · H·W + pixel``, ``t`` (N,) float64 mm,
            ``entry`` (N,) bool, sources ``o`` (B, 3) and directions ``d`` (B, P, 3) in index
            space, and the number of rays.
        """
        k, t = self._poses(views)
        mask = self._mask_for(key)
        uv = _pixel_centres(0, 0, views.width, views.height, self.device)
        with torch.no_grad():
            o, d = self._rays(k.detach(), t.detach(), uv)
            n_pix = d.shape[1]
            rays_all, t_all, e_all = [], [], []
            for (axis, cells), members in self._groups(k, t, views, None).items():
                rays = kern.restrict_to_box(self._group_rays(o, d, members, axis, cells),
                                            *self._mask_box(key))
                r, tt, entry = kern.march_crossings(
                    mask, rays, samples_per_block=self._samples_per_block,
                    rays_per_block=self.chunk_rays)
                view = torch.tensor(members, device=self.device)[r // n_pix]
                rays_all.append(view * n_pix + r % n_pix)
                t_all.append(tt)
                e_all.append(entry)
            r = torch.cat(rays_all)
            tt = torch.cat(t_all)
            entry = torch.cat(e_all)
            order = torch.argsort(tt, stable=True)
            order = order[torch.argsort(r[order], stable=True)]
        return r[order], tt[order], entry[order], o, d, d.shape[0] * n_pix

    @staticmethod
    def _ranks(ray: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
        """Rank of each flagged crossing among the flagged ones of its ray (sorted input)."""
        f = flag.long()
        before = f.cumsum(0) - f
        start = torch.searchsorted(ray, ray)
        return before - before[start]

    def depth(self, views: Views, bones: Sequence[int], *, layers: int = 2) -> DepthMaps:
        """Front and back crossings of the union of ``bones`` (see :meth:`Renderer.depth`).

        Returns:
            :class:`DepthMaps` with ``front``/``back`` ``(B, layers, H, W)`` mm (renderer dtype,
            NaN where there is no such layer) and ``layers`` ``(B, H, W)`` uint8.
        """
        if isinstance(layers, bool) or not isinstance(layers, numbers.Integral) or layers < 1:
            raise InputError(f"must be a whole number >= 1, got {layers!r}", key="layers")
        n_layers = int(layers)
        key = self._bones(bones)
        ray, t, entry, _, _, n_rays = self._crossings(views, key)
        front = torch.full((n_rays, n_layers), _NAN, dtype=torch.float64, device=self.device)
        back = torch.full_like(front, _NAN)
        rank_in = self._ranks(ray, entry)
        rank_out = self._ranks(ray, ~entry)
        sel = entry & (rank_in < n_layers)
        front[ray[sel], rank_in[sel]] = t[sel]
        sel = ~entry & (rank_out < n_layers)
        back[ray[sel], rank_out[sel]] = t[sel]
        count = torch.bincount(ray[entry], minlength=n_rays).clamp(max=255).to(torch.uint8)
        batch, h, w = views.batch, views.height, views.width

        def layout(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, h, w, n_layers).permute(0, 3, 1, 2).contiguous().to(self.dtype)

        return DepthMaps(front=layout(front), back=layout(back),
                         layers=count.view(batch, h, w))

    def bone_index(self, views: Views, bones: Sequence[int]) -> torch.Tensor:
        """``(B, H, W)`` int32: the bone that dominates each ray's first entry, 0 where none."""
        key = self._bones(bones)
        ray, t, entry, o, d, n_rays = self._crossings(views, key)
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
            scores = torch.stack([(weights * (labs == b)).sum(dim=1) for b in key], dim=1)
            best = torch.tensor(key, device=self.device, dtype=torch.int32)[scores.argmax(dim=1)]
            out[r] = best
        return out.view(views.batch, views.height, views.width)

    # ------------------------------------------------------------------ resampling
    def _resample_source(self) -> torch.Tensor:
        if self._raw_np is None:
            return self.mu
        if self._raw is None:
            raw = np.array(self._raw_np, dtype=self._raw_np.dtype, order="C")
            self._raw = torch.from_numpy(raw).to(
                device=self.device, dtype=self.dtype)
        return self._raw

    def resample(self, fixed_shape: Sequence[int], fixed_world_from_index: Any,
                 fixed_from_moving: Any, *, fill: float = 0.0) -> Resampled:
        """Warp the bound volume onto a fixed grid under B transforms, trilinearly.

        Values are the volume's own (HU stays HU; μ for :meth:`from_tensor`). See
        :meth:`Renderer.resample` and the module docstring for the mask.

        Args:
            fixed_shape: ``(I, J, K)`` of the target grid.
            fixed_world_from_index: ``(4, 4)`` index → world (mm) affine of the target grid.
            fixed_from_moving: ``(B, 4, 4)`` transforms, moving world mm → fixed world mm
                (numpy, or a tensor that may carry gradients).
            fill: Value outside the moving volume.

        Returns:
            :class:`Resampled` with ``values`` ``(B, I, J, K)`` (renderer dtype) and ``mask``.
        """
        shape = check_grid_shape(fixed_shape)
        fixed = _as_tensor64(fixed_world_from_index, "fixed_world_from_index", self.device)
        if tuple(fixed.shape) != (4, 4):
            raise ShapeError(f"fixed_world_from_index must be 4x4, got shape "
                             f"{tuple(fixed.shape)}")
        maps = _as_tensor64(fixed_from_moving, "fixed_from_moving", self.device)
        if maps.ndim != 3 or tuple(maps.shape[1:]) != (4, 4) or maps.shape[0] < 1:
            raise ShapeError(f"fixed_from_moving must have shape (B, 4, 4), got "
                             f"{tuple(maps.shape)}")
        if isinstance(fill, bool) or not isinstance(fill, numbers.Real) \
                or not math.isfinite(float(fill)):
            raise InputError(f"must be a finite number, got {fill!r}", key="fill")
        if bool((torch.linalg.det(maps.detach()[:, :3, :3]).abs() < 1e-12).any()):
            raise InputError("a transform is singular", key="fixed_from_moving")
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
                    src, packed, index_maps[b, :3].to(self.dtype), shape, fill=float(fill),
                    tolerance=_RESAMPLE_TOLERANCE, points_per_block=_RESAMPLE_POINTS_PER_BLOCK,
                    out_values=values[b], out_mask=mask[b])
                if not grad and res.data_ptr() != values[b].data_ptr():
                    values[b].copy_(res)  # the general path returns a new tensor
                pieces.append(res)
            if grad:
                values = torch.stack(pieces)
        return Resampled(values=values, mask=mask)
