r"""Where one view's depth bias comes from: the last 2D–3D level alone, run from the true pose.

Usage::

    .venv/bin/python benchmarks/depth_bias_blur.py --case 0 \
        --runs '[{"forward": {"blur_px": 1}}, {"forward": {"blur_px": 1}, "drr_blur": "transmitted",
                 "sigma": 0.5}]'

Each run renders case ``--case`` of ``precision_2d3d.py``'s single-view set with its own
radiograph options (``forward``: :class:`regkit.testing.radiographs.PolyOptions` fields, or
``"bone15"`` for regkit's monochromatic model), optionally blurs every DRR the registration renders
(``drr_blur``: ``"log"``, a Gaussian of the line integrals; ``"transmitted"``, ``−log`` of the
Gaussian of ``exp(−DRR)``; ``sigma`` in level pixels), optionally lifts the level CT's voxel cap
(``full_ct``), and prints the signed mean offset of the CT's points in the camera frame (its z is
the depth along the view, negative towards the source) where the last level ends. Findings:
docs/decisions/registration-2d3d-depth-bias.md.

The DRR blur is a diagnostic wrapped around the level renderers (a private hook of
``radiograph_registration``) with σ in level pixels at every level; the transmitted-domain blur
is the one ``register_2d3d`` applies with ``detector_blur_px`` (σ in detector pixels).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import precision_2d3d as bench
import torch

from regkit.io.nifti import load_nifti
from regkit.registration import radiograph_registration as rr
from regkit.registration._radiograph_images import detector_blur, smooth
from regkit.testing.radiographs import make_forward_model

_BLUR: dict[str, Any] = {"mode": None, "sigma": 0.0}


class _Blurred:
    """A level renderer whose DRRs (not the bones' footprints) are blurred as ``_BLUR`` says."""

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer

    def drr(self, views: Any, **kwargs: Any) -> torch.Tensor:
        out = self._renderer.drr(views, **kwargs)
        if _BLUR["mode"] is None or _BLUR["sigma"] <= 0 or kwargs.get("bones"):
            return out
        x = out.to(torch.float32)
        if _BLUR["mode"] == "log":
            return smooth(x, _BLUR["sigma"])
        return detector_blur(x, _BLUR["sigma"])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._renderer, name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=int, default=0)
    parser.add_argument("--runs", required=True, help="a JSON list of runs (see the docstring)")
    parser.add_argument("--ct", type=Path, default=bench.CT_PATH)
    args = parser.parse_args(argv)
    runs = json.loads(args.runs)
    make = rr._LevelBuilder._make_renderer
    rr._LevelBuilder._make_renderer = (  # type: ignore[method-assign]
        lambda self, volume, gradient: cast(Any, _Blurred(make(self, volume, gradient))))
    cap = rr._MAX_LEVEL_VOXELS
    ct = load_nifti(args.ct)
    cams = bench.true_cameras(ct, ("AP",))
    points = bench.target_points(ct)
    for run in runs:
        forward = run.get("forward", {})
        model = (make_forward_model("bone15", ct) if forward == "bone15"
                 else make_forward_model("poly", ct, options=forward))
        case = bench.make_case(args.case, ct, cams, model, bench.MODES["single"])
        _BLUR.update(mode=run.get("drr_blur"), sigma=float(run.get("sigma", 0.0)))
        rr._MAX_LEVEL_VOXELS = 1 << 27 if run.get("full_ct") else cap
        result = bench.polish_from_truth(ct, case, run.get("options"), None)
        errors = bench.pose_errors(result["cameras"], case.true, points, ct.center_world, ["AP"])
        view = errors["views"][0]
        print(json.dumps({**run, "case": args.case, "mtre_mm": round(errors["mtre_mm"], 3),
                          "mean_offset_camera_mm": view["mean_offset_camera_mm"]}), flush=True)
    rr._MAX_LEVEL_VOXELS = cap
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
