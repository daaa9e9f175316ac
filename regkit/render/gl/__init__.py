"""The OpenGL renderer backend (``"gl"``): compute shaders through moderngl on headless EGL.

Importing this package registers the backend and loads neither moderngl nor an OpenGL context;
both come with the first :class:`GLRenderer` built (or the first :func:`gl_available` call).
"""

from regkit.render.gl.backend import GLRenderer
from regkit.render.gl.context import gl_available, unavailable_reason

__all__ = ["GLRenderer", "gl_available", "unavailable_reason"]
