"""pycma is imported without scipy.stats, which it needs only for features regkit does not use."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from regkit.optim.cmaes import _import_refusing


@pytest.fixture(autouse=True)
def probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Probe modules on the path, none of them imported yet (every test here)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("rk_probe_dep", "rk_probe_optional", "rk_probe_needs", "rk_probe_threads",
                 "rk_probe_seen"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "rk_probe_dep.py").write_text("VALUE = 7\n")
    (tmp_path / "rk_probe_optional.py").write_text(textwrap.dedent("""
        try:
            from rk_probe_dep import VALUE
        except ImportError:
            VALUE = None
        """))
    (tmp_path / "rk_probe_needs.py").write_text("from rk_probe_dep import VALUE\n")
    # imports the refused name on a second thread while its own import is under way
    (tmp_path / "rk_probe_threads.py").write_text(textwrap.dedent("""
        import importlib, threading
        seen = {}
        def other():
            seen["other"] = importlib.import_module("rk_probe_dep").VALUE
        t = threading.Thread(target=other)
        t.start()
        t.join()
        try:
            import rk_probe_seen
            seen["mine"] = "imported"
        except ImportError:
            seen["mine"] = "refused"
        """))
    (tmp_path / "rk_probe_seen.py").write_text("")
    return tmp_path


def test_an_optional_import_is_refused_and_the_finder_removed() -> None:
    finders = list(sys.meta_path)
    module = _import_refusing("rk_probe_optional", ["rk_probe_dep"])
    assert module.VALUE is None
    assert "rk_probe_dep" not in sys.modules
    assert sys.meta_path == finders
    import rk_probe_dep  # nothing refused after the call
    assert rk_probe_dep.VALUE == 7


def test_an_import_the_module_cannot_do_without_is_let_through() -> None:
    module = _import_refusing("rk_probe_needs", ["rk_probe_dep"])
    assert module.VALUE == 7


def test_a_module_imported_already_is_used() -> None:
    import rk_probe_dep  # noqa: F401
    assert _import_refusing("rk_probe_optional", ["rk_probe_dep"]).VALUE == 7


def test_only_the_calling_threads_imports_are_refused() -> None:
    module = _import_refusing("rk_probe_threads", ["rk_probe_dep", "rk_probe_seen"])
    assert module.seen == {"other": 7, "mine": "refused"}


def test_pycma_comes_without_scipy_stats_and_its_kendall_tau_agrees() -> None:
    """In a fresh process: what the CLI's cold start gains (0.55 s), with pycma intact."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from regkit.optim import CMAES, ParamSpec
        opt = CMAES(np.ones(3), ParamSpec.unitless(3, scale=1.0), {"seed": 1})
        while not opt.stop():
            c = opt.ask()
            opt.tell(c, (c ** 2).sum(axis=1))
        assert opt.result.value < 1e-8, opt.result.value
        assert "cma" in sys.modules and "scipy.stats" not in sys.modules
        tau = sys.modules["cma"].fitness_models._kendalltau
        import scipy.stats
        rng = np.random.default_rng(0)
        for n in (5, 20, 60):                              # no ties (see cmaes.py)
            x = rng.normal(size=n)
            y = x + rng.normal(size=n)
            assert abs(tau(x, y)[0] - scipy.stats.kendalltau(x, y)[0]) < 1e-12
        print("ok")
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
