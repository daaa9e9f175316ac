"""regkit.lazy: a package's names load their modules on first use, once."""

from __future__ import annotations

import sys
import types

import pytest

from regkit.lazy import lazy_exports


def test_a_name_loads_on_first_use_and_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    package = types.ModuleType("fake_package")
    monkeypatch.setitem(sys.modules, "fake_package", package)
    getattr_, dir_ = lazy_exports("fake_package", {"dumps": "json", "sqrt": "math"},
                                  ["dumps", "sqrt"])
    assert "dumps" not in vars(package)
    assert set(dir_()) >= {"dumps", "sqrt"}
    import json

    assert getattr_("dumps") is json.dumps
    assert vars(package)["dumps"] is json.dumps  # stored: later uses skip __getattr__
    with pytest.raises(AttributeError, match="'fake_package' has no attribute 'nope'"):
        getattr_("nope")
