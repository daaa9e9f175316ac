"""Small explicit registries, one per pluggable kind (metrics, optimizers, renderers, commands).

Example:
    >>> metrics = Registry("metric")
    >>> @metrics.register("ncc")
    ... class NCC: ...
    >>> metrics.get("ncc") is NCC
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

from regkit.errors import UnknownNameError, did_you_mean

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table with helpful errors and optional entry-point discovery.

    Args:
        kind: What the registry holds, used in error messages ("metric", "optimizer").
        entry_point_group: A ``pyproject.toml`` entry-point group whose members are loaded (once,
            lazily) the first time a name is looked up or the names are listed.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._loaded_entry_points = entry_point_group is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers an object under ``name``; a name may be taken once."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``."""
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        assert self.entry_point_group is not None
        for ep in metadata.entry_points(group=self.entry_point_group):
            if ep.name not in self._items:
                self._items[ep.name] = ep.load()

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            UnknownNameError: ``name`` is not registered; the message lists the known names and
                the closest matches.
        """
        if name not in self._items:
            self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            known = sorted(self._items)
            hint = did_you_mean(name, known, n=3)
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'{hint}; known: {', '.join(known) or 'none'}"
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
