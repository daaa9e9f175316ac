"""regkit.labels: one parser and one presence check for label numbers."""

from __future__ import annotations

import numpy as np
import pytest

from regkit.errors import InputError
from regkit.labels import check_present, parse_labels, present_labels


def test_parse_sorts_and_deduplicates_and_skips_blanks() -> None:
    assert parse_labels(" 72, 70,,72 ") == (70, 72)
    assert parse_labels("5") == (5,)


@pytest.mark.parametrize(("text", "word"), [
    ("x", "not a label number"), ("70,7.5", "not a label number"), ("0", "positive"),
    ("-3", "positive"), (str(2**31), r"below 2\*\*31"), (" , ", "no label numbers"),
])
def test_parse_refuses_with_the_key(text: str, word: str) -> None:
    with pytest.raises(InputError, match=word) as info:
        parse_labels(text, key="--bones")
    assert info.value.key == "--bones"


def test_present_labels_with_and_without_a_histogram() -> None:
    small = np.array([[0, 3], [3, 9]], np.uint8)
    assert present_labels(small) == {0, 3, 9}
    large = np.array([0, 5, 1 << 22], np.int64)   # too wide for a histogram: np.unique
    assert present_labels(large) == {0, 5, 1 << 22}
    assert present_labels(np.zeros((0, 3), np.int16)) == frozenset()


def test_check_present_lists_what_is_there() -> None:
    check_present([3, 9], {0, 3, 9})
    pattern = r"label\(s\) \[7\] do not occur .*present: 3, 9\)"
    with pytest.raises(InputError, match=pattern) as info:
        check_present([3, 7], {0, 3, 9}, key="--bones", source="labels.nii.gz")
    assert info.value.key == "--bones"
    assert info.value.source == "labels.nii.gz"
    with pytest.raises(InputError, match="present: none"):
        check_present([1], {0})
