"""Atomic output: a file appears whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from regkit.errors import InputError
from regkit.utils.files import atomic_path, atomic_write_text, check_output, path_arg


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


def test_check_output_refuses_an_input_by_any_name(tmp_path: Path) -> None:
    data = tmp_path / "image.npy"
    data.write_bytes(b"input")
    (tmp_path / "link.npy").symlink_to(data)
    os.link(data, tmp_path / "hard.npy")
    for out in (data, tmp_path / "link.npy", tmp_path / "hard.npy",
                tmp_path / "sub" / ".." / "image.npy"):
        with pytest.raises(InputError, match="would destroy the input"):
            check_output(out, [data])
    assert check_output(tmp_path / "out.npy", [data]) == tmp_path / "out.npy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.npy", "image.npy", "link.npy"]
    assert data.read_bytes() == b"input"


def test_check_output_knows_files_from_folders(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "in" / "image.npy"
    data.parent.mkdir()
    data.write_bytes(b"input")
    with pytest.raises(InputError, match="holds the input"):
        check_output(tmp_path, [data], kind="folder")
    check_output(tmp_path, [data], kind="into")            # files written into it: fine
    monkeypatch.chdir(data.parent)
    with pytest.raises(InputError, match="current folder"):
        check_output(tmp_path, [], kind="folder")
    with pytest.raises(InputError, match="is a folder"):
        check_output(tmp_path / "in", [])
    with pytest.raises(InputError, match="is a file"):
        check_output(data, [], kind="into")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output(data / "deeper" / "out.json", [])
    with pytest.raises(InputError, match="empty path"):
        check_output("", [])
    with pytest.raises(ValueError, match="kind"):
        check_output(tmp_path / "x", [], kind="dir")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs a user whom a folder's mode stops (root is not)")
def test_check_output_refuses_a_folder_it_cannot_write(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(InputError, match="cannot write in"):
            check_output(locked / "new" / "out.json", [])
    finally:
        locked.chmod(0o700)


def test_path_arg_refuses_an_empty_path_at_parse_time(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="regkit render")
    parser.add_argument("--out", type=path_arg)
    assert parser.parse_args(["--out", "a/b.npy"]).out == Path("a/b.npy")
    for empty in ("", "  "):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["--out", empty])
        assert exit_.value.code == 2
        assert "argument --out: an empty path" in capsys.readouterr().err


def test_commands_refuse_an_empty_output_path(capsys: pytest.CaptureFixture[str]) -> None:
    from regkit.cli.main import main

    # Path("") is ".", which was refused as "'.': is a folder", naming the wrong problem
    for argv in (["render", "--volume", "ct.nii.gz", "--camera", "c.json", "--out", ""],
                 ["register-3d3d", "--fixed", "a.nii.gz", "--moving", "b.nii.gz", "--out", ""],
                 ["register-2d3d", "--volume", "ct.nii.gz", "--camera", "c.json", "--image",
                  "x.npy", "--out", ""]):
        assert main(argv) == 2
        assert "--out: an empty path" in capsys.readouterr().err
