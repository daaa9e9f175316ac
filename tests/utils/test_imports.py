"""``import_refusing``: a dependency imported as if some optional modules were missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from regkit.utils import imports
from regkit.utils.imports import import_refusing

_PROBES = ("rk_probe_dep", "rk_probe_optional", "rk_probe_needs", "rk_probe_threads",
           "rk_probe_seen", "rk_probe_slow", "rk_pkg", "rk_pkg.a", "rk_pkg.b", "rk_pkg.c")


@pytest.fixture(autouse=True)
def probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Probe modules on the path, none of them imported yet (every test here)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in _PROBES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    files = {
        "rk_probe_dep.py": "VALUE = 7\n",
        "rk_probe_optional.py": """
            try:
                from rk_probe_dep import VALUE
            except ImportError:
                VALUE = None
            """,
        "rk_probe_needs.py": "from rk_probe_dep import VALUE\n",
        # imports the refused name on a second thread while its own import is under way
        "rk_probe_threads.py": """
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
            """,
        "rk_probe_seen.py": "",
        "rk_probe_slow.py": """
            import time
            time.sleep(0.3)
            try:
                from rk_probe_dep import VALUE
            except ImportError:
                VALUE = None
            DONE = True
            """,
        # a package whose first submodule takes the optional path and imports a sibling, and
        # whose second cannot do without the refused module
        "rk_pkg/__init__.py": "from rk_pkg import a, b\n",
        "rk_pkg/a.py": """
            try:
                from rk_probe_dep import VALUE
            except ImportError:
                VALUE = None
            import rk_pkg.c
            """,
        "rk_pkg/b.py": "from rk_probe_dep import VALUE\n",
        "rk_pkg/c.py": "C = 3\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def test_an_optional_import_is_refused_then_nothing_is() -> None:
    module = import_refusing("rk_probe_optional", ["rk_probe_dep"])
    assert module.VALUE is None
    assert "rk_probe_dep" not in sys.modules
    import rk_probe_dep  # nothing refused after the call
    assert rk_probe_dep.VALUE == 7


def test_the_finder_is_put_on_the_path_once() -> None:
    import_refusing("rk_probe_optional", ["rk_probe_dep"])
    import_refusing("rk_probe_seen", ["rk_probe_dep"])
    assert sum(f is imports._FINDER for f in sys.meta_path) == 1
    assert sys.meta_path[0] is imports._FINDER or imports._FINDER in sys.meta_path


def test_an_import_the_module_cannot_do_without_is_let_through() -> None:
    module = import_refusing("rk_probe_needs", ["rk_probe_dep"])
    assert module.VALUE == 7


def test_a_partly_made_package_is_dropped_and_imported_as_usual() -> None:
    """Its submodules made under the refusal are made again: the plain import's result."""
    pkg = import_refusing("rk_pkg", ["rk_probe_dep"])
    assert pkg.a.VALUE == 7
    assert pkg.b.VALUE == 7
    assert pkg.c.C == 3
    assert sys.modules["rk_pkg.a"] is pkg.a


def test_a_module_imported_already_is_used() -> None:
    import rk_probe_dep  # noqa: F401
    assert import_refusing("rk_probe_optional", ["rk_probe_dep"]).VALUE == 7


def test_only_the_calling_threads_imports_are_refused() -> None:
    module = import_refusing("rk_probe_threads", ["rk_probe_dep", "rk_probe_seen"])
    assert module.seen == {"other": 7, "mine": "refused"}


def test_two_threads_importing_at_once_get_the_whole_module() -> None:
    got: list[object] = []
    done: list[bool] = []

    def importer() -> None:
        module = import_refusing("rk_probe_slow", ["rk_probe_dep"])
        done.append(getattr(module, "DONE", False))   # as it was when handed back
        got.append(module)

    threads = [threading.Thread(target=importer) for _ in range(4)]
    threads[0].start()
    deadline = time.monotonic() + 30
    while "rk_probe_slow" not in sys.modules and time.monotonic() < deadline:
        time.sleep(0.005)     # the first import is under way (the module made, not yet run)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 4
    assert all(m is got[0] for m in got)
    assert done == [True] * 4


def test_pycma_without_scipy_stats_runs_and_its_kendall_tau_agrees() -> None:
    """In a fresh process, as the registration commands import it (0.55 s less)."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from regkit.optim import CMAES, ParamSpec
        from regkit.optim.cmaes import import_pycma
        cma = import_pycma(refused=("scipy.stats",))
        assert "scipy.stats" not in sys.modules
        opt = CMAES(np.ones(3), ParamSpec.unitless(3, scale=1.0), {"seed": 1})
        while not opt.stop():
            c = opt.ask()
            opt.tell(c, (c ** 2).sum(axis=1))
        assert opt.result.value < 1e-8, opt.result.value
        assert "scipy.stats" not in sys.modules
        tau = cma.fitness_models._kendalltau
        import scipy.stats
        rng = np.random.default_rng(0)
        for n in (5, 20, 60):                  # no ties (see import_pycma)
            x = rng.normal(size=n)
            y = x + rng.normal(size=n)
            assert abs(tau(x, y)[0] - scipy.stats.kendalltau(x, y)[0]) < 1e-12
        print("ok")
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_library_imports_pycma_as_usual() -> None:
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from regkit.optim import CMAES, ParamSpec
        CMAES(np.ones(3), ParamSpec.unitless(3, scale=1.0), {"seed": 1})
        print("scipy.stats" in sys.modules)
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
