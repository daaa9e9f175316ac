"""The command line's process: its allocator, its imports and background reads, its fast exit."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import pytest

from regkit.cli import main as cli_main
from regkit.cli._warm import Background, import_quietly, read_nifti_files, take
from regkit.errors import FileFormatError


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          check=False, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("environ", [
    {"MALLOC_MMAP_THRESHOLD_": "131072"},
    {"MALLOC_TRIM_THRESHOLD_": "0"},
    {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
])
def test_the_users_allocator_settings_win(environ: dict[str, str]) -> None:
    assert cli_main._tune_allocator(environ) is False


def _fake_mallopt(monkeypatch: pytest.MonkeyPatch, refuse: set[tuple[int, int]]
                  ) -> list[tuple[int, int]]:
    """``ctypes.CDLL(None).mallopt`` recording its calls and refusing ``refuse``; glibc said."""
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 0 if (param, value) in refuse else 1

    libc = types.SimpleNamespace(mallopt=mallopt)
    monkeypatch.setattr("ctypes.CDLL", lambda _name: libc)
    monkeypatch.setattr("os.confstr", lambda _name: "glibc 2.36", raising=False)
    return calls


def test_the_thresholds_are_set_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_mallopt(monkeypatch, set())
    assert cli_main._tune_allocator({}) is True
    assert calls == [(-3, 64 << 20), (-1, 256 << 20)]   # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def test_a_glibc_that_caps_the_mmap_threshold_gets_32_mib(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    calls = _fake_mallopt(monkeypatch, {(-3, 64 << 20)})
    assert cli_main._tune_allocator({}) is True
    assert calls == [(-3, 64 << 20), (-3, 32 << 20), (-1, 256 << 20)]


def test_a_refused_threshold_is_reported_and_the_other_still_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_mallopt(monkeypatch, {(-3, 64 << 20), (-3, 32 << 20)})
    assert cli_main._tune_allocator({}) is False
    assert calls[-1] == (-1, 256 << 20)


@pytest.mark.parametrize("error", [ValueError, OSError, None])
def test_another_c_library_is_left_alone(monkeypatch: pytest.MonkeyPatch,
                                         error: type[Exception] | None) -> None:
    """``os.confstr`` raises off glibc (ValueError on macOS, OSError on musl) or finds none."""
    calls = _fake_mallopt(monkeypatch, set())

    def confstr(_name: str) -> str | None:
        if error is not None:
            raise error("CS_GNU_LIBC_VERSION")
        return None

    monkeypatch.setattr("os.confstr", confstr, raising=False)
    assert cli_main._tune_allocator({}) is False
    assert calls == []


@pytest.mark.parametrize(("argv", "tuned"), [
    (["register-2d3d", "--help"], True), (["register-3d3d", "--help"], True),
    (["camera", "--help"], False), (["--version"], False), ([], False)])
def test_run_tunes_the_allocator_for_the_registrations_only(
        monkeypatch: pytest.MonkeyPatch, argv: list[str], tuned: bool) -> None:
    seen: list[str] = []
    monkeypatch.setattr(sys, "argv", ["regkit", *argv])
    monkeypatch.setattr(cli_main, "_tune_allocator", lambda: seen.append("tune"))
    monkeypatch.setattr(cli_main, "main", lambda: 3)

    def exit_now(status: int) -> None:
        seen.append(f"exit {status}")

    monkeypatch.setattr(cli_main, "_exit_now", exit_now)
    cli_main.run()
    assert seen == (["tune"] if tuned else []) + ["exit 3"]


def test_the_regkit_script_is_run() -> None:
    """The ``regkit`` script enters through ``run`` (allocator, fast exit), not ``main``."""
    pyproject = (Path(cli_main.__file__).parents[2] / "pyproject.toml").read_text()
    assert re.findall(r'^regkit = "([^"]+)"$', pyproject, re.MULTILINE) == ["regkit.cli.main:run"]


@pytest.mark.parametrize("command", ["register-2d3d", "register-3d3d"])
def test_a_registration_commands_parser_does_not_import_torch(command: str,
                                                              tmp_path: Path) -> None:
    """The command imports torch itself, while it reads its files (regkit.cli._warm)."""
    proc = _python(f"""
        import sys
        from regkit.cli.main import build_parser
        build_parser({command!r}).parse_args([{command!r}, "--help"])
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage: regkit " + command in proc.stdout
    proc = _python(f"""
        import sys
        from regkit.cli.main import build_parser
        build_parser({command!r})
        print("torch" in sys.modules)
        """, tmp_path)
    assert proc.stdout.strip() == "False", proc.stderr


def test_quiet_imports_load_the_modules_and_skip_failures(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "regkit_probe_mod.py").write_text("VALUE = 42\n")
    (tmp_path / "regkit_probe_broken.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("regkit_probe_mod", "regkit_probe_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import_quietly("regkit_probe_broken", "regkit_probe_mod", "regkit_probe_missing")
    assert sys.modules["regkit_probe_mod"].VALUE == 42       # imported after the failures
    assert "regkit_probe_broken" not in sys.modules
    with pytest.raises(RuntimeError, match="broken on import"):   # the caller's import raises
        import regkit_probe_broken  # noqa: F401


def test_a_background_call_runs_on_another_thread_and_gives_its_value() -> None:
    caller = threading.get_ident()
    started = threading.Event()

    def work(a: int, *, b: int) -> tuple[int, int]:
        started.set()
        return a + b, threading.get_ident()

    call = Background(work, 2, b=3)
    assert started.wait(60)
    value, thread = call.result()
    assert value == 5
    assert thread != caller
    assert call._thread.daemon                    # never holds the process's exit
    assert call.result()[0] == 5                  # asked again: the same value


@pytest.mark.parametrize("error", [FileFormatError("corrupt, for the test",
                                                   source=Path("ct.nii.gz")),
                                   SystemExit("exit, for the test")])
def test_a_background_calls_error_is_raised_in_the_caller(error: BaseException) -> None:
    def bad() -> None:
        raise error

    call = Background(bad)
    call.wait()
    with pytest.raises(type(error), match="for the test"):
        call.result()


def test_files_are_read_in_order_each_with_its_own_error(tmp_path: Path) -> None:
    good = tmp_path / "ok.nii"
    good.write_bytes(b"not parsed yet")
    items = read_nifti_files([tmp_path / "absent.nii.gz", None, good])
    with pytest.raises(FileFormatError, match="absent"):
        take(items[0])
    assert take(items[1]) is None
    assert take(items[2]).source == good


def test_the_reading_thread_imports_nothing_and_sets_no_warnings_filter(tmp_path: Path
                                                                        ) -> None:
    """What the commands' thread runs, in a fresh process, on a scaled gzip CT and its labels."""
    proc = _python("""
        import sys, warnings
        import nibabel as nib, numpy as np
        data = np.arange(4000, dtype=np.int16).reshape(10, 20, 20)
        image = nib.Nifti1Image(data, np.eye(4), dtype=np.int16)
        image.header.set_slope_inter(1.0, -1024.0)
        image.to_filename("ct.nii.gz")
        nib.Nifti1Image(np.ones((10, 20, 20), np.uint8), np.eye(4)).to_filename("l.nii.gz")
        from regkit.cli._warm import Background, read_nifti_files
        before, filters = set(sys.modules), list(warnings.filters)
        files = Background(read_nifti_files, ["ct.nii.gz", "l.nii.gz", "absent.nii"]).result()
        assert set(sys.modules) == before, sorted(set(sys.modules) - before)
        assert warnings.filters == filters
        assert [type(f).__name__ for f in files] == ["NiftiFile", "NiftiFile",
                                                     "FileFormatError"]
        print("ok")
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.slow
def test_the_fast_exit_keeps_the_status_the_exit_handlers_and_the_output(tmp_path: Path
                                                                         ) -> None:
    proc = _python("""
        import atexit, sys
        atexit.register(lambda: open("handler_ran", "w").write("yes"))
        print("buffered", end="")                      # no newline: still in the buffer
        sys.argv = ["regkit", "camera", "show", "missing.json"]
        from regkit.cli.main import run
        run()
        """, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "buffered"
    assert "missing.json" in proc.stderr
    assert (tmp_path / "handler_ran").read_text() == "yes"


@pytest.mark.slow
def test_the_fast_exit_waits_for_a_running_thread(tmp_path: Path) -> None:
    proc = _python("""
        import threading, time
        import regkit.cli.main as cli
        def work():
            time.sleep(1.0)
            open("thread_done", "w").write("yes")
        cli.main = lambda: 0                           # return at once: the thread still runs
        threading.Thread(target=work).start()          # not a daemon: the exit waits for it
        cli.run()
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "thread_done").read_text() == "yes"


@pytest.mark.slow
def test_the_fast_exit_without_a_stdout_keeps_the_status(tmp_path: Path) -> None:
    proc = _python("""
        import sys
        sys.stdout = None                              # as when descriptor 1 is closed
        sys.argv = ["regkit", "camera", "show", "missing.json"]
        from regkit.cli.main import run
        run()
        """, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "missing.json" in proc.stderr


@pytest.mark.slow
def test_a_profiler_still_writes_its_output(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(tmp_path / "prof.out"),
                           "-m", "regkit.cli.main", "camera", "show", "missing.json"],
                          capture_output=True, text=True, check=False, cwd=tmp_path, timeout=120)
    assert "missing.json" in proc.stderr   # (cProfile swallows the exit status itself)
    assert (tmp_path / "prof.out").stat().st_size > 0


@pytest.mark.slow
def test_a_rigid_transform_does_not_import_sympy(tmp_path: Path) -> None:
    """torch.broadcast_shapes imports torch.fx and sympy (0.2-0.4 s); ``rigid`` avoids it."""
    proc = _python("""
        import sys
        import numpy as np
        from regkit.geometry import transforms as tf
        out = tf.rigid(np.eye(3)[None].repeat(2, 0), np.zeros((5, 1, 3)))
        assert out.shape == (5, 2, 4, 4), out.shape
        print("sympy" in sys.modules)
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
