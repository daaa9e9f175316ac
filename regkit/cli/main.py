"""The ``regkit`` command: subcommands, exit statuses and error reporting.

Exit status: 0 on success, 2 on bad input (a user error: one line on stderr, no traceback), a
file system that refuses a read or write (no permission, read-only, full, a folder where a file
was meant) or an allocation refused (inputs or settings asking for more memory than there is),
1 on an internal error (with the traceback, since it is a bug to report), 130 on Ctrl-C.

Subcommands come from the ``regkit.commands`` entry-point group: each entry point is a function
``register(subparsers)`` that adds one subparser and sets ``func`` (taking the parsed arguments and
returning an exit status or None) as its default. Plugins add theirs the same way.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from regkit.errors import BackendUnavailableError, UserInputError
from regkit.registry import Registry

__all__ = ["build_parser", "commands", "main", "run"]

Register = Callable[[Any], None]

commands: Registry[Register] = Registry("command", entry_point_group="regkit.commands")


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors printed as one line and exit status 2."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


# name, module under regkit.cli; each module's register(subparsers) adds the subcommand
_BUILTINS = (("camera", "camera_cmd"), ("project", "project_cmd"), ("render", "render_cmd"),
             ("register-3d3d", "register3d_cmd"), ("register-2d3d", "register2d3d_cmd"))


def _load_on_call(module: str) -> Register:
    """A ``register(subparsers)`` that imports ``regkit.cli.<module>`` only when called.

    A command's module is imported only when its subparser is built: ``camera_cmd`` imports
    torch at its top (1.1 s), which ``register-2d3d`` imports later, on purpose, while its CT is
    read on a thread.
    """
    def register(subparsers: Any) -> None:
        importlib.import_module(f"regkit.cli.{module}").register(subparsers)

    register.__qualname__ = register.__name__ = f"register_{module}"
    return register


def _builtin_commands() -> None:
    # Built-ins register here rather than through entry points, so that a source checkout that
    # is not installed still has them.
    for name, module in _BUILTINS:
        if name not in commands._items:
            commands.add(name, _load_on_call(module))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, with every built-in and plugin subcommand.

    With ``command`` naming a built-in, only that subcommand is added: running a built-in then
    loads no plugin (the reconstruction plugin's imports cost 0.3 s of every ``register-2d3d``).
    Any other ``command`` (a plugin's, or unknown) gives the full parser, whose error lists the
    known names.
    """
    from regkit import __version__

    _builtin_commands()
    parser = _Parser(prog="regkit", description="Medical image registration (2D-3D, 3D-3D) and "
                     "single-radiograph bone reconstruction.")
    parser.add_argument("--version", action="version", version=f"regkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    # commands._items holds the built-ins before any entry point is loaded (see get())
    names = [command] if command is not None and command in commands._items \
        else commands.names()
    for name in names:
        commands.get(name)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        words = list(sys.argv[1:] if argv is None else argv)
        first = words[0] if words and not words[0].startswith("-") else None
        parser = build_parser(first)
        args = parser.parse_args(words)
        status = args.func(args)
        return 0 if status is None else int(status)
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except UserInputError as err:   # one line, even where a library's message has several
        print("regkit: error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    except BackendUnavailableError as err:   # this machine lacks what was asked for: not a bug
        print(f"regkit: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno in _ENVIRONMENT_ERRNOS:   # the file system said no: not a bug
            where = f"{err.filename}: " if err.filename else ""
            print(f"regkit: error: {where}{err.strerror or err}", file=sys.stderr)
            return 2
        return _internal_error()
    except MemoryError as err:   # numpy's allocation refusals: the inputs ask for too much
        return _out_of_memory(str(err) or "allocation refused")
    except RuntimeError as err:  # torch's: CUDA's OutOfMemoryError, the CPU allocator's
        if not _is_torch_allocation_refused(err):
            return _internal_error()
        return _out_of_memory(" ".join(str(err).split())[:200])
    except KeyboardInterrupt:
        print("regkit: interrupted", file=sys.stderr)
        return 130
    except Exception:
        return _internal_error()


_ENVIRONMENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                                 errno.EDQUOT, errno.EBUSY, errno.EISDIR, errno.ENOTDIR,
                                 errno.ENAMETOOLONG})
"""OSErrors that report the file system's refusal (a read-only or full disk, a folder where a
file was meant, no permission), shown as one line with exit status 2 like bad input; any other
OSError is a bug."""


def _out_of_memory(detail: str) -> int:
    print(f"regkit: error: out of memory ({detail}); ask for smaller outputs or settings",
          file=sys.stderr)
    return 2


def _is_torch_allocation_refused(err: RuntimeError) -> bool:
    """Whether torch refused an allocation.

    CUDA's ``OutOfMemoryError`` or its CPU allocator's ``RuntimeError`` ("DefaultCPUAllocator:
    can't allocate memory"), which is not a ``MemoryError``. Checked without importing torch
    where no command has.
    """
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(err, oom):
        return True
    text = str(err)
    return "DefaultCPUAllocator: can't allocate memory" in text or "out of memory" in text


def _internal_error() -> int:
    traceback.print_exc()
    print("regkit: internal error (a bug: please report it with the traceback above)",
          file=sys.stderr)
    return 1


# glibc's malloc hands blocks over its (adaptive, at first 128 KiB) mmap threshold back to the
# system when they are freed, and trims the heap's top past twice that. A registration makes and
# frees blocks of 10-40 MB per pyramid level (CT slabs, level volumes, renders), so a cold command
# paid for every page of them again: 0.9 s of a 12 s ``register-2d3d`` went on page faults that a
# second run in the same process no longer saw. Blocks up to 64 MiB now come from the heap (32 MiB
# where a glibc build refuses more: the finest level's 35 MB blocks then fault again, 0.25 s), and
# up to 256 MiB of freed heap is kept for the next ones; the peak RSS is unchanged (measured 876 MB
# both ways on the chest CT), only what the process holds between peaks. Set for the commands it
# was measured on: a long run with many threads (training) may fragment a heap so tuned.
_MALLOC_MMAP_THRESHOLDS = (64 << 20, 32 << 20)
_MALLOC_TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3          # mallopt's parameter numbers (malloc.h)
_ALLOCATOR_COMMANDS = frozenset({"register-2d3d", "register-3d3d"})


def _tune_allocator(environ: Mapping[str, str] | None = None) -> bool:
    """Set glibc's mmap and trim thresholds for the command's process; True if both were set.

    Left alone on another C library, and where the user set either threshold (the
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` variables or a malloc tunable): the
    process's own settings win. The command line only: the library never changes its host
    process's allocator.
    """
    import ctypes
    import os

    env = os.environ if environ is None else environ
    if any(k in env for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) \
            or "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return False
    try:
        # off glibc this raises (ValueError on macOS, OSError on musl; no confstr on Windows)
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError, ValueError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_set = any(mallopt(_M_MMAP_THRESHOLD, v) for v in _MALLOC_MMAP_THRESHOLDS)
    trim_set = bool(mallopt(_M_TRIM_THRESHOLD, _MALLOC_TRIM_THRESHOLD))
    return mmap_set and trim_set


def _exit_now(status: int) -> NoReturn:
    """End the process with ``status``, skipping the interpreter's teardown.

    With torch loaded, the teardown (every module's objects freed one by one, torch's among them)
    took 0.35-0.5 s of every command, after its work was done and its files written (regkit
    writes its files whole and closes them). What else the teardown runs that matters still runs
    here: the ``atexit`` handlers (logging's flush, temporary directories' clean-up,
    multiprocessing's), then Python's standard streams and the C library's buffers are flushed.
    Objects still alive are not finalised: a plugin command that leaves a file open and unflushed
    loses its tail. Python's normal exit is taken instead where a non-daemon thread still runs
    (it waits for the thread) and under a profiler or tracer (which write their output at exit).
    """
    import atexit
    import contextlib
    import ctypes
    import os
    import threading

    main_thread = threading.main_thread()
    if _observed() or any(t is not main_thread and not t.daemon and t.is_alive()
                          for t in threading.enumerate()):
        sys.exit(status)
    atexit._run_exitfuncs()   # what Py_Finalize runs first; no public name, stable since 3.0
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:   # None where the descriptor was closed at start
            # closed, a broken pipe, or a stand-in stream without flush
            with contextlib.suppress(AttributeError, OSError, ValueError):
                stream.flush()
    with contextlib.suppress(AttributeError, OSError, TypeError):   # no C library handle
        ctypes.CDLL(None).fflush(None)
    os._exit(status)


def _observed() -> bool:
    """Whether a profiler, tracer, debugger or coverage tool watches the process.

    Through ``sys.setprofile`` / ``sys.settrace``, or, from Python 3.12, ``sys.monitoring``
    (cProfile, and coverage on 3.14, use it): they write what they gathered at exit.
    """
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is None:
        return False
    return any(monitoring.get_tool(tool) is not None for tool in
               (monitoring.DEBUGGER_ID, monitoring.COVERAGE_ID, monitoring.PROFILER_ID))


def run() -> None:
    """Console-script entry point (``regkit``, and ``python -m regkit.cli.main``)."""
    words = sys.argv[1:]
    if words and words[0] in _ALLOCATOR_COMMANDS:
        _tune_allocator()
    _exit_now(main())


if __name__ == "__main__":
    run()
