"""Importing a dependency as if some of its optional dependencies were missing.

For a package that imports at its top, inside ``try: ... except ImportError``, a module it only
needs for a feature regkit does not use: pycma imports ``scipy.stats`` that way (0.55 s) for the
Kendall tau of its surrogate models. ``regkit register-2d3d`` imports pycma without it.

How: one finder, put first on ``sys.meta_path`` on first use and left there, refuses the names
a thread has asked it to refuse, to that thread only, for the length of the call; for every
other import, and every other thread, it answers "not mine" and the usual finders go on. (A
finder added and removed around each call would shift ``sys.meta_path`` under another thread
that is walking it.) A module already imported is never looked up again, so never refused.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from collections.abc import Collection
from types import ModuleType
from typing import Any

__all__ = ["import_refusing"]


class _Refusals(threading.local):
    names: frozenset[str] = frozenset()


_refusals = _Refusals()
_install_lock = threading.Lock()


class _RefuseForThisThread(importlib.abc.MetaPathFinder):
    """Raises ``ModuleNotFoundError`` for the names the current thread refuses; else None."""

    def find_spec(self, fullname: str, path: Any = None,  # noqa: ARG002   # the finder API
                  target: Any = None) -> None:  # noqa: ARG002
        if fullname in _refusals.names:
            raise ModuleNotFoundError(f"{fullname} is not imported here (regkit)", name=fullname)
        return None


_FINDER = _RefuseForThisThread()


def _install() -> None:
    with _install_lock:
        if not any(f is _FINDER for f in sys.meta_path):
            sys.meta_path.insert(0, _FINDER)


def import_refusing(module: str, refused: Collection[str]) -> ModuleType:
    """Import ``module`` as if the modules ``refused`` were not installed, where it can be.

    Only this thread's imports are refused, and only during the call. A ``refused`` module
    imported already is used as usual. Where ``module`` cannot do without a refused one (its
    import raises ImportError), what that first try left in ``sys.modules`` of ``module`` and
    its submodules is dropped and it is imported again as usual: the worst case costs the
    plain import's time and gives its result. A ``module`` already imported, or being imported
    by another thread, is returned as the plain import would (waiting for that import).
    """
    if module in sys.modules:
        return importlib.import_module(module)   # waits for another thread's import to end
    _install()
    before = set(sys.modules)
    outer = _refusals.names
    _refusals.names = outer | frozenset(refused)
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    finally:
        _refusals.names = outer
    prefix = module + "."
    for name in set(sys.modules) - before:
        if name == module or name.startswith(prefix):
            sys.modules.pop(name, None)
    return importlib.import_module(module)
