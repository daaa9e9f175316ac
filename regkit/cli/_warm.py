"""A registration command's start: its NIfTI files read on a thread while its imports run.

A cold ``register-2d3d`` spent 2.2 s outside its registration, step after step: torch and
regkit's registration modules (1.1 s), the CT's read (0.55 s for a 35 MB gzip NIfTI, 0.4 s of
it zlib's inflate and CRC), and scipy's ``stats`` (pycma's import, 0.55 s) and ``ndimage``
(0.2 s) imported on a thread meanwhile. The imports run Python code and hold the GIL; the
inflate releases it. Now pycma is imported without ``scipy.stats`` (see
:func:`regkit.optim.cmaes.import_pycma`) and the files are inflated on a thread while the main
thread imports torch: 1.4 s against 1.9 s outside the registration (stop 33's A/B).

The thread only reads and inflates (:func:`regkit.io.nifti.read_nifti_file`): it imports
nothing and sets no warnings filter. nibabel's parsing, which sets one for a moment around
scaled voxels, runs on the main thread after the imports: the filters are process-wide, and a
``catch_warnings`` on one thread interleaved with another's on the other can leave either's
filters behind (an "error" filter for numpy's overflow warnings, left on, would end a
registration). Two threads that import one module tree at once may also see each other's
modules half made, so the main thread keeps every import.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from regkit.io.nifti import read_nifti_file  # here, so that the reading thread imports nothing

__all__ = ["REGISTRATION_IMPORTS", "Background", "import_quietly", "import_registration_modules",
           "read_nifti_files", "take"]

T = TypeVar("T")

# What a registration's first level imports and the command has not yet. pycma is imported by
# the commands themselves, without scipy.stats (regkit.optim.cmaes.import_pycma).
REGISTRATION_IMPORTS = ("scipy.ndimage",)


def import_quietly(*modules: str) -> None:
    """Import ``modules`` now, skipping any that fails.

    The code that needs a failed module imports it again and raises there, where the error
    belongs.
    """
    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def import_registration_modules() -> None:
    """What a registration imports later, imported now (while the files are read on a thread).

    pycma without ``scipy.stats`` (see :func:`regkit.optim.cmaes.import_pycma`), then
    :data:`REGISTRATION_IMPORTS`.
    """
    from regkit.optim.cmaes import import_pycma

    import_pycma(refused=("scipy.stats",))
    import_quietly(*REGISTRATION_IMPORTS)


class Background(Generic[T]):
    """``fn(*args, **kwargs)`` run on a daemon thread; :meth:`result` waits for it.

    The caller's thread goes on meanwhile. What the call raised is raised again by
    :meth:`result`, in the caller's thread.
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
        except BaseException as exc:   # raised again by result(), in the caller's thread
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


def read_nifti_files(paths: Sequence[Path | None]) -> list[Any]:
    """:func:`regkit.io.nifti.read_nifti_file` of each path, in order: its file or its error.

    None stays None. An error does not stop the files after it, so that the caller can raise
    each file's error where it would have read that file (see :func:`take`).
    """
    out: list[Any] = []
    for path in paths:
        try:
            out.append(None if path is None else read_nifti_file(path))
        except Exception as exc:
            out.append(exc)
    return out


def take(item: Any) -> Any:
    """An item of :func:`read_nifti_files`: the file, or its error raised."""
    if isinstance(item, BaseException):
        raise item
    return item
