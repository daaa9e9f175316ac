"""Rigid transforms and rotation parameterisations, batched, on numpy or torch.

Convention:
    A transform is a 4×4 matrix acting on column vectors, named ``b_from_a``: it maps a point given
    in frame ``a`` to frame ``b``. ``c_from_a = c_from_b @ b_from_a`` (right to left). Batches are
    leading dimensions: ``(..., 4, 4)`` matrices and ``(..., N, 3)`` points.

    Rotations are parameterised as

    * a **rotation vector** ``(..., 3)``: axis × angle in radians (the so(3) logarithm);
    * a **unit quaternion** ``(..., 4)``, scalar first: ``(w, x, y, z)``, with ``w ≥ 0`` on output;
    * **Euler angles** ``(..., 3)`` in radians, with an explicit axis ``order`` (such as ``"XYZ"``)
      and ``convention``: ``"extrinsic"`` rotates about the fixed axes in the order given, so
      ``R = R_Z @ R_Y @ R_X`` for ``"XYZ"``; ``"intrinsic"`` rotates about the moving axes in the
      order given, so ``R = R_X @ R_Y @ R_Z`` for ``"XYZ"``.

    A 6-vector pose ``(..., 6)`` is ``(rx, ry, rz, tx, ty, tz)``: a rotation vector (radians) then
    a translation (mm). With a ``center``, the rotation pivots about that point:
    ``x ↦ R (x − c) + c + t``.

    Example: ``rigid_from_params([0, 0, pi/2, 10, 0, 0])`` turns the point (1, 0, 0) into
    (10, 1, 0): a quarter turn about +z, then 10 mm along +x.

Every function accepts numpy arrays or torch tensors (float32 or float64) and returns the same
kind, dtype and device. Torch inputs keep their autograd graph. Lists and tuples are read as float64
numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from regkit.errors import FrameError, InputError, ShapeError
from regkit.utils.arrays import as_tensors, from_tensor

__all__ = [
    "apply",
    "check_rigid",
    "compose",
    "euler_to_matrix",
    "invert",
    "is_rigid",
    "matrix_to_euler",
    "matrix_to_quaternion",
    "matrix_to_rotvec",
    "nearest_rotation",
    "params_from_rigid",
    "quaternion_to_matrix",
    "rigid",
    "rigid_from_params",
    "rotate_about",
    "rotation_between",
    "rotvec_to_matrix",
    "translation",
]

Array = TypeVar("Array", np.ndarray, torch.Tensor)
EulerConvention = Literal["extrinsic", "intrinsic"]


# --------------------------------------------------------------------------------------------------
# numpy <-> torch plumbing: the maths is written once, in torch.


def _as_torch(x: Any) -> tuple[torch.Tensor, bool]:
    (t,), was_numpy = as_tensors(x)
    return t, was_numpy


def _numpy_or_torch(fn: Callable[..., torch.Tensor]) -> Callable[..., Any]:
    """Let a torch function of one array argument take and give numpy as well."""

    def wrapper(x: Any, *args: Any, **kwargs: Any) -> Any:
        t, was_numpy = _as_torch(x)
        return from_tensor(fn(t, *args, **kwargs), was_numpy)

    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _check_last(x: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(x.shape[x.ndim - len(shape):]) != shape or x.ndim < len(shape):
        want = "(..., " + ", ".join(str(s) for s in shape) + ")"
        raise ShapeError(f"{name} must have shape {want}, got {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------------
# 4×4 transforms


def _compose2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


def compose(*transforms: Any) -> Any:
    """Compose 4×4 transforms right to left: ``compose(c_from_b, b_from_a)`` is ``c_from_a``.

    Args:
        *transforms: One or more ``(..., 4, 4)`` matrices; batch dimensions broadcast.

    Returns:
        The product ``transforms[0] @ transforms[1] @ ...``, numpy if the first input is numpy.
    """
    if not transforms:
        raise ValueError("compose needs at least one transform")
    tensors = []
    was_numpy = False
    for i, tr in enumerate(transforms):
        t, np_in = _as_torch(tr)
        _check_last(t, (4, 4), f"transform {i}")
        if i == 0:
            was_numpy = np_in
        tensors.append(t)
    dtype = tensors[0].dtype
    out = tensors[0]
    for t in tensors[1:]:
        out = _compose2(out, t.to(dtype=dtype, device=out.device))
    return from_tensor(out, was_numpy)


@_numpy_or_torch
def invert(transform: torch.Tensor) -> torch.Tensor:
    """Invert rigid transforms exactly: ``b_from_a`` to ``a_from_b``.

    Uses ``[Rᵀ, −Rᵀt]``, which is exact for rigid matrices; for a general affine matrix use
    ``numpy.linalg.inv``.

    Args:
        transform: ``(..., 4, 4)`` rigid transforms.

    Raises:
        FrameError: a matrix that is not rigid (to 1e-6 in float64, 1e-4 in float32): its
            inverse is not ``[Rᵀ, −Rᵀt]``.
    """
    _check_last(transform, (4, 4), "transform")
    check_rigid(transform, "transform", atol=_atol(transform))
    rot = transform[..., :3, :3]
    t = transform[..., :3, 3:]
    rot_t = rot.transpose(-1, -2)
    out = torch.zeros_like(transform)
    out[..., :3, :3] = rot_t
    out[..., :3, 3:] = -rot_t @ t
    out[..., 3, 3] = 1.0
    return out


def apply(transform: Any, points: Any) -> Any:
    """Apply ``b_from_a`` to points given in frame ``a``.

    Args:
        transform: ``(..., 4, 4)`` transforms (rigid or affine).
        points: ``(..., N, 3)`` points; batch dimensions broadcast with those of ``transform``.

    Returns:
        ``(..., N, 3)`` points in frame ``b``, in the kind (numpy or torch) of ``points``.
    """
    p, was_numpy = _as_torch(points)
    t, _ = _as_torch(transform)
    _check_last(t, (4, 4), "transform")
    if p.ndim < 2 or p.shape[-1] != 3:
        raise ShapeError(f"points must have shape (..., N, 3), got {tuple(p.shape)}")
    t = t.to(dtype=p.dtype, device=p.device)
    out = p @ t[..., :3, :3].transpose(-1, -2) + t[..., None, :3, 3]
    return from_tensor(out, was_numpy)


@_numpy_or_torch
def translation(offset: torch.Tensor) -> torch.Tensor:
    """The transform ``x ↦ x + offset`` for offsets ``(..., 3)`` in mm, as ``(..., 4, 4)``."""
    _check_last(offset, (3,), "offset")
    out = torch.zeros(*offset.shape[:-1], 4, 4, dtype=offset.dtype, device=offset.device)
    out[..., 0, 0] = out[..., 1, 1] = out[..., 2, 2] = out[..., 3, 3] = 1.0
    out[..., :3, 3] = offset
    return out


def rigid(rotation: Any, offset: Any) -> Any:
    """Transforms ``(..., 4, 4)`` from rotations ``(..., 3, 3)`` and offsets ``(..., 3)``."""
    r, was_numpy = _as_torch(rotation)
    t, _ = _as_torch(offset)
    _check_last(r, (3, 3), "rotation")
    _check_last(t, (3,), "offset")
    t = t.to(dtype=r.dtype, device=r.device)
    # numpy's broadcast of the shapes: torch.broadcast_shapes imports torch.fx's symbolic
    # shapes and sympy on its first call, 0.2-0.4 s of a cold command line's start.
    try:
        batch = np.broadcast_shapes(tuple(r.shape[:-2]), tuple(t.shape[:-1]))
    except ValueError:
        raise ShapeError(f"the rotations' batch {tuple(r.shape[:-2])} and the offsets' batch "
                         f"{tuple(t.shape[:-1])} do not broadcast") from None
    top = torch.cat([r.expand(*batch, 3, 3), t.expand(*batch, 3)[..., None]], dim=-1)
    bottom = torch.zeros(*batch, 1, 4, dtype=r.dtype, device=r.device)
    bottom[..., 0, 3] = 1.0
    return from_tensor(torch.cat([top, bottom], dim=-2), was_numpy)


def is_rigid(transform: Any, atol: float = 1e-6) -> Any:
    """Whether each ``(..., 4, 4)`` matrix is a proper rigid transform.

    Rigid means: finite, every entry of the rotation block within ``atol`` of the nearest
    rotation's (orthonormal, determinant +1), last row ``[0, 0, 0, 1]`` (to ``atol``).

    Returns:
        A bool for a single matrix, else a boolean array of the batch shape (numpy).
    """
    t, _ = _as_torch(transform)
    _check_last(t, (4, 4), "transform")
    t = t.detach().to(torch.float64)
    finite = torch.isfinite(t).all(dim=-1).all(dim=-1)
    t = torch.where(finite[..., None, None], t, torch.eye(4, dtype=t.dtype, device=t.device))
    distance, proper = _from_rotation(t[..., :3, :3])
    last = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=t.dtype, device=t.device)
    bottom = (t[..., 3, :] - last).abs().amax(dim=-1) <= atol
    ok = ((distance <= atol) & proper & bottom & finite).cpu().numpy()
    return bool(ok) if ok.ndim == 0 else ok


def nearest_rotation(matrix: Any) -> tuple[Any, Any]:
    """The orthonormal matrix nearest to each ``(..., 3, 3)`` matrix, and how far it lies.

    The nearest orthonormal matrix is ``U Vᵀ`` of the SVD ``U S Vᵀ`` (the polar factor); the
    distance is the largest entry of the difference, so "rigid to 1e-6" means every entry lies
    within 1e-6 of a rotation's (a rotation written to 6 decimals passes). The nearest matrix has
    determinant −1 where ``matrix`` holds a reflection.

    Returns:
        ``(nearest, distance)``: ``(..., 3, 3)`` and ``(...)``, numpy if ``matrix`` is numpy.
    """
    m, was_numpy = _as_torch(matrix)
    _check_last(m, (3, 3), "matrix")
    u, _, vh = torch.linalg.svd(m)
    nearest = u @ vh
    distance = (m - nearest).abs().amax(dim=(-1, -2))
    return from_tensor(nearest, was_numpy), from_tensor(distance, was_numpy)


def _from_rotation(rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How far each ``(..., 3, 3)`` matrix lies from the nearest rotation, and whether it is one.

    See :func:`nearest_rotation`; ``proper`` is False where the nearest orthonormal matrix has
    determinant −1 (a reflection).
    """
    nearest, distance = nearest_rotation(rot)
    return distance, torch.linalg.det(nearest) > 0


def _rotation_defect(rot: torch.Tensor, atol: float) -> str | None:
    """What keeps float64 ``(..., 3, 3)`` matrices from all being rotations (to ``atol``), or None.

    Singular before reflected before not orthonormal, so that each gets its own word.
    """
    if rot.numel() == 0:
        return None
    det = torch.linalg.det(rot)
    if bool((det.abs() < 1e-9).any()):
        return f"is singular (determinant {float(det.abs().min()):.2e})"
    distance, proper = _from_rotation(rot)
    if not bool(proper.all()):
        return f"has determinant {float(det.min()):.6f} (a reflection)"
    err = float(distance.max())
    if err > atol:
        return (f"is not orthonormal (an entry lies {err:.2e} from the nearest rotation's; a "
                "scaling or a shear?)")
    return None


def check_rigid(transform: Any, name: str = "transform", atol: float = 1e-6) -> None:
    """Raise :class:`FrameError` naming ``name`` and the defect unless every matrix is rigid.

    Rigid as :func:`is_rigid` says; an empty batch passes.
    """
    t, _ = _as_torch(transform)
    if t.ndim < 2 or tuple(t.shape[-2:]) != (4, 4):
        raise ShapeError(f"{name} must be a 4x4 matrix, got shape {tuple(t.shape)}")
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if t.numel() == 0:
        return
    if not torch.isfinite(t).all():
        raise FrameError(f"{name} contains NaN or infinite values")
    last = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=t.dtype)
    if (t[..., 3, :] - last).abs().max() > atol:
        raise FrameError(f"{name} last row must be [0, 0, 0, 1]")
    defect = _rotation_defect(t[..., :3, :3], atol)
    if defect is not None:
        raise FrameError(f"{name} is not rigid: its rotation block {defect}")


def _atol(t: torch.Tensor) -> float:
    """How far from rigid a matrix of ``t``'s dtype may be and still be read as rigid."""
    return {torch.float64: 1e-6, torch.float32: 1e-4}.get(t.dtype, 1e-2)


def _check_rotation(m: torch.Tensor, name: str) -> None:
    """Raise :class:`FrameError` unless every ``(..., 3, 3)`` matrix is a proper rotation.

    The same test as :func:`check_rigid`'s (to 1e-6 in float64, 1e-4 in float32). The
    conversions below read a rotation's parts as if it were one: a scaling, a reflection or a
    shear would come back as some other rotation, silently.
    """
    d = m.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(d).all():
        raise FrameError(f"{name} contains NaN or infinite values")
    defect = _rotation_defect(d, _atol(m))
    if defect is not None:
        raise FrameError(f"{name} is not a rotation: it {defect}")


# --------------------------------------------------------------------------------------------------
# Rotation vectors (so(3) exp and log)


def _skew(v: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return torch.stack(
        [
            torch.stack([zero, -z, y], dim=-1),
            torch.stack([z, zero, -x], dim=-1),
            torch.stack([-y, x, zero], dim=-1),
        ],
        dim=-2,
    )


@_numpy_or_torch
def rotvec_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: rotation vectors ``(..., 3)`` (radians) to matrices ``(..., 3, 3)``.

    Smooth and differentiable at zero (Taylor series below a small angle).
    """
    _check_last(rotvec, (3,), "rotvec")
    theta2 = (rotvec * rotvec).sum(-1)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    safe = safe2.sqrt()
    # a = sin θ / θ, b = (1 − cos θ) / θ²
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(safe)) / safe2)
    k = _skew(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


@_numpy_or_torch
def matrix_to_rotvec(matrix: torch.Tensor) -> torch.Tensor:
    """The so(3) logarithm: rotation matrices ``(..., 3, 3)`` to rotation vectors ``(..., 3)``.

    The angle lies in [0, π]; at exactly π the sign of the axis is arbitrary. Goes through the
    quaternion, which is stable at every angle.
    """
    _check_last(matrix, (3, 3), "matrix")
    _check_rotation(matrix, "matrix")
    return _rotvec_of(matrix)


def _rotvec_of(matrix: torch.Tensor) -> torch.Tensor:
    """:func:`matrix_to_rotvec` of matrices already checked."""
    q = _matrix_to_quaternion(matrix)
    w = q[..., 0].clamp(-1.0, 1.0)
    xyz = q[..., 1:]
    s = xyz.norm(dim=-1)
    angle = 2.0 * torch.atan2(s, w)
    small = s < 1e-7
    safe_s = torch.where(small, torch.ones_like(s), s)
    # angle / s → 2 / w (1 + s²/(3w²)) as s → 0 (w ≈ 1)
    scale = torch.where(small, 2.0 / w.clamp(min=1e-12), angle / safe_s)
    return xyz * scale[..., None]


def rotation_between(a: Any, b: Any) -> Any:
    """The smallest rotation taking the direction of ``a`` onto that of ``b``.

    ``(..., 3)`` non-zero vectors (any length) to matrices ``(..., 3, 3)``, numpy or torch.

    Parallel vectors give the identity; opposite ones a half turn about an axis square to ``a``
    (any such axis is a smallest rotation; the one square to the coordinate axis least aligned
    with ``a`` is taken).

    Raises:
        ShapeError: a shape other than ``(..., 3)``, or shapes that differ.
        InputError: a zero vector.
    """
    (u, v), was_numpy = as_tensors(a, b)
    _check_last(u, (3,), "a")
    _check_last(v, (3,), "b")
    if u.shape != v.shape:
        raise ShapeError(f"a and b must have one shape, got {tuple(u.shape)} and "
                         f"{tuple(v.shape)}")
    nu, nv = u.norm(dim=-1, keepdim=True), v.norm(dim=-1, keepdim=True)
    if bool((nu == 0).any()) or bool((nv == 0).any()):
        raise InputError("a rotation between directions needs non-zero vectors", key="vector")
    u, v = u / nu, v / nv
    cross = torch.linalg.cross(u, v, dim=-1)
    cosine = (u * v).sum(-1)
    eye = torch.eye(3, dtype=u.dtype, device=u.device).expand(*u.shape[:-1], 3, 3)
    k = _skew(cross)
    opposite = cosine < -1.0 + 1e-9
    # Rodrigues with the unnormalised axis: R = I + K + K² / (1 + cos θ)
    safe = torch.where(opposite, torch.ones_like(cosine), 1.0 + cosine)
    general = eye + k + (k @ k) / safe[..., None, None]
    # Opposite: a half turn about p ⟂ u, R = 2 p pᵀ − I.
    least = torch.nn.functional.one_hot(u.abs().argmin(dim=-1), 3).to(u.dtype)
    p = torch.linalg.cross(u, least, dim=-1)
    p = p / p.norm(dim=-1, keepdim=True)
    half_turn = 2.0 * p[..., :, None] * p[..., None, :] - eye
    return from_tensor(torch.where(opposite[..., None, None], half_turn, general), was_numpy)


# --------------------------------------------------------------------------------------------------
# Quaternions (w, x, y, z)


@_numpy_or_torch
def quaternion_to_matrix(quaternion: torch.Tensor) -> torch.Tensor:
    """Quaternions ``(..., 4)``, scalar first ``(w, x, y, z)``, to matrices ``(..., 3, 3)``.

    The input is normalised first; a zero quaternion raises :class:`ShapeError`.
    """
    _check_last(quaternion, (4,), "quaternion")
    n = quaternion.norm(dim=-1, keepdim=True)
    if bool((n.detach() == 0).any()):
        raise ShapeError("quaternion has zero norm")
    q = quaternion / n
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def _matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    # Four candidate solutions, each stable where its own component is largest; pick that one.
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    cands = torch.stack(
        [
            torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                         m[..., 1, 0] - m[..., 0, 1]], dim=-1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22,
                         m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], dim=-1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                         1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]], dim=-1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                         m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], dim=-1),
        ],
        dim=-2,
    )  # (..., 4 candidates, 4 components); candidate c has component c = 4 q_c²
    diag = torch.stack([1 + trace, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22],
                       dim=-1)
    best = diag.argmax(dim=-1)
    idx = best[..., None, None].expand(*best.shape, 1, 4)
    q = torch.gather(cands, -2, idx).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


@_numpy_or_torch
def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` to unit quaternions ``(w, x, y, z)`` with ``w ≥ 0``."""
    _check_last(matrix, (3, 3), "matrix")
    _check_rotation(matrix, "matrix")
    return _matrix_to_quaternion(matrix)


# --------------------------------------------------------------------------------------------------
# Euler angles


def _axis_rotation(axis: str, angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == "X":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == "Y":
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def _check_order(order: str, convention: str) -> str:
    order = order.upper()
    if len(order) != 3 or set(order) - set("XYZ") or order[0] == order[1] or order[1] == order[2]:
        raise ValueError(f"Euler order must be three of X, Y, Z with no axis twice in a row, "
                         f"got {order!r}")
    if convention not in ("extrinsic", "intrinsic"):
        raise ValueError(f"Euler convention must be 'extrinsic' or 'intrinsic', got {convention!r}")
    return order


def euler_to_matrix(angles: Any, order: str = "XYZ",
                    convention: EulerConvention = "extrinsic") -> Any:
    """Euler angles ``(..., 3)`` in radians to rotation matrices ``(..., 3, 3)``.

    Convention:
        ``angles[..., i]`` turns about axis ``order[i]``. ``"extrinsic"``: about the fixed axes,
        first ``order[0]``, so ``R = R_{order[2]} @ R_{order[1]} @ R_{order[0]}``. ``"intrinsic"``:
        about the axes as they move, so ``R = R_{order[0]} @ R_{order[1]} @ R_{order[2]}``.
        Proper Euler orders (``"ZXZ"``) and Tait–Bryan orders (``"XYZ"``) are both accepted.
    """
    order = _check_order(order, convention)
    a, was_numpy = _as_torch(angles)
    _check_last(a, (3,), "angles")
    mats = [_axis_rotation(order[i], a[..., i]) for i in range(3)]
    out = mats[2] @ mats[1] @ mats[0] if convention == "extrinsic" else mats[0] @ mats[1] @ mats[2]
    return from_tensor(out, was_numpy)


def matrix_to_euler(matrix: Any, order: str = "XYZ",
                    convention: EulerConvention = "extrinsic") -> Any:
    """Rotation matrices ``(..., 3, 3)`` to Euler angles ``(..., 3)``.

    The inverse of :func:`euler_to_matrix` with the same ``order`` and ``convention``.

    Angles: the first and third in (−π, π]; the middle one in [−π/2, π/2] (Tait–Bryan) or
    [0, π] (proper Euler). At gimbal lock the third angle is set to 0.
    """
    order = _check_order(order, convention)
    m, was_numpy = _as_torch(matrix)
    _check_last(m, (3, 3), "matrix")
    _check_rotation(m, "matrix")
    # Reduce to the intrinsic case: extrinsic "abc" is intrinsic "cba" with the angles reversed.
    intrinsic_order = order if convention == "intrinsic" else order[::-1]
    # At gimbal lock the extrinsic third angle is the intrinsic first one: zero that one.
    angles = _intrinsic_angles(m, intrinsic_order, zero_first=convention == "extrinsic")
    if convention == "extrinsic":
        angles = angles.flip(-1)
    return from_tensor(angles, was_numpy)


def _intrinsic_angles(m: torch.Tensor, order: str, zero_first: bool = False) -> torch.Tensor:
    """Angles (a, b, c) with ``m = R_{order[0]}(a) R_{order[1]}(b) R_{order[2]}(c)``.

    At gimbal lock only ``a + c`` (or ``a − c``) is defined: ``c`` is set to 0, or ``a`` when
    ``zero_first``. The middle angle comes from ``atan2``, which keeps full precision near lock.
    """
    idx = {"X": 0, "Y": 1, "Z": 2}
    i, j, k = idx[order[0]], idx[order[1]], idx[order[2]]
    proper = i == k
    if proper:
        k = 3 - i - j
    # sign of the permutation (i, j, k)
    sign = 1.0 if (i, j, k) in ((0, 1, 2), (1, 2, 0), (2, 0, 1)) else -1.0
    eps = 1e-7
    if not proper:
        sb = sign * m[..., i, k]
        cb = torch.sqrt(m[..., i, j] ** 2 + m[..., i, i] ** 2)
        b = torch.atan2(sb, cb)
        a = torch.atan2(-sign * m[..., j, k], m[..., k, k])
        c = torch.atan2(-sign * m[..., i, j], m[..., i, i])
        locked = cb < eps
    else:
        # proper Euler: m = R_i(a) R_j(b) R_i(c), k is the third axis
        cb = m[..., i, i]
        sb = torch.sqrt(m[..., i, j] ** 2 + m[..., i, k] ** 2)
        b = torch.atan2(sb, cb)
        a = torch.atan2(m[..., j, i], -sign * m[..., k, i])
        c = torch.atan2(m[..., i, j], sign * m[..., i, k])
        locked = sb < eps
    zero = torch.zeros_like(a)
    if zero_first:
        # m = R_j(b) R_{order[2]}(c): row j of m is row j of R_{order[2]}(c)
        c_sin = sign * m[..., j, i] if not proper else -sign * m[..., j, k]
        a = torch.where(locked, zero, a)
        c = torch.where(locked, torch.atan2(c_sin, m[..., j, j]), c)
    else:
        # m = R_i(a) R_j(b): column j of m is column j of R_i(a)
        a = torch.where(locked, torch.atan2(sign * m[..., k, j], m[..., j, j]), a)
        c = torch.where(locked, zero, c)
    return torch.stack([a, b, c], dim=-1)


# --------------------------------------------------------------------------------------------------
# 6-vector poses and pivots


def rotate_about(rotation: Any, center: Any) -> Any:
    """The rigid transform turning by ``rotation`` about the point ``center``: ``x ↦ R(x − c) + c``.

    Args:
        rotation: ``(..., 3, 3)`` rotation matrices, or ``(..., 4, 4)`` rigid transforms whose
            translation is applied after the pivot (``x ↦ R(x − c) + c + t``).
        center: ``(..., 3)`` pivot points in mm, in the frame the transform acts on.
    """
    r, was_numpy = _as_torch(rotation)
    c, _ = _as_torch(center)
    c = c.to(dtype=r.dtype, device=r.device)
    if r.shape[-2:] == (4, 4):
        rot, off = r[..., :3, :3], r[..., :3, 3]
    else:
        _check_last(r, (3, 3), "rotation")
        rot, off = r, torch.zeros(3, dtype=r.dtype, device=r.device)
    _check_last(c, (3,), "center")
    t = c - (rot @ c[..., None])[..., 0] + off
    return from_tensor(torch.as_tensor(rigid(rot, t)), was_numpy)


def rigid_from_params(params: Any, center: Any = None) -> Any:
    """6-vector poses ``(..., 6)`` = (rotation vector [rad], translation [mm]) to ``(..., 4, 4)``.

    Args:
        params: ``(rx, ry, rz, tx, ty, tz)``.
        center: Optional pivot ``(..., 3)`` in mm: the transform is ``x ↦ R(x − c) + c + t``.
            Without it, ``x ↦ R x + t``.
    """
    p, was_numpy = _as_torch(params)
    _check_last(p, (6,), "params")
    rot = rotvec_to_matrix(p[..., :3])
    out = rigid(rot, p[..., 3:])
    if center is not None:
        out = rotate_about(out, center)
    return from_tensor(out, was_numpy)


def params_from_rigid(transform: Any, center: Any = None) -> Any:
    """Inverse of :func:`rigid_from_params` (same ``center``): ``(..., 4, 4)`` to ``(..., 6)``.

    Raises:
        FrameError: a matrix that is not rigid (a scaling or a reflection has no 6-vector).
    """
    t, was_numpy = _as_torch(transform)
    _check_last(t, (4, 4), "transform")
    check_rigid(t, "transform", atol=_atol(t))
    rot = t[..., :3, :3]
    off = t[..., :3, 3]
    if center is not None:
        c, _ = _as_torch(center)
        c = c.to(dtype=t.dtype, device=t.device)
        off = off - c + (rot @ c[..., None])[..., 0]
    out = torch.cat([_rotvec_of(rot), off], dim=-1)
    return from_tensor(out, was_numpy)
