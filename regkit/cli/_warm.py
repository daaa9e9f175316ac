"""Imports that a command needs later, made on a thread while it reads its input files.

A registration's first level imports scipy's ``ndimage`` and, through pycma, ``stats``: 0.5 s
of a cold ``register-2d3d``, in the main thread, after the files are read. Reading a compressed
NIfTI spends most of its time in zlib and array copies, which release the GIL, so the same
imports made on a second thread meanwhile cost the command almost nothing (measured on the chest
CT: 1.11 s for the read then the imports, 0.67 s with the imports on the thread).
"""

from __future__ import annotations

import contextlib
import importlib
import threading

__all__ = ["REGISTRATION_IMPORTS", "import_in_background"]

# What the registrations' first level imports and the CLI has not yet; "scipy.stats" is where
# pycma's own import spends its time (its fitness models take kendalltau from it). pycma itself
# is left to the main thread: it is imported under a warnings filter, which is process-wide.
# scipy's imports add global warning filters of their own; a reader that sets filters for a
# moment meanwhile (nibabel does around scaled data) may drop those or lend them its own for that
# moment: they concern scipy's deprecations and numeric warnings, not regkit's results.
REGISTRATION_IMPORTS = ("scipy.stats", "scipy.ndimage")


def _import_all(modules: tuple[str, ...]) -> None:
    for name in modules:
        with contextlib.suppress(Exception):   # the main thread's own import reports it
            importlib.import_module(name)


def import_in_background(*modules: str) -> threading.Thread:
    """Start importing ``modules`` on a daemon thread; returns the thread, to ``join()``.

    A module that fails to import is skipped silently: the code that needs it imports it again
    and raises there, where the error belongs. Join the thread before the code that imports the
    same modules runs, so that no two threads import one module tree at once.
    """
    thread = threading.Thread(target=_import_all, args=(tuple(modules),),
                              name="regkit-imports", daemon=True)
    thread.start()
    return thread
