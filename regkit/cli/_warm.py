"""A registration command's start: its input files read on a thread while its imports run.

A cold ``register-2d3d`` spent 2.2 s before and after its registration: torch and regkit's
registration modules (1.1 s), the CT's read (0.6 s: a 35 MB gzip NIfTI) and scipy's ``stats``
(pycma's import, 0.55 s) and ``ndimage`` (0.2 s). The imports run Python code and hold the GIL;
the read spends its time in zlib's inflate and numpy's copies, which release it. The read was
hidden behind the scipy imports on a thread; pycma is now imported without ``scipy.stats`` (see
``regkit.optim.cmaes``), and the read is hidden behind torch's import instead: 1.78 s against
2.21 s outside the registration (median of 16 cold commands each, run in turn, 2 cores).

The main thread keeps the imports, the thread the read and nothing else: two threads that import
one module tree at once may see each other's modules half made (Python accepts a circular
import across threads), and pycma's import sets a warnings filter, which is process-wide. The
reader's module (``regkit.io.nifti``, nibabel) is imported before the thread starts for the same
reason.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["REGISTRATION_IMPORTS", "Background", "import_quietly"]

T = TypeVar("T")

# What a registration's first level imports and the command has not yet (scipy.stats is not
# among them: pycma is imported without it, see regkit.optim.cmaes).
REGISTRATION_IMPORTS = ("scipy.ndimage",)


def import_quietly(*modules: str) -> None:
    """Import ``modules`` now, skipping any that fails.

    The code that needs a failed module imports it again and raises there, where the error
    belongs.
    """
    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


class Background(Generic[T]):
    """``fn(*args, **kwargs)`` run on a daemon thread; :meth:`result` waits for it.

    The caller's thread goes on meanwhile. What the call raised (an ``Exception``) is raised
    again by :meth:`result`, in the caller's thread, so a bad file reports there as it would have
    in line, after whatever the caller checked first.
    """

    def __init__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs),
                                        name="regkit-read", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            self._value = fn(*args, **kwargs)
        except Exception as exc:   # raised again by result(), in the caller's thread
            self._error = exc

    def wait(self) -> None:
        """Wait until the call has ended (it cannot be cancelled: a read is short)."""
        self._thread.join()

    def result(self) -> T:
        """The call's value, once it has ended; raises what it raised."""
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value   # type: ignore[return-value]   # set when no error was recorded
