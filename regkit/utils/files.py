"""Atomic file output: a file appears whole or not at all.

Every writer in regkit goes through :func:`atomic_path`: it writes to a temporary file in the same
folder and renames it into place only when the write succeeded, so an interruption or an error never
leaves a half-written output and never touches an existing file before the new one is complete.
:func:`atomic_dir` does the same for a whole folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_path", "atomic_write_bytes", "atomic_write_text"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary name keeps ``path``'s suffixes (``.nii.gz``, ``.npy``) so that libraries that pick
    a format from the name still do the right thing. On any exception the temporary file is removed
    and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}.", suffix=suffix,
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, key: str | None = None) -> Iterator[Path]:
    """Yield an empty staging folder next to ``path``; on success it replaces ``path`` whole.

    An existing folder at ``path`` is moved aside, the staging folder renamed into place, and the
    old one then removed. If that rename fails, the old folder is put back and the error raised;
    if putting it back fails too, an :class:`~regkit.errors.InputError` (with ``key``) says
    where the old folder is kept. On any exception in the block the staging folder is removed
    and ``path`` is left as it was. The caller decides whether an existing ``path`` may go.
    """
    from regkit.errors import InputError

    target = Path(path)
    parent = target.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual mode
        yield staging
        if not target.exists():
            os.rename(staging, target)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
        try:
            os.rename(target, old / "previous")
        except OSError:
            shutil.rmtree(old, ignore_errors=True)
            raise
        try:
            os.rename(staging, target)
        except OSError:
            try:
                os.rename(old / "previous", target)      # put the old folder back
            except OSError as error:                     # keep it where it is, say where
                raise InputError(f"could not replace it; the previous folder is kept at "
                                 f"{old / 'previous'}", source=target, key=key) from error
            shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
