"""2D–3D registration benchmark: regkit's CMA-ES pyramid against nanodrr's gradient registration.

Run: ``.venv/bin/pytest benchmarks/test_bench_2d3d.py --benchmark-only -p no:cacheprovider``
(``-s`` for the per-case lines; the tables are printed either way). ``REGKIT_BENCH_CASES`` sets
the number of cases (default 30), ``REGKIT_BENCH_NANODRR_CASES`` how many of them nanodrr runs
(default 5: it takes about a minute each). Needs the real CT at
``/work/shared/data/chest_ct/`` (skipped when absent); nanodrr 0.1.7 comes with the ``bench``
extra (its test is skipped when it is not installed).

Cases (seeded, ``numpy.random.default_rng(1000 + i)``): an AP view of the whole chest CT (C-arm
SDD 1020 mm, SID 850 mm, isocentre at the CT's centre, 256² pixels of 1.6 mm). The radiograph
renders the CT at that pose with another HU-to-μ mapping than the registration's (bone weighs
1.5×: μ = 0.02 (1 + 1.5 HU/1000) above 0 HU), then adds 5 % scatter (the transmitted image
blurred by σ = 20 px), Poisson noise (10⁴ photons per pixel) and a Gaussian blur (σ = 1 px),
back to line integrals. The start is the true pose turned about the CT's centre by an angle
uniform in [0°, 15°] about a random axis and shifted by a length uniform in [0, 30] mm in a
random direction.

mTRE (docs/CONVENTIONS.md): the mean over 20 000 bone voxels of ‖est · x − true · x‖ in camera
coordinates; success: mTRE under 1, 2 and 10 mm. Capture range: success at 2 mm by bins of the
initial mTRE.

* regkit: :func:`register_2d3d` with its defaults (gncc, seed = case index). Wall time of the
  call, pyramid building included.
* batching: at an equal budget, level 0's populations scored in one batched render against one
  candidate per call (``max_batch=1``), and whole registrations both ways.
* nanodrr 0.1.7: its ``Registration`` module (perturbation about the isocentre, so(3) log +
  translation), ``GradientNormalizedCrossCorrelation2d`` (global, σ = 1), ``torch.optim.Adam``
  (lr 1e-2 on the rotation, 1e0 on the translation), 150 iterations on a 128² detector (the
  radiograph binned 2 × 2), 300 samples per ray, torch CPU with 2 threads; the best-loss pose is
  kept. Subject with ``mu_water=0.02, mu_bone=0.04, hu_bone=1000`` (exactly regkit's HU → μ).

Results go to ``benchmarks/results/bench_2d3d.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from regkit.geometry.camera import Camera
from regkit.geometry.carm import camera_from_carm
from regkit.geometry.transforms import rigid_from_params
from regkit.io.nifti import load_nifti
from regkit.registration.radiograph_registration import (
    _LevelBuilder,
    mean_target_error_2d3d,
    register_2d3d,
)
from regkit.render.base import Views
from regkit.render.select import make_renderer
from regkit.volume import Volume

CT = Path("/work/shared/data/chest_ct/ct.nii.gz")
BONES = Path("/work/shared/data/chest_ct/bones.nii.gz")
RESULTS = Path(__file__).parent / "results" / "bench_2d3d.json"
N_CASES = int(os.environ.get("REGKIT_BENCH_CASES", "30"))
N_NANODRR = int(os.environ.get("REGKIT_BENCH_NANODRR_CASES", "5"))
SIZE = 256
PIXEL_MM = 1.6
SDD_MM, SID_MM = 1020.0, 850.0
MAX_ANGLE_DEG, MAX_SHIFT_MM = 15.0, 30.0
BONE_BOOST = 1.5
PHOTONS = 1e4
THRESHOLDS_MM = (1.0, 2.0, 10.0)
CAPTURE_BINS_MM = (0.0, 10.0, 20.0, 30.0, 40.0, 1e9)
TARGET_SECONDS, TARGET_SUCCESS = 10.0, 0.95
NANODRR_ITERATIONS, NANODRR_SAMPLES, NANODRR_THREADS = 150, 300, 2
NANODRR_MU = {"mu_water": 0.02, "mu_bone": 0.04, "hu_bone": 1000}  # regkit's HU -> mu

pytestmark = pytest.mark.skipif(not (CT.exists() and BONES.exists()),
                                reason=f"{CT} and {BONES} are not both here")

_FIGURES: dict[str, Any] = {}


@cache
def _data() -> tuple[Volume, Camera, np.ndarray, Any]:
    """The CT, the true AP camera, 20 000 bone points (world mm) and the radiograph renderer."""
    ct = load_nifti(CT, labels=BONES)
    cam = camera_from_carm(source_to_detector_mm=SDD_MM, source_to_isocenter_mm=SID_MM,
                           pixel_spacing_mm=PIXEL_MM, width=SIZE, height=SIZE,
                           isocenter_world=ct.center_world)
    assert ct.labels is not None
    index = np.argwhere(ct.labels > 0)
    points = ct.index_to_world(index[::max(1, len(index) // 20000)].astype(np.float64))
    hu = ct.data.astype(np.float32)
    mu = np.where(hu > 0, 0.02 * (1 + BONE_BOOST * hu / 1000), 0.02 * (1 + hu / 1000))
    renderer = make_renderer(Volume(mu.clip(0).astype(np.float32), ct.world_from_index,
                                    units="mu"))
    return ct, cam, points, renderer


@cache
def _case(i: int) -> tuple[np.ndarray, Camera, float]:
    """Case ``i``: the degraded radiograph, the perturbed start camera, the start mTRE."""
    ct, cam, points, renderer = _data()
    rng = np.random.default_rng(1000 + i)
    angle = np.radians(rng.uniform(0.0, MAX_ANGLE_DEG))
    axis = rng.normal(size=3)
    shift = rng.uniform(0.0, MAX_SHIFT_MM)
    direction = rng.normal(size=3)
    params = np.r_[axis / np.linalg.norm(axis) * angle,
                   direction / np.linalg.norm(direction) * shift]
    e = np.asarray(rigid_from_params(params, ct.center_world))
    with torch.no_grad():
        line = renderer.drr(Views.from_cameras(cam)).numpy()[0]
    transmitted = np.exp(-line)
    scatter = 0.05 * gaussian_filter(transmitted, 20.0)
    counts = rng.poisson(PHOTONS * (transmitted + scatter))
    image = -np.log(np.maximum(counts, 1) / (PHOTONS * 1.05))
    image = gaussian_filter(image, 1.0).astype(np.float32)
    start = cam.with_pose(cam.camera_from_world @ e)
    return image, start, _mtre(start, cam, points)


def _mtre(est: Camera, true: Camera, points: np.ndarray) -> float:
    return mean_target_error_2d3d(est.camera_from_world, true.camera_from_world, points)


def _summary(tre: list[float], seconds: list[float], start: list[float]) -> dict[str, Any]:
    t, s, s0 = np.asarray(tre), np.asarray(seconds), np.asarray(start)
    out: dict[str, Any] = {
        "cases": len(t),
        "tre_median_mm": float(np.median(t)), "tre_p90_mm": float(np.percentile(t, 90)),
        "tre_max_mm": float(t.max()),
        "seconds_median": float(np.median(s)),
        "seconds_iqr": [float(np.percentile(s, 25)), float(np.percentile(s, 75))],
        "tre_all_mm": np.round(t, 4).tolist(), "seconds_all": np.round(s, 3).tolist(),
        "start_tre_all_mm": np.round(s0, 3).tolist(),
    }
    for threshold in THRESHOLDS_MM:
        out[f"success_{threshold:g}mm"] = float(np.mean(t < threshold))
    capture = []
    for lo, hi in itertools.pairwise(CAPTURE_BINS_MM):
        inside = (s0 >= lo) & (s0 < hi)
        if inside.any():
            capture.append({"start_tre_mm": [lo, hi if hi < 1e8 else None],
                            "cases": int(inside.sum()),
                            "success_2mm": float(np.mean(t[inside] < 2.0))})
    out["capture_range"] = capture
    return out


def _write(capsys: pytest.CaptureFixture[str], table: str) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    _FIGURES["machine"] = {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "load_average_at_write": list(os.getloadavg()), "torch": torch.__version__,
    }
    _FIGURES["setup"] = {
        "size": SIZE, "pixel_mm": PIXEL_MM, "sdd_mm": SDD_MM, "sid_mm": SID_MM,
        "max_angle_deg": MAX_ANGLE_DEG, "max_shift_mm": MAX_SHIFT_MM, "bone_boost": BONE_BOOST,
        "photons": PHOTONS, "scatter": 0.05, "blur_px": 1.0, "cases": N_CASES,
        "command": ".venv/bin/pytest benchmarks/test_bench_2d3d.py --benchmark-only "
                   "-p no:cacheprovider",
    }
    RESULTS.write_text(json.dumps(_FIGURES, indent=2) + "\n")
    with capsys.disabled():
        print("\n" + table)


def _row(name: str, v: dict[str, Any]) -> str:
    return (f"{name:24s} {v['cases']:5d} {v['tre_median_mm']:9.3f} {v['tre_p90_mm']:7.3f} "
            f"{v['success_1mm']:6.0%} {v['success_2mm']:6.0%} {v['success_10mm']:6.0%} "
            f"{v['seconds_median']:7.2f}")


_HEADER = (f"{'method':24s} {'cases':>5s} {'mTRE med':>9s} {'p90':>7s} {'<1mm':>6s} "
           f"{'<2mm':>6s} {'<10mm':>6s} {'s med':>7s}")


# ------------------------------------------------------------------------------------ tests


def test_regkit_2d3d(benchmark: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ct, cam, points, _ = _data()
    tre, seconds, start, load = [], [], [], []
    for i in range(N_CASES):
        image, init, before = _case(i)
        load.append(os.getloadavg()[0])
        t0 = time.perf_counter()
        result = register_2d3d(ct, [init], [image], seed=i)
        seconds.append(time.perf_counter() - t0)
        tre.append(_mtre(result.cameras[0], cam, points))
        start.append(before)
        with capsys.disabled():
            print(f"case {i:2d}: start {before:6.1f} mm -> {tre[-1]:7.3f} mm in "
                  f"{seconds[-1]:5.2f} s ({result.evaluations} evaluations)", flush=True)
    figures = _summary(tre, seconds, start)
    figures["load_average_1min"] = {"median": float(np.median(load)), "max": float(max(load))}
    figures["targets"] = {
        "seconds_median_max": TARGET_SECONDS, "success_2mm_min": TARGET_SUCCESS,
        "met_time": figures["seconds_median"] <= TARGET_SECONDS,
        "met_success": figures["success_2mm"] >= TARGET_SUCCESS}
    _FIGURES["regkit"] = figures
    capture = "; ".join(f"{c['start_tre_mm'][0]:g}-{c['start_tre_mm'][1] or 'inf'} mm: "
                        f"{c['success_2mm']:.0%} of {c['cases']}"
                        for c in figures["capture_range"])
    _write(capsys, "\n".join([_HEADER, _row("regkit (defaults)", figures),
                              f"capture range (success at 2 mm by start mTRE): {capture}"]))
    image, init, _ = _case(0)
    benchmark.pedantic(register_2d3d, args=(ct, [init], [image]), kwargs={"seed": 0},
                       rounds=1, warmup_rounds=0)


def test_batching_gain(benchmark: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Level 0's candidates scored a population per render call against one per call."""
    from regkit.metrics import get_metric
    from regkit.registration.radiograph_registration import (
        DEFAULT_LEVELS,
        Register2D3DOptions,
        _check_images,
    )

    ct = _data()[0]
    image, init, _ = _case(0)
    figures: dict[str, Any] = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as register_2d3d runs by default
    try:
        mu = ct.to_mu()
        imgs = _check_images([image], [init], "line-integral")
        builder = _LevelBuilder(mu, [init], imgs, [None],
                                get_metric("gncc", check_finite=False), None,
                                Register2D3DOptions(), None)
        rng = np.random.default_rng(0)
        budget = 320
        params = rng.normal(size=(budget, 6)) * np.array([0.1, 0.1, 0.1, 10.0, 10.0, 10.0])
        for li, level_opts in enumerate(DEFAULT_LEVELS[:2]):
            level = builder.build(level_opts)
            level.pivot = np.asarray(mu.center_world, dtype=np.float64)
            level.losses(params[:2])  # warm the renderer
            for popsize in (10, 16, 32):
                t0 = time.perf_counter()
                batched = np.concatenate([level.losses(params[i:i + popsize])
                                          for i in range(0, budget, popsize)])
                t_batched = time.perf_counter() - t0
                t0 = time.perf_counter()
                single = np.concatenate([level.losses(params[i:i + 1])
                                         for i in range(budget)])
                t_single = time.perf_counter() - t0
                np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
                figures[f"level {li} ({level.groups[0].width}²) popsize {popsize}"] = {
                    "candidates": budget,
                    "ms_per_candidate_batched": 1e3 * t_batched / budget,
                    "ms_per_candidate_one_at_a_time": 1e3 * t_single / budget,
                    "speed_up": t_single / t_batched}
        level = builder.build(DEFAULT_LEVELS[0])
        level.pivot = np.asarray(mu.center_world, dtype=np.float64)
        benchmark(level.losses, params[:16])
    finally:
        torch.set_num_threads(previous)
    whole: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    for i in range(min(N_CASES, 4)):
        image, init, _ = _case(i)
        a = register_2d3d(ct, [init], [image], seed=i)
        b = register_2d3d(ct, [init], [image], seed=i, options={"max_batch": 1})
        whole["batched"].append(a.seconds)
        whole["one_at_a_time"].append(b.seconds)
    figures["whole registration (defaults)"] = {
        "cases": len(whole["batched"]),
        "seconds_median_batched": float(np.median(whole["batched"])),
        "seconds_median_one_at_a_time": float(np.median(whole["one_at_a_time"]))}
    _FIGURES["batching"] = figures
    rows = [f"{k}: {v['ms_per_candidate_batched']:.2f} ms/candidate batched, "
            f"{v['ms_per_candidate_one_at_a_time']:.2f} one at a time ({v['speed_up']:.2f}x)"
            for k, v in figures.items() if "speed_up" in v]
    w = figures["whole registration (defaults)"]
    rows.append(f"whole registrations: {w['seconds_median_batched']:.2f} s batched, "
                f"{w['seconds_median_one_at_a_time']:.2f} s one at a time (median of "
                f"{w['cases']})")
    _write(capsys, "\n".join(rows))


def _nanodrr_subject(path: Path) -> Any:
    """The CT as a nanodrr ``Subject`` with regkit's HU → μ mapping."""
    from nanodrr.data import Subject

    # NANODRR_MU's keys go to from_filepath's **mu, never to its named parameters (the ignore
    # is unused where nanodrr, a benchmark-only extra, is not installed)
    return Subject.from_filepath(str(path), **NANODRR_MU)  # type: ignore[arg-type, unused-ignore]


def _nanodrr_register(subject: Any, start: Camera, image: np.ndarray) -> tuple[np.ndarray, float]:
    """The nanodrr 0.1.7 peer: Registration + GNCC + Adam on a 128² detector; the best pose found.

    ``start`` is a ``SIZE``² camera of ``PIXEL_MM`` pixels at ``SDD_MM``, ``image`` its ``SIZE``²
    line integrals. Returns the best pose's camera_from_world (4 × 4) and its loss (−GNCC).
    """
    from nanodrr.drr import DRR
    from nanodrr.metrics import GradientNormalizedCrossCorrelation2d
    from nanodrr.registration import Registration

    half = SIZE // 2
    drr = DRR.from_carm_intrinsics(SDD_MM, PIXEL_MM * 2, PIXEL_MM * 2, 0.0, 0.0, half, half,
                                   dtype=torch.float32)
    rt_inv = torch.from_numpy(np.linalg.inv(start.camera_from_world)[None]).float()
    reg = Registration(subject, rt_inv, drr.k_inv, drr.sdd, half, half)
    target = image[:2 * half, :2 * half].reshape(half, 2, half, 2).mean(axis=(1, 3))
    target_t = torch.from_numpy(target.astype(np.float32))[None, None]
    metric = GradientNormalizedCrossCorrelation2d(patch_size=None, sigma=1.0)
    opt = torch.optim.Adam([{"params": [reg._rot], "lr": 1e-2},
                            {"params": [reg._xyz], "lr": 1e0}])
    best, best_pose = float("inf"), reg.pose.detach().clone()
    for _ in range(NANODRR_ITERATIONS):
        opt.zero_grad()
        img = reg(n_samples=NANODRR_SAMPLES, backend="torch")
        loss = -metric(img, target_t).mean()
        if float(loss) < best:
            best, best_pose = float(loss), reg.pose.detach().clone()
        loss.backward()
        opt.step()
    camera_from_world = np.linalg.inv(best_pose[0].double().numpy())
    return camera_from_world, best


def test_nanodrr_gradient_registration(benchmark: Any,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("nanodrr", reason="nanodrr is not installed (pip install "
                        "nanodrr==0.1.7)")
    _, cam, points, _ = _data()
    subject = _nanodrr_subject(CT)
    previous = torch.get_num_threads()
    torch.set_num_threads(NANODRR_THREADS)
    tre, seconds, start = [], [], []
    try:
        for i in range(min(N_NANODRR, N_CASES)):
            image, init, before = _case(i)
            t0 = time.perf_counter()
            pose, _ = _nanodrr_register(subject, init, image)
            seconds.append(time.perf_counter() - t0)
            tre.append(mean_target_error_2d3d(pose, cam.camera_from_world, points))
            start.append(before)
            with capsys.disabled():
                print(f"nanodrr case {i:2d}: start {before:6.1f} mm -> {tre[-1]:7.3f} mm in "
                      f"{seconds[-1]:6.1f} s", flush=True)
    finally:
        torch.set_num_threads(previous)
    figures = _summary(tre, seconds, start)
    _FIGURES["nanodrr"] = {**figures, "version": "0.1.7", "iterations": NANODRR_ITERATIONS,
                           "detector": SIZE // 2, "n_samples": NANODRR_SAMPLES}
    rows = [_HEADER, _row("nanodrr 0.1.7 Adam", figures)]
    if "regkit" in _FIGURES:
        rows.insert(1, _row("regkit (defaults)", _FIGURES["regkit"]))
    _write(capsys, "\n".join(rows))
    benchmark.pedantic(lambda: None, rounds=1)
