"""X-ray cameras: intrinsics, pose, detector size; the camera file; projection and pixel rays.

Convention:
    The **camera** frame is a pinhole at the X-ray source: +z points from the source towards the
    detector, +x along increasing image column, +y along increasing image row. **Pixels** are
    ``(u, v) = (column, row)`` with ``(0, 0)`` at the outer corner of the first pixel, so the centre
    of pixel ``[r, c]`` is ``(c + 0.5, r + 0.5)``. A world point ``x`` (RAS+, mm) projects as
    ``[u·w, v·w, w]ᵀ = K · (camera_from_world · [x; 1])[:3]`` with ``w > 0`` in front of the source.

    Example: the conventions' AP camera ``camera_from_world = [[1,0,0,0],[0,0,-1,0],[0,1,0,850],
    [0,0,0,1]]`` puts the source at (0, −850, 0), 850 mm posterior of the origin, looking anterior
    (+y). Image columns run towards the patient's right (+x) and rows towards the feet (−z): the
    image is seen as from the source, through the patient.

The value object :class:`Camera` holds one view in float64 numpy. The functions
:func:`project_points` and :func:`pixel_rays` are the batched forms, on numpy or torch, used by the
renderers and the registration engine.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regkit.errors import FrameError, InputError, ShapeError
from regkit.geometry.transforms import check_rigid, invert
from regkit.utils.arrays import as_tensors, from_tensor
from regkit.utils.checks import is_real, is_whole, refuse_gradients
from regkit.utils.files import atomic_write_text
from regkit.utils.jsonfile import parse_json, read_json

__all__ = [
    "MAX_DETECTOR_PX",
    "Camera",
    "load_cameras",
    "pixel_rays",
    "project_points",
    "save_cameras",
    "stack_cameras",
]

_REQUIRED_KEYS = ("width", "height", "intrinsic", "camera_from_world")
_OPTIONAL_KEYS = ("pixel_spacing_mm",)
_RIGID_ATOL = 1e-6


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64, copy=True)
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Camera:
    """One X-ray view.

    Attributes:
        intrinsic: K, ``(3, 3)`` in pixels: ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``, fx, fy > 0.
        camera_from_world: ``(4, 4)`` rigid transform from world (RAS+, mm) to camera (mm).
        width: Detector width in pixels (number of columns).
        height: Detector height in pixels (number of rows).
        pixel_spacing_mm: Optional detector pixel size ``(x, y)`` in mm/px (column, row); with it,
            the source-to-detector distance is ``fx · spacing_x``.

    Raises:
        InputError, FrameError, ShapeError: on any value that breaks the camera-file contract.
    """

    intrinsic: np.ndarray
    camera_from_world: np.ndarray
    width: int
    height: int
    pixel_spacing_mm: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        refuse_gradients(self.intrinsic, "intrinsic", "a Camera")
        refuse_gradients(self.camera_from_world, "camera_from_world", "a Camera")
        k = np.asarray(self.intrinsic, dtype=np.float64)
        t = np.asarray(self.camera_from_world, dtype=np.float64)
        _validate_intrinsic(k, "intrinsic")
        if t.shape != (4, 4):
            raise ShapeError(f"camera_from_world must be 4x4, got shape {t.shape}")
        check_rigid(t, "camera_from_world", atol=_RIGID_ATOL)
        for name in ("width", "height"):
            _validate_size(getattr(self, name), name)
        object.__setattr__(self, "intrinsic", _frozen(k))
        object.__setattr__(self, "camera_from_world", _frozen(t))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        if self.pixel_spacing_mm is not None:
            object.__setattr__(self, "pixel_spacing_mm",
                               _validate_spacing(self.pixel_spacing_mm, "pixel_spacing_mm"))

    # ---------------------------------------------------------------- JSON
    @classmethod
    def from_dict(cls, obj: Any, *, source: str | os.PathLike[str] | None = None,
                  where: str = "") -> Camera:
        """Build a camera from a camera-file object, validating every key.

        Args:
            obj: The parsed JSON object.
            source: The file it came from, named in error messages.
            where: A prefix for key names in messages (``"[2]."`` for the third view of a list).

        Raises:
            InputError: naming the file and the key, for a missing, unknown or bad key.
        """
        if not isinstance(obj, Mapping):
            raise InputError(f"a camera must be a JSON object, got {type(obj).__name__}",
                             source=source, key=where.rstrip(".") or None)
        missing = [k for k in _REQUIRED_KEYS if k not in obj]
        if missing:
            raise InputError("missing required key", source=source, key=where + missing[0])
        unknown = sorted(set(obj) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
        if unknown:
            raise InputError(
                f"unknown key (allowed: {', '.join(_REQUIRED_KEYS + _OPTIONAL_KEYS)})",
                source=source, key=where + unknown[0])
        fields: dict[str, Any] = {}
        for key in _REQUIRED_KEYS + _OPTIONAL_KEYS:
            if key not in obj:
                continue
            try:
                if key in ("width", "height"):
                    fields[key] = _validate_size(obj[key], key)
                elif key == "intrinsic":
                    k = _matrix(obj[key], (3, 3))
                    _validate_intrinsic(k, key)
                    fields[key] = k
                elif key == "camera_from_world":
                    t = _matrix(obj[key], (4, 4))
                    check_rigid(t, key, atol=_RIGID_ATOL)
                    fields[key] = t
                else:
                    fields[key] = _validate_spacing(obj[key], key)
            except (InputError, FrameError, ShapeError) as err:
                reason = getattr(err, "reason", str(err))
                reason = reason.removeprefix(f"{key} ").removeprefix(f"{key}: ")
                raise InputError(reason, source=source, key=where + key) from None
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """The camera-file object for this view (plain Python numbers)."""
        out: dict[str, Any] = {
            "width": self.width,
            "height": self.height,
            "intrinsic": self.intrinsic.tolist(),
            "camera_from_world": self.camera_from_world.tolist(),
        }
        if self.pixel_spacing_mm is not None:
            out["pixel_spacing_mm"] = list(self.pixel_spacing_mm)
        return out

    @classmethod
    def from_json(cls, text: str, *, source: str | None = None) -> Camera:
        """Parse one camera object from JSON text."""
        return cls.from_dict(parse_json(text, source), source=source)

    def to_json(self, indent: int | None = 2) -> str:
        """This view as camera-file JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    # ---------------------------------------------------------------- derived geometry
    @property
    def focal_lengths(self) -> tuple[float, float]:
        """``(fx, fy)`` in pixels."""
        return float(self.intrinsic[0, 0]), float(self.intrinsic[1, 1])

    @property
    def principal_point(self) -> tuple[float, float]:
        """``(cx, cy)`` in pixels: where the ray along the camera's +z axis meets the detector."""
        return float(self.intrinsic[0, 2]), float(self.intrinsic[1, 2])

    @property
    def world_from_camera(self) -> np.ndarray:
        """The inverse pose, ``(4, 4)``."""
        return np.asarray(invert(self.camera_from_world))

    @property
    def source_world(self) -> np.ndarray:
        """The X-ray source (camera centre) in world, ``(3,)`` mm."""
        return self.world_from_camera[:3, 3].copy()

    @property
    def view_direction_world(self) -> np.ndarray:
        """Unit vector of the camera's +z axis (source towards detector) in world, ``(3,)``."""
        return self.camera_from_world[2, :3].copy()

    @property
    def source_to_detector_mm(self) -> float | None:
        """``fx · spacing_x`` when the pixel spacing is known, else None."""
        if self.pixel_spacing_mm is None:
            return None
        return float(self.intrinsic[0, 0] * self.pixel_spacing_mm[0])

    # ---------------------------------------------------------------- operations
    def with_pose(self, camera_from_world: np.ndarray) -> Camera:
        """The same detector under another pose."""
        return Camera(self.intrinsic, camera_from_world, self.width, self.height,
                      self.pixel_spacing_mm)

    def project(self, points_world: Any) -> np.ndarray:
        """Project world points ``(N, 3)`` mm to pixels ``(N, 2)`` as ``(u, v)``.

        Points at or behind the source plane (``w ≤ 0``) give NaN.
        """
        pts = np.asarray(points_world, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ShapeError(f"points must have shape (N, 3), got {pts.shape}")
        return np.asarray(project_points(self.intrinsic, self.camera_from_world, pts))

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every pixel's ray in world.

        Returns:
            ``origin`` ``(3,)``, the source in mm, and ``directions`` ``(H, W, 3)``, unit vectors
            through the pixel centres, indexed ``[row, column]``.
        """
        o, d = pixel_rays(self.intrinsic, self.camera_from_world, self.height, self.width)
        return np.asarray(o), np.asarray(d)

    def crop(self, u0: int, v0: int, width: int, height: int) -> Camera:
        """The sub-detector of ``width × height`` pixels whose first pixel is ``[v0, u0]``.

        The pose is unchanged; the principal point moves by ``(−u0, −v0)``.
        """
        for name, val in (("u0", u0), ("v0", v0), ("width", width), ("height", height)):
            if not is_whole(val):
                raise InputError(f"{name} must be an integer, got {val!r}")
        if width <= 0 or height <= 0 or u0 < 0 or v0 < 0 or u0 + width > self.width \
                or v0 + height > self.height:
            raise InputError(
                f"crop [{u0}, {u0 + width}) x [{v0}, {v0 + height}) does not lie inside the "
                f"{self.width} x {self.height} detector")
        k = self.intrinsic.copy()
        k[0, 2] -= u0
        k[1, 2] -= v0
        return Camera(k, self.camera_from_world, int(width), int(height), self.pixel_spacing_mm)

    def downsample(self, factor: int) -> Camera:
        """Bin the detector by an integer ``factor``: ``W // factor × H // factor`` pixels.

        K is scaled so that every remaining pixel's footprint is the union of the ``factor²``
        pixels it replaces (the outer corner (0, 0) stays put); a remainder of rows or columns is
        dropped. The pixel spacing grows by ``factor``.
        """
        if not is_whole(factor) or factor < 1:
            raise InputError(f"downsample factor must be a positive integer, got {factor!r}")
        if self.width // factor < 1 or self.height // factor < 1:
            raise InputError(f"factor {factor} leaves no pixel of a "
                             f"{self.width} x {self.height} detector")
        k = self.intrinsic.copy()
        k[:2, :] /= factor
        spacing = None
        if self.pixel_spacing_mm is not None:
            spacing = (self.pixel_spacing_mm[0] * factor, self.pixel_spacing_mm[1] * factor)
        return Camera(k, self.camera_from_world, self.width // factor, self.height // factor,
                      spacing)

    def summary(self) -> dict[str, Any]:
        """What ``regkit camera show`` prints: size, focal lengths, source, viewing direction."""
        return {
            "size": (self.width, self.height),
            "focal_lengths_px": self.focal_lengths,
            "principal_point_px": self.principal_point,
            "source_world_mm": tuple(float(x) for x in self.source_world),
            "view_direction_world": tuple(float(x) for x in self.view_direction_world),
            "source_to_detector_mm": self.source_to_detector_mm,
        }


# ---------------------------------------------------------------------------------- validation


def _matrix(value: Any, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != shape[0] or any(
        not isinstance(row, Sequence) or isinstance(row, str) or len(row) != shape[1]
        for row in value
    ):
        raise InputError(f"must be a {shape[0]}x{shape[1]} array of numbers")
    for row in value:
        for x in row:
            if not is_real(x):
                raise InputError(f"must hold only numbers, found {x!r}")
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise InputError("contains NaN or infinite values")
    return arr


def _validate_intrinsic(k: np.ndarray, name: str) -> None:
    if k.shape != (3, 3):
        raise ShapeError(f"{name} must be 3x3, got shape {k.shape}")
    if not np.isfinite(k).all():
        raise InputError(f"{name} contains NaN or infinite values")
    if not (k[0, 0] > 0 and k[1, 1] > 0):
        raise InputError(
            f"{name} focal lengths must be positive, got fx={k[0, 0]:g}, fy={k[1, 1]:g}")
    if k[0, 1] != 0 or k[1, 0] != 0:
        raise InputError(f"{name} must have zero skew (K[0][1] = K[1][0] = 0)")
    if k[2, 0] != 0 or k[2, 1] != 0 or k[2, 2] != 1:
        raise InputError(f"{name} last row must be [0, 0, 1]")


MAX_DETECTOR_PX = 32768
"""The most pixels a detector side may have: twice a scanned film's at 50 µm (35 cm: 7000)."""


def _validate_size(value: Any, name: str) -> int:
    try:
        whole = is_real(value) and float(value).is_integer()
    except OverflowError:
        whole = False
    if not whole or value <= 0:
        raise InputError(f"{name} must be a positive whole number of pixels, got "
                         f"{str(value)[:20]}{'...' if len(str(value)) > 20 else ''}")
    if value > MAX_DETECTOR_PX:
        raise InputError(f"{name} of {int(value)} pixels is more than any detector has "
                         f"(at most {MAX_DETECTOR_PX})")
    return int(float(value))


def _validate_spacing(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2 or any(
        not is_real(x) for x in value
    ):
        raise InputError(f"{name} must be two numbers [x, y] in mm")
    sx, sy = float(value[0]), float(value[1])
    if not (math.isfinite(sx) and math.isfinite(sy) and sx > 0 and sy > 0):
        raise InputError(f"{name} must be positive and finite, got [{sx:g}, {sy:g}]")
    return sx, sy


# ---------------------------------------------------------------------------------- files


def load_cameras(path: str | os.PathLike[str]) -> list[Camera]:
    """Read a camera file: one camera object, or a JSON list of them.

    Returns:
        The views in file order (a list of one for a single object).

    Raises:
        FileFormatError: the file is missing, unreadable, or not JSON.
        InputError: a view breaks the contract; the message names the file, the view and the key.
    """
    p = Path(path)
    obj = read_json(p, "camera file")
    if isinstance(obj, list):
        if not obj:
            raise InputError("the camera list is empty", source=p)
        return [Camera.from_dict(o, source=p, where=f"[{i}].") for i, o in enumerate(obj)]
    return [Camera.from_dict(obj, source=p)]


def save_cameras(path: str | os.PathLike[str], cameras: Camera | Sequence[Camera]) -> None:
    """Write a camera file atomically: one object for a :class:`Camera`, a list for a sequence."""
    if isinstance(cameras, Camera):
        payload: Any = cameras.to_dict()
    else:
        if len(cameras) == 0:
            raise InputError("no cameras to write")
        payload = [c.to_dict() for c in cameras]
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def stack_cameras(cameras: Sequence[Camera]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Stack views that share a detector size into batch arrays.

    Returns:
        ``intrinsic`` ``(B, 3, 3)``, ``camera_from_world`` ``(B, 4, 4)``, ``height``, ``width``.

    Raises:
        ShapeError: the list is empty or the detector sizes differ.
    """
    if len(cameras) == 0:
        raise ShapeError("no cameras given")
    sizes = {(c.height, c.width) for c in cameras}
    if len(sizes) != 1:
        raise ShapeError(f"cameras must share one detector size for a batch, got "
                         f"{sorted((w, h) for h, w in sizes)} (width, height)")
    h, w = sizes.pop()
    return (np.stack([c.intrinsic for c in cameras]),
            np.stack([c.camera_from_world for c in cameras]), h, w)


# ---------------------------------------------------------------------------------- batched maths


def project_points(intrinsic: Any, camera_from_world: Any, points_world: Any) -> Any:
    """Project world points to pixels, batched.

    Args:
        intrinsic: ``(..., 3, 3)`` K in pixels.
        camera_from_world: ``(..., 4, 4)`` poses.
        points_world: ``(..., N, 3)`` points in mm; batch dimensions broadcast.

    Returns:
        ``(..., N, 2)`` pixel coordinates ``(u, v)``; NaN where the point is at or behind the source
        plane. numpy when every input is numpy, else torch (differentiable).
    """
    (k, t, p), was_numpy = as_tensors(intrinsic, camera_from_world, points_world)
    if k.shape[-2:] != (3, 3) or t.shape[-2:] != (4, 4) or p.ndim < 2 or p.shape[-1] != 3:
        raise ShapeError(f"expected K (...,3,3), camera_from_world (...,4,4), points (...,N,3); "
                         f"got {tuple(k.shape)}, {tuple(t.shape)}, {tuple(p.shape)}")
    cam = p @ t[..., :3, :3].transpose(-1, -2) + t[..., None, :3, 3]
    uvw = cam @ k.transpose(-1, -2)
    w = uvw[..., 2:]
    ok = w > 0
    safe = torch.where(ok, w, torch.ones_like(w))
    uv = torch.where(ok, uvw[..., :2] / safe, torch.full_like(uvw[..., :2], float("nan")))
    return from_tensor(uv, was_numpy)


def pixel_rays(intrinsic: Any, camera_from_world: Any, height: int, width: int, *,
               pixels: Any = None) -> tuple[Any, Any]:
    """Rays through pixel centres, in world, batched.

    Args:
        intrinsic: ``(..., 3, 3)`` K.
        camera_from_world: ``(..., 4, 4)`` rigid poses.
        height: Detector height in pixels (ignored when ``pixels`` is given).
        width: Detector width in pixels (ignored when ``pixels`` is given).
        pixels: Optional ``(P, 2)`` or ``(..., P, 2)`` pixel coordinates ``(u, v)`` to trace
            instead of every pixel centre.

    Returns:
        ``origins`` ``(..., 3)``: the source in mm; ``directions``: unit vectors, ``(..., H, W, 3)``
        indexed ``[row, column]``, or ``(..., P, 3)`` for given pixels. numpy when every input is
        numpy, else torch (differentiable with respect to the pose).
    """
    (k, t), was_numpy = as_tensors(intrinsic, camera_from_world)
    if k.shape[-2:] != (3, 3) or t.shape[-2:] != (4, 4):
        raise ShapeError(f"expected K (...,3,3) and camera_from_world (...,4,4), got "
                         f"{tuple(k.shape)} and {tuple(t.shape)}")
    rot = t[..., :3, :3]
    origin = -(rot.transpose(-1, -2) @ t[..., :3, 3:])[..., 0]
    if pixels is None:
        v, u = torch.meshgrid(
            torch.arange(height, dtype=k.dtype, device=k.device) + 0.5,
            torch.arange(width, dtype=k.dtype, device=k.device) + 0.5,
            indexing="ij",
        )
        uv = torch.stack([u, v], dim=-1)  # (H, W, 2)
    else:
        (uv,), _ = as_tensors(pixels)
        uv = uv.to(dtype=k.dtype, device=k.device)
        if uv.shape[-1] != 2:
            raise ShapeError(f"pixels must have shape (..., P, 2), got {tuple(uv.shape)}")
    fx, fy = k[..., 0, 0], k[..., 1, 1]
    cx, cy = k[..., 0, 2], k[..., 1, 2]
    # Pixel dims after K's batch: (H, W) for the full grid, (P,) for given pixels, whose own
    # leading dims are batch dims that broadcast with K's.
    extra = 2 if pixels is None else 1
    shape = (*k.shape[:-2], *([1] * extra))
    x = (uv[..., 0] - cx.reshape(shape)) / fx.reshape(shape)
    y = (uv[..., 1] - cy.reshape(shape)) / fy.reshape(shape)
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    rot_t = rot.transpose(-1, -2).reshape(*rot.shape[:-2], *([1] * extra), 3, 3)
    d_world = (rot_t @ d_cam[..., None])[..., 0]
    d_world = d_world / d_world.norm(dim=-1, keepdim=True)
    return from_tensor(origin, was_numpy), from_tensor(d_world, was_numpy)
