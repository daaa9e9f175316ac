"""Registration results and their JSON files (the conventions' result contracts).

2D–3D: ``cameras`` (the input cameras with ``camera_from_world`` refined), ``world_correction``
(the one rigid transform estimated, so that ``camera_from_world_refined = camera_from_world_input @
world_correction`` for every view), ``metric``, ``final_score``, ``seconds``, ``evaluations``.

3D–3D: ``fixed_from_moving`` (a moving-world point to the fixed world), ``metric``,
``final_score``, ``seconds``, ``evaluations``.

Both may carry extra keys (``stop_reasons``, ``levels``); readers must ignore keys they do not
know. The history of scores is kept in the Python objects for reports, not in the files.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.geometry.transforms import check_rigid
from regkit.utils.files import atomic_write_text
from regkit.utils.jsonfile import read_json

__all__ = [
    "ConvergencePoint",
    "Registration2D3DResult",
    "Registration3D3DResult",
    "load_result_2d3d",
    "load_result_3d3d",
]


@dataclass(frozen=True)
class ConvergencePoint:
    """One optimizer iteration, for convergence curves.

    Attributes:
        evaluations: Objective evaluations so far (all levels).
        best: The best score so far, in the metric's own sense (higher or lower is better).
        current: The iteration's best score.
        level: The pyramid level (0 = coarsest).
    """

    evaluations: int
    best: float
    current: float
    level: int = 0


def _finite(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{name} must be finite, got {value!r}")
    return v


def _extras_json(extras: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(extras, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


class _ResultFile:
    """What both result files share: the scalar keys, the extras and an atomic save."""

    metric: str
    final_score: float
    seconds: float
    evaluations: int
    extras: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def _with_scalars(self, out: dict[str, Any]) -> dict[str, Any]:
        out.update({
            "metric": self.metric,
            "final_score": _finite("final_score", self.final_score),
            "seconds": float(self.seconds),
            "evaluations": int(self.evaluations),
        })
        out.update(_extras_json(self.extras))
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the result JSON atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass(frozen=True, eq=False)
class Registration2D3DResult(_ResultFile):
    """The outcome of a 2D–3D registration.

    Attributes:
        cameras: The refined views, in input order.
        world_correction: ``(4, 4)`` rigid, ``camera_from_world_refined = input @ correction``.
        metric: The metric's registry name.
        final_score: Its value at the result (the metric's own sense).
        seconds: Wall time of the registration.
        evaluations: Objective evaluations (DRR + metric) in all.
        history: Convergence points, for reports.
        extras: Further JSON-able facts written to the file (stop reasons, levels, seed).
    """

    cameras: tuple[Camera, ...]
    world_correction: np.ndarray
    metric: str
    final_score: float
    seconds: float
    evaluations: int
    history: tuple[ConvergencePoint, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result file's object."""
        return self._with_scalars({
            "cameras": [c.to_dict() for c in self.cameras],
            "world_correction": np.asarray(self.world_correction, dtype=np.float64).tolist(),
        })


@dataclass(frozen=True, eq=False)
class Registration3D3DResult(_ResultFile):
    """The outcome of a 3D–3D registration.

    Attributes:
        fixed_from_moving: ``(4, 4)`` (rigid or affine), moving world mm to fixed world mm.
        metric, final_score, seconds, evaluations, history, extras: as for 2D–3D.
    """

    fixed_from_moving: np.ndarray
    metric: str
    final_score: float
    seconds: float
    evaluations: int
    history: tuple[ConvergencePoint, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result file's object."""
        return self._with_scalars({
            "fixed_from_moving": np.asarray(self.fixed_from_moving, dtype=np.float64).tolist(),
        })


def _read_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    obj = read_json(p, "result file")
    if not isinstance(obj, dict):
        raise InputError("a result file must hold a JSON object", source=p)
    for key in ("metric", "final_score", "seconds", "evaluations"):
        if key not in obj:
            raise InputError("missing required key", source=p, key=key)
    return obj


def _matrix4(obj: dict[str, Any], key: str, source: Path, rigid: bool) -> np.ndarray:
    try:
        m = np.asarray(obj[key], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise InputError("missing, or not a 4x4 array of numbers", source=source,
                         key=key) from None
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise InputError("must be a finite 4x4 matrix", source=source, key=key)
    if rigid:
        try:
            check_rigid(m, key)
        except ValueError as err:
            raise InputError(str(err), source=source, key=key) from None
    elif not np.allclose(m[3], [0, 0, 0, 1]):
        raise InputError("last row must be [0, 0, 0, 1]", source=source, key=key)
    return m


def _scalars(obj: dict[str, Any]) -> dict[str, Any]:
    return {"metric": str(obj["metric"]), "final_score": float(obj["final_score"]),
            "seconds": float(obj["seconds"]), "evaluations": int(obj["evaluations"])}


def load_result_2d3d(path: str | os.PathLike[str]) -> Registration2D3DResult:
    """Read a 2D–3D result file, validating the cameras and the correction."""
    p = Path(path)
    obj = _read_object(p)
    cams = obj.get("cameras")
    if not isinstance(cams, list) or not cams:
        raise InputError("must be a non-empty list of cameras", source=p, key="cameras")
    cameras = tuple(Camera.from_dict(c, source=p, where=f"cameras[{i}].")
                    for i, c in enumerate(cams))
    corr = _matrix4(obj, "world_correction", p, rigid=True)
    known = {"cameras", "world_correction", "metric", "final_score", "seconds", "evaluations"}
    return Registration2D3DResult(cameras, corr, **_scalars(obj),
                                  extras={k: v for k, v in obj.items() if k not in known})


def load_result_3d3d(path: str | os.PathLike[str]) -> Registration3D3DResult:
    """Read a 3D–3D result file."""
    p = Path(path)
    obj = _read_object(p)
    m = _matrix4(obj, "fixed_from_moving", p, rigid=False)
    known = {"fixed_from_moving", "metric", "final_score", "seconds", "evaluations"}
    return Registration3D3DResult(m, **_scalars(obj),
                                  extras={k: v for k, v in obj.items() if k not in known})


def cameras_from_correction(cameras: Sequence[Camera],
                            world_correction: np.ndarray) -> tuple[Camera, ...]:
    """Apply ``camera_from_world_refined = camera_from_world @ world_correction`` to every view."""
    return tuple(c.with_pose(c.camera_from_world @ world_correction) for c in cameras)
