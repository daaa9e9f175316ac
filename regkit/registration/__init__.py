"""Registration: one engine (:mod:`regkit.registration.engine`) and its 2D–3D and 3D–3D problems,
their results and PNG reports.

The registrations load torch and the renderers, so they are imported on first use of their names:
``from regkit.registration import register_2d3d`` works, and ``import regkit.registration``
alone stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from regkit.registration.radiograph_registration import Register2D3DOptions, register_2d3d
    from regkit.registration.volume_registration import Register3D3DOptions, register_3d3d

__all__ = ["Register2D3DOptions", "Register3D3DOptions", "register_2d3d", "register_3d3d"]

_LAZY = {
    "Register2D3DOptions": "regkit.registration.radiograph_registration",
    "register_2d3d": "regkit.registration.radiograph_registration",
    "Register3D3DOptions": "regkit.registration.volume_registration",
    "register_3d3d": "regkit.registration.volume_registration",
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
