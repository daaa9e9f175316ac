"""Choosing and building a renderer backend.

Selection rule (``backend=None``): gradient work, or a CUDA device, goes to the PyTorch backend
(the only differentiable one, and the one whose tensors already live on that device); everything
else goes to the OpenGL backend when an EGL context can be made here, since it is the faster of the
two for plain rendering (see the README's performance table), and to PyTorch otherwise.
"""

from __future__ import annotations

import importlib
from typing import Any

from regkit.errors import BackendUnavailableError
from regkit.render.base import Renderer, renderers

__all__ = ["available_backends", "choose_backend", "make_renderer"]

# Built-in backends, imported on first use so that the registry knows them. Importing the OpenGL
# module does not import moderngl; only building a GLRenderer does.
_BUILTIN = {"torch": "regkit.render.torch_backend", "gl": "regkit.render.gl.backend"}


def _load_builtins() -> None:
    for name, module in _BUILTIN.items():
        if name not in renderers._items:
            importlib.import_module(module)


def available_backends() -> list[str]:
    """Names of every registered backend (built-in and from the ``regkit.renderers`` group)."""
    _load_builtins()
    return renderers.names()


def _gl_works() -> bool:
    from regkit.render.gl.context import gl_available

    return gl_available()


def choose_backend(*, requires_grad: bool = False, device: Any = None) -> str:
    """The backend :func:`make_renderer` uses when none is named (see the module's rule)."""
    dev = str(device) if device is not None else "cpu"
    if requires_grad or dev.startswith("cuda"):
        return "torch"
    return "gl" if _gl_works() else "torch"


def make_renderer(volume: Any, *, backend: str | None = None, requires_grad: bool = False,
                  **options: Any) -> Renderer:
    """Build a renderer bound to ``volume``.

    Args:
        volume: A :class:`~regkit.volume.Volume` (HU is converted to μ; ``units="mu"`` is used
            as given).
        backend: ``"torch"``, ``"gl"`` or a plugin's name; None applies the selection rule.
        requires_grad: Ask for a differentiable renderer (refused at once by a backend that is
            not).
        **options: Passed to the backend (``step_mm``, ``device``, ``dtype``, ...).

    Raises:
        UnknownNameError: ``backend`` is not registered (the message lists the known ones).
        BackendUnavailableError: the backend cannot run here.
    """
    _load_builtins()
    name = backend or choose_backend(requires_grad=requires_grad, device=options.get("device"))
    cls = renderers.get(name)
    try:
        return cls(volume, requires_grad=requires_grad, **options)
    except BackendUnavailableError:
        raise
    except ImportError as err:  # a backend's optional dependency is missing
        raise BackendUnavailableError(f"renderer backend '{name}' cannot load: {err}") from err
