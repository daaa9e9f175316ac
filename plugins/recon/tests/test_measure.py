"""The measuring tools on label maps whose answers are known exactly."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from regkit_recon.measure import (
    FractureMeasurement,
    bone_gaps,
    fracture_from_points,
    measure_bone_axis,
    measure_fracture,
    measure_radius_angles,
)

from regkit.errors import InputError, ShapeError

SPACING = 0.5


def _affine(spacing: float = SPACING) -> np.ndarray:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = (-20.0, -20.0, -5.0)
    return affine


def _grid(shape: tuple[int, int, int] = (80, 80, 180)) -> tuple[np.ndarray, ...]:
    index = np.indices(shape).reshape(3, -1).T
    world = index @ _affine()[:3, :3].T + _affine()[:3, 3]
    return index, world


def _rod(shape: tuple[int, int, int], half: tuple[float, float], length: float,
         bend: np.ndarray | None = None, level: float = 40.0) -> np.ndarray:
    """A rod of elliptical section along +z from z = 0; beyond ``level`` turned by ``bend``."""
    index, world = _grid(shape)
    local = world.copy()
    if bend is not None:
        beyond = world[:, 2] > level  # approximately: rotate the far part back
        centre = np.array([0.0, 0.0, level])
        local[beyond] = (world[beyond] - centre) @ bend + centre
    inside = ((local[:, 0] / half[0]) ** 2 + (local[:, 1] / half[1]) ** 2 <= 1.0) & \
        (local[:, 2] >= 0.0) & (local[:, 2] <= length)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[tuple(index[inside].T)] = 7
    return labels


def test_axis_and_length_of_a_rod() -> None:
    labels = _rod((80, 80, 180), (4.0, 3.0), 60.0)
    axis = measure_bone_axis(labels, 7, _affine(), towards=(0, 0, 1))
    assert axis.direction @ np.array([0.0, 0.0, 1.0]) > 0.9999
    assert axis.length == pytest.approx(60.0, abs=SPACING)
    assert axis.centroid == pytest.approx([0.0, 0.0, 30.0], abs=0.3)
    assert axis.spread[1] > axis.spread[2]  # wider radially than dorsally


def test_gap_between_two_blocks_is_the_empty_space() -> None:
    labels = np.zeros((40, 20, 20), dtype=np.uint8)
    labels[2:10, 5:15, 5:15] = 1
    labels[14:20, 5:15, 5:15] = 2      # 4 empty voxels (2 mm) between them
    labels[30:36, 5:15, 5:15] = 3      # 9 mm from bone 2: beyond reach
    gaps = bone_gaps(labels, _affine(), within_mm=4.0)
    assert gaps == {(1, 2): pytest.approx(2.0)}


def test_malunion_of_a_synthetic_rod_is_measured() -> None:
    # The distal part turned 15° about x (palmar tilt of the distal fragment: angulation +15°)
    # then 8° about y (radial: angulation2 +8°), hinged at the rod's axis at z = 40.
    a, b = math.radians(15.0), math.radians(8.0)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    turn = ry @ rx
    labels = _rod((80, 80, 180), (4.0, 2.8), 75.0, bend=turn, level=40.0)
    m = measure_fracture(labels, 7, _affine(), fracture_point=(0.0, 0.0, 40.0), distal=(0, 0, 1),
                         dorsal=(0, 1, 0))
    assert math.degrees(m.angulation) == pytest.approx(15.0, abs=1.0)
    assert math.degrees(m.angulation2) == pytest.approx(8.0, abs=1.0)
    assert math.degrees(m.rotation) == pytest.approx(0.0, abs=1.5)


@pytest.mark.parametrize("roll_deg", [15.0, -20.0])
def test_a_rolled_bone_is_measured_in_its_own_planes(roll_deg: float) -> None:
    # A rod rolled about its axis, broken at z = 40 and turned in its own frame by 20° palmarly
    # and 8° radially. Given a dorsal hint off by the roll, the angles come back in the hint's
    # planes, unless the shaft's own section sets them.
    a, b, r = (math.radians(x) for x in (20.0, 8.0, roll_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    roll = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    shape = (80, 80, 180)
    _, world = _grid(shape)
    bend = roll @ ry @ rx @ roll.T                      # the turn, in world
    centre = np.array([0.0, 0.0, 40.0])
    local = world.copy()
    beyond = world[:, 2] > 40.0
    local[beyond] = (world[beyond] - centre) @ bend + centre
    own = local @ roll                                  # the rod's own (radial, dorsal, z)
    inside = ((own[:, 0] / 4.0) ** 2 + (own[:, 1] / 2.8) ** 2 <= 1.0) & (own[:, 2] >= 0.0) & \
        (own[:, 2] <= 75.0)
    points = world[inside]
    def measure(turn: float | None) -> FractureMeasurement:
        return fracture_from_points(points, fracture_point=centre, distal=(0, 0, 1),
                                    dorsal=(0, 1, 0), section_turn_deg=turn)

    hint = measure(None)
    assert abs(math.degrees(hint.angulation2) - 8.0) > 3.0     # the roll mixes the planes
    m = measure(30.0)
    # The section of 8 x 5.6 mm on a 0.5 mm grid gives its thin axis to 2-3°.
    assert math.degrees(m.angulation) == pytest.approx(20.0, abs=1.5)
    assert math.degrees(m.angulation2) == pytest.approx(8.0, abs=1.5)
    assert math.degrees(math.acos(float(m.dorsal_axis @ roll[:, 1]))) < 3.5
    far = measure(abs(roll_deg) / 2)
    np.testing.assert_allclose(far.dorsal_axis, (0, 1, 0), atol=1e-9)   # too far: the hint


def test_measurements_refuse_missing_labels_and_bad_arrays() -> None:
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    with pytest.raises(InputError):
        measure_bone_axis(labels, 3, _affine())
    with pytest.raises(ShapeError):
        measure_bone_axis(labels.astype(bool), 3, _affine())
    with pytest.raises(ShapeError):
        bone_gaps(labels[0], _affine())


def _section(half: tuple[float, float], turn_deg: float) -> np.ndarray:
    """Offsets (N, 3) filling an elliptical section across z, its thin axis turned by turn_deg."""
    g = np.arange(-10.0, 10.0, 0.2)
    wide, thin, z = (a.ravel() for a in np.meshgrid(g, g, [-0.2, 0.2]))
    keep = (wide / half[0]) ** 2 + (thin / half[1]) ** 2 <= 1.0
    wide, thin, z = wide[keep], thin[keep], z[keep]
    c, s = math.cos(math.radians(turn_deg)), math.sin(math.radians(turn_deg))
    # x is the hint's direction; the thin axis is turned by turn_deg from it towards y.
    return np.column_stack([thin * c - wide * s, thin * s + wide * c, z])


@pytest.mark.parametrize(("half", "turn", "expect"), [
    ((8.0, 6.5), 20.0, 20.0),      # a clear thin axis near the hint: taken
    ((8.0, 6.5), -20.0, -20.0),
    ((8.0, 6.5), 40.0, 0.0),       # too far from the hint: the hint
    ((7.0, 6.9), 20.0, 0.0),       # nearly round: the hint
])
def test_shaft_dorsal_takes_the_thin_axis_only_when_clear_and_near(
        half: tuple[float, float], turn: float, expect: float) -> None:
    from regkit_recon.measure import _shaft_dorsal

    axis = np.array([0.0, 0.0, 1.0])
    hint = np.array([1.0, 0.0, 0.3])                     # not square to the axis: made so
    got = _shaft_dorsal(_section(half, turn), axis, hint)
    assert got @ axis == pytest.approx(0.0, abs=1e-9)
    assert math.degrees(math.atan2(got[1], got[0])) == pytest.approx(expect, abs=1.5)
    flipped = _shaft_dorsal(_section(half, turn), axis, -hint)
    np.testing.assert_allclose(flipped, -got, atol=1e-9)   # the sign follows the hint
    with pytest.raises(InputError, match="along the bone's shaft"):
        _shaft_dorsal(_section(half, turn), axis, axis * 2.0)


@pytest.mark.parametrize("turn", [60.0, -75.0, 90.0])
def test_shaft_dorsal_at_90_degrees_keeps_the_thin_axis_at_any_turn(turn: float) -> None:
    # The thumb's hint (the hand's radial side) only signs its own section's thin axis.
    from regkit_recon.measure import _shaft_dorsal

    axis = np.array([0.0, 0.0, 1.0])
    got = _shaft_dorsal(_section((8.0, 6.5), turn), axis, np.array([1.0, 0.0, 0.0]), 90.0)
    angle = math.degrees(math.atan2(got[1], got[0]))
    if turn == 90.0:          # square to the hint: the axis is kept, its sign a guess
        assert abs(abs(angle) - 90.0) < 1.5
    else:
        assert angle == pytest.approx(turn, abs=1.5)
    round_section = _shaft_dorsal(_section((7.0, 6.9), turn), axis, np.array([1.0, 0.0, 0.0]),
                                  90.0)
    np.testing.assert_allclose(round_section, (1.0, 0.0, 0.0), atol=1e-9)   # round: the hint


def test_a_fragment_fit_that_fails_in_a_later_round_keeps_its_last_good_axis(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import regkit_recon.measure as measure

    shape = (80, 80, 180)
    _, world = _grid(shape)
    labels = _rod(shape, (4.0, 3.0), 80.0)
    points = world[labels.reshape(-1) == 7]
    real = measure._slab_fit
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:                              # the second round fails
            raise InputError("a fragment spans fewer than two 1 mm slabs; nothing to fit")
        return real(*args, **kwargs)                     # type: ignore[arg-type]

    monkeypatch.setattr(measure, "_slab_fit", flaky)
    axis, offsets = measure._settle_fragment(points, np.array([0.0, 0.0, 40.0]),
                                             np.array([0.05, 0.0, 1.0]) / math.hypot(0.05, 1),
                                             -1.0, 3.0, 0.3, 1.0, "too short")
    assert calls["n"] == 2
    assert axis[2] > 0.999
    assert len(offsets) > 100
    calls["n"] = 10                                      # and a first-round failure still raises
    monkeypatch.setattr(measure, "_slab_fit", lambda *_a, **_k: (_ for _ in ()).throw(
        InputError("nothing to fit")))
    with pytest.raises(InputError, match="nothing to fit"):
        measure._settle_fragment(points, np.array([0.0, 0.0, 40.0]), np.array([0.0, 0.0, 1.0]),
                                 -1.0, 3.0, 0.3, 1.0, "too short")


@pytest.fixture(scope="module")
def rod() -> np.ndarray:
    """A straight rod (label 7) 55 mm long along +z: enough for every measurement here."""
    return _rod((40, 40, 120), (4.0, 3.0), 55.0)


def _with(value: float, at: tuple[int, int]) -> np.ndarray:
    affine = _affine()
    affine[at] = value
    return affine


_FRACTURE = {"fracture_point": (0.0, 0.0, 30.0), "distal": (0, 0, 1), "dorsal": (0, 1, 0)}
_RADIUS = {"distal": (0, 0, 1), "dorsal": (0, 1, 0)}
_NAN = float("nan")


@pytest.mark.parametrize(("measure", "change", "key", "problem"), [
    # the label map
    ("axis", {"labels": np.zeros((0, 4, 4), np.uint8)}, "labels", "empty"),
    ("axis", {"labels": np.zeros((4, 4), np.uint8)}, "labels", "3-D"),
    ("axis", {"labels": np.ones((4, 4, 4), bool)}, "labels", "dtype bool"),
    ("axis", {"labels": np.full((4, 4, 4), 7.5)}, "labels", "fractional"),
    ("axis", {"labels": np.full((4, 4, 4), _NAN)}, "labels", "NaN"),
    ("axis", {"label": 0}, "label", "background"),
    ("axis", {"label": 2.5}, "label", "whole-number"),
    # the affine
    ("axis", {"world_from_index": _with(_NAN, (0, 0))}, "world_from_index", "NaN"),
    ("axis", {"world_from_index": np.zeros((4, 4))}, "world_from_index", r"\[0, 0, 0, 1\]"),
    ("axis", {"world_from_index": np.diag([0.5, 0.0, 0.5, 1.0])}, "world_from_index", "singular"),
    ("axis", {"world_from_index": np.eye(3)}, "world_from_index", "4x4"),
    ("radius", {"world_from_index": _with(_NAN, (1, 3))}, "world_from_index", "NaN"),
    ("fracture", {"world_from_index": _with(np.inf, (2, 2))}, "world_from_index", "NaN or inf"),
    # directions and points
    ("axis", {"towards": (0, 0, 0)}, "towards", "zero vector"),
    ("radius", {"distal": (0, 0, 0)}, "distal", "zero vector"),
    ("radius", {"distal": (0, 1)}, "distal", "3 numbers"),
    ("radius", {"dorsal": (_NAN, 0, 0)}, "dorsal", "NaN"),
    ("radius", {"dorsal": (0, 0, 2)}, "dorsal", "along the bone's shaft"),
    ("fracture", {"distal": (0, 0, 0)}, "distal", "zero vector"),
    ("fracture", {"distal": (_NAN, 0, 1)}, "distal", "NaN"),
    ("fracture", {"dorsal": (0, 0, 0)}, "dorsal", "zero vector"),
    ("fracture", {"dorsal": (0, 0, -1)}, "dorsal", "along the bone's shaft"),
    ("fracture", {"fracture_point": (_NAN, 0, 30)}, "fracture_point", "NaN"),
    ("fracture", {"fracture_point": (0, 0)}, "fracture_point", r"3 numbers .* shape \(2,\)"),
    # lengths, fractions
    ("radius", {"section_mm": 0}, "section_mm", "more than zero"),
    ("radius", {"shaft_mm": -1.0}, "shaft_mm", "zero or more"),
    ("radius", {"rim_mm": _NAN}, "rim_mm", "finite"),
    ("fracture", {"margin_mm": -1.0}, "margin_mm", "zero or more"),
    ("fracture", {"margin_mm": (3.0, -2.0)}, "margin_mm", "zero or more"),
    ("fracture", {"margin_mm": (1.0, 2.0, 3.0)}, "margin_mm", "two"),
    ("fracture", {"trim": (0.3, 1.0)}, "trim", "fractions"),
    ("fracture", {"slab_mm": 0.0}, "slab_mm", "more than zero"),
    ("gaps", {"within_mm": -1.0}, "within_mm", "zero or more"),
])
def test_bad_arguments_are_refused_by_name(rod: np.ndarray, measure: str, change: dict,
                                           key: str, problem: str) -> None:
    cases: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
        "axis": (measure_bone_axis, {"label": 7}),
        "radius": (measure_radius_angles, {"label": 7, **_RADIUS}),
        "fracture": (measure_fracture, {"label": 7, **_FRACTURE}),
        "gaps": (bone_gaps, {}),
    }
    function, args = cases[measure]
    with pytest.raises(InputError, match=problem) as caught:
        function(**{"labels": rod, "world_from_index": _affine(), **args, **change})
    assert caught.value.key == key
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("change", "key", "problem"), [
    ({"points": np.zeros((5, 2))}, "points", r"\(N, 3\)"),
    ({"points": np.full((5, 3), _NAN)}, "points", "NaN"),
    ({"section_turn_deg": -5.0}, "section_turn_deg", "zero or more"),
])
def test_fracture_from_points_refuses_bad_points_by_name(change: dict, key: str, problem: str
                                                          ) -> None:
    args = {"points": np.zeros((5, 3)), **_FRACTURE, **change}
    with pytest.raises(InputError, match=problem) as caught:
        fracture_from_points(**args)
    assert caught.value.key == key


def test_shape_and_dtype_refusals_are_shape_errors_too(rod: np.ndarray) -> None:
    # both kinds a caller may catch: ShapeError (as before) and InputError naming the argument
    for labels, affine in ((rod[0], _affine()), (rod > 0, _affine()), (rod, np.eye(3))):
        with pytest.raises(ShapeError):
            measure_bone_axis(labels, 7, affine)


def test_whole_number_float_labels_are_measured_as_integers(rod: np.ndarray) -> None:
    as_int = measure_bone_axis(rod, 7, _affine(), towards=(0, 0, 1))
    as_float = measure_bone_axis(rod.astype(np.float32), 7, _affine(), towards=(0, 0, 1))
    assert as_float.length == as_int.length
    np.testing.assert_array_equal(as_float.direction, as_int.direction)
    assert bone_gaps(rod.astype(np.float64), _affine()) == bone_gaps(rod, _affine())
