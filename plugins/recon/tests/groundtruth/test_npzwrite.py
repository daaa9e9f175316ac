"""``write_npz``: round trips through ``np.load``, exact CRCs, size, determinism, atomicity."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from regkit_recon.groundtruth import npzwrite
from regkit_recon.groundtruth.npzwrite import crc32_combine, write_npz


def _sparse(rng: np.random.Generator, shape: tuple[int, ...], windows: int = 12) -> np.ndarray:
    """Mostly NaN float32 with random finite rectangular windows (like a bone depth layer)."""
    out = np.full(shape, np.nan, dtype=np.float32)
    h, w = shape[-2:]
    for _ in range(windows):
        i = int(rng.integers(0, shape[0]))
        v0, u0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        v1, u1 = v0 + int(rng.integers(2, 9)), u0 + int(rng.integers(2, 9))
        out[i, ..., v0:v1, u0:u1] = rng.uniform(100, 400, out[i, ..., v0:v1, u0:u1].shape)
    return out


def _arrays() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    mask = np.zeros((29, 64, 64), dtype=bool)
    mask[3, 10:20, 5:30] = True
    count = np.zeros((29, 64, 64), dtype=np.uint8)
    count[5, 40:50, 40:60] = rng.integers(1, 4, (10, 20))
    ends = np.full(5000, -1.0, dtype=np.float32)
    ends[:3] = 1.0  # a run that ends at the last byte, after a short head
    return {
        "front": _sparse(rng, (29, 2, 64, 64)),
        "hit": mask,
        "layers": count,
        "noise": rng.standard_normal((7, 5)),
        "meta": np.asarray('{"seed": 7, "name": "hånd"}'),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "bones": np.arange(1, 30, dtype=np.int32),
        "fortran": np.asfortranarray(rng.standard_normal((40, 30)).astype(np.float32)),
        "fill": np.concatenate([np.full(6000, -1.0, np.float32), rng.random(10, np.float32),
                                np.full(7000, -1.0, np.float32)]),
        "allnan": np.full((3, 100, 100), np.nan, dtype=np.float32),
        "starts": np.concatenate([np.zeros(9000, np.float32), rng.random(17, np.float32)]),
        "ends": ends,
        "schlüssel": np.arange(3, dtype=np.uint16),
    }


def _check_equal(path: Path, arrays: dict[str, Any]) -> None:
    assert zipfile.ZipFile(path).testzip() is None
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(arrays)
        for key, value in arrays.items():
            want, got = np.asarray(value), data[key]
            assert got.dtype == want.dtype, key
            assert got.shape == want.shape, key
            if want.dtype.kind == "f":
                assert np.array_equal(got, want, equal_nan=True), key
                bits = {4: np.uint32, 8: np.uint64}[want.dtype.itemsize]
                assert np.array_equal(got.view(bits), np.ascontiguousarray(want).view(bits)), key
            else:
                assert np.array_equal(got, want), key
            assert got.flags.c_contiguous, key


@pytest.mark.parametrize("min_run_bytes", [8, 100, 16384])
def test_round_trip(tmp_path: Path, min_run_bytes: int) -> None:
    arrays = _arrays()
    path = tmp_path / "sample.npz"
    write_npz(path, arrays, min_run_bytes=min_run_bytes)
    _check_equal(path, arrays)


def test_nan_payloads_and_levels(tmp_path: Path) -> None:
    bits = np.full(20000, 0x7FC00001, dtype=np.uint32)  # a NaN that is not the default NaN
    bits[100] = 0xFFC00000
    bits[15000:] = 0x7F800001  # a signalling NaN pattern
    arrays = {"nan": bits.view(np.float32)}
    for level in (0, 1, 9):
        path = tmp_path / f"l{level}.npz"
        write_npz(path, arrays, level=level, min_run_bytes=64)
        _check_equal(path, arrays)


def test_crc32_combine_matches_zlib() -> None:
    rng = np.random.default_rng(1)
    for len1 in (0, 5, 4096):
        a = rng.bytes(len1)
        for len2 in (0, 1, 3, 4096, 100003):
            b = rng.bytes(len2)
            assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len2) == zlib.crc32(a + b)


def test_size_close_to_savez_compressed(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    arrays = {"front": _sparse(rng, (29, 2, 128, 128), windows=40),
              "back": _sparse(rng, (29, 2, 128, 128), windows=40)}
    ours, theirs = tmp_path / "ours.npz", tmp_path / "theirs.npz"
    write_npz(ours, arrays)
    np.savez_compressed(theirs, front=arrays["front"], back=arrays["back"])
    assert ours.stat().st_size <= 1.5 * theirs.stat().st_size + 4096
    _check_equal(ours, arrays)


def test_inputs_unchanged(tmp_path: Path) -> None:
    arrays = _arrays()
    frozen = arrays["front"]
    frozen.flags.writeable = False
    before = {k: (np.array(v, copy=True), np.asarray(v).flags.writeable) for k, v in arrays.items()}
    write_npz(tmp_path / "a.npz", arrays, min_run_bytes=8)
    for key, (copy, writeable) in before.items():
        value = arrays[key]
        assert np.asarray(value).flags.writeable == writeable, key
        assert np.array_equal(value, copy, equal_nan=copy.dtype.kind == "f"), key
        if copy.dtype.kind == "f":
            bits = {4: np.uint32, 8: np.uint64}[copy.dtype.itemsize]
            assert np.array_equal(np.ascontiguousarray(value).view(bits), copy.view(bits))
    assert arrays["fortran"].flags.f_contiguous
    assert not arrays["fortran"].flags.c_contiguous


def test_error_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    arrays = {"front": _arrays()["front"], "obj": np.array([1, "a", None], dtype=object)}
    with pytest.raises(ValueError, match="object"):
        write_npz(path, arrays)
    assert list(tmp_path.iterdir()) == []

    existing = tmp_path / "keep.npz"
    existing.write_bytes(b"old")
    with pytest.raises(ValueError, match="object"):
        write_npz(existing, arrays)
    assert existing.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [existing]


def test_deterministic_bytes(tmp_path: Path) -> None:
    arrays = _arrays()
    write_npz(tmp_path / "a.npz", arrays)
    npzwrite._pieces.clear()  # a cold cache gives the same bytes as a warm one
    write_npz(tmp_path / "b.npz", arrays)
    write_npz(tmp_path / "c.npz", arrays)
    data = (tmp_path / "a.npz").read_bytes()
    assert data == (tmp_path / "b.npz").read_bytes() == (tmp_path / "c.npz").read_bytes()


def test_zip64_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Members over 4 GiB are too big for a test: lower the limit so every record goes ZIP64.
    monkeypatch.setattr(npzwrite, "_ZIP64_LIMIT", 0)
    arrays = _arrays()
    path = tmp_path / "z64.npz"
    write_npz(path, arrays)
    _check_equal(path, arrays)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="level"):
        write_npz(tmp_path / "x.npz", {"a": np.zeros(3)}, level=10)
    with pytest.raises(ValueError, match="min_run_bytes"):
        write_npz(tmp_path / "x.npz", {"a": np.zeros(3)}, min_run_bytes=0)
    assert list(tmp_path.iterdir()) == []
