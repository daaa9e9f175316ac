"""Rendering: DRRs, bone depth maps and resampling behind one renderer contract.

Two backends implement :class:`Renderer`: ``"torch"`` (:class:`TorchRenderer`, differentiable,
CPU and CUDA) and ``"gl"`` (``regkit.render.gl``, OpenGL compute shaders). Importing this package
loads the PyTorch backend only; the OpenGL one (and moderngl) loads when it is first asked for,
through :func:`make_renderer` or ``import regkit.render.gl``.
"""

from regkit.render.base import (
    DepthMaps,
    Renderer,
    Resampled,
    Views,
    default_step_mm,
    renderers,
)
from regkit.render.select import available_backends, choose_backend, make_renderer
from regkit.render.torch_backend import TorchRenderer

__all__ = [
    "DepthMaps",
    "Renderer",
    "Resampled",
    "TorchRenderer",
    "Views",
    "available_backends",
    "choose_backend",
    "default_step_mm",
    "make_renderer",
    "renderers",
]
