"""regkit.geometry.frames: RAS+ and LPS+ differ by negating x and y, a rotation."""

from __future__ import annotations

import numpy as np
import pytest

from regkit.geometry.frames import LPS_FROM_RAS, RAS_FROM_LPS


def test_the_map_is_its_own_inverse_and_a_rotation() -> None:
    np.testing.assert_array_equal(LPS_FROM_RAS @ RAS_FROM_LPS, np.eye(4))
    assert np.linalg.det(LPS_FROM_RAS[:3, :3]) == pytest.approx(1.0)
    # a point 10 mm to the patient's right (RAS x = -10) is at LPS x = +10
    np.testing.assert_array_equal(LPS_FROM_RAS @ [-10.0, 5.0, 3.0, 1.0], [10.0, -5.0, 3.0, 1.0])


def test_the_constants_cannot_be_changed_in_place() -> None:
    with pytest.raises(ValueError, match="read-only"):
        LPS_FROM_RAS[0, 0] = 1.0
