r"""Where 2D–3D registration error goes, on radiographs regkit's renderer did not make.

Run (from the repository root)::

    .venv/bin/python benchmarks/precision_2d3d.py --cases 14 --mode single --out results.json
    .venv/bin/python benchmarks/precision_2d3d.py --cases 4 --mode wide --out wide.json \
        --options '{"starts": 64}'
    .venv/bin/python benchmarks/precision_2d3d.py --cases 4 --mode single --out lv.json \
        --options '{"levels": [{"shrink": 4, "max_voxels": 1024, "method": "cmaes",
                                "options": {"popsize": 16, "max_evaluations": 800}}, ...]}'
    .venv/bin/python benchmarks/precision_2d3d.py --cases 4 --out cli.json --whole-process
    .venv/bin/python benchmarks/precision_2d3d.py --cases 6 --out cli.json --whole-process \
        --cli-args='--detector-blur estimate'
    .venv/bin/python benchmarks/precision_2d3d.py --cases 4 --mode single --method nanodrr \
        --out nano.json

Cases (the geometry of ``benchmarks/test_bench_2d3d.py``): the whole chest CT at
``/work/shared/data/chest_ct/ct.nii.gz`` in HU, an AP C-arm view (SDD 1020 mm, SID 850 mm,
isocentre at the CT's centre, 256² pixels of 1.6 mm); ``biplane`` adds the lateral view
(LAO 90°, same C-arm). Case ``i`` draws from ``numpy.random.default_rng(1000 + i)``: an angle
uniform in [0°, 15°] (``wide``: [20°, 40°]) about a random axis through the CT's centre and a
shift uniform in [0, 30] mm (``wide``: [30, 80] mm) in a random direction (the true cameras
turned so give the start), then the radiographs' noise, view by view. With ``--mode single
--forward bone15`` case ``i`` is therefore ``test_bench_2d3d.py``'s case ``i``, image included.

Radiographs (``--forward``): ``poly`` (default), the polychromatic two-material model of
``regkit/testing/radiographs.py`` (70 kVp, 2.5 mm Al, water + cortical bone, beam hardening, 5 %
scatter, 10⁴ photons, 1 px blur; ``--forward-options`` sets its :class:`PolyOptions` fields), or
``bone15``, the existing benchmark's monochromatic model with bone weighted 1.5×.

Registration (``--method``): ``regkit`` (default), :func:`regkit.registration.register_2d3d`
(public API only) with ``seed = i`` and ``--options`` passed through as its ``options`` dict; a
``"levels"`` entry there is a JSON list of :class:`regkit.registration.levels.LevelOptions` field
dicts. ``--whole-process`` instead times ``python -m regkit.cli.main register-2d3d`` end to end
on files in a temporary directory (the CT read from its NIfTI, the start cameras as a camera
file, the radiographs as ``.npy``), so that importing and loading count; the command takes no
registration options, so it runs the defaults. ``nanodrr``, the peer: nanodrr 0.1.7's gradient
registration exactly as ``test_bench_2d3d.py`` runs it (its ``_nanodrr_register``: the
``Registration`` module, ``GradientNormalizedCrossCorrelation2d`` (global, σ = 1), Adam with lr
1e-2 on the rotation and 1e0 on the translation, 150 iterations on a 128² detector with the
radiograph binned 2 × 2, 300 samples per ray, the best-loss pose kept), torch on the CPU with 2
threads, the CT loaded once as a nanodrr ``Subject`` with ``mu_water=0.02, mu_bone=0.04,
hu_bone=1000`` (regkit's HU → μ), from the same start camera and the same radiograph as
``regkit``. Single view only (``--mode single`` or ``wide``), and without ``--options``,
``--whole-process`` or ``--diagnose``; ``--backend`` then only renders the radiographs.

Figures per case (docs/CONVENTIONS.md): target points are the CT's voxels above 200 HU, 20 000
of them drawn with ``default_rng(20000)``. **mTRE**: mean ‖est · x − true · x‖ (camera frame,
:func:`~regkit.registration.radiograph_registration.mean_target_error_2d3d`; the same for every
view, since the views share one rigid correction). Per view, the same differences split in that
camera's frame: **depth**, the mean |Δz| (along the viewing direction), and **in-plane**, the
mean ‖(Δx, Δy)‖, plus the signed mean (Δx, Δy, Δz) (a systematic shift, e.g. a magnification
bias, shows there). **mPD**: mean distance on the detector, in mm, between the points'
projections under the estimated and the true camera. Also the residual rotation (degrees) and
the shift of the CT's centre, the wall time of the ``register_2d3d`` call (or of the process;
for ``nanodrr``, of its registration loop, the ``Subject`` built beforehand), evaluations, final
score and the per-level facts of ``result.extras["levels"]`` (for ``nanodrr``: its 150 iterations,
the best GNCC and no levels).

``--diagnose`` adds, per case, the last pyramid level run from the *true* cameras (same
images, options and seed; after a first level that stays put, so that it fits what a level past
the first fits, and followed by the levels ``full_detector`` or an estimated blur add): its mTRE
is how far the objective's own optimum near the truth lies
from it (a bias of the model mismatch, whatever the search; with the level's fits made at the
truth). Its final score against the registration's (``search_deficit`` > 0: the polish scores
better) compares levels whose fits were made at different poses: with per-level fits (two
views, the bone weight, the blur model) the two scores are on different scales and the sign is
only a hint.

Summary: median, 90th percentile and worst mTRE, the fraction under 1, 2 and 10 mm, median depth,
in-plane and mPD, median seconds. Results are rewritten to ``--out`` after every case; the JSON's
``setup.method`` names the method (with ``setup.nanodrr``, its settings, for ``nanodrr``).

Measured (4 single-view cases, poly radiographs, regkit's defaults, OpenGL renders, 2 shared cores
at load 4–4.7): mTRE 1.13, 0.81, 0.65, 0.43 mm (median 0.73) against 0.18, 0.18, 0.33, 0.30 mm
for the same cases with bone15 radiographs (``benchmarks/results/bench_2d3d.json``, labelled-bone
targets); depth 0.29–0.99 mm against in-plane 0.28–0.51 mm, always with the CT pulled towards the
source (signed mean Δz −0.27 to −0.99 mm) and down the image (Δy +0.25 to +0.49 mm); ~10.3 s per
call, 14.4 s as a whole process. From the truth the last level ends 0.30–0.49 mm off (Δy ≈ +0.21
mm every time): about half of the error is the objective's own bias, the rest a depth direction
so flat that the registration's scores match that optimum's within 3·10⁻⁴. nanodrr
(``--method nanodrr``, case 0 only, poly radiograph, same 2 shared cores at load 4.4): from 16.6
mm to mTRE 2.18 mm, nearly all depth (depth 2.15 mm, in-plane 0.31 mm, signed mean Δz −2.15 mm:
also towards the source), mPD 0.47 mm, 0.24° left, in 250 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.geometry.camera import Camera, save_cameras
from regkit.geometry.carm import camera_from_carm
from regkit.geometry.transforms import rigid_from_params
from regkit.io.nifti import load_nifti
from regkit.registration.levels import LevelOptions
from regkit.testing.radiographs import ForwardModel, make_forward_model
from regkit.volume import Volume

CT_PATH = Path("/work/shared/data/chest_ct/ct.nii.gz")
SIZE = 256
PIXEL_MM = 1.6
SDD_MM, SID_MM = 1020.0, 850.0
BONE_HU = 200.0
N_POINTS = 20000
POINTS_SEED = 20000
CASE_SEED = 1000
THRESHOLDS_MM = (1.0, 2.0, 10.0)
MODES: dict[str, dict[str, Any]] = {
    "single": {"angle_deg": (0.0, 15.0), "shift_mm": (0.0, 30.0), "views": ("AP",)},
    "wide": {"angle_deg": (20.0, 40.0), "shift_mm": (30.0, 80.0), "views": ("AP",)},
    "biplane": {"angle_deg": (0.0, 15.0), "shift_mm": (0.0, 30.0), "views": ("AP", "LAT")},
}
_PRIMARY_ANGLE = {"AP": 0.0, "LAT": math.pi / 2}
METHODS = ("regkit", "nanodrr")


# ------------------------------------------------------------------------------------- setup


def true_cameras(ct: Volume, views: Sequence[str]) -> list[Camera]:
    """The C-arm views (``"AP"``, ``"LAT"``) about the CT's centre."""
    return [camera_from_carm(source_to_detector_mm=SDD_MM, source_to_isocenter_mm=SID_MM,
                             pixel_spacing_mm=PIXEL_MM, width=SIZE, height=SIZE,
                             primary_angle=_PRIMARY_ANGLE[v], isocenter_world=ct.center_world)
            for v in views]


def target_points(ct: Volume) -> NDArray[np.float64]:
    """``(N, 3)`` world mm: ~20 000 voxels above 200 HU, drawn with a fixed seed."""
    flat = np.flatnonzero(np.asarray(ct.data) > BONE_HU)
    rng = np.random.default_rng(POINTS_SEED)
    pick = np.sort(rng.choice(flat, size=min(N_POINTS, flat.size), replace=False))
    index = np.stack(np.unravel_index(pick, ct.shape), axis=1).astype(np.float64)
    return np.asarray(ct.index_to_world(index), dtype=np.float64)


def parse_options(text: str | None) -> dict[str, Any] | None:
    """``--options``: a JSON object (or ``@file``) of ``register_2d3d`` options.

    A ``"levels"`` list of dicts becomes a tuple of ``LevelOptions``; the rest passes through.
    """
    if text is None:
        return None
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"--options must be a JSON object, got {type(raw).__name__}")
    if "levels" in raw:
        from regkit.registration.levels import LevelOptions

        levels = raw["levels"]
        if not isinstance(levels, list) or not all(isinstance(lv, dict) for lv in levels):
            raise ValueError("--options 'levels' must be a JSON list of LevelOptions objects")
        raw["levels"] = tuple(LevelOptions(**lv) for lv in levels)
    return raw


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, tuple | set):
        return list(x)
    return str(x)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One seeded case: the true and start cameras and the radiographs (line integrals)."""

    index: int
    true: list[Camera]
    start: list[Camera]
    images: list[NDArray[np.float32]]
    angle_deg: float
    shift_mm: float


def make_case(i: int, ct: Volume, cams: list[Camera], model: ForwardModel,
              mode: dict[str, Any]) -> Case:
    """Case ``i``: pose draws, then noise, from ``default_rng(1000 + i)``."""
    rng = np.random.default_rng(CASE_SEED + i)
    angle = np.radians(rng.uniform(*mode["angle_deg"]))
    axis = rng.normal(size=3)
    shift = rng.uniform(*mode["shift_mm"])
    direction = rng.normal(size=3)
    params = np.r_[axis / np.linalg.norm(axis) * angle,
                   direction / np.linalg.norm(direction) * shift]
    e = np.asarray(rigid_from_params(params, ct.center_world), dtype=np.float64)
    start = [c.with_pose(c.camera_from_world @ e) for c in cams]
    images = [v.line_integral for v in model.render(cams, rng)]
    return Case(i, cams, start, images, float(np.degrees(angle)), float(shift))


# ----------------------------------------------------------------------------------- figures


def pose_errors(est: Sequence[Camera], true: Sequence[Camera], points: NDArray[np.float64],
                pivot: NDArray[np.float64], names: Sequence[str]) -> dict[str, Any]:
    """mTRE, per-view depth / in-plane split and mPD, and the residual rigid motion."""
    from regkit.registration.pose_error import (
        mean_projection_distance,
        mean_target_error,
        target_error_split,
    )

    est_m = np.stack([c.camera_from_world for c in est])
    true_m = np.stack([c.camera_from_world for c in true])
    out: dict[str, Any] = {"mtre_mm": mean_target_error(est_m, true_m, points)}
    views = []
    for name, e, t in zip(names, est, true, strict=True):
        d = np.asarray(e.camera_from_world - t.camera_from_world)
        depth, inplane = target_error_split(e.camera_from_world, t.camera_from_world, points)
        views.append({
            "view": name,
            "mtre_mm": mean_target_error(e.camera_from_world, t.camera_from_world, points),
            "depth_mm": depth,
            "inplane_mm": inplane,
            "mean_offset_camera_mm": (points @ d[:3, :3].T + d[:3, 3]).mean(axis=0)
            .round(4).tolist(),
            "mpd_mm": mean_projection_distance(e, t, points),
        })
    out["views"] = views
    out["mpd_mm"] = float(np.mean([v["mpd_mm"] for v in views]))
    out["depth_mm"] = views[0]["depth_mm"]
    out["inplane_mm"] = views[0]["inplane_mm"]
    # world_true_from_world_est: the rigid motion left, the same for every view
    residual = np.linalg.inv(true[0].camera_from_world) @ est[0].camera_from_world
    cos = np.clip((np.trace(residual[:3, :3]) - 1) / 2, -1.0, 1.0)
    out["rotation_error_deg"] = float(np.degrees(np.arccos(cos)))
    out["centre_shift_mm"] = float(np.linalg.norm(residual[:3, :3] @ pivot + residual[:3, 3]
                                                  - pivot))
    return out


def _level_facts(levels: Any) -> list[dict[str, Any]]:
    return json.loads(json.dumps(levels or [], default=_jsonable))


def _level_text(levels: list[dict[str, Any]]) -> str:
    parts = []
    for lv in levels:
        score = lv.get("score")
        parts.append(f"L{lv.get('level')} {lv.get('method')} {lv.get('evaluations')}ev "
                     f"{lv.get('seconds', float('nan')):.1f}s "
                     f"{score if score is None else f'{score:.4f}'}")
    return " | ".join(parts)


# ------------------------------------------------------------------------------ registration


def register_in_process(ct: Volume, case: Case, options: dict[str, Any] | None,
                        backend: str | None) -> dict[str, Any]:
    """``register_2d3d`` timed around the call; the estimated cameras and its facts."""
    from regkit.registration import register_2d3d

    t0 = time.perf_counter()
    result = register_2d3d(ct, case.start, case.images, seed=case.index, options=options,
                           backend=backend)
    seconds = time.perf_counter() - t0
    return {"cameras": list(result.cameras), "seconds": seconds,
            "seconds_reported": float(result.seconds), "evaluations": int(result.evaluations),
            "metric": result.metric, "final_score": float(result.final_score),
            "levels": _level_facts(result.extras.get("levels")),
            "params": list(result.extras.get("params", []))}


def register_whole_process(ct_path: Path, case: Case, backend: str | None,
                           extra: Sequence[str] = ()) -> dict[str, Any]:
    """``python -m regkit.cli.main register-2d3d`` on files in a temp dir, timed end to end.

    ``extra``: more arguments for the command (``--cli-args``).
    """
    with tempfile.TemporaryDirectory(prefix="regkit_precision_") as tmp:
        d = Path(tmp)
        save_cameras(d / "start.json", case.start)
        cmd = [sys.executable, "-m", "regkit.cli.main", "register-2d3d",
               "--volume", str(ct_path), "--camera", str(d / "start.json"),
               "--out", str(d / "result.json"), "--seed", str(case.index)]
        for v, image in enumerate(case.images):
            np.save(d / f"view{v}.npy", image)
            cmd += ["--image", str(d / f"view{v}.npy")]
        if backend is not None:
            cmd += ["--backend", backend]
        cmd += list(extra)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"register-2d3d exited {proc.returncode}: "
                               f"{proc.stderr.strip()[-2000:]}")
        data = json.loads((d / "result.json").read_text())
    return {"cameras": [Camera.from_dict(c) for c in data["cameras"]], "seconds": seconds,
            "seconds_reported": float(data["seconds"]),
            "evaluations": int(data["evaluations"]), "metric": data["metric"],
            "final_score": float(data["final_score"]),
            "levels": _level_facts(data.get("levels")), "params": data.get("params", []),
            "command": " ".join(cmd)}


# A first level that stays where it starts, so that the polished level runs as a level past the
# first: with what the registration fits only there (each view's intensity map and zoom, the bone
# weight, the blur's estimate). The budget of one evaluation holds the pose (scipy's Powell stops
# before its first line search; the 1e-6 steps only keep any slip small).
_STAY = LevelOptions(shrink=4.0, max_voxels=32 * 32, method="powell",
                     options={"max_evaluations": 1}, rot_step_deg=1e-6, trans_step_mm=1e-6)


def polish_from_truth(ct: Volume, case: Case, options: dict[str, Any] | None,
                      backend: str | None) -> dict[str, Any]:
    """The last level from the true cameras: where the objective's optimum near them lies.

    It runs after :data:`_STAY`, as a level past the first (run as the first, it left out the
    intensity maps, zooms and bone weight: on two views its optimum lay 0.58 mm from the truth
    against 0.27 mm with them), without random starts. With ``full_detector`` (or an estimated
    blur) the levels those options add follow it, as in the registration. What the level fits
    at its start (maps, scatter veil, bone weight, σ) is fitted at the truth here, where the
    registration fits it where its previous level ended: this optimum is that of the objective
    at its most favourable fit, and its score is not on the registration's scale.
    """
    from regkit.registration import Register2D3DOptions, register_2d3d

    opts = Register2D3DOptions(**(options or {}))
    last = dataclasses.replace(opts, levels=(_STAY, opts.levels[-1]), starts=0)
    t0 = time.perf_counter()
    result = register_2d3d(ct, case.true, case.images, seed=case.index, options=last,
                           backend=backend)
    return {"cameras": list(result.cameras), "seconds": time.perf_counter() - t0,
            "final_score": float(result.final_score), "metric": result.metric}


def _nanodrr_bench() -> Any:
    """``test_bench_2d3d``, whose nanodrr runner this reuses (it needs a C-arm like this one's)."""
    import test_bench_2d3d as bench

    if (bench.SIZE, bench.PIXEL_MM, bench.SDD_MM) != (SIZE, PIXEL_MM, SDD_MM):
        raise RuntimeError("test_bench_2d3d's nanodrr runner assumes a detector of "
                           f"{bench.SIZE}² × {bench.PIXEL_MM} mm at SDD {bench.SDD_MM} mm, not "
                           f"{SIZE}² × {PIXEL_MM} mm at {SDD_MM} mm")
    return bench


def nanodrr_setup() -> dict[str, Any]:
    """The nanodrr runner's settings, for the results' ``setup``."""
    from importlib.metadata import version

    bench = _nanodrr_bench()
    return {"version": version("nanodrr"), "runner": "test_bench_2d3d._nanodrr_register",
            "iterations": bench.NANODRR_ITERATIONS, "detector": SIZE // 2,
            "n_samples": bench.NANODRR_SAMPLES, "torch_threads": bench.NANODRR_THREADS,
            "subject": bench.NANODRR_MU, "metric": "GradientNormalizedCrossCorrelation2d",
            "optimizer": "Adam, lr 1e-2 rotation, 1e0 translation; best-loss pose kept"}


def register_nanodrr(subject: Any, case: Case) -> dict[str, Any]:
    """The nanodrr 0.1.7 gradient registration from the case's start, timed around the loop."""
    import torch

    bench = _nanodrr_bench()
    (start,), (image,) = case.start, case.images
    previous = torch.get_num_threads()
    torch.set_num_threads(bench.NANODRR_THREADS)
    try:
        t0 = time.perf_counter()
        camera_from_world, loss = bench._nanodrr_register(subject, start, image)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)
    return {"cameras": [start.with_pose(camera_from_world)], "seconds": seconds,
            "evaluations": bench.NANODRR_ITERATIONS,
            "metric": "nanodrr GradientNormalizedCrossCorrelation2d",
            "final_score": -float(loss), "levels": [], "params": []}


# ------------------------------------------------------------------------------------ report


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Median / p90 / worst mTRE, success rates, median split, mPD and seconds."""
    done = [c for c in cases if "mtre_mm" in c]
    if not done:
        return {"cases": 0, "failed": len(cases)}
    t = np.array([c["mtre_mm"] for c in done])
    out: dict[str, Any] = {
        "cases": len(done), "failed": len(cases) - len(done),
        "mtre_median_mm": float(np.median(t)), "mtre_p90_mm": float(np.percentile(t, 90)),
        "mtre_max_mm": float(t.max()),
    }
    for threshold in THRESHOLDS_MM:
        out[f"under_{threshold:g}mm"] = float(np.mean(t < threshold))
    for key in ("depth_mm", "inplane_mm", "mpd_mm", "rotation_error_deg", "centre_shift_mm",
                "seconds", "start_mtre_mm"):
        out[f"{key}_median"] = float(np.median([c[key] for c in done]))
    if done[0].get("seconds_reported") is not None:
        out["seconds_reported_median"] = float(np.median([c["seconds_reported"]
                                                          for c in done]))
    diag = [c["diagnose"] for c in done if "diagnose" in c]
    if diag:
        out["diagnose"] = {
            "polish_mtre_median_mm": float(np.median([d["mtre_mm"] for d in diag])),
            "polish_depth_median_mm": float(np.median([d["depth_mm"] for d in diag])),
            "polish_inplane_median_mm": float(np.median([d["inplane_mm"] for d in diag])),
            "search_deficit_positive": int(sum(d["search_deficit"] > 0 for d in diag)),
            "cases": len(diag)}
    return out


def _case_line(c: dict[str, Any]) -> str:
    return (f"case {c['case']:3d}: start {c['start_mtre_mm']:6.1f} mm -> mTRE "
            f"{c['mtre_mm']:7.3f} mm (depth {c['depth_mm']:.3f}, in-plane "
            f"{c['inplane_mm']:.3f}; mPD {c['mpd_mm']:.3f} mm; {c['rotation_error_deg']:.3f} deg"
            f") in {c['seconds']:5.2f} s, {c['evaluations']} evals"
            + (f"\n          {_level_text(c['levels'])}" if c["levels"] else ""))


def _summary_lines(s: dict[str, Any]) -> str:
    if not s.get("cases"):
        return f"no case finished ({s.get('failed', 0)} failed)"
    lines = [f"{s['cases']} cases ({s['failed']} failed): mTRE median {s['mtre_median_mm']:.3f}"
             f" mm, p90 {s['mtre_p90_mm']:.3f}, max {s['mtre_max_mm']:.3f}; under 1 mm "
             f"{s['under_1mm']:.0%}, 2 mm {s['under_2mm']:.0%}, 10 mm {s['under_10mm']:.0%}",
             f"median depth {s['depth_mm_median']:.3f} mm, in-plane {s['inplane_mm_median']:.3f}"
             f" mm, mPD {s['mpd_mm_median']:.3f} mm; median time {s['seconds_median']:.2f} s"]
    if "seconds_reported_median" in s:
        lines[-1] += f" (register_2d3d's own: {s['seconds_reported_median']:.2f} s)"
    if "diagnose" in s:
        d = s["diagnose"]
        lines.append(f"polish from truth: median mTRE {d['polish_mtre_median_mm']:.3f} mm "
                     f"(depth {d['polish_depth_median_mm']:.3f}, in-plane "
                     f"{d['polish_inplane_median_mm']:.3f}); the search stopped short of the "
                     f"optimum near the truth in {d['search_deficit_positive']}/{d['cases']}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=14, help="number of cases (default 14)")
    p.add_argument("--start", type=int, default=0, help="first case index (default 0)")
    p.add_argument("--mode", choices=sorted(MODES), default="single")
    p.add_argument("--method", choices=METHODS, default="regkit",
                   help="regkit's register_2d3d (default) or nanodrr 0.1.7's gradient "
                        "registration (single view only)")
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--options", default=None,
                   help="register_2d3d options as a JSON object (or @file); 'levels' is a "
                        "list of LevelOptions objects")
    p.add_argument("--forward", choices=("poly", "bone15"), default="poly",
                   help="radiograph model (default poly)")
    p.add_argument("--forward-options", default=None,
                   help="PolyOptions fields as a JSON object (poly only)")
    p.add_argument("--whole-process", action="store_true",
                   help="time `python -m regkit.cli.main register-2d3d` on files instead")
    p.add_argument("--cli-args", default="",
                   help="with --whole-process: more register-2d3d arguments, one string "
                        "(e.g. --cli-args='--detector-blur estimate')")
    p.add_argument("--diagnose", action="store_true",
                   help="also run the last level from the true pose (objective bias)")
    p.add_argument("--backend", default=None,
                   help="renderer backend (default regkit's); with --method nanodrr it only "
                        "renders the radiographs")
    p.add_argument("--ct", type=Path, default=CT_PATH)
    return p


def _cli_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """``--cli-args`` split as a shell would, or a parser error naming what is wrong."""
    try:
        cli_args = shlex.split(args.cli_args)
    except ValueError as err:
        parser.error(f"--cli-args: {err}")
    if cli_args and not args.whole_process:
        parser.error("--cli-args go to the command line: use them with --whole-process")
    reserved = {"--volume", "--camera", "--image", "--out", "--seed", "--backend"}
    taken = sorted({a.split("=")[0] for a in cli_args} & reserved)
    if taken:
        parser.error(f"--cli-args may not set {', '.join(taken)}: the benchmark sets them")
    if cli_args and args.diagnose:
        parser.error("--diagnose polishes with register_2d3d's defaults; with --cli-args it "
                     "would compare another objective")
    return cli_args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cases, print a line each and a summary, write the JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cases < 1 or args.start < 0:
        parser.error("--cases must be >= 1 and --start >= 0")
    if args.whole_process and args.options is not None:
        parser.error("--whole-process runs the command line, which takes no registration "
                     "options; leave --options out")
    cli_args = _cli_args(parser, args)
    if args.method == "nanodrr":
        if len(MODES[args.mode]["views"]) != 1:
            parser.error(f"--method nanodrr registers a single view; --mode {args.mode} has "
                         f"{len(MODES[args.mode]['views'])} (use --mode single or wide)")
        refused = [flag for flag, on in (("--options", args.options is not None),
                                         ("--whole-process", args.whole_process),
                                         ("--diagnose", args.diagnose)) if on]
        if refused:
            parser.error(f"{', '.join(refused)} drive regkit's register_2d3d; --method nanodrr "
                         "runs test_bench_2d3d's fixed nanodrr settings, so leave them out")
    if not args.ct.exists():
        parser.error(f"no CT at {args.ct}")
    options = parse_options(args.options)
    forward_options = json.loads(args.forward_options) if args.forward_options else None
    mode = MODES[args.mode]

    t_load = time.perf_counter()
    ct = load_nifti(args.ct)
    points = target_points(ct)
    cams = true_cameras(ct, mode["views"])
    model = make_forward_model(args.forward, ct, backend=args.backend, options=forward_options)
    subject = None
    if args.method == "nanodrr":
        subject = _nanodrr_bench()._nanodrr_subject(args.ct)
    setup_seconds = time.perf_counter() - t_load
    from regkit import __version__

    payload: dict[str, Any] = {
        "setup": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "method": args.method, "mode": args.mode, **mode,
            "cases": list(range(args.start, args.start + args.cases)),
            "case_seed": f"default_rng({CASE_SEED} + i)", "registration_seed": "i",
            "ct": str(args.ct), "size": SIZE, "pixel_mm": PIXEL_MM, "sdd_mm": SDD_MM,
            "sid_mm": SID_MM, "targets": {"hu_above": BONE_HU, "points": len(points),
                                          "seed": POINTS_SEED},
            "forward": model.describe(), "options": args.options,
            "whole_process": args.whole_process, "cli_args": args.cli_args,
            "diagnose": args.diagnose,
            "backend": args.backend, "regkit": __version__,
            "setup_seconds": round(setup_seconds, 2),
            **({"nanodrr": nanodrr_setup()} if args.method == "nanodrr" else {}),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": list(os.getloadavg())},
        "cases": [],
    }
    print(f"{args.method}, {args.mode}, forward {args.forward}, {len(points)} targets, setup "
          f"{setup_seconds:.1f} s", flush=True)
    records: list[dict[str, Any]] = payload["cases"]
    try:
        for i in range(args.start, args.start + args.cases):
            case = make_case(i, ct, cams, model, mode)
            start = pose_errors(case.start, case.true, points, ct.center_world, mode["views"])
            record: dict[str, Any] = {"case": i, "start_angle_deg": case.angle_deg,
                                      "start_shift_mm": case.shift_mm,
                                      "start_mtre_mm": start["mtre_mm"],
                                      "start_depth_mm": start["depth_mm"],
                                      "start_inplane_mm": start["inplane_mm"],
                                      "load_average_1min": os.getloadavg()[0]}
            try:
                if subject is not None:
                    run = register_nanodrr(subject, case)
                elif args.whole_process:
                    run = register_whole_process(args.ct, case, args.backend, cli_args)
                else:
                    run = register_in_process(ct, case, options, args.backend)
            except Exception as err:  # one failed case must not lose the others
                record["error"] = f"{type(err).__name__}: {err}"
                records.append(record)
                print(f"case {i:3d}: FAILED {record['error']}", flush=True)
                _write_json(args.out, payload)
                continue
            est = run.pop("cameras")
            record.update(pose_errors(est, case.true, points, ct.center_world, mode["views"]))
            record.update(run)
            print(_case_line(record), flush=True)
            if args.diagnose:
                polish = polish_from_truth(ct, case, options, args.backend)
                p_err = pose_errors(polish.pop("cameras"), case.true, points, ct.center_world,
                                    mode["views"])
                from regkit.metrics import get_metric

                sign = 1.0 if get_metric(polish["metric"]).higher_is_better else -1.0
                record["diagnose"] = {
                    **polish, **{k: p_err[k] for k in ("mtre_mm", "depth_mm", "inplane_mm",
                                                       "mpd_mm", "views")},
                    "search_deficit": sign * (polish["final_score"] - record["final_score"])}
                d = record["diagnose"]
                print(f"          polish from truth: mTRE {d['mtre_mm']:.3f} mm (depth "
                      f"{d['depth_mm']:.3f}, in-plane {d['inplane_mm']:.3f}), score "
                      f"{d['final_score']:.5f} vs the registration's "
                      f"{record['final_score']:.5f} (deficit {d['search_deficit']:+.2e}), "
                      f"{d['seconds']:.1f} s", flush=True)
            records.append(record)
            payload["summary"] = summarise(records)
            _write_json(args.out, payload)
    finally:
        model.close()
    payload["summary"] = summarise(records)
    payload["machine"]["load_average_at_end"] = list(os.getloadavg())
    _write_json(args.out, payload)
    print(_summary_lines(payload["summary"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
