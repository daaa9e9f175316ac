"""The argument checks of the renderer contract, shared by every backend.

:class:`regkit.render.base.Renderer` runs these once per call, before it hands the normalised
values to a backend, and the backends' constructors run the option checks: so every backend
refuses the same inputs with the same error class, ``key`` and message. Arrays come back as
float64 torch tensors that keep the caller's autograd graph and device (a differentiable backend
needs both; another one takes ``.detach().cpu().numpy()``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from regkit.errors import FrameError, InputError, ShapeError
from regkit.labels import check_present
from regkit.utils.checks import is_real, is_whole

__all__ = [
    "RIGID_ATOL",
    "Options",
    "as_float64",
    "bone_key",
    "bone_list",
    "check_bones_present",
    "check_dtype",
    "check_grid_shape",
    "check_layers",
    "check_pixels",
    "check_poses",
    "check_roi",
    "check_step_mm",
    "check_transforms",
    "common_options",
    "default_step_mm",
    "label_boxes",
    "volume_mu",
]

RIGID_ATOL = 1e-4
"""Tolerance on ``camera_from_world``'s rotation being orthonormal with determinant +1."""
_K_RTOL = 1e-6  # K's skew (relative to the focal length) and last row, as Camera allows
_SINGULAR_DET = 1e-12  # |det| of a transform's 3x3 part below which it counts as singular
_MAX_FIND_OBJECTS_LABEL = 1 << 20  # larger labels are boxed by np.unique instead


# ------------------------------------------------------------------------------ arrays


def as_float64(x: Any, key: str) -> torch.Tensor:
    """``x`` as a finite float64 tensor (a tensor keeps its device and autograd graph).

    Raises:
        InputError: not an array of numbers, or NaN/inf in it (``key`` names the argument).
    """
    if isinstance(x, torch.Tensor):
        t = x.to(dtype=torch.float64)
    else:
        try:
            arr = np.array(x, dtype=np.float64, copy=True)
        except (TypeError, ValueError):
            raise InputError(f"must be an array of numbers, got {type(x).__name__}",
                             key=key) from None
        t = torch.from_numpy(arr)
    if not bool(torch.isfinite(t.detach()).all()):
        raise InputError("contains NaN or infinite values", key=key)
    return t


def check_poses(intrinsic: Any, camera_from_world: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked ``(B, 3, 3)`` K and ``(B, 4, 4)`` poses of a batch of views, float64.

    Raises:
        InputError: NaN/inf (key ``intrinsic`` or ``camera_from_world``), a focal length that
            is not positive, a skew or a last row other than ``[0, 0, 1]`` (key ``intrinsic``).
        FrameError: a pose whose rotation is not orthonormal with determinant +1, or whose last
            row is not ``[0, 0, 0, 1]`` (to :data:`RIGID_ATOL`): the ray model needs a rigid
            camera.
    """
    k = as_float64(intrinsic, "intrinsic")
    t = as_float64(camera_from_world, "camera_from_world")
    kd = k.detach()
    if bool(((kd[:, 0, 0] <= 0) | (kd[:, 1, 1] <= 0)).any()):
        raise InputError("focal lengths must be positive", key="intrinsic")
    # The ray model reads fx, fy, cx, cy only: a skew or another last row would be ignored here
    # while Camera.project and project_points use them, so rendering and projection would differ.
    focal = torch.maximum(kd[:, 0, 0], kd[:, 1, 1])
    if bool(((kd[:, 0, 1].abs() > _K_RTOL * focal) | (kd[:, 1, 0].abs() > _K_RTOL * focal)
             | ((kd[:, 2] - kd.new_tensor([0.0, 0.0, 1.0])).abs().max(dim=-1).values
                > _K_RTOL)).any()):
        raise InputError("must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]: no skew, last row "
                         "[0, 0, 1]", key="intrinsic")
    td = t.detach()
    if float((td[:, 3] - td.new_tensor([0.0, 0.0, 0.0, 1.0])).abs().max()) > RIGID_ATOL:
        raise FrameError("camera_from_world must be rigid: its last row must be [0, 0, 0, 1]")
    rot = td[:, :3, :3]
    err = rot.transpose(-1, -2) @ rot - torch.eye(3, dtype=rot.dtype, device=rot.device)
    if float(err.abs().max()) > RIGID_ATOL or \
            float((torch.linalg.det(rot) - 1.0).abs().max()) > RIGID_ATOL:
        raise FrameError("camera_from_world must be rigid (orthonormal rotation, det +1)")
    return k, t


def check_pixels(pixels: Any, batch: int) -> torch.Tensor:
    """A pixel list as ``(1, P, 2)`` or ``(B, P, 2)`` float64 ``(u, v)`` (pixels, finite).

    ``(P, 2)`` gains the leading axis, so that one list serves every view of the batch.

    Raises:
        InputError: NaN/inf or not numbers (key ``pixels``).
        ShapeError: any other shape, or a leading axis other than 1 or ``batch``.
    """
    uv = as_float64(pixels, "pixels")
    if uv.ndim == 2:
        uv = uv[None]
    if uv.ndim != 3 or uv.shape[-1] != 2 or uv.shape[0] not in (1, batch):
        raise ShapeError(f"pixels must have shape (P, 2) or (B, P, 2) with B = {batch}, "
                         f"got {tuple(np.shape(pixels))}")
    return uv


def check_roi(roi: Any, width: int, height: int) -> tuple[int, int, int, int]:
    """Validate a region of interest ``(u0, v0, w, h)`` on a ``width × height`` detector.

    None means the whole detector. Every backend checks its ``roi`` through this function.

    Raises:
        InputError: not four whole numbers, or a block that does not lie on the detector (key
            ``roi``).
    """
    if roi is None:
        return 0, 0, int(width), int(height)
    try:
        values = list(roi)
    except TypeError:
        raise InputError(f"must be (u0, v0, w, h), got {roi!r}", key="roi") from None
    if len(values) != 4 or any(not is_whole(v)
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

    Raises:
        InputError: not three whole numbers >= 1 (key ``fixed_shape``).
    """
    try:
        values = list(shape)
    except TypeError:
        raise InputError(f"must be (I, J, K), got {shape!r}", key="fixed_shape") from None
    if len(values) != 3 or any(not is_whole(v)
                               or int(v) < 1 for v in values):
        raise InputError(f"must be three whole numbers >= 1, got {shape!r}", key="fixed_shape")
    return int(values[0]), int(values[1]), int(values[2])


def check_transforms(fixed_world_from_index: Any, fixed_from_moving: Any,
                     fill: Any) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The checked arguments of a resampling.

    The ``(4, 4)`` grid affine and ``(B, 4, 4)`` transforms as float64 tensors (graphs kept), and
    ``fill`` as a float.

    Raises:
        InputError: NaN/inf or not numbers (keyed by the argument), a ``fill`` that is not a
            finite number, a singular transform or grid affine, or one whose last row is not
            ``[0, 0, 0, 1]`` (keyed by the argument).
        ShapeError: an affine that is not 4x4, transforms that are not ``(B, 4, 4)``, B >= 1.
    """
    fixed = as_float64(fixed_world_from_index, "fixed_world_from_index")
    if tuple(fixed.shape) != (4, 4):
        raise ShapeError(f"fixed_world_from_index must be 4x4, got shape {tuple(fixed.shape)}")
    last = fixed.new_tensor([0.0, 0.0, 0.0, 1.0])
    if float((fixed.detach()[3] - last).abs().max()) > _K_RTOL \
            or abs(float(torch.linalg.det(fixed.detach()[:3, :3]))) < _SINGULAR_DET:
        raise InputError("must be an invertible affine with last row [0, 0, 0, 1]",
                         key="fixed_world_from_index")
    maps = as_float64(fixed_from_moving, "fixed_from_moving")
    if maps.ndim != 3 or tuple(maps.shape[1:]) != (4, 4) or maps.shape[0] < 1:
        raise ShapeError(f"fixed_from_moving must have shape (B, 4, 4), got "
                         f"{tuple(maps.shape)}")
    if not is_real(fill) \
            or not math.isfinite(float(fill)):
        raise InputError(f"must be a finite number, got {fill!r}", key="fill")
    if bool((torch.linalg.det(maps.detach()[:, :3, :3]).abs() < _SINGULAR_DET).any()):
        raise InputError("a transform is singular", key="fixed_from_moving")
    if float((maps.detach()[:, 3] - last).abs().max()) > _K_RTOL:
        raise InputError("a transform's last row is not [0, 0, 0, 1]", key="fixed_from_moving")
    return fixed, maps, float(fill)


def check_layers(layers: Any) -> int:
    """``layers`` (how many entries and exits a depth map keeps per ray) as an int >= 1.

    Raises:
        InputError: not a whole number >= 1 (key ``layers``).
    """
    if not is_whole(layers) or layers < 1:
        raise InputError(f"must be a whole number >= 1, got {layers!r}", key="layers")
    return int(layers)


# ------------------------------------------------------------------------------ bones


def bone_list(bones: Any) -> list[int]:
    """Every entry of ``bones`` as a positive int, refusing anything else.

    In the order given (repeats kept; may be empty).

    Raises:
        InputError: not a sequence of labels, or an entry that is not a whole number > 0 (key
            ``bones``).
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
    return out


def bone_key(bones: Any) -> tuple[int, ...]:
    """Sorted unique positive labels from ``bones``, refusing anything else.

    Every backend validates its ``bones`` arguments through this one function, so they refuse
    the same inputs with the same messages.

    Raises:
        InputError: as :func:`bone_list`, or no label at all (key ``bones``).
    """
    out = bone_list(bones)
    if not out:
        raise InputError("no bone labels given", key="bones")
    return tuple(sorted(set(out)))


def check_bones_present(key: Iterable[int], present: Collection[int] | None) -> None:
    """Refuse bones that the bound volume's label map does not hold.

    Args:
        key: The labels asked for.
        present: The positive labels of the label map; None when the volume has none.

    Raises:
        InputError: no label map, or labels that do not occur (the message lists those that
            do; key ``bones``).
    """
    if present is None:
        raise InputError("the volume has no label map, so bones cannot be selected",
                         key="bones")
    check_present(key, present, key="bones")


def label_boxes(labels: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The voxel bounding box ``[lo, hi)`` of every positive label of a label map.

    ``lo`` and ``hi`` are int64 ``(3,)`` each. This is what a backend needs to render a bone only
    where it can be (and its keys are the labels present).
    """
    boxes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if labels.size and int(labels.min()) >= 0 and int(labels.max()) < _MAX_FIND_OBJECTS_LABEL:
        from scipy import ndimage

        for index, sl in enumerate(ndimage.find_objects(labels)):
            if sl is not None:
                boxes[index + 1] = (np.array([s.start for s in sl], dtype=np.int64),
                                    np.array([s.stop for s in sl], dtype=np.int64))
        return boxes
    for value in np.unique(labels):
        if value > 0:
            where = np.nonzero(labels == value)
            boxes[int(value)] = (np.array([w.min() for w in where], dtype=np.int64),
                                 np.array([w.max() + 1 for w in where], dtype=np.int64))
    return boxes


# ------------------------------------------------------------------------------ options


def default_step_mm(spacing: Iterable[float]) -> float:
    """The default sampling step along a ray: half the smallest voxel spacing, in mm.

    Half a voxel keeps every voxel sampled at least twice along any ray, the Nyquist rate of
    the trilinear field's sharpest features.

    Raises:
        InputError: a spacing that is not positive and finite.
    """
    values = tuple(float(x) for x in spacing)
    s = min(values)
    if not math.isfinite(s) or s <= 0:
        raise InputError(f"voxel spacing must be positive, got {values}")
    return 0.5 * s


def check_step_mm(step_mm: Any, spacing: Iterable[float]) -> float:
    """The largest step along a ray, mm: ``step_mm``, or :func:`default_step_mm` when None.

    Raises:
        InputError: not a positive finite number (key ``step_mm``).
    """
    if step_mm is None:
        return default_step_mm(spacing)
    if not is_real(step_mm) \
            or not (math.isfinite(float(step_mm)) and float(step_mm) > 0):
        raise InputError(f"must be a positive number of mm, got {step_mm!r}", key="step_mm")
    return float(step_mm)


def check_dtype(dtype: Any) -> torch.dtype:
    """The dtype of a renderer's float outputs: float32 (None, the default) or float64.

    Raises:
        InputError: any other value (key ``dtype``).
    """
    if dtype is None:
        return torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"must be None, torch.float32 or torch.float64, got {dtype!r}",
                         key="dtype")
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_mu_water(mu_water: Any) -> float:
    """μ of water in 1/mm (the HU-to-μ scale) as a positive finite float.

    Raises:
        InputError: anything else (key ``mu_water``), refused whatever the volume's units, so
            that a bad option is caught before it meets an HU volume.
    """
    if not is_real(mu_water) \
            or not (math.isfinite(float(mu_water)) and float(mu_water) > 0):
        raise InputError(f"must be a positive finite attenuation in 1/mm, got {mu_water!r}",
                         key="mu_water")
    return float(mu_water)


def volume_mu(volume: Any, mu_water: float, dtype: Any = np.float32) -> np.ndarray:
    """The μ (1/mm) that a renderer integrates.

    HU converted with ``mu_water`` (``μ = μ_water · (1 + HU / 1000)``, clamped at 0, float32),
    ``"mu"`` and ``"other"`` values as given, in ``dtype``.
    """
    from regkit.volume import hu_to_mu

    if volume.units == "HU":
        return hu_to_mu(volume.data, mu_water)
    return np.asarray(volume.data, dtype=dtype)


@dataclass(frozen=True)
class Options:
    """The constructor options every backend shares, checked.

    Attributes:
        step_mm: Largest step along a ray, mm.
        dtype: dtype of the renderer's float outputs (float32 or float64).
        mu_water: μ of water in 1/mm, for HU volumes.
    """

    step_mm: float
    dtype: torch.dtype
    mu_water: float


def common_options(backend: str, differentiable: bool, volume: Any, *, step_mm: Any,
                   dtype: Any, requires_grad: Any, mu_water: Any, hint: str = "") -> Options:
    """Check what every backend's constructor takes, in the contract's order.

    ``requires_grad`` first (so that a non-differentiable backend refuses it before building
    anything), then the volume, ``dtype``, ``step_mm`` (default from the volume's spacing) and
    ``mu_water``.

    Args:
        backend: The backend's registry name (for the message).
        differentiable: Whether the backend carries gradients.
        volume: The volume to render (must be a :class:`~regkit.volume.Volume`).
        step_mm: Largest step along a ray, mm; None for the default from the volume's spacing.
        dtype: dtype of the renderer's float outputs: None (float32), ``torch.float32`` or
            ``torch.float64``.
        requires_grad: Whether μ should collect gradients (refused by a non-differentiable
            backend).
        mu_water: μ of water in 1/mm, for HU volumes.
        hint: Appended to the message when ``volume`` is not a Volume.

    Raises:
        InputError: ``requires_grad`` of a non-differentiable backend (key ``requires_grad``),
            no :class:`~regkit.volume.Volume` (key ``volume``), a bad option (keyed by it).
    """
    from regkit.volume import Volume

    if requires_grad and not differentiable:
        raise InputError(f"renderer backend '{backend}' is not differentiable; use "
                         "backend='torch'", key="requires_grad")
    if not isinstance(volume, Volume):
        raise InputError(f"expected a regkit Volume, got {type(volume).__name__}{hint}",
                         key="volume")
    dt = check_dtype(dtype)
    return Options(step_mm=check_step_mm(step_mm, volume.spacing), dtype=dt,
                   mu_water=check_mu_water(mu_water))
