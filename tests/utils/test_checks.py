"""regkit.utils.checks: a flag is not a number; numpy scalars are."""

from __future__ import annotations

import numpy as np
import pytest

from regkit.utils.checks import is_real, is_whole


@pytest.mark.parametrize(("value", "whole", "real"), [
    (3, True, True), (np.int64(3), True, True), (np.uint8(0), True, True),
    (2.5, False, True), (np.float32(2.5), False, True), (float("nan"), False, True),
    (True, False, False), (np.bool_(True), False, False), ("3", False, False),
    (None, False, False), (1 + 0j, False, False),
])
def test_predicates(value: object, whole: bool, real: bool) -> None:
    assert is_whole(value) is whole
    assert is_real(value) is real
