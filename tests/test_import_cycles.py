"""The import-cycle report of ``scripts/import_cycles.py``: it finds cycles; the code has none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "import_cycles.py"


def _run(*roots: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, roots)], capture_output=True,
                          text=True, check=False, timeout=120)


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_regkit_and_its_plugins_have_no_import_cycle() -> None:
    run = _run()
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 import cycle(s)" in run.stdout


def test_a_deferred_import_still_makes_a_cycle(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from pkg.a import thing\n    return thing\n",
        "c.py": "import pkg.a\n",
    })
    run = _run(pkg)
    assert run.returncode == 1
    assert "import cycle among 2 modules" in run.stdout
    assert "pkg.a -> pkg.b" in run.stdout
    assert "pkg.b -> pkg.a" in run.stdout
    assert "pkg.c" not in run.stdout


def test_type_checking_imports_and_parent_packages_are_no_cycle(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "pkg", {
        "__init__.py": "from pkg.a import A\n",
        "a.py": "from pkg import b\nA = 1\n",
        "b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                 "    from pkg.a import A\n"),
    })
    run = _run(pkg)
    assert run.returncode == 0, run.stdout
    assert "3 modules, 0 import cycle(s), 0 climbing" in run.stdout


def test_a_name_from_the_own_package_is_a_cycle(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "pkg", {
        "__init__.py": "from pkg.a import A\nfrom pkg.b import B\n",
        "a.py": "A = 1\n",
        "b.py": "from pkg import A\nB = A\n",
    })
    run = _run(pkg)
    assert run.returncode == 1
    assert "pkg -> pkg.b" in run.stdout
    assert "pkg.b -> pkg" in run.stdout


def test_an_import_that_climbs_the_layers_is_reported(tmp_path: Path) -> None:
    pkg = _package(tmp_path / "regkit", {
        "__init__.py": "from regkit import registration\n",  # the facade may name anything
        "errors.py": "",
        "volume.py": "from regkit.errors import X\nfrom regkit import render\n",
        "render/__init__.py": "import regkit\nfrom regkit.volume import Volume\n",
        "registration/__init__.py": "from regkit.render import make_renderer\n",
    })
    run = _run(pkg)
    assert run.returncode == 1
    assert "import climbs the layers: regkit.volume -> regkit.render" in run.stdout
    assert "1 climbing import(s)" in run.stdout
