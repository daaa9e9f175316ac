"""The one renderer contract shared by every backend (PyTorch, OpenGL).

A renderer is bound to one volume when it is built, so that whatever a backend prepares (a 3-D
texture, a padded tensor, a label mask) is prepared once and reused for thousands of renders. Every
backend returns the same output types: float32 torch tensors on the renderer's device (CPU for
OpenGL), with the shapes and units of ``docs/CONVENTIONS.md``.

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

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from regkit.errors import BackendUnavailableError, InputError, ShapeError
from regkit.geometry.camera import Camera, stack_cameras
from regkit.registry import Registry

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
        """``(B, H, W)`` (or ``(B, NB, H, W)``) float32 mm: sum over the stored layers of
        back − front (0 on a miss)."""
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


def bone_key(bones: Any) -> tuple[int, ...]:
    """Sorted unique positive labels from ``bones``, refusing anything else.

    Every backend validates its ``bones`` arguments through this one function, so they refuse
    the same inputs with the same messages.
    """
    if bones is None or isinstance(bones, numbers.Integral | str | bytes):
        raise InputError(f"must be a sequence of label values, got {bones!r}", key="bones")
    if isinstance(bones, torch.Tensor | np.ndarray):
        bones = np.asarray(bones.tolist() if isinstance(bones, torch.Tensor) else bones).ravel()
    try:
        values = list(bones)
    except TypeError:
        raise InputError(f"must be a sequence of label values, got {bones!r}",
                         key="bones") from None
    out = []
    for v in values:
        if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Integral):
            raise InputError(f"bone labels must be whole numbers, got {v!r}", key="bones")
        if int(v) <= 0:
            raise InputError(f"bone labels must be positive (0 is background), got {int(v)}",
                             key="bones")
        out.append(int(v))
    if not out:
        raise InputError("no bone labels given", key="bones")
    return tuple(sorted(set(out)))


def check_roi(roi: Any, width: int, height: int) -> tuple[int, int, int, int]:
    """Validate a region of interest ``(u0, v0, w, h)`` on a ``width × height`` detector.

    None means the whole detector. Every backend checks its ``roi`` through this function.
    """
    if roi is None:
        return 0, 0, int(width), int(height)
    try:
        values = list(roi)
    except TypeError:
        raise InputError(f"must be (u0, v0, w, h), got {roi!r}", key="roi") from None
    if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                               for v in values):
        raise InputError(f"must be four whole numbers (u0, v0, w, h), got {roi!r}", key="roi")
    u0, v0, w, h = (int(v) for v in values)
    if w < 1 or h < 1 or u0 < 0 or v0 < 0 or u0 + w > width or v0 + h > height:
        raise InputError(f"[{u0}, {u0 + w}) x [{v0}, {v0 + h}) does not lie inside the "
                         f"{width} x {height} detector", key="roi")
    return u0, v0, w, h


def check_grid_shape(shape: Any) -> tuple[int, int, int]:
    """Validate the ``(I, J, K)`` voxel counts of a resampling grid (``fixed_shape``).

    Every backend checks its ``fixed_shape`` through this function.
    """
    try:
        values = list(shape)
    except TypeError:
        raise InputError(f"must be (I, J, K), got {shape!r}", key="fixed_shape") from None
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                               or int(v) < 1 for v in values):
        raise InputError(f"must be three whole numbers >= 1, got {shape!r}", key="fixed_shape")
    return int(values[0]), int(values[1]), int(values[2])


def default_step_mm(spacing: Iterable[float]) -> float:
    """The default sampling step along a ray: half the smallest voxel spacing, in mm."""
    values = tuple(float(x) for x in spacing)
    s = min(values)
    if not math.isfinite(s) or s <= 0:
        raise InputError(f"voxel spacing must be positive, got {values}")
    return 0.5 * s


class Renderer(ABC):
    """A DRR, depth-map and resampling engine bound to one volume.

    Subclasses set the class attributes and implement the abstract methods; their constructors
    take ``(volume, *, step_mm=None, device=None, dtype=None, requires_grad=False, **options)``
    and must raise :class:`~regkit.errors.BackendUnavailableError` when the backend cannot run
    here, and :class:`~regkit.errors.InputError` at once when ``requires_grad`` is asked of a
    non-differentiable backend.

    Attributes:
        backend: The registry name (``"torch"``, ``"gl"``).
        differentiable: Whether outputs carry gradients to the pose and the volume.
        devices: Device kinds the backend runs on (``("cpu", "cuda")``).
    """

    backend: ClassVar[str]
    differentiable: ClassVar[bool]
    devices: ClassVar[tuple[str, ...]]

    @abstractmethod
    def __init__(self, volume: Any, *, step_mm: float | None = None, device: Any = None,
                 dtype: Any = None, requires_grad: bool = False, **options: Any) -> None:
        """Bind the backend to ``volume`` and prepare it (see the class docstring)."""

    @abstractmethod
    def drr(self, views: Views, *, roi: tuple[int, int, int, int] | None = None,
            pixels: Any = None, bones: Sequence[int] | None = None) -> torch.Tensor:
        """Line integrals of μ, float32.

        Args:
            views: B views.
            roi: Only the pixels ``[v0, v0 + h) × [u0, u0 + w)`` given as ``(u0, v0, w, h)``;
                the output is then ``(B, h, w)``.
            pixels: Only these pixel coordinates ``(P, 2)`` or ``(B, P, 2)`` as ``(u, v)``; the
                output is then ``(B, P)``.
            bones: Only the voxels whose label is one of these (needs a label map).

        Returns:
            ``(B, H, W)`` (or as above).
        """

    @abstractmethod
    def depth(self, views: Views, bones: Sequence[int], *, layers: int = 2) -> DepthMaps:
        """Front and back crossings of the union of ``bones``' surface (ray-marched layers)."""

    @abstractmethod
    def bone_index(self, views: Views, bones: Sequence[int]) -> torch.Tensor:
        """``(B, H, W)`` int32: the label of the first bone each ray enters, 0 where none."""

    @abstractmethod
    def resample(self, fixed_shape: Sequence[int], fixed_world_from_index: Any,
                 fixed_from_moving: Any, *, fill: float = 0.0) -> Resampled:
        """Warp the bound (moving) volume under B transforms onto a fixed grid, trilinearly.

        Args:
            fixed_shape: ``(I, J, K)`` of the target grid.
            fixed_world_from_index: ``(4, 4)`` affine of the target grid.
            fixed_from_moving: ``(B, 4, 4)`` transforms (rigid or affine), world mm to world mm.
            fill: Value outside the moving volume.
        """

    def depth_per_bone(self, views: Views, bones: Sequence[int], *,
                       layers: int = 2) -> list[DepthMaps]:
        """One :class:`DepthMaps` per bone, in the order given."""
        return [self.depth(views, [b], layers=layers) for b in bones]

    def depth_stack(self, views: Views, bones: Sequence[int], *, layers: int = 2) -> DepthMaps:
        """Each bone's own maps, as :meth:`depth_per_bone` gives them, on a bone axis:
        ``front``/``back`` ``(B, NB, L, H, W)``, ``layers`` ``(B, NB, H, W)``, bones in the order
        given (a backend may fill these arrays directly instead of stacking)."""
        maps = self.depth_per_bone(views, bones, layers=layers)
        if not maps:
            raise InputError("no bones given", key="bones")
        return DepthMaps(front=torch.stack([m.front for m in maps], dim=1),
                         back=torch.stack([m.back for m in maps], dim=1),
                         layers=torch.stack([m.layers for m in maps], dim=1))


def check_backend_available(name: str, available: bool, why: str) -> None:
    """Raise :class:`BackendUnavailableError` with ``why`` when a backend cannot run."""
    if not available:
        raise BackendUnavailableError(f"renderer backend '{name}' is unavailable: {why}")
