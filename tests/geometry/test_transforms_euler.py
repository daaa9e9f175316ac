"""Behavioural tests of regkit.geometry.transforms' Euler angles, on numpy and torch.

Reference values come from scipy.spatial.transform.Rotation (lowercase axis strings are extrinsic,
uppercase intrinsic) and from matrices written out by hand.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from regkit.errors import ShapeError
from regkit.geometry import transforms as tf
from regkit.testing.arrays import KIND_IDS, KINDS, assert_kind, make
from regkit.testing.arrays import to_numpy as to_np

BACKENDS = KINDS
BACKEND_IDS = KIND_IDS
FEW = settings(max_examples=10, deadline=None)
ATOL = {"float32": 2e-5, "float64": 1e-10}
ORDERS = ["".join(p) for p in itertools.product("XYZ", repeat=3) if p[0] != p[1] and p[1] != p[2]]
CONVENTIONS: list[tf.EulerConvention] = ["extrinsic", "intrinsic"]


def scipy_seq(order: str, convention: tf.EulerConvention) -> str:
    return order.lower() if convention == "extrinsic" else order.upper()


def is_proper(order: str) -> bool:
    return order[0] == order[2]


def rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# --------------------------------------------------------------------------------------------------
# Euler angles


def _euler_range(order: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Angles inside the documented output range, away from gimbal lock."""
    a = rng.uniform(-math.pi + 1e-3, math.pi - 1e-3, size=(n, 3))
    if is_proper(order):
        a[:, 1] = rng.uniform(0.05, math.pi - 0.05, size=n)
    else:
        a[:, 1] = rng.uniform(-math.pi / 2 + 0.05, math.pi / 2 - 0.05, size=n)
    return a


def test_euler_definition_by_hand() -> None:
    a, b, c = 0.3, -0.7, 1.1
    np.testing.assert_allclose(tf.euler_to_matrix([a, b, c], "XYZ", "extrinsic"),
                               rz(c) @ ry(b) @ rx(a), atol=1e-15)
    np.testing.assert_allclose(tf.euler_to_matrix([a, b, c], "XYZ", "intrinsic"),
                               rx(a) @ ry(b) @ rz(c), atol=1e-15)
    np.testing.assert_allclose(tf.euler_to_matrix([a, b, c], "ZXZ", "intrinsic"),
                               rz(a) @ rx(b) @ rz(c), atol=1e-15)
    # lowercase order strings are accepted and mean the same
    np.testing.assert_allclose(tf.euler_to_matrix([a, b, c], "zyx"),
                               tf.euler_to_matrix([a, b, c], "ZYX"), atol=0)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("order", ORDERS)
def test_euler_matches_scipy_both_ways(order: str, convention: tf.EulerConvention) -> None:
    rng = np.random.default_rng(abs(hash((order, convention))) % 2**32)
    angles = _euler_range(order, rng, 64)
    seq = scipy_seq(order, convention)
    ref = Rotation.from_euler(seq, angles).as_matrix()
    mats = tf.euler_to_matrix(angles, order, convention)
    np.testing.assert_allclose(mats, ref, atol=1e-12)
    np.testing.assert_allclose(tf.matrix_to_euler(ref, order, convention),
                               Rotation.from_matrix(ref).as_euler(seq), atol=1e-9)
    np.testing.assert_allclose(tf.matrix_to_euler(ref, order, convention), angles, atol=1e-9)


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("order", ORDERS)
@FEW
@given(data=st.data())
def test_euler_round_trip(kind: str, dtype: str, order: str, convention: tf.EulerConvention,
                          data: st.DataObject) -> None:
    mid_lo, mid_hi = (0.05, math.pi - 0.05) if is_proper(order) else (-1.5, 1.5)
    angles = np.array([
        data.draw(st.floats(-math.pi + 1e-3, math.pi - 1e-3), label="first"),
        data.draw(st.floats(mid_lo, mid_hi), label="middle"),
        data.draw(st.floats(-math.pi + 1e-3, math.pi - 1e-3), label="third"),
    ])
    mat = tf.euler_to_matrix(make(angles, kind, dtype), order, convention)
    assert_kind(mat, kind, dtype)
    back = tf.matrix_to_euler(mat, order, convention)
    assert_kind(back, kind, dtype)
    # ill-conditioning near lock grows as 1 / cos(middle) (or 1 / sin); 0.05 rad keeps it ≤ 20×
    np.testing.assert_allclose(to_np(back), angles, atol=200 * ATOL[dtype])


def _lock_middles(order: str) -> list[float]:
    return [0.0, math.pi] if is_proper(order) else [math.pi / 2, -math.pi / 2]


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("order", ORDERS)
def test_euler_gimbal_lock(kind: str, dtype: str, order: str,
                           convention: tf.EulerConvention) -> None:
    """At lock: the same matrix comes back, the middle angle is exact, the third angle is 0."""
    for mid in _lock_middles(order):
        angles = np.array([0.4, mid, -1.2])
        mat = tf.euler_to_matrix(make(angles, kind, dtype), order, convention)
        back = tf.matrix_to_euler(mat, order, convention)
        back_np = to_np(back)
        assert back_np[2] == 0.0, back_np
        np.testing.assert_allclose(back_np[1], mid, atol=10 * ATOL[dtype])
        np.testing.assert_allclose(to_np(tf.euler_to_matrix(back, order, convention)),
                                   to_np(mat), atol=10 * ATOL[dtype])
        if dtype == "float64":
            seq = scipy_seq(order, convention)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy warns about gimbal lock
                ref = Rotation.from_matrix(to_np(mat)).as_euler(seq)
            np.testing.assert_allclose(back_np, ref, atol=1e-9)


@pytest.mark.parametrize(("kind", "dtype"), BACKENDS, ids=BACKEND_IDS)
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("order", ORDERS)
def test_euler_near_lock_and_near_zero_and_pi(kind: str, dtype: str, order: str,
                                              convention: tf.EulerConvention) -> None:
    """Angles a hair from lock, from 0 and from ±π still give back the same rotation."""
    delta = 1e-3 if dtype == "float32" else 1e-6
    cases = [[delta, delta, -delta], [math.pi - delta, delta, -math.pi + delta]]
    cases += [[0.5, mid + (delta if mid <= 0 else -delta), -0.2] for mid in _lock_middles(order)]
    cases += [[0.5, mid, -0.2] for mid in ([1e-9] if is_proper(order) else [])]
    for angles in cases:
        mat = tf.euler_to_matrix(make(angles, kind, dtype), order, convention)
        back = tf.matrix_to_euler(mat, order, convention)
        np.testing.assert_allclose(to_np(tf.euler_to_matrix(back, order, convention)),
                                   to_np(mat), atol=20 * ATOL[dtype])


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize(("order", "mid", "dtype", "tol"), [
    ("XYZ", math.pi / 2 - 3e-7, "float64", 1e-13),
    ("ZYX", -math.pi / 2 + 3e-7, "float64", 1e-13),
    ("ZXZ", 3e-7, "float64", 1e-13),
    ("YXY", math.pi - 3e-7, "float64", 1e-13),
    ("XYZ", math.pi / 2 - 3e-3, "float32", 1e-6),
    ("ZXZ", 3e-3, "float32", 1e-6),
])
def test_euler_middle_angle_keeps_precision_near_lock(
        order: str, mid: float, dtype: str, tol: float, convention: tf.EulerConvention) -> None:
    """The middle angle must not lose half its digits near lock (as asin / acos would)."""
    mat = tf.euler_to_matrix(torch.tensor([0.2, mid, 0.3], dtype=torch.float64), order,
                             convention).to(getattr(torch, dtype))
    back = tf.matrix_to_euler(mat, order, convention)
    assert abs(float(back[1]) - mid) < tol


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("order", ["XYZ", "ZXZ"])
def test_euler_output_ranges(order: str, convention: tf.EulerConvention) -> None:
    rng = np.random.default_rng(5)
    mats = Rotation.random(500, random_state=rng).as_matrix()
    angles = tf.matrix_to_euler(mats, order, convention)
    assert angles.shape == (500, 3)
    assert np.all(np.abs(angles[:, [0, 2]]) <= math.pi)
    if is_proper(order):
        assert np.all((angles[:, 1] >= 0) & (angles[:, 1] <= math.pi))
    else:
        assert np.all(np.abs(angles[:, 1]) <= math.pi / 2)
    np.testing.assert_allclose(tf.euler_to_matrix(angles, order, convention), mats, atol=1e-9)


def test_extrinsic_is_intrinsic_reversed() -> None:
    angles = np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(tf.euler_to_matrix(angles, "XYZ", "extrinsic"),
                               tf.euler_to_matrix(angles[::-1], "ZYX", "intrinsic"), atol=1e-15)


@pytest.mark.parametrize("order", ["XXY", "XY", "XYZX", "ABC", "XYY", ""])
def test_euler_bad_order(order: str) -> None:
    with pytest.raises(ValueError, match="order"):
        tf.euler_to_matrix([0.0, 0.0, 0.0], order)
    with pytest.raises(ValueError, match="order"):
        tf.matrix_to_euler(np.eye(3), order)


def test_euler_bad_convention_and_shape() -> None:
    with pytest.raises(ValueError, match="convention"):
        tf.euler_to_matrix([0.0, 0.0, 0.0], "XYZ", "moving")  # type: ignore[arg-type]
    with pytest.raises(ShapeError):
        tf.euler_to_matrix([0.0, 0.0], "XYZ")
    with pytest.raises(ShapeError):
        tf.matrix_to_euler(np.eye(4), "XYZ")
