"""Lazy exports: a package names what it offers and loads each name's module on first use.

``regkit``, ``regkit.io``, ``regkit.registration`` and plugins such as ``regkit_recon`` import
light and load torch, nibabel or the renderers only when a name that needs them is used. A
package states its names once::

    __getattr__, __dir__ = lazy_exports(__name__, {"Volume": "regkit.volume"}, __all__)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, names: Mapping[str, str], public: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a package with lazy names.

    Args:
        package: the package's ``__name__``.
        names: each lazy name and the module that defines it under the same name.
        public: the package's ``__all__``, listed by ``dir()`` before they are loaded.

    Returns:
        ``(__getattr__, __dir__)``. A name is imported on first access and then stored in the
        package, so later accesses cost nothing; an unknown name raises ``AttributeError``.
    """
    table = dict(names)
    listed = frozenset(public)

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | listed)

    return __getattr__, __dir__
