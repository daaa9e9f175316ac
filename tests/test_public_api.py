"""The public API's snapshot: every public module's ``__all__``, for regkit and its plugins.

A change to a public name shows here first, so that it is made on purpose and said in the commit.
After such a change, refresh the snapshot with
``REGKIT_UPDATE_API_SNAPSHOT=1 pytest tests/test_public_api.py`` and review the diff.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).resolve().parent / "data" / "public_api.json"
PACKAGES = ("regkit", "regkit_recon")


def _public_modules(package: str) -> list[str]:
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _api() -> dict[str, list[str]]:
    api = {}
    for name in (module for package in PACKAGES for module in _public_modules(package)):
        exported = getattr(importlib.import_module(name), "__all__", None)
        if exported is not None:
            api[name] = sorted(exported)
    return api


def test_every_public_name_resolves() -> None:
    for module, names in _api().items():
        loaded = importlib.import_module(module)
        missing = [name for name in names if not hasattr(loaded, name)]
        assert not missing, f"{module}.__all__ names what it does not define: {missing}"


def test_public_api_matches_its_snapshot() -> None:
    api = _api()
    if os.environ.get("REGKIT_UPDATE_API_SNAPSHOT"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(api, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        pytest.skip(f"snapshot rewritten: {SNAPSHOT}")
    recorded = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    added = {m: sorted(set(n) - set(recorded.get(m, []))) for m, n in api.items()}
    removed = {m: sorted(set(n) - set(api.get(m, []))) for m, n in recorded.items()}
    changes = {f"+{m}": n for m, n in added.items() if n} | {
        f"-{m}": n for m, n in removed.items() if n}
    assert not changes, ("the public API changed (+ added, - removed); if on purpose, refresh "
                         f"the snapshot (see this module's docstring): {changes}")
