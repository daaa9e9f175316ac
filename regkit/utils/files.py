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
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_path", "atomic_write_bytes", "atomic_write_text",
           "check_output", "check_outputs", "path_arg"]


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


def check_output(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = (),
                 *, kind: str = "file", key: str = "--out") -> Path:
    """Refuse, before any work, an output path that cannot be written or would replace an input.

    ``kind`` says what ``path`` is: ``"file"``; ``"folder"``, a folder that replaces any
    existing one whole (:func:`atomic_dir`); or ``"into"``, a folder that files are written
    into. An output is refused when it is an empty path; when it is one of ``inputs`` (the
    same file by any name: writing it would destroy the input); for a ``"folder"``, when it
    holds one of ``inputs`` or the current folder; for a ``"file"``, when it is a folder, and
    for a folder, when it is a file; and when the folder that would take it (the nearest one
    above it that exists, or itself for ``"into"``) does not take a new file (read-only, no
    permission: probed by making and removing an empty file there, so the answer is the file
    system's, whoever runs it).

    Args:
        path: The output file or folder.
        inputs: The command's input files (those that do not exist are skipped).
        kind: ``"file"``, ``"folder"`` or ``"into"``.
        key: The option named in the errors.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: any of the above, naming ``path`` and ``key``.
    """
    from regkit.errors import InputError

    if kind not in ("file", "folder", "into"):
        raise ValueError(f"kind must be 'file', 'folder' or 'into', got {kind!r}")
    if str(path).strip() == "":
        raise InputError("an empty path", key=key)
    target = Path(path)
    where = target.resolve()
    for item in inputs:
        source = Path(item)
        if not source.exists():
            continue
        if (where.exists() and os.path.samefile(where, source)) or where == source.resolve():
            raise InputError(f"is the input {source}: writing it would destroy the input",
                             source=target, key=key)
        if kind == "folder" and where in source.resolve().parents:
            raise InputError(f"holds the input {source}, which replacing the folder would delete",
                             source=target, key=key)
    here = Path.cwd().resolve()
    if kind == "folder" and (where == here or where in here.parents):
        raise InputError("is the current folder or holds it: write to a new folder",
                         source=target, key=key)
    if kind == "file" and target.is_dir():
        raise InputError("is a folder: give a file name", source=target, key=key)
    if kind != "file" and target.exists() and not target.is_dir():
        raise InputError("is a file: give a folder", source=target, key=key)
    # The folder the writer works in: atomic_path and atomic_dir write beside the name given
    # (a link is replaced, not followed), "into" writes in the folder itself.
    above = where if kind == "into" else target.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise InputError(f"{above} is a file, not a folder", source=target, key=key)
    try:
        fd, probe = tempfile.mkstemp(prefix=".regkit-probe.", dir=above)
    except OSError as error:
        raise InputError(f"cannot write in {above}: {error.strerror or error}", source=target,
                         key=key) from error
    os.close(fd)
    os.unlink(probe)
    return target


def check_outputs(outputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
                  inputs: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    """:func:`check_output` of each of a command's output files, and no two the same or nested.

    Args:
        outputs: ``(option, path)`` of each output file (None: not asked for); a folder of
            files (a report) is given as its files.
        inputs: The command's input files (None entries are skipped).

    Raises:
        InputError: an output :func:`check_output` refuses, or two outputs that are one file
            or one inside the other (the second would overwrite the first, or fail after it).
    """
    from regkit.errors import InputError

    sources = [p for p in inputs if p is not None]
    seen: list[tuple[str, Path]] = []
    for key, path in outputs:
        if path is None:
            continue
        check_output(path, sources, key=key)
        where = Path(path).resolve()
        for other_key, other in seen:
            if where == other or other in where.parents or where in other.parents:
                raise InputError(f"is the same file as {other_key} {other}, or inside it",
                                 source=path, key=key)
        seen.append((key, where))


def path_arg(text: str) -> Path:
    """An ``argparse`` type for a path option: the path, with an empty one refused.

    ``Path("")`` is the current folder, so an empty ``--out ""`` would otherwise reach the
    command as ``.`` and be refused (or used) as that folder.

    Raises:
        argparse.ArgumentTypeError: an empty or blank path (argparse names the option and
            exits 2).
    """
    import argparse

    if text.strip() == "":
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


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
