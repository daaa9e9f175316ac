"""Registration: the 2D–3D and 3D–3D engines, their results and PNG reports.

The engines load torch and the renderers, so they are imported on first use of their names:
``from regkit.registration import register_2d3d`` works, and ``import regkit.registration``
alone stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from regkit.registration.radiograph_registration import Register2D3DOptions, register_2d3d

__all__ = ["Register2D3DOptions", "register_2d3d"]

_LAZY = {
    "Register2D3DOptions": "regkit.registration.radiograph_registration",
    "register_2d3d": "regkit.registration.radiograph_registration",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'regkit.registration' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
