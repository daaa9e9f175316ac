"""Behavioural tests of regkit.geometry.transforms, on numpy and torch, float32 and float64.

Reference values come from scipy.spatial.transform.Rotation (lowercase axis strings are extrinsic,
uppercase intrinsic; its quaternions are scalar-last, ours scalar-first) and from matrices written
out by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from regkit.errors import FrameError, InputError, ShapeError
from regkit.geometry import transforms as tf
from regkit.testing.arrays import KIND_IDS, KINDS, assert_kind, make
from regkit.testing.arrays import to_numpy as to_np

# --------------------------------------------------------------------------------------------------
# helpers

SETTINGS = settings(max_examples=25, deadline=None)

# (kind, dtype name): every public function must give back what it was given.
BACKENDS = KINDS
BACKEND_IDS = KIND_IDS

# absolute tolerance for quantities of order 1 (rotation entries, radians)
ATOL = {"float32": 2e-5, "float64": 1e-10}


@st.composite
def rotvecs(draw: Any, max_angle: float = math.pi - 1e-3) -> np.ndarray:
    """A rotation vector with angle in [0, max_angle] and a well-defined axis."""
    axis = np.array([draw(st.floats(-1.0, 1.0)) for _ in range(3)])
    if np.linalg.norm(axis) < 1e-3:
        axis = np.array([0.0, 0.0, 1.0])
    angle = draw(st.floats(0.0, max_angle))
    return axis / np.linalg.norm(axis) * angle


@st.composite
def rigids(draw: Any) -> np.ndarray:
    """A rigid 4×4 transform in float64: any rotation, translation within ±300 mm."""
    rv = draw(rotvecs())
    t = np.array([draw(st.floats(-300.0, 300.0)) for _ in range(3)])
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(rv).as_matrix()
    out[:3, 3] = t
    return out


@st.composite
def point_sets(draw: Any, n: int = 4) -> np.ndarray:
    return np.array([[draw(st.floats(-200.0, 200.0)) for _ in range(3)] for _ in range(n)])


def rigid_np(rotvec: Any, t: Any) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    out[:3, 3] = t
    return out


# --------------------------------------------------------------------------------------------------
# rotation vectors


@SETTINGS
@given(rv=rotvecs(max_angle=2 * math.pi))
def test_rotvec_to_matrix_matches_scipy(rv: np.ndarray) -> None:
    np.testing.assert_allclose(tf.rotvec_to_matrix(rv), Rotation.from_rotvec(rv).as_matrix(),
                               atol=1e-12)


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
@SETTINGS
@given(rv=rotvecs())
def test_rotvec_round_trip(kind: str, dtype: str, rv: np.ndarray) -> None:
    mat = tf.rotvec_to_matrix(make(rv, kind, dtype))
    assert_kind(mat, kind, dtype)
    back = tf.matrix_to_rotvec(mat)
    assert_kind(back, kind, dtype)
    np.testing.assert_allclose(to_np(back), rv, atol=10 * ATOL[dtype])


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-8, 1e-5, 1e-4, 1e-3, math.pi - 1e-6,
                                   math.pi - 1e-3])
def test_rotvec_round_trip_near_zero_and_pi(kind: str, dtype: str, angle: float) -> None:
    axis = np.array([2.0, -1.0, 0.5]) / math.sqrt(5.25)
    rv = axis * angle
    mat = tf.rotvec_to_matrix(make(rv, kind, dtype))
    np.testing.assert_allclose(to_np(mat), Rotation.from_rotvec(rv).as_matrix(),
                               atol=ATOL[dtype])
    back = to_np(tf.matrix_to_rotvec(mat))
    # relative precision: a tiny rotation must not come back as zero or with the wrong axis
    if angle > 0 and dtype == "float64":
        np.testing.assert_allclose(back, rv, rtol=1e-6, atol=1e-15)
    else:
        np.testing.assert_allclose(back, rv, atol=10 * ATOL[dtype])


def test_rotvec_fixed_cases() -> None:
    # a quarter turn about +z takes +x to +y
    np.testing.assert_allclose(tf.rotvec_to_matrix([0.0, 0.0, math.pi / 2]),
                               [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_array_equal(tf.rotvec_to_matrix([0.0, 0.0, 0.0]), np.eye(3))
    # a half turn about +x
    np.testing.assert_allclose(tf.rotvec_to_matrix([math.pi, 0.0, 0.0]), np.diag([1, -1, -1]),
                               atol=1e-15)
    back = tf.matrix_to_rotvec(np.diag([1.0, -1.0, -1.0]))
    np.testing.assert_allclose(np.abs(back), [math.pi, 0, 0], atol=1e-12)  # axis sign arbitrary
    # a tiny angle: R ≈ I + [v]×
    v = np.array([1e-9, -2e-9, 3e-9])
    expected = np.eye(3) + np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    np.testing.assert_allclose(tf.rotvec_to_matrix(v), expected, atol=1e-17)


@SETTINGS
@given(rv=rotvecs(max_angle=2 * math.pi - 1e-3))
def test_matrix_to_rotvec_angle_in_zero_pi(rv: np.ndarray) -> None:
    """Angles above π come back as the same rotation with an angle in [0, π]."""
    back = tf.matrix_to_rotvec(tf.rotvec_to_matrix(rv))
    assert np.linalg.norm(back) <= math.pi + 1e-9
    np.testing.assert_allclose(tf.rotvec_to_matrix(back), Rotation.from_rotvec(rv).as_matrix(),
                               atol=1e-9)


def test_rotvec_batch_shapes() -> None:
    rv = np.random.default_rng(0).normal(size=(2, 5, 3))
    mats = tf.rotvec_to_matrix(rv)
    assert mats.shape == (2, 5, 3, 3)
    np.testing.assert_allclose(mats[1, 3], Rotation.from_rotvec(rv[1, 3]).as_matrix(), atol=1e-12)
    assert tf.matrix_to_rotvec(mats).shape == (2, 5, 3)
    with pytest.raises(ShapeError):
        tf.rotvec_to_matrix(np.zeros((4, 2)))
    with pytest.raises(ShapeError):
        tf.matrix_to_rotvec(np.eye(4))


def test_lists_are_float64_numpy() -> None:
    out = tf.rotvec_to_matrix([0, 0, 1])
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float64


# --------------------------------------------------------------------------------------------------
# quaternions


@SETTINGS
@given(rv=rotvecs(max_angle=2 * math.pi))
def test_quaternion_matches_scipy(rv: np.ndarray) -> None:
    rot = Rotation.from_rotvec(rv)
    x, y, z, w = rot.as_quat()  # scipy: scalar last
    ours = np.array([w, x, y, z])
    np.testing.assert_allclose(tf.quaternion_to_matrix(ours), rot.as_matrix(), atol=1e-12)
    q = tf.matrix_to_quaternion(rot.as_matrix())
    assert q[0] >= 0
    if ours[0] < 0:
        ours = -ours
    if abs(ours[0]) > 1e-9:  # at w = 0 the sign is a free choice
        np.testing.assert_allclose(q, ours, atol=1e-12)
    np.testing.assert_allclose(tf.quaternion_to_matrix(q), rot.as_matrix(), atol=1e-12)


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
@SETTINGS
@given(q=st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4))
def test_quaternion_round_trip(kind: str, dtype: str, q: list[float]) -> None:
    qa = np.array(q)
    if np.linalg.norm(qa) < 0.1:
        qa = np.array([0.3, -0.2, 0.5, 0.1])
    qa = qa / np.linalg.norm(qa)
    qa = qa if qa[0] >= 0 else -qa
    mat = tf.quaternion_to_matrix(make(qa, kind, dtype))
    assert_kind(mat, kind, dtype)
    back = tf.matrix_to_quaternion(mat)
    assert_kind(back, kind, dtype)
    back_np = to_np(back)
    assert back_np[0] >= 0
    np.testing.assert_allclose(np.linalg.norm(back_np), 1.0, atol=ATOL[dtype])
    # q and −q are one rotation; only at w ≈ 0 may the sign differ
    if back_np @ qa < 0:
        assert abs(qa[0]) < 1e-3
        back_np = -back_np
    np.testing.assert_allclose(back_np, qa, atol=10 * ATOL[dtype])


def test_quaternion_fixed_cases() -> None:
    s = math.sqrt(0.5)
    # a quarter turn about +z
    np.testing.assert_allclose(tf.quaternion_to_matrix([s, 0, 0, s]),
                               [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    # scale and sign do not matter
    np.testing.assert_allclose(tf.quaternion_to_matrix([-3 * s, 0, 0, -3 * s]),
                               [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_allclose(tf.matrix_to_quaternion(np.eye(3)), [1, 0, 0, 0], atol=0)
    # half turns: w = 0, one of the vector parts is ±1
    for axis in range(3):
        mat = -np.eye(3)
        mat[axis, axis] = 1.0
        q = tf.matrix_to_quaternion(mat)
        expected = np.zeros(4)
        expected[axis + 1] = 1.0
        np.testing.assert_allclose(np.abs(q), expected, atol=1e-15)
    with pytest.raises(ShapeError, match="zero norm"):
        tf.quaternion_to_matrix([0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ShapeError):
        tf.quaternion_to_matrix([1.0, 0.0, 0.0])
    assert tf.quaternion_to_matrix(np.ones((3, 2, 4))).shape == (3, 2, 3, 3)


def test_matrix_to_quaternion_picks_stable_branch_everywhere() -> None:
    """Each of the four branches (w, x, y, z largest) is exercised and agrees with scipy."""
    rng = np.random.default_rng(1)
    quats = rng.normal(size=(400, 4))
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    mats = Rotation.from_quat(quats[:, [1, 2, 3, 0]]).as_matrix()
    largest = np.abs(quats).argmax(-1)
    assert set(largest.tolist()) == {0, 1, 2, 3}
    ours = tf.matrix_to_quaternion(mats)
    canon = np.where(quats[:, :1] < 0, -quats, quats)
    np.testing.assert_allclose(ours, canon, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# compose / invert / apply


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
@SETTINGS
@given(transform=rigids())
def test_invert_is_inverse(kind: str, dtype: str, transform: np.ndarray) -> None:
    t = make(transform, kind, dtype)
    inv = tf.invert(t)
    assert_kind(inv, kind, dtype)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(to_np(tf.compose(inv, t)), np.eye(4), atol=tol)
    np.testing.assert_allclose(to_np(tf.compose(t, inv)), np.eye(4), atol=tol)
    np.testing.assert_allclose(to_np(inv), np.linalg.inv(transform), atol=tol * 10, rtol=1e-5)


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
@SETTINGS
@given(a=rigids(), b=rigids(), pts=point_sets())
def test_compose_then_apply(kind: str, dtype: str, a: np.ndarray, b: np.ndarray,
                            pts: np.ndarray) -> None:
    ta, tb, p = make(a, kind, dtype), make(b, kind, dtype), make(pts, kind, dtype)
    ab = tf.compose(ta, tb)
    assert_kind(ab, kind, dtype)
    once = tf.apply(ab, p)
    twice = tf.apply(ta, tf.apply(tb, p))
    assert_kind(once, kind, dtype)
    assert once.shape == (4, 3)
    tol = 2e-3 if dtype == "float32" else 1e-9  # mm, points up to ~1 m from the origin
    np.testing.assert_allclose(to_np(once), to_np(twice), atol=tol)
    # and against the plain definition R p + t, applied right to left
    expected = pts @ b[:3, :3].T + b[:3, 3]
    expected = expected @ a[:3, :3].T + a[:3, 3]
    np.testing.assert_allclose(to_np(once), expected, atol=tol)


def test_compose_order_is_right_to_left() -> None:
    rot = rigid_np([0, 0, math.pi / 2], [0, 0, 0])
    shift = tf.translation([10.0, 0.0, 0.0])
    p = np.array([[1.0, 0.0, 0.0]])
    # rotate first, then shift: (1,0,0) -> (0,1,0) -> (10,1,0)
    np.testing.assert_allclose(tf.apply(tf.compose(shift, rot), p), [[10, 1, 0]], atol=1e-12)
    # shift first, then rotate: (1,0,0) -> (11,0,0) -> (0,11,0)
    np.testing.assert_allclose(tf.apply(tf.compose(rot, shift), p), [[0, 11, 0]], atol=1e-12)
    three = tf.compose(shift, rot, shift)
    np.testing.assert_allclose(tf.apply(three, p), [[10, 11, 0]], atol=1e-12)
    np.testing.assert_array_equal(tf.compose(rot), rot)
    with pytest.raises(ValueError, match="at least one transform"):
        tf.compose()


def test_broadcasting_shapes() -> None:
    rng = np.random.default_rng(2)
    a = np.stack([rigid_np(rng.normal(size=3), rng.normal(size=3)) for _ in range(2)])[:, None]
    b = np.stack([rigid_np(rng.normal(size=3), rng.normal(size=3)) for _ in range(3)])
    ab = tf.compose(a, b)  # (2, 1, 4, 4) with (3, 4, 4)
    assert ab.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(ab[1, 2], a[1, 0] @ b[2], atol=1e-12)
    pts = rng.normal(size=(5, 3))
    out = tf.apply(b, pts)  # (3, 4, 4) with (5, 3)
    assert out.shape == (3, 5, 3)
    np.testing.assert_allclose(out[1], pts @ b[1, :3, :3].T + b[1, :3, 3], atol=1e-12)
    out = tf.apply(b[0], rng.normal(size=(2, 5, 3)))  # (4, 4) with (2, 5, 3)
    assert out.shape == (2, 5, 3)
    pts_b = rng.normal(size=(3, 5, 3))
    out = tf.apply(b, pts_b)  # one transform per point set
    np.testing.assert_allclose(out[2], pts_b[2] @ b[2, :3, :3].T + b[2, :3, 3], atol=1e-12)
    assert tf.invert(ab).shape == (2, 3, 4, 4)
    np.testing.assert_allclose(tf.invert(ab)[1, 2], np.linalg.inv(ab[1, 2]), atol=1e-12)


def test_apply_kind_follows_points() -> None:
    t = torch.eye(4, dtype=torch.float64)
    pts = np.ones((2, 3), dtype=np.float32)
    out = tf.apply(t, pts)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    out = tf.apply(np.eye(4), torch.ones(2, 3, dtype=torch.float32))
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32


def test_compose_kind_follows_first() -> None:
    out = tf.compose(np.eye(4, dtype=np.float32), torch.eye(4, dtype=torch.float64))
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    out = tf.compose(torch.eye(4, dtype=torch.float32), np.eye(4))
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
def test_translation_and_rigid(kind: str, dtype: str) -> None:
    t = tf.translation(make([1.0, 2.0, 3.0], kind, dtype))
    assert_kind(t, kind, dtype)
    expected = np.eye(4)
    expected[:3, 3] = [1, 2, 3]
    np.testing.assert_array_equal(to_np(t), expected)
    rot = Rotation.from_rotvec([0.1, 0.2, 0.3]).as_matrix()
    r = tf.rigid(make(rot, kind, dtype), make([4.0, 5.0, 6.0], kind, dtype))
    assert_kind(r, kind, dtype)
    expected = np.eye(4)
    expected[:3, :3] = rot
    expected[:3, 3] = [4, 5, 6]
    np.testing.assert_allclose(to_np(r), expected, atol=ATOL[dtype])
    # one rotation, a batch of offsets
    batch = tf.rigid(make(rot, kind, dtype), make(np.arange(6.0).reshape(2, 3), kind, dtype))
    assert tuple(batch.shape) == (2, 4, 4)
    np.testing.assert_allclose(to_np(batch)[1, :3, 3], [3, 4, 5], atol=0)
    np.testing.assert_allclose(to_np(batch)[1, 3], [0, 0, 0, 1], atol=0)


@pytest.mark.parametrize("bad", [np.eye(3), np.zeros((4, 3)), np.zeros(16)])
def test_transform_shape_errors(bad: np.ndarray) -> None:
    with pytest.raises(ShapeError):
        tf.invert(bad)
    with pytest.raises(ShapeError):
        tf.compose(np.eye(4), bad)
    with pytest.raises(ShapeError):
        tf.apply(bad, np.zeros((2, 3)))
    with pytest.raises(ShapeError):
        tf.params_from_rigid(bad)


@pytest.mark.parametrize("pts", [np.zeros((2, 2)), np.zeros(3), np.zeros((2, 4))])
def test_apply_point_shape_errors(pts: np.ndarray) -> None:
    with pytest.raises(ShapeError, match="points"):
        tf.apply(np.eye(4), pts)


# --------------------------------------------------------------------------------------------------
# 6-vector poses and pivots


def test_worked_example_from_docs() -> None:
    t = tf.rigid_from_params([0.0, 0.0, math.pi / 2, 10.0, 0.0, 0.0])
    np.testing.assert_allclose(tf.apply(t, [[1.0, 0.0, 0.0]]), [[10.0, 1.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(tf.params_from_rigid(t), [0, 0, math.pi / 2, 10, 0, 0],
                               atol=1e-12)


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
@SETTINGS
@given(rv=rotvecs(), t=point_sets(n=1), c=point_sets(n=1), use_center=st.booleans())
def test_params_round_trip(kind: str, dtype: str, rv: np.ndarray, t: np.ndarray, c: np.ndarray,
                           use_center: bool) -> None:
    params = np.concatenate([rv, t[0]])
    center = make(c[0], kind, dtype) if use_center else None
    mat = tf.rigid_from_params(make(params, kind, dtype), center=center)
    assert_kind(mat, kind, dtype)
    assert tf.is_rigid(mat, atol=1e-5)
    back = tf.params_from_rigid(mat, center=center)
    assert_kind(back, kind, dtype)
    tol = np.array([10 * ATOL[dtype]] * 3 + [1e-3 if dtype == "float32" else 1e-9] * 3)
    assert np.all(np.abs(to_np(back) - params) <= tol), (to_np(back), params)
    # the meaning: x ↦ R (x − c) + c + t
    rot = Rotation.from_rotvec(rv).as_matrix()
    cc = c[0] if use_center else np.zeros(3)
    x = np.array([[12.0, -40.0, 7.0]])
    expected = (x - cc) @ rot.T + cc + t[0]
    np.testing.assert_allclose(to_np(tf.apply(mat, make(x, kind, dtype))), expected,
                               atol=2e-3 if dtype == "float32" else 1e-9)


def test_params_with_center_fixed_case() -> None:
    c = np.array([100.0, 0.0, 0.0])
    t = tf.rigid_from_params([0.0, 0.0, math.pi / 2, 0.0, 0.0, 5.0], center=c)
    # the pivot only moves by the translation; a point 1 mm along +x from it turns to +y
    np.testing.assert_allclose(tf.apply(t, [c]), [[100, 0, 5]], atol=1e-12)
    np.testing.assert_allclose(tf.apply(t, [[101.0, 0, 0]]), [[100, 1, 5]], atol=1e-12)
    # without the center the same parameters turn about the origin
    t0 = tf.rigid_from_params([0.0, 0.0, math.pi / 2, 0.0, 0.0, 5.0])
    np.testing.assert_allclose(tf.apply(t0, [c]), [[0, 100, 5]], atol=1e-12)


def test_params_batch() -> None:
    rng = np.random.default_rng(3)
    params = rng.normal(size=(5, 6))
    centers = rng.normal(size=(5, 3)) * 50
    mats = tf.rigid_from_params(params, center=centers)
    assert mats.shape == (5, 4, 4)
    np.testing.assert_allclose(mats[3], tf.rigid_from_params(params[3], center=centers[3]),
                               atol=1e-12)
    back = tf.params_from_rigid(mats, center=centers)
    assert back.shape == (5, 6)
    np.testing.assert_allclose(tf.rigid_from_params(back, center=centers), mats, atol=1e-10)
    with pytest.raises(ShapeError):
        tf.rigid_from_params(np.zeros(5))


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
@SETTINGS
@given(rv=rotvecs(), c=point_sets(n=1), t=point_sets(n=1))
def test_rotate_about_keeps_center_fixed(kind: str, dtype: str, rv: np.ndarray, c: np.ndarray,
                                         t: np.ndarray) -> None:
    rot = make(Rotation.from_rotvec(rv).as_matrix(), kind, dtype)
    center = make(c[0], kind, dtype)
    mat = tf.rotate_about(rot, center)
    assert_kind(mat, kind, dtype)
    tol = 1e-3 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(to_np(tf.apply(mat, make(c, kind, dtype))), c, atol=tol)
    # with a 4×4 input, its translation is applied after the pivot: c ↦ c + t
    full = tf.rigid(rot, make(t[0], kind, dtype))
    mat = tf.rotate_about(full, center)
    np.testing.assert_allclose(to_np(tf.apply(mat, make(c, kind, dtype))), c + t, atol=tol)
    np.testing.assert_allclose(to_np(mat)[:3, :3], to_np(rot), atol=0)


def test_rotate_about_shape_error() -> None:
    with pytest.raises(ShapeError):
        tf.rotate_about(np.eye(3), [1.0, 2.0])
    with pytest.raises(ShapeError):
        tf.rotate_about(np.eye(2), [1.0, 2.0, 3.0])


# --------------------------------------------------------------------------------------------------
# is_rigid / check_rigid


def _good() -> np.ndarray:
    return rigid_np([0.3, -0.2, 0.9], [10.0, -20.0, 30.0])


def _defects() -> dict[str, tuple[np.ndarray, str]]:
    """Broken transforms and a word their error message must contain."""
    reflection = _good()
    reflection[:3, 0] *= -1.0
    scaled = _good()
    scaled[:3, :3] *= 1.01
    shear = _good()
    shear[:3, :3] = shear[:3, :3] @ np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    nan = _good()
    nan[1, 2] = np.nan
    inf = _good()
    inf[0, 3] = np.inf
    last_row = _good()
    last_row[3] = [0.0, 0.0, 1.0, 1.0]
    last_one = _good()
    last_one[3, 3] = 2.0
    return {
        "reflection": (reflection, "reflection"),
        "scaled": (scaled, "orthonormal"),
        "shear": (shear, "orthonormal"),
        "nan": (nan, "NaN"),
        "inf": (inf, "infinite"),
        "last_row": (last_row, "last row"),
        "last_one": (last_one, "last row"),
    }


@pytest.mark.parametrize("defect", list(_defects()))
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_check_rigid_names_the_defect(defect: str, kind: str) -> None:
    mat, word = _defects()[defect]
    arr = make(mat, kind, "float64")
    assert tf.is_rigid(arr) is False
    with pytest.raises(FrameError, match=word) as info:
        tf.check_rigid(arr, name="fixed_from_moving")
    assert "fixed_from_moving" in str(info.value)
    # also when it hides in a batch of good ones
    batch = np.stack([_good(), mat, _good()])
    assert tf.is_rigid(batch).tolist() == [True, False, True]
    with pytest.raises(FrameError, match=word):
        tf.check_rigid(make(batch, kind, "float64"))


def test_reflection_message_gives_the_determinant() -> None:
    mat, _ = _defects()["reflection"]
    with pytest.raises(FrameError, match=r"determinant -1\.0"):
        tf.check_rigid(mat)


def test_pure_scaling_refused() -> None:
    mat = np.diag([2.0, 2.0, 2.0, 1.0])
    assert tf.is_rigid(mat) is False
    with pytest.raises(FrameError, match="not rigid"):
        tf.check_rigid(mat)


@pytest.mark.parametrize("matrix", [np.diag([2.0, 2.0, 2.0, 1.0]), np.diag([-1.0, 1, 1, 1])],
                         ids=["scaling", "reflection"])
def test_conversions_refuse_what_is_not_rigid(matrix: np.ndarray) -> None:
    # each read the matrix as if it were rigid: params_from_rigid gave zeros (the identity)
    # for both, invert gave diag(2, 2, 2, 1) back for the scaling
    calls: list[Callable[..., Any]] = [tf.invert, tf.params_from_rigid]
    for call in calls:
        with pytest.raises(FrameError, match="transform"):
            call(matrix)
    calls = [tf.matrix_to_rotvec, tf.matrix_to_quaternion, tf.matrix_to_euler]
    for call in calls:
        with pytest.raises(FrameError, match="matrix is not a rotation"):
            call(matrix[:3, :3])
    with pytest.raises(FrameError, match="NaN"):
        tf.matrix_to_rotvec(np.full((3, 3), np.nan))


def test_nearest_rotation_is_the_polar_factor() -> None:
    rot = np.asarray(tf.rotvec_to_matrix(np.array([0.3, -0.5, 1.2])))
    nearest, distance = tf.nearest_rotation(rot * 1.01)
    assert isinstance(nearest, np.ndarray)
    np.testing.assert_allclose(nearest, rot, atol=1e-12)
    assert float(distance) == pytest.approx(0.01 * np.abs(rot).max())
    flipped, _ = tf.nearest_rotation(np.diag([-1.0, 1.0, 1.0]))
    assert np.linalg.det(flipped) == pytest.approx(-1.0)      # a reflection stays one
    batch, dist = tf.nearest_rotation(torch.eye(3).repeat(2, 1, 1))
    assert tuple(batch.shape) == (2, 3, 3)
    assert tuple(dist.shape) == (2,)


def test_empty_batches_and_singular_blocks() -> None:
    for empty in (torch.zeros(0, 4, 4, dtype=torch.float64), np.zeros((0, 4, 4))):
        assert tuple(tf.invert(empty).shape) == (0, 4, 4)
        assert tuple(tf.params_from_rigid(empty).shape) == (0, 6)
    flat = np.eye(4)
    flat[2, 2] = 0.0                      # was called "a reflection" (determinant -0.0)
    with pytest.raises(FrameError, match="singular"):
        tf.check_rigid(flat)
    with pytest.raises(FrameError, match="matrix is not a rotation: it is singular"):
        tf.matrix_to_rotvec(flat[:3, :3])


def test_conversions_accept_float32_rounding() -> None:
    rot = tf.rotvec_to_matrix(torch.tensor([0.3, -0.5, 1.2]))          # float32
    mat = tf.rigid_from_params(torch.tensor([0.3, -0.5, 1.2, 10.0, -4.0, 2.0]))
    back = tf.rigid_from_params(tf.params_from_rigid(mat))
    assert torch.allclose(back, mat, atol=1e-5)
    assert torch.allclose(tf.matrix_to_rotvec(rot), torch.tensor([0.3, -0.5, 1.2]), atol=1e-5)
    assert torch.allclose(tf.compose(mat, tf.invert(mat)), torch.eye(4), atol=1e-5)


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
def test_rigid_accepted(kind: str, dtype: str) -> None:
    mat = make(_good(), kind, dtype)
    atol = 1e-6 if dtype == "float64" else 1e-5
    assert tf.is_rigid(mat, atol=atol) is True
    tf.check_rigid(mat, atol=atol)
    assert tf.is_rigid(np.eye(4)) is True


def test_rigid_tolerance() -> None:
    near = _good()
    near[:3, :3] *= 1 + 1e-9
    assert tf.is_rigid(near) is True
    tf.check_rigid(near)
    off = _good()
    off[:3, :3] *= 1 + 1e-4
    assert tf.is_rigid(off) is False
    assert tf.is_rigid(off, atol=1e-3) is True
    with pytest.raises(FrameError):
        tf.check_rigid(off)
    tf.check_rigid(off, atol=1e-3)


def test_rotations_written_to_six_decimals_are_rigid() -> None:
    # "to 1e-6" is a bound on the entries: |RᵀR − I| <= 1e-6 refused a quarter of the
    # rotations rounded to 6 decimals (entries 5e-7 off), as a camera file holds them
    rng = np.random.default_rng(7)
    for _ in range(50):
        mat = rigid_np(rng.uniform(-np.pi, np.pi, 3) / 2, rng.uniform(-100, 100, 3))
        rounded = np.round(mat, 6)
        assert tf.is_rigid(rounded) is True
        tf.check_rigid(rounded)
        # and every conversion reads what the check accepts
        tf.invert(rounded)
        np.testing.assert_allclose(tf.rigid_from_params(tf.params_from_rigid(rounded)), rounded,
                                   atol=2e-6)
        tf.matrix_to_rotvec(rounded[:3, :3])
        tf.matrix_to_euler(rounded[:3, :3])
        tf.matrix_to_quaternion(rounded[:3, :3])
    off = _good()
    off[0, 1] += 3e-6
    assert tf.is_rigid(off) is False
    with pytest.raises(FrameError, match="from the nearest rotation"):
        tf.check_rigid(off)


@pytest.mark.parametrize("shape", [(3, 3), (4, 3), (3, 4), (16,), (2, 4, 5)])
def test_rigid_checks_shape_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeError):
        tf.check_rigid(np.zeros(shape))
    with pytest.raises(ShapeError):
        tf.is_rigid(np.zeros(shape))


def test_rigid_broadcasts_rotations_and_offsets() -> None:
    rng = np.random.default_rng(4)
    rot = np.stack([rigid_np(rng.normal(size=3), np.zeros(3))[:3, :3] for _ in range(2)])
    off = rng.normal(size=(5, 1, 3))
    out = tf.rigid(rot, off)                 # (2, 3, 3) with (5, 1, 3): a (5, 2) batch
    assert out.shape == (5, 2, 4, 4)
    np.testing.assert_allclose(out[3, 1, :3, :3], rot[1])
    np.testing.assert_allclose(out[3, 1, :3, 3], off[3, 0])
    np.testing.assert_array_equal(out[..., 3, :], np.broadcast_to([0.0, 0.0, 0.0, 1.0], (5, 2, 4)))
    with pytest.raises(ShapeError, match=r"batch \(2,\) and the offsets' batch \(3,\)"):
        tf.rigid(rot, np.zeros((3, 3)))      # batches 2 and 3 do not broadcast


def test_is_rigid_batch_shape() -> None:
    batch = np.broadcast_to(np.eye(4), (2, 3, 4, 4))
    ok = tf.is_rigid(batch)
    assert isinstance(ok, np.ndarray)
    assert ok.shape == (2, 3)
    assert ok.all()


# --------------------------------------------------------------------------------------------------
# gradients (float64)


@pytest.mark.parametrize("rv", [
    [0.3, -1.2, 0.8],
    [0.0, 0.0, 0.0],
    [1e-6, -2e-6, 5e-7],
    [1e-4, 0.0, 0.0],  # at the Taylor switch
    [2.0, 1.5, -0.5],  # beyond π
])
def test_gradcheck_rotvec_to_matrix(rv: list[float]) -> None:
    v = torch.tensor(rv, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tf.rotvec_to_matrix, (v,))


def test_gradient_of_rotvec_at_zero_is_the_generators() -> None:
    """The derivative d R / d v_k at v = 0 is the skew generator of axis k."""
    v = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(tf.rotvec_to_matrix, v)  # (3, 3, 3)
    gens = np.zeros((3, 3, 3))
    gens[0] = [[0, 0, 0], [0, 0, -1], [0, 1, 0]]
    gens[1] = [[0, 0, 1], [0, 0, 0], [-1, 0, 0]]
    gens[2] = [[0, -1, 0], [1, 0, 0], [0, 0, 0]]
    np.testing.assert_allclose(jac.permute(2, 0, 1).numpy(), gens, atol=1e-12)


def test_gradcheck_rigid_from_params_with_center() -> None:
    params = torch.tensor([0.2, -0.4, 0.7, 5.0, -3.0, 1.0], dtype=torch.float64,
                          requires_grad=True)
    center = torch.tensor([10.0, 20.0, -30.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, c: tf.rigid_from_params(p, center=c),
                                    (params, center))
    small = torch.tensor([1e-7, 0.0, -1e-7, 1.0, 2.0, 3.0], dtype=torch.float64,
                         requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: tf.rigid_from_params(p, center=center.detach()),
                                    (small,))


def test_gradcheck_apply_invert_compose() -> None:
    mat = torch.tensor(rigid_np([0.4, 0.1, -0.3], [1.0, 2.0, 3.0]), requires_grad=True)
    pts = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                      requires_grad=True)
    assert torch.autograd.gradcheck(tf.apply, (mat, pts))
    # the steps stay within the rigid tolerance (1e-6) that invert checks
    assert torch.autograd.gradcheck(tf.invert, (mat,), eps=1e-7)
    other = torch.tensor(rigid_np([-0.2, 0.5, 0.3], [4.0, -1.0, 0.0]), requires_grad=True)
    assert torch.autograd.gradcheck(tf.compose, (mat, other))


def test_gradcheck_rotation_conversions() -> None:
    q = torch.tensor([0.8, 0.1, -0.3, 0.4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tf.quaternion_to_matrix, (q,))
    ang = torch.tensor([0.3, -0.5, 1.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: tf.euler_to_matrix(a, "ZYX", "intrinsic"), (ang,))
    rot = tf.rotvec_to_matrix(torch.tensor([0.3, -0.5, 1.2], dtype=torch.float64))
    rot = rot.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(tf.matrix_to_rotvec, (rot,), eps=1e-7)


def test_torch_graph_survives() -> None:
    params = torch.tensor([0.1, 0.2, 0.3, 1.0, 2.0, 3.0], requires_grad=True)
    out = tf.apply(tf.rigid_from_params(params), torch.ones(1, 3))
    out.sum().backward()
    assert params.grad is not None
    assert torch.isfinite(params.grad).all()
    assert params.grad[3:].tolist() == [1.0, 1.0, 1.0]  # d(sum)/d(t) = 1 for each axis


# --------------------------------------------------------------------------------------------------
# device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_stay_on_device() -> None:
    mat = torch.tensor(_good(), device="cuda")
    tf.check_rigid(mat)
    assert tf.is_rigid(mat) is True
    out = tf.apply(tf.invert(mat), torch.ones(2, 3, dtype=torch.float64, device="cuda"))
    assert out.device.type == "cuda"
    bad = mat.clone()
    bad[:3, 0] *= -1
    with pytest.raises(FrameError, match="reflection"):
        tf.check_rigid(bad)


def test_rotation_between_takes_one_direction_onto_another() -> None:
    from regkit.geometry.transforms import rotation_between

    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 3))
    b = rng.normal(size=(50, 3)) * 4.0
    r = rotation_between(a, b)
    assert isinstance(r, np.ndarray)
    assert r.shape == (50, 3, 3)
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", r, ua), ub, atol=1e-12)
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    # the smallest: its angle is the angle between the vectors
    angle = np.arccos(np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1, 1))
    np.testing.assert_allclose(angle, np.arccos(np.clip((ua * ub).sum(1), -1, 1)), atol=1e-7)
    # parallel: identity; opposite: a half turn that still maps a onto b
    np.testing.assert_allclose(rotation_between([0, 0, 2.0], [0, 0, 5.0]), np.eye(3))
    for v in ([1.0, 0, 0], [0, 0, 3.0], [1.0, 2.0, -0.5]):
        half = rotation_between(v, -np.asarray(v))
        np.testing.assert_allclose(half @ np.asarray(v), -np.asarray(v), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(half), 1.0, atol=1e-12)
    t = rotation_between(torch.tensor([1.0, 0, 0], dtype=torch.float64),
                         torch.tensor([0, 1.0, 0], dtype=torch.float64))
    assert isinstance(t, torch.Tensor)
    with pytest.raises(InputError, match="non-zero"):
        rotation_between([0, 0, 0], [1.0, 0, 0])
    with pytest.raises(ShapeError):
        rotation_between([1.0, 0], [0, 1.0])
