"""PNG previews: windowing, NaN handling, montages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regkit.errors import ShapeError
from regkit.io.png import montage, to_uint8, write_png


def test_window_maps_ends_to_black_and_white() -> None:
    img = np.array([[0.0, 1.0], [2.0, np.nan]])
    out = to_uint8(img, window=(0.0, 2.0))
    assert out.tolist() == [[0, 128], [255, 0]]


def test_constant_image_does_not_divide_by_zero() -> None:
    assert (to_uint8(np.full((3, 3), 5.0)) == 0).all()


def test_montage_layout() -> None:
    tiles = [np.full((2, 3), i, np.uint8) for i in range(1, 4)]
    out = montage(tiles, columns=2, pad=1)
    assert out.shape == (5, 7)
    assert out[0, 0] == 1
    assert out[0, 4] == 2
    assert out[3, 0] == 3
    # gap and empty slot are black
    assert out[2].max() == 0
    assert out[3, 4] == 0
    with pytest.raises(ShapeError):
        montage([np.zeros((2, 2), np.uint8), np.zeros((3, 2), np.uint8)])


def test_write_png_round_trip(tmp_path: Path) -> None:
    img = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    write_png(tmp_path / "x.png", img)
    assert (np.asarray(Image.open(tmp_path / "x.png")) == img).all()
    with pytest.raises(ShapeError):
        write_png(tmp_path / "y.png", np.zeros((2, 2, 2)))
    assert not (tmp_path / "y.png").exists()
