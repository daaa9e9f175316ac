"""Registries: registration, lookup, helpful errors."""

from __future__ import annotations

import pytest

from regkit.errors import UnknownNameError, UserInputError
from regkit.registry import Registry


def test_register_and_get() -> None:
    reg: Registry[type] = Registry("metric")

    @reg.register("ncc")
    class NCC:
        pass

    assert reg.get("ncc") is NCC
    assert "ncc" in reg
    assert "gc" not in reg
    assert reg.names() == ["ncc"]


def test_unknown_name_lists_known_and_suggests() -> None:
    reg: Registry[int] = Registry("optimizer")
    reg.add("cmaes", 1)
    reg.add("powell", 2)
    with pytest.raises(UnknownNameError) as info:
        reg.get("cmaess")
    msg = str(info.value)
    assert "unknown optimizer 'cmaess'" in msg
    assert "did you mean 'cmaes'" in msg
    assert "known: cmaes, powell" in msg
    assert isinstance(info.value, UserInputError)
    assert isinstance(info.value, KeyError)


def test_name_taken_twice_is_refused() -> None:
    reg: Registry[int] = Registry("metric")
    reg.add("a", 1)
    reg.add("a", 1)  # the same object again is harmless
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 2)


def test_entry_point_group_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    class FakeEntryPoint:
        name = "fancy"

        def load(self) -> str:
            return "loaded"

    def fake_entry_points(group: str) -> list[FakeEntryPoint]:
        return [FakeEntryPoint()] if group == "test.group" else []

    monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
    reg: Registry[str] = Registry("thing", entry_point_group="test.group")
    assert reg.get("fancy") == "loaded"
    assert reg.names() == ["fancy"]


def test_did_you_mean_offers_close_names_or_nothing() -> None:
    from regkit.errors import did_you_mean

    assert did_you_mean("nmu", ["nmi", "ncc", "gncc"]) == " (did you mean 'nmi'?)"
    assert did_you_mean("cmaes2", ["cmaes", "powell"], n=3) == " (did you mean 'cmaes'?)"
    assert did_you_mean("zzz", ["nmi", "ncc"]) == ""
