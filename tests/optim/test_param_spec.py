"""ParamSpec: construction, validation, degree conversion at the edge, scaled coordinates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from regkit.errors import InputError, ShapeError, UnknownNameError
from regkit.optim import ParamSpec


def test_rigid6_converts_degrees_to_radians_once() -> None:
    spec = ParamSpec.rigid6(rot_step_deg=2.0, trans_step_mm=5.0, rot_bound_deg=20.0,
                            trans_bound_mm=50.0)
    assert spec.names == ("rx", "ry", "rz", "tx", "ty", "tz")
    assert spec.units == ("rad",) * 3 + ("mm",) * 3
    np.testing.assert_allclose(spec.scales, [math.radians(2.0)] * 3 + [5.0] * 3)
    np.testing.assert_allclose(spec.upper_array, [math.radians(20.0)] * 3 + [50.0] * 3)
    np.testing.assert_allclose(spec.lower_array, -spec.upper_array)
    assert spec.bounded
    assert len(spec) == spec.size == 6


def test_rigid6_half_bounded_and_unbounded() -> None:
    free = ParamSpec.rigid6()
    assert free.lower is None
    assert free.upper is None
    assert not free.bounded
    assert np.all(np.isinf(free.lower_array))
    assert np.all(np.isinf(free.upper_array))
    half = ParamSpec.rigid6(trans_bound_mm=30.0)
    np.testing.assert_array_equal(half.upper_array, [np.inf] * 3 + [30.0] * 3)
    assert half.bounded


def test_affine12_layout() -> None:
    spec = ParamSpec.affine12(log_scale_step=0.02, shear_step=0.01, log_scale_bound=0.2)
    assert spec.names == ("rx", "ry", "rz", "tx", "ty", "tz", "sx", "sy", "sz",
                          "hxy", "hxz", "hyz")
    assert spec.units == ("rad",) * 3 + ("mm",) * 3 + ("1",) * 6
    np.testing.assert_allclose(spec.scales[6:], [0.02] * 3 + [0.01] * 3)
    np.testing.assert_array_equal(spec.upper_array[6:9], [0.2] * 3)
    assert np.all(np.isinf(spec.upper_array[:6]))
    assert np.all(np.isinf(spec.upper_array[9:]))


def test_scaled_coordinates_round_trip() -> None:
    spec = ParamSpec.rigid6(rot_step_deg=5.0, trans_step_mm=10.0)
    x = np.array([[0.1, -0.2, 0.3, 15.0, -25.0, 5.0]])
    z = spec.to_scaled(x)
    np.testing.assert_allclose(z[0, 3:], [1.5, -2.5, 0.5])
    np.testing.assert_allclose(spec.from_scaled(z), x)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"names": ("a", "a"), "units": ("1", "1"), "scales": (1.0, 1.0)}, "names"),
    ({"names": (), "units": (), "scales": ()}, "names"),
    ({"names": ("a", "b"), "units": ("1",), "scales": (1.0, 1.0)}, "units"),
    ({"names": ("a",), "units": ("1",), "scales": (0.0,)}, "scales"),
    ({"names": ("a",), "units": ("1",), "scales": (math.inf,)}, "scales"),
    ({"names": ("a",), "units": ("1",), "scales": ("x",)}, "scales"),
    ({"names": ("a",), "units": ("1",), "scales": (1.0,), "lower": (1.0,), "upper": (1.0,)},
     "lower"),
    ({"names": ("a",), "units": ("1",), "scales": (1.0,), "lower": (math.nan,)}, "lower"),
    ({"names": ("a", "b"), "units": ("1", "1"), "scales": (1.0, 1.0), "upper": (1.0,)}, "upper"),
])
def test_invalid_specs_are_refused(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(InputError) as info:
        ParamSpec(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def test_invalid_constructor_steps_are_refused() -> None:
    with pytest.raises(InputError, match="rot_step_deg"):
        ParamSpec.rigid6(rot_step_deg=0.0)
    with pytest.raises(InputError, match="trans_bound_mm"):
        ParamSpec.rigid6(trans_bound_mm=-1.0)
    with pytest.raises(InputError, match="'n'"):
        ParamSpec.unitless(0)


def test_check_point_names_the_problem() -> None:
    spec = ParamSpec.rigid6(rot_bound_deg=10.0, trans_bound_mm=20.0)
    with pytest.raises(ShapeError, match=r"\(6,\)"):
        spec.check_point(np.zeros(5))
    with pytest.raises(InputError, match="finite"):
        spec.check_point([0, 0, np.nan, 0, 0, 0])
    with pytest.raises(InputError, match=r"'tz' = 25.0 mm lies outside"):
        spec.check_point([0, 0, 0, 0, 0, 25.0])
    point = spec.check_point([0, 0, 0, 0, 0, 20.0])  # bounds are inclusive
    assert point.dtype == np.float64


def test_index_clip_contains() -> None:
    spec = ParamSpec.unitless(3, scale=0.5, lower=-1.0, upper=1.0)
    assert spec.index("x2") == 2
    with pytest.raises(UnknownNameError, match=r"did you mean 'x1'.*known: x0, x1, x2"):
        spec.index("x11")
    points = np.array([[0.0, 2.0, -3.0], [0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(spec.contains(points), [False, True])
    np.testing.assert_array_equal(spec.clip(points)[0], [0.0, 1.0, -1.0])
