"""The command line's process: its allocator settings, its background imports, its fast exit."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from regkit.cli import main as cli_main
from regkit.cli._warm import import_in_background


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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_the_thresholds_are_set_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    libc = types.SimpleNamespace(mallopt=mallopt)
    monkeypatch.setattr("ctypes.CDLL", lambda _name: libc)
    assert cli_main._tune_allocator({}) is True
    assert calls == [(-3, 64 << 20), (-1, 256 << 20)]   # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def test_background_imports_load_the_modules_and_skip_failures(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    (tmp_path / "regkit_probe_mod.py").write_text("VALUE = 42\n")
    (tmp_path / "regkit_probe_broken.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("regkit_probe_mod", "regkit_probe_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    thread = import_in_background("regkit_probe_broken", "regkit_probe_mod",
                                  "regkit_probe_missing")
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert thread.daemon
    assert sys.modules["regkit_probe_mod"].VALUE == 42       # imported after the failures
    assert "regkit_probe_broken" not in sys.modules
    with pytest.raises(RuntimeError, match="broken on import"):   # the caller's import raises
        import regkit_probe_broken  # noqa: F401


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
        import sys, threading, time
        def work():
            time.sleep(0.5)
            open("thread_done", "w").write("yes")
        threading.Thread(target=work).start()          # not a daemon: the exit waits for it
        sys.argv = ["regkit", "--version"]
        from regkit.cli.main import run
        run()
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("regkit ")
    assert (tmp_path / "thread_done").read_text() == "yes"


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
