"""Registration: one engine, its 2D–3D and 3D–3D problems, their results and PNG reports.

The engine is :mod:`regkit.registration.engine`.

The registrations load torch and the renderers, so they are imported on first use of their names:
``from regkit.registration import register_2d3d`` works, and ``import regkit.registration``
alone stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regkit.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
