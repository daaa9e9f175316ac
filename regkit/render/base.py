"""The one renderer contract shared by every backend (PyTorch, OpenGL).

A renderer is bound to one volume when it is built, so that whatever a backend prepares (a 3-D
texture, a padded tensor, a label mask) is prepared once and reused for thousands of renders. Every
backend returns the same output types: float32 torch tensors (or the renderer's dtype) on the
renderer's device (CPU for OpenGL), with the shapes and units of ``docs/CONVENTIONS.md``.
:class:`Renderer`'s public methods check every argument once and call the backend's private
method, so every backend refuses bad input the same way.

Convention:
    * DRR pixel = ∫ μ dl along the pixel's ray (μ in 1/mm, l in mm), dimensionless, clipped to the
      volume's box (the voxel-edge box ``[-0.5, n - 0.5]`` in index space per axis).
    * Depths are distances in mm along the ray from the source, to where it enters (front) and
      leaves (back) the 0.5 level set of the trilinearly interpolated binary bone mask; NaN where
      there is no such crossing. Layer ``l`` holds the ``l``-th entry and exit, nearest first.
    * Resampling maps each target voxel centre ``x_fixed`` to ``moving_from_fixed · x_fixed`` and
      interpolates the moving volume trilinearly there; outside the moving volume's voxel-centre box
      the value is ``fill`` and the mask is False.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from regkit.errors import BackendUnavailableError, InputError, ShapeError
from regkit.geometry.camera import Camera, stack_cameras
from regkit.registry import Registry
from regkit.render._checks import (
    bone_key,
    bone_list,
    check_bones_present,
    check_grid_shape,
    check_layers,
    check_pixels,
    check_poses,
    check_roi,
    check_transforms,
    default_step_mm,
)
from regkit.utils.checks import is_real, is_whole

__all__ = [
    "DepthMaps",
    "Renderer",
    "Resampled",
    "Views",
    "bone_key",
    "check_grid_shape",
    "check_roi",
    "default_step_mm",
    "renderers",
]

renderers: Registry[type[Renderer]] = Registry("renderer backend",
                                                entry_point_group="regkit.renderers")


@dataclass(frozen=True, eq=False)
class Views:
    """A batch of B views sharing one detector size.

    Attributes:
        intrinsic: ``(B, 3, 3)`` K in pixels (numpy or torch).
        camera_from_world: ``(B, 4, 4)`` rigid poses (numpy or torch; a torch tensor may carry
            gradients for a differentiable backend).
        height, width: Detector size in pixels.
    """

    intrinsic: Any
    camera_from_world: Any
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("intrinsic", "camera_from_world"):
            value = getattr(self, name)
            if not isinstance(value, (np.ndarray, torch.Tensor)):   # nested lists
                try:
                    object.__setattr__(self, name, np.asarray(value, dtype=np.float64))
                except (TypeError, ValueError):
                    raise InputError(f"must be an array of numbers, got "
                                     f"{type(value).__name__}", key=name) from None
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
                value = value.item()          # a 0-d array or tensor holding the size
            if not (is_whole(value) or (is_real(value) and float(value).is_integer())):
                raise InputError(f"must be a whole number of pixels, got {value!r}", key=name)
            object.__setattr__(self, name, int(value))
        k, t = self.intrinsic, self.camera_from_world
        if tuple(k.shape[-2:]) != (3, 3) or tuple(t.shape[-2:]) != (4, 4) or k.ndim != 3 \
                or t.ndim != 3 or k.shape[0] != t.shape[0]:
            raise ShapeError(f"views need intrinsic (B, 3, 3) and camera_from_world (B, 4, 4) "
                             f"with equal B, got {tuple(k.shape)} and {tuple(t.shape)}")
        if self.height < 1 or self.width < 1:
            raise ShapeError(f"detector size must be positive, got {self.width} x {self.height}")

    @classmethod
    def from_cameras(cls, cameras: Camera | Sequence[Camera]) -> Views:
        """Stack cameras (equal detector sizes) into a batch."""
        if isinstance(cameras, Camera):
            cameras = [cameras]
        k, t, h, w = stack_cameras(cameras)
        return cls(k, t, h, w)

    @property
    def batch(self) -> int:
        """B, the number of views."""
        return int(self.intrinsic.shape[0])


@dataclass(frozen=True, eq=False)
class DepthMaps:
    """Front and back bone-surface crossings per ray, in the depth-file layout.

    Attributes:
        front: ``(B, L, H, W)`` float32 mm from the source to the l-th entry; NaN where none.
        back: ``(B, L, H, W)`` float32 mm to the l-th exit; NaN where none.
        layers: ``(B, H, W)`` uint8, how many entries each ray made in all (may exceed L).

    From :meth:`Renderer.depth_stack` every array has a bone axis after the batch axis:
    ``(B, NB, L, H, W)`` and ``(B, NB, H, W)``; the methods work on either layout.
    """

    front: torch.Tensor
    back: torch.Tensor
    layers: torch.Tensor

    @property
    def hit(self) -> torch.Tensor:
        """``(B, H, W)`` (or ``(B, NB, H, W)``) bool, rays that entered the bone at least once."""
        return self.layers > 0

    def thickness(self) -> torch.Tensor:
        """The bone thickness along each ray, float32 mm.

        ``(B, H, W)`` (or ``(B, NB, H, W)``): sum over the stored layers of back − front (0 on a
        miss).
        """
        return torch.nan_to_num(self.back - self.front, nan=0.0).sum(dim=-3)

    def to_numpy(self) -> dict[str, np.ndarray]:
        """The arrays of a depth file: ``front``, ``back`` (float32) and ``layers`` (uint8)."""
        return {
            "front": self.front.detach().cpu().numpy().astype(np.float32),
            "back": self.back.detach().cpu().numpy().astype(np.float32),
            "layers": self.layers.detach().cpu().numpy().astype(np.uint8),
        }


@dataclass(frozen=True, eq=False)
class Resampled:
    """A batch of volumes resampled onto one target grid.

    Attributes:
        values: ``(B, I, J, K)`` resampled values (float32 unless the renderer's dtype says else).
        mask: ``(B, I, J, K)`` bool, True where the target voxel mapped inside the moving volume.
    """

    values: torch.Tensor
    mask: torch.Tensor


R = TypeVar("R", bound="Renderer")


class Renderer(ABC):
    """A DRR, depth-map and resampling engine bound to one volume.

    The public methods are the contract, the same for every backend: each checks and normalises
    its arguments once (through :mod:`regkit.render._checks`, so every backend refuses the same
    inputs with the same error class, ``key`` and message), calls the backend's private method
    with values it can trust, and wraps what comes back in the contract's output types, as
    :meth:`regkit.metrics.Metric.__call__` does for ``forward``.

    A backend sets the class attributes and implements ``__init__``, :meth:`_label_values`,
    :meth:`_drr`, :meth:`_depth`, :meth:`_bone_index` and :meth:`_resample`; it may override
    :meth:`_depth_stack` (a faster way to render many bones) and :meth:`_release` (what
    :meth:`close` frees). Its constructor takes ``(volume, *, step_mm=None, device=None,
    dtype=None, requires_grad=False, **options)``, checks the shared options with
    :func:`~regkit.render._checks.common_options`, and raises
    :class:`~regkit.errors.BackendUnavailableError` when the backend cannot run here.

    A renderer holds resources (GL textures, cached tensors): use it as a context manager or
    call :meth:`close` to free them at once; a closed renderer refuses every call.

    Attributes:
        backend: The registry name (``"torch"``, ``"gl"``).
        differentiable: Whether outputs carry gradients to the pose and the volume.
        devices: Device kinds the backend runs on (``("cpu", "cuda")``).
    """

    backend: ClassVar[str]
    differentiable: ClassVar[bool]
    devices: ClassVar[tuple[str, ...]]
    _closed: bool = False

    @abstractmethod
    def __init__(self, volume: Any, *, step_mm: float | None = None, device: Any = None,
                 dtype: Any = None, requires_grad: bool = False, **options: Any) -> None:
        """Bind the backend to ``volume`` and prepare it (see the class docstring)."""

    # ------------------------------------------------------------------ life cycle
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def close(self) -> None:
        """Free what the renderer holds (GL objects, cached tensors) now; idempotent.

        Every later call of a rendering method raises :class:`~regkit.errors.InputError` (key
        ``renderer``) rather than work on freed resources.
        """
        if self._closed:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        """Free the backend's resources (called once, by :meth:`close`); default: nothing."""
        return None

    def __enter__(self: R) -> R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise InputError(f"this {type(self).__name__} has been closed; build a new one",
                             key="renderer")

    # ------------------------------------------------------------------ the contract
    def drr(self, views: Views, *, roi: tuple[int, int, int, int] | None = None,
            pixels: Any = None, bones: Sequence[int] | None = None) -> torch.Tensor:
        """Line integrals of μ along each pixel's ray.

        Dimensionless, in the renderer's dtype (float32 by default) and on its device.

        Args:
            views: B views.
            roi: Only the pixels ``[v0, v0 + h) × [u0, u0 + w)`` given as ``(u0, v0, w, h)``;
                the output is then ``(B, h, w)``. Default: the whole detector.
            pixels: Only these pixel coordinates ``(P, 2)`` or ``(B, P, 2)`` as ``(u, v)``
                (pixels, centre of the first at 0.5); the output is then ``(B, P)``. Not with
                ``roi``.
            bones: Only the voxels whose label is one of these (needs a label map).

        Returns:
            ``(B, H, W)`` (or as above).

        Raises:
            InputError: ``views`` not :class:`Views`; NaN/inf or non-positive focal lengths;
                pose tensors that require gradients on a backend that is not differentiable;
                both ``roi`` and ``pixels``; a ``roi`` off the detector; bad or absent bones;
                a closed renderer.
            ShapeError: ``pixels`` of another shape.
            FrameError: a pose that is not rigid.
        """
        checked = self._views(views)
        self._refuse_lost_gradients(("intrinsic", views.intrinsic),
                                    ("camera_from_world", views.camera_from_world))
        if roi is not None and pixels is not None:
            raise InputError("give either roi or pixels, not both", key="roi")
        if pixels is not None:
            uv = check_pixels(pixels, checked.batch)
            shape: tuple[int, ...] = (checked.batch, int(uv.shape[1]))
            key = None if bones is None else self._bones(bones)
            out = self._drr(checked, roi=None, pixels=uv, bones=key)
        else:
            box = check_roi(roi, checked.width, checked.height)
            shape = (checked.batch, box[3], box[2])
            key = None if bones is None else self._bones(bones)
            out = self._drr(checked, roi=box, pixels=None, bones=key)
        return out.reshape(shape)

    def depth(self, views: Views, bones: Sequence[int], *, layers: int = 2) -> DepthMaps:
        """Front and back crossings of the surface of the union of ``bones`` (ray-marched).

        Args:
            views: B views.
            bones: The labels whose union's surface is found (at least one; needs a label map).
            layers: How many entries and exits to keep per ray, nearest first (default 2:
                most bones are crossed once, a few twice).

        Returns:
            :class:`DepthMaps`: ``front``/``back`` ``(B, layers, H, W)`` mm (NaN where there is
            no such crossing), ``layers`` ``(B, H, W)`` uint8 (all entries, saturating at 255).

        Raises:
            InputError: as :meth:`drr` for ``views`` and ``bones``; ``layers`` not >= 1.
        """
        checked = self._views(views)
        key = self._bones(bones)
        n_layers = check_layers(layers)
        return _stamp(self._depth(checked, key, n_layers))

    def depth_per_bone(self, views: Views, bones: Sequence[int], *,
                       layers: int = 2) -> list[DepthMaps]:
        """One :class:`DepthMaps` per bone, in the order given.

        Each is that of ``depth(views, [b], layers=layers)``; an empty list for no bones.

        This default calls :meth:`depth` once per bone; a backend may do better (as a slice
        of :meth:`depth_stack`).
        """
        checked = self._views(views)
        n_layers = check_layers(layers)
        return [_stamp(self._depth(checked, self._bones([b]), n_layers)) for b in bone_list(bones)]

    def depth_stack(self, views: Views, bones: Sequence[int], *, layers: int = 2) -> DepthMaps:
        """Each bone's own maps, as :meth:`depth_per_bone` gives them, on a bone axis.

        Every bone is rendered only where it can be (the backends march each bone within its
        own bounding box and the pixels whose rays cross it), so that many small bones on a
        large detector cost little more than their own footprint.

        Returns:
            :class:`DepthMaps` with ``front``/``back`` ``(B, NB, L, H, W)`` and ``layers``
            ``(B, NB, H, W)``, bones in the order given (a repeated bone gets its own copy).

        Raises:
            InputError: as :meth:`depth`, and no bones at all.
        """
        checked = self._views(views)
        n_layers = check_layers(layers)
        wanted = bone_list(bones)
        if not wanted:
            raise InputError("no bones given", key="bones")
        unique = self._bones(wanted)
        maps = _stamp(self._depth_stack(checked, unique, n_layers))
        rows = [unique.index(b) for b in wanted]
        if rows == list(range(len(unique))):
            return maps
        index = torch.tensor(rows, device=maps.front.device)
        return DepthMaps(front=maps.front.index_select(1, index),
                         back=maps.back.index_select(1, index),
                         layers=maps.layers.index_select(1, index))

    def bone_index(self, views: Views, bones: Sequence[int]) -> torch.Tensor:
        """``(B, H, W)`` int32: the label of the first bone each ray enters, 0 where none.

        Of the given bones, the one whose own trilinear mask is largest just past the ray's
        first entry into their union (the bone it enters first, for bones that do not touch).

        Raises:
            InputError: as :meth:`depth`.
        """
        checked = self._views(views)
        key = self._bones(bones)
        out = self._bone_index(checked, key)
        return out.to(torch.int32).reshape(checked.batch, checked.height, checked.width)

    def resample(self, fixed_shape: Sequence[int], fixed_world_from_index: Any,
                 fixed_from_moving: Any, *, fill: float = 0.0) -> Resampled:
        """Warp the bound (moving) volume under B transforms onto a fixed grid, trilinearly.

        Values are the volume's own as stored (HU stays HU), in the renderer's dtype.

        Args:
            fixed_shape: ``(I, J, K)`` of the target grid.
            fixed_world_from_index: ``(4, 4)`` index → world (mm) affine of the target grid.
            fixed_from_moving: ``(B, 4, 4)`` transforms (rigid or affine), moving world mm to
                fixed world mm (numpy, or a tensor that may carry gradients).
            fill: Value outside the moving volume (default 0).

        Returns:
            :class:`Resampled`: ``values`` and bool ``mask``, ``(B, I, J, K)`` each.

        Raises:
            InputError: a bad ``fixed_shape`` or ``fill``, NaN/inf, a singular transform, a
                closed renderer.
            ShapeError: an affine that is not 4x4, transforms that are not ``(B, 4, 4)``.
        """
        self._check_open()
        self._refuse_lost_gradients(("fixed_world_from_index", fixed_world_from_index),
                                    ("fixed_from_moving", fixed_from_moving))
        shape = check_grid_shape(fixed_shape)
        fixed, maps, fill_value = check_transforms(fixed_world_from_index, fixed_from_moving,
                                                   fill)
        out = self._resample(shape, fixed, maps, fill_value)
        return Resampled(values=out.values, mask=out.mask.to(torch.bool))

    # ------------------------------------------------------------------ shared checks
    def _views(self, views: Any) -> Views:
        """``views`` checked, with float64 tensors that keep any autograd graph.

        Checked: a renderer that is open, :class:`Views`, finite, positive focal lengths, rigid
        poses.
        """
        self._check_open()
        if not isinstance(views, Views):
            raise InputError(f"expected regkit.render.Views, got {type(views).__name__}",
                             key="views")
        k, t = check_poses(views.intrinsic, views.camera_from_world)
        return Views(k, t, views.height, views.width)

    def _refuse_lost_gradients(self, *values: tuple[str, Any]) -> None:
        """Refuse tensors that want gradients where this backend cannot give them.

        A non-differentiable backend works on detached copies, so a pose or transform that
        requires gradients would get none, silently: an optimiser would see a zero gradient.
        """
        if self.differentiable or not torch.is_grad_enabled():
            return
        for name, value in values:
            if isinstance(value, torch.Tensor) and value.requires_grad:
                raise InputError(f"the '{self.backend}' backend is not differentiable: this "
                                 "tensor requires gradients it cannot give; use a "
                                 "differentiable backend (backend='torch'), or detach it or run "
                                 "under torch.no_grad()", key=name)

    def _bones(self, bones: Any) -> tuple[int, ...]:
        """``bones`` as sorted unique labels that the label map holds."""
        key = bone_key(bones)
        check_bones_present(key, self._label_values())
        return key

    # ------------------------------------------------------------------ the backend's part
    @abstractmethod
    def _label_values(self) -> Collection[int] | None:
        """The positive labels of the bound volume's label map; None when it has none."""

    @abstractmethod
    def _drr(self, views: Views, *, roi: tuple[int, int, int, int] | None,
             pixels: torch.Tensor | None, bones: tuple[int, ...] | None) -> torch.Tensor:
        """DRRs of checked arguments: ``(B, h·w)`` (the roi, row-major) or ``(B, P)``.

        Args:
            views: Checked views (float64 tensors, maybe with gradients).
            roi: The checked block ``(u0, v0, w, h)``; None when ``pixels`` is given.
            pixels: ``(1 or B, P, 2)`` float64; None when ``roi`` is given.
            bones: Labels present in the label map, sorted, or None for the whole volume.
        """

    @abstractmethod
    def _depth(self, views: Views, bones: tuple[int, ...], layers: int) -> DepthMaps:
        """:meth:`depth` of checked arguments.

        ``layers`` of the result may be any integer dtype (counts are clipped to 255 and made uint8
        here).
        """

    def _depth_stack(self, views: Views, bones: tuple[int, ...], layers: int) -> DepthMaps:
        """:meth:`depth_stack` of checked, distinct, sorted ``bones`` (one row each).

        This default stacks one :meth:`_depth` per bone; backends override it to render each
        bone only where it can be.
        """
        maps = [_stamp(self._depth(views, (b,), layers)) for b in bones]
        return DepthMaps(front=torch.stack([m.front for m in maps], dim=1),
                         back=torch.stack([m.back for m in maps], dim=1),
                         layers=torch.stack([m.layers for m in maps], dim=1))

    @abstractmethod
    def _bone_index(self, views: Views, bones: tuple[int, ...]) -> torch.Tensor:
        """:meth:`bone_index` of checked arguments, any integer dtype, ``B·H·W`` entries."""

    @abstractmethod
    def _resample(self, shape: tuple[int, int, int], fixed_world_from_index: torch.Tensor,
                  fixed_from_moving: torch.Tensor, fill: float) -> Resampled:
        """:meth:`resample` of checked arguments (float64 tensors, maybe with gradients)."""


def _stamp(maps: DepthMaps) -> DepthMaps:
    """``maps`` with its crossing counts as the contract's uint8 (saturating at 255)."""
    if maps.layers.dtype == torch.uint8:
        return maps
    return DepthMaps(front=maps.front, back=maps.back,
                     layers=maps.layers.clamp(max=255).to(torch.uint8))


def check_backend_available(name: str, available: bool, why: str) -> None:
    """Raise :class:`BackendUnavailableError` with ``why`` when a backend cannot run."""
    if not available:
        raise BackendUnavailableError(f"renderer backend '{name}' is unavailable: {why}")
