"""Atomic output: a file appears whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from regkit.utils.files import atomic_path, atomic_write_text


def test_write_creates_parents_and_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.endswith(".nii.gz")  # libraries that pick a format by name still work
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.nii.gz"]


def _write_half_then_raise(target: Path, error: BaseException) -> None:
    """Write part of ``target`` through :func:`atomic_path`, then fail with ``error``."""
    with atomic_path(target) as tmp:
        tmp.write_text("half")
        raise error


def test_failure_leaves_old_file_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        _write_half_then_raise(target, RuntimeError("interrupted"))
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_keyboard_interrupt_also_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(KeyboardInterrupt):
        _write_half_then_raise(target, KeyboardInterrupt())
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_text_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_text(target, "1")
    atomic_write_text(target, "2")
    assert target.read_text() == "2"


def test_output_permissions_follow_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "x.txt", "1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644


def test_atomic_dir_makes_and_replaces_a_folder_whole(tmp_path: Path) -> None:
    from regkit.utils.files import atomic_dir

    target = tmp_path / "out"
    with atomic_dir(target) as staging:
        assert staging.parent == tmp_path
        assert staging.is_dir()
        assert not any(staging.iterdir())
        (staging / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with atomic_dir(target) as staging:
        (staging / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]      # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]       # nothing left beside


def test_atomic_dir_leaves_the_old_folder_when_the_block_fails(tmp_path: Path) -> None:
    from regkit.utils.files import atomic_dir

    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old")
    def fail_half_way() -> None:
        with atomic_dir(target) as staging:
            (staging / "a.txt").write_text("new")
            raise RuntimeError("half way")

    with pytest.raises(RuntimeError, match="half way"):
        fail_half_way()
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
