"""Running one compute shader over work that may not fit one dispatch: bind, dispatch, read back.

Every kernel of the OpenGL renderer goes through :func:`dispatch`: it binds the inputs, textures
and uniforms, then runs the shader once per chunk of the work (views, slabs or bone windows),
each chunk's outputs small enough for one storage buffer binding (the driver's
``GL_MAX_SHADER_STORAGE_BLOCK_SIZE``) and one dispatch (at most 65535 work groups along z),
and reads each chunk's outputs back.
Storage buffers are scratch buffers kept between calls, grown when a call needs more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from regkit.render.gl._textures import GLObjects

__all__ = ["ScratchBuffers", "dispatch", "even_chunks", "groups", "packed_chunks",
           "set_uniform"]

Target = np.ndarray | Callable[[int, int], np.ndarray]
"""Where a chunk ``[c0, c1)``'s output is read into: rows ``c0:c1`` of an array, or the array a
function of ``(c0, c1)`` returns. Its size in bytes is the size of the output."""


class ScratchBuffers:
    """Storage buffers by name, kept for later calls and grown on demand.

    Args:
        owned: The renderer's GL objects; every buffer made here joins them.
    """

    def __init__(self, owned: GLObjects):
        self.owned = owned
        self._buffers: dict[str, Any] = {}

    def clear(self) -> None:
        """Forget the buffers (their GL objects are released by their owner)."""
        self._buffers.clear()

    def get(self, ctx: Any, name: str, nbytes: int) -> Any:
        """A scratch buffer of at least ``nbytes``, kept for later calls."""
        buf = self._buffers.get(name)
        if buf is None or buf.size < nbytes:
            self.owned.drop([buf])
            buf = self.owned.own(ctx.buffer(reserve=max(nbytes, 16)))
            self._buffers[name] = buf
        return buf

    def upload(self, ctx: Any, name: str, array: np.ndarray) -> Any:
        """The scratch buffer ``name`` holding ``array`` (C order)."""
        data = np.ascontiguousarray(array)
        buf = self.get(ctx, name, data.nbytes)
        buf.write(data)
        return buf


def set_uniform(prog: Any, name: str, value: Any) -> None:
    """Set a uniform if the compiler kept it."""
    try:
        member = prog[name]
    except KeyError:
        return
    member.value = value


def groups(pixel_list: bool, grid: tuple[int, int, int, int], n_per_view: int,
           views: int) -> tuple[int, int, int]:
    """Work groups of a dispatch (8×8 invocations each)."""
    if pixel_list:
        gx = 32  # rows of 256 invocations
        return gx, max(1, math.ceil(n_per_view / (gx * 64))), views
    return math.ceil(grid[2] / 8), math.ceil(grid[3] / 8), views


def even_chunks(count: int, item_bytes: int, limit: int) -> Iterator[tuple[int, int]]:
    """Ranges of ``count`` items of ``item_bytes`` output bytes each (views, slabs).

    As many per range as fit ``limit`` bytes and 65535 work groups along z (at least one).
    """
    per = max(1, min(count, 65535, limit // max(item_bytes, 1)))
    for start in range(0, count, per):
        yield start, min(count, start + per)


def packed_chunks(sizes: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Ranges of consecutive items of the given sizes (rays of bone windows).

    Each range holds as many as fit ``budget`` in total (at least one).
    """
    start = 0
    while start < len(sizes):
        run = np.cumsum(sizes[start:])
        stop = start + max(1, int(np.searchsorted(run, budget, side="right")))
        yield start, stop
        start = stop


def dispatch(ctx: Any, prog: Any, scratch: ScratchBuffers, chunks: Iterable[tuple[int, int]],
             work_groups: Callable[[int, int], tuple[int, int, int]], *,
             outputs: Mapping[str, tuple[int, Target]],
             inputs: Mapping[str, tuple[int, np.ndarray]] | None = None,
             textures: Sequence[Any] = (),
             uniforms: Mapping[str, Any] | None = None,
             offset: str | None = None,
             prepare: Callable[[int, int], None] | None = None,
             finish: Callable[[int, int, list[np.ndarray]], None] | None = None) -> None:
    """Bind, then run ``prog`` once per chunk and read its outputs back (inside a session).

    Args:
        ctx: The context.
        prog: The compiled compute shader.
        scratch: The renderer's scratch buffers; inputs and outputs go in those of their name.
        chunks: The ranges ``[c0, c1)`` of work, one dispatch each.
        work_groups: The work groups of the dispatch of a chunk.
        outputs: By scratch buffer name: its storage binding, and where to read it (see
            :data:`Target`); bound per chunk, read after a memory barrier.
        inputs: By scratch buffer name: its storage binding and its contents, uploaded once.
        textures: The textures to bind, at units 0, 1, ... (None leaves a unit alone).
        uniforms: Uniform values, set once (those the compiler dropped are skipped).
        offset: A uniform set to ``c0`` before each chunk's dispatch (its first view or slab).
        prepare: Called with ``(c0, c1)`` before a chunk's outputs are bound (per-chunk inputs).
        finish: Called with ``(c0, c1)`` and the arrays read, after each chunk.
    """
    for name, (binding, array) in (inputs or {}).items():
        scratch.upload(ctx, name, array).bind_to_storage_buffer(binding)
    for location, texture in enumerate(textures):
        if texture is not None:
            texture.use(location=location)
    for name, value in (uniforms or {}).items():
        set_uniform(prog, name, value)
    for c0, c1 in chunks:
        if prepare is not None:
            prepare(c0, c1)
        targets = [target(c0, c1) if callable(target) else target[c0:c1]
                   for _, target in outputs.values()]
        buffers = [scratch.get(ctx, name, out.nbytes)
                   for name, out in zip(outputs, targets, strict=True)]
        for (binding, _), buf in zip(outputs.values(), buffers, strict=True):
            buf.bind_to_storage_buffer(binding)
        if offset is not None:
            set_uniform(prog, offset, c0)
        prog.run(*work_groups(c0, c1))
        ctx.memory_barrier()
        for buf, out in zip(buffers, targets, strict=True):
            buf.read_into(out, size=out.nbytes)
        if finish is not None:
            finish(c0, c1, targets)
