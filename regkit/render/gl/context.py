"""The one headless OpenGL context of a process, created on first use.

regkit renders with OpenGL 4.3+ compute shaders through moderngl on a headless EGL context: the
GPU's driver where there is one, Mesa's llvmpipe (a multi-threaded software rasteriser) where
there is not. Nothing here runs at import: moderngl is imported, and the context created, the
first time :func:`gl_session` or :func:`get_context` is called. No environment variable is read
or set (llvmpipe's thread count is Mesa's own ``LP_NUM_THREADS``, the number of CPUs by default).

One context serves the whole process. A lock serialises every use of it, and each use makes it
current on the calling thread, so renderers may be used from any thread (one at a time). A forked
child builds its own context on first use; the parent's is never touched there.

GL objects are released explicitly (moderngl's default). Objects whose owner is garbage-collected
while another thread holds the context are queued and released at the next use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from regkit.errors import BackendUnavailableError

__all__ = [
    "REQUIRED_GL_VERSION",
    "context_info",
    "get_context",
    "gl_available",
    "gl_session",
    "program",
    "release_later",
    "unavailable_reason",
]

REQUIRED_GL_VERSION = 430
"""OpenGL 4.3, the first version with compute shaders and shader storage buffers."""

_lock = threading.RLock()
_ctx: Any = None
_ctx_pid: int | None = None
_failure: str | None = None
_failure_pid: int | None = None
_programs: dict[str, Any] = {}
_filter_exact: dict[str, bool] = {}
_pending: list[Any] = []
_local = threading.local()  # .depth: how many gl_session blocks this thread is inside


def _create() -> Any:
    """Create the EGL context, or raise :class:`BackendUnavailableError` saying why not."""
    try:
        import moderngl
    except ImportError as err:  # moderngl or its glcontext loader is not installed
        raise BackendUnavailableError(f"moderngl cannot be imported ({err})") from err
    settings: dict[str, Any] = {"backend": "egl"}  # headless: no display server needed
    try:
        ctx = moderngl.create_context(standalone=True, require=REQUIRED_GL_VERSION, **settings)
    except Exception as err:  # moderngl raises plain Exception for a missing EGL/driver
        raise BackendUnavailableError(
            f"no headless EGL context with OpenGL {REQUIRED_GL_VERSION // 100}."
            f"{REQUIRED_GL_VERSION // 10 % 10} could be created ({type(err).__name__}: {err})"
        ) from err
    return ctx


def get_context() -> Any:
    """The process's ``moderngl.Context``, created on the first call.

    Use it inside :func:`gl_session`, which holds the lock and makes it current.

    Raises:
        BackendUnavailableError: moderngl is missing or no EGL context can be made here; the
            message says why. The failure is remembered, so later calls fail at once.
    """
    global _ctx, _ctx_pid, _failure, _failure_pid
    with _lock:
        pid = os.getpid()
        if _ctx is not None and _ctx_pid == pid:
            return _ctx
        if _failure is not None and _failure_pid == pid:
            raise BackendUnavailableError(_failure)
        if _ctx is not None:  # inherited through fork: unusable here, and not ours to release
            _ctx = None
            _programs.clear()
            _filter_exact.clear()
            _pending.clear()
        try:
            _ctx = _create()
        except BackendUnavailableError as err:
            _failure, _failure_pid = str(err), pid
            raise
        _ctx_pid = pid
        return _ctx


def gl_available() -> bool:
    """Whether an OpenGL 4.3 context can be made here (creates it on the first call)."""
    try:
        get_context()
    except BackendUnavailableError:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why no context can be made here, or None when one can (creates it on the first call)."""
    try:
        get_context()
    except BackendUnavailableError as err:
        return str(err)
    return None


@contextmanager
def gl_session() -> Iterator[Any]:
    """Hold the context: lock it, make it current on this thread, release queued objects.

    Yields:
        The ``moderngl.Context``.
    """
    with _lock:
        ctx = get_context()
        depth = getattr(_local, "depth", 0)
        if depth:  # nested: the context is already current on this thread
            yield ctx
            return
        _local.depth = 1
        try:
            with ctx:
                _release_pending()
                yield ctx
        finally:
            _local.depth = 0


def release_later(objects: list[Any]) -> None:
    """Release GL objects now if the context is free, else at the start of the next session.

    Safe to call from ``__del__`` on any thread: it never blocks.
    """
    objects = [o for o in objects if o is not None]
    if not objects:
        return
    if _ctx is None or _ctx_pid != os.getpid():
        return  # the context is gone (or not ours): its objects went with it
    if getattr(_local, "depth", 0):  # inside a session on this thread: the context is current
        for obj in objects:
            obj.release()
        return
    if _lock.acquire(blocking=False):
        try:
            with _ctx:
                for obj in objects:
                    obj.release()
                _release_pending()
        finally:
            _lock.release()
    else:
        _pending.extend(objects)


def _release_pending() -> None:
    while _pending:
        _pending.pop().release()


def program(source: str) -> Any:
    """A compiled compute shader for ``source``, cached for the life of the context.

    Call inside :func:`gl_session`.

    Raises:
        BackendUnavailableError: the driver refuses to compile it (the message has its log).
    """
    prog = _programs.get(source)
    if prog is None:
        ctx = get_context()
        try:
            prog = ctx.compute_shader(source)
        except Exception as err:  # moderngl raises plain Exception with the compile log
            first = source.splitlines()[1] if source.count("\n") > 1 else source
            raise BackendUnavailableError(
                f"the OpenGL driver could not compile a regkit compute shader ({first.strip()}):"
                f" {err}") from err
        _programs[source] = prog
    return prog


_PROBE = """#version 430
layout(local_size_x = 64) in;
layout(binding = 0) uniform sampler3D probe;
layout(std430, binding = 0) writeonly buffer Result { float result[]; };
void main() {
    float f = (float(gl_LocalInvocationID.x) + 0.37) / 64.0;
    result[gl_LocalInvocationID.x] = texture(probe, vec3((f + 0.5) / 2.0, 0.5, 0.5)).r - f;
}
"""
_PROBE_TEXELS: dict[str, np.ndarray] = {
    "f4": np.array([0.0, 1.0], np.float32), "f2": np.array([0.0, 1.0], np.float16),
    "nu2": np.array([0, 65535], np.uint16), "nu1": np.array([0, 255], np.uint8)}


def filtering_error(fmt: str) -> float:
    """The largest error of the texture unit's linear filtering of ``fmt`` texels, measured.

    A 2 × 1 × 1 texture holding 0 and 1 is sampled at 64 fractions between its texels;
    the error is the largest distance from the fraction. About 6e-8 (float rounding) where the
    unit interpolates in float; about 2e-3 where it weighs texels in steps of 1/256; NaN if the
    shader's results did not come back (then the unit counts as inexact).

    Args:
        fmt: A moderngl texture dtype: ``"f4"`` (R32F), ``"f2"`` (R16F), ``"nu2"`` (R16),
            ``"nu1"`` (R8).
    """
    import moderngl

    with gl_session() as ctx:
        tex = ctx.texture3d((2, 1, 1), 1, _PROBE_TEXELS[fmt].tobytes(), dtype=fmt)
        # NaN until written: a result the shader did not write reads as inexact, never as 0
        buf = ctx.buffer(np.full(64, np.nan, np.float32).tobytes())
        try:
            tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
            tex.repeat_x = tex.repeat_y = tex.repeat_z = False
            tex.use(0)
            buf.bind_to_storage_buffer(0)
            program(_PROBE).run(1, 1, 1)
            ctx.memory_barrier()
            errors = np.abs(np.frombuffer(buf.read(), np.float32))
            return float("nan") if np.isnan(errors).any() else float(errors.max())
        finally:
            tex.release()
            buf.release()


def texture_filtering_is_exact(fmt: str) -> bool:
    """Whether the texture unit interpolates ``fmt`` texels in float (to 1e-6), measured once.

    Mesa's llvmpipe does for float and 16-bit formats; many GPUs' units weigh texels in fixed
    point (steps of 1/256), and regkit's kernels then interpolate from the texels themselves.
    """
    with _lock:
        get_context()  # a new context (after a fork) forgets the last one's answers
        if fmt not in _filter_exact:
            _filter_exact[fmt] = filtering_error(fmt) < 1e-6  # NaN: not exact
        return _filter_exact[fmt]


def context_info() -> dict[str, str]:
    """Vendor, renderer and version strings of the context (creates it on the first call)."""
    with gl_session() as ctx:
        info = ctx.info
        return {key: str(info[key]) for key in ("GL_VENDOR", "GL_RENDERER", "GL_VERSION")}
