"""Quick 2D–3D registration levels for the small detectors of tests and examples."""

from __future__ import annotations

from regkit.registration.levels import LevelOptions

__all__ = ["fast_levels_2d3d"]


def fast_levels_2d3d(size: int, *, evaluations: int = 400, restarts: int = 1,
                     rot_step_deg: tuple[float, float] = (6.0, 2.0),
                     trans_step_mm: tuple[float, float] = (10.0, 3.0)
                     ) -> tuple[LevelOptions, ...]:
    """Three quick levels for a ``size``² detector (about 80² in tests).

    CMA-ES on a 26² detector with the CT at 4× its spacing, then on 40² at 2×, then Powell on the
    whole detector and the CT as it is: seconds on a small CT, sub-millimetre on a clean case.

    Args:
        size: the detector's side, pixels.
        evaluations: the first level's evaluation budget.
        restarts: the first level's CMA-ES restarts.
        rot_step_deg: the two CMA-ES levels' initial rotation steps, degrees.
        trans_step_mm: the two CMA-ES levels' initial translation steps, mm.
    """
    return (
        LevelOptions(shrink=4.0, max_voxels=27 * 27, method="cmaes",
                     options={"popsize": 12, "max_evaluations": evaluations,
                              "restarts": restarts, "tol_x": 0.01, "tol_fun": 1e-5},
                     rot_step_deg=rot_step_deg[0], trans_step_mm=trans_step_mm[0]),
        LevelOptions(shrink=2.0, max_voxels=40 * 40, method="cmaes",
                     options={"popsize": 8, "max_evaluations": 160, "tol_x": 0.01,
                              "tol_fun": 1e-6},
                     rot_step_deg=rot_step_deg[1], trans_step_mm=trans_step_mm[1]),
        LevelOptions(shrink=1.0, max_voxels=size * size, method="powell",
                     options={"max_evaluations": 100, "tol_x": 0.02},
                     rot_step_deg=0.5, trans_step_mm=1.5),
    )
