"""3D–3D CT registration benchmark: regkit against itk-elastix and SimpleITK on the same pairs.

Run: ``.venv/bin/pytest benchmarks/test_bench_3d3d.py --benchmark-only`` (add ``-s`` for the
per-pair lines; the tables are printed either way). ``REGKIT_BENCH_PAIRS`` sets the number of
pairs per scenario (default 30). Needs the real CT at ``/work/shared/data/chest_ct/ct.nii.gz``
(skipped when absent); the peers need ``pip install itk-elastix SimpleITK`` (each is skipped
when absent).

Pairs: the fixed image is the whole chest CT (512 × 512 × 133, 0.70 × 0.70 × 2.5 mm) resampled to
2.81 mm (128 × 128 × 119). The moving image shows the same CT under a known rigid transform,
sampled trilinearly from the full-resolution CT on another grid (RAS axes where the CT is LAS,
3.0 × 2.6 × 3.2 mm, 110 × 116 × 72 voxels: 330 × 300 × 230 mm, so it sees about 70 % of the
fixed image's extent along z, centred within ±15 mm of the fixed centre), with Gaussian noise
(σ = 20 HU). The transform turns about the fixed image's centre by an angle drawn uniformly in
[0°, 60°] about a random axis, then shifts by a length drawn uniformly in [0, 40] mm in a random
direction. "Cross-modality" remaps the moving intensities non-monotonically (air dark, fat
brightest, bone darker than soft tissue) and adds σ = 10 noise.

mTRE: the mean over 40 000 bone voxels (labels of ``bones.nii.gz``) inside the moving field of
view of ‖est · x − true · x‖, x in the moving world (docs/CONVENTIONS.md); success: mTRE < 1 mm
(rates at 2 and 10 mm too). Every method registers the same pair one after another, so that the
machine's load (shared, noted in the results) weighs on all of them alike.

* regkit: :func:`register_3d3d` with its defaults (ncc for the same modality; nmi and mattes_mi
  across), seed = the pair's index. Wall time of the call, pyramid building included.
* itk-elastix: ``GetDefaultParameterMap("rigid")`` as it is (4 levels, AdvancedMattesMI, ASGD,
  2048 random samples, 256 iterations per level, identity start, result image written), and the
  same map with ``WriteResultImage false`` (registration only); Euler result converted with ITK's
  own Euler3DTransform. Wall time of ``elastix_registration_method``.
* SimpleITK: ``ImageRegistrationMethod`` with Mattes MI (50 bins, 1 % random samples),
  ``RegularStepGradientDescent`` (learning rate 1, 200 iterations), physical-shift scales, an
  ``Euler3DTransform`` started by ``CenteredTransformInitializer(GEOMETRY)``, shrink factors
  4/2/1 with smoothing 2/1/0 voxels.

Results go to ``benchmarks/results/bench_3d3d.json``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from regkit.geometry.frames import LPS_FROM_RAS
from regkit.geometry.transforms import rotvec_to_matrix
from regkit.io.nifti import load_labels, load_nifti
from regkit.registration.volume_registration import (
    _build_level,
    _Level,
    _rigid_matrices,
    mean_target_error,
    register_3d3d,
)
from regkit.volume import Volume

CT = Path("/work/shared/data/chest_ct/ct.nii.gz")
BONES = Path("/work/shared/data/chest_ct/bones.nii.gz")
RESULTS = Path(__file__).parent / "results" / "bench_3d3d.json"
N_PAIRS = int(os.environ.get("REGKIT_BENCH_PAIRS", "30"))
FIXED_SPACING_MM = 360.0 / 128.0
MOVING_SPACING_MM = np.array([3.0, 2.6, 3.2])
MOVING_EXTENT_MM = np.array([330.0, 300.0, 230.0])
MAX_ANGLE_DEG = 60.0
MAX_SHIFT_MM = 40.0
REMAP_HU = [-2048.0, -1024.0, -500.0, -100.0, 40.0, 300.0, 1500.0, 3071.0]
REMAP_TO = [0.0, 0.0, 50.0, 900.0, 500.0, 150.0, 250.0, 300.0]
THRESHOLDS_MM = (1.0, 2.0, 10.0)

pytestmark = pytest.mark.skipif(not CT.exists(), reason=f"{CT} is not here")

_FIGURES: dict[str, Any] = {}


# ------------------------------------------------------------------------------------ data


@cache
def _data() -> tuple[Volume, Volume, np.ndarray]:
    """The full CT, the 128³ fixed image, and 40 000 bone voxel centres (fixed world)."""
    ct = load_nifti(CT)
    bones = load_labels(BONES, like=ct)
    index = np.argwhere(bones > 0)
    pick = np.random.default_rng(0).choice(len(index), 40000, replace=False)
    return ct, ct.resample(FIXED_SPACING_MM), ct.index_to_world(index[pick].astype(np.float64))


def _truth(rng: np.random.Generator, centre: np.ndarray) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(0.0, MAX_ANGLE_DEG))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    m = np.eye(4)
    m[:3, :3] = rotvec_to_matrix(torch.from_numpy(axis * angle)).numpy()
    m[:3, 3] = centre - m[:3, :3] @ centre + direction * rng.uniform(0.0, MAX_SHIFT_MM)
    return m


@cache
def _pair(seed: int, remap: bool) -> tuple[Volume, np.ndarray, np.ndarray]:
    """Moving image, true fixed_from_moving, bone targets in the moving world."""
    ct, fixed, bones = _data()
    rng = np.random.default_rng(seed)
    centre = fixed.center_world
    true = _truth(rng, centre)
    shape = np.ceil(MOVING_EXTENT_MM / MOVING_SPACING_MM).astype(int)
    grid = np.diag([*MOVING_SPACING_MM, 1.0])
    middle = np.linalg.inv(true) @ np.append(centre + rng.uniform(-15, 15, 3), 1.0)
    grid[:3, 3] = middle[:3] - MOVING_SPACING_MM * (shape - 1) / 2.0
    data = ct.resample_to_grid(tuple(int(n) for n in shape), true @ grid, fill=-1024.0).data
    noise = 20.0
    units = "HU"
    if remap:
        data = np.interp(data, REMAP_HU, REMAP_TO)
        noise, units = 10.0, "other"
    data = (data + rng.normal(0.0, noise, data.shape)).astype(np.float32)
    moving = Volume(data, grid, units=units)  # type: ignore[arg-type]
    points = (np.linalg.inv(true) @ np.c_[bones, np.ones(len(bones))].T).T[:, :3]
    ijk = moving.world_to_index(points)
    inside = np.all((ijk >= 0) & (ijk <= shape - 1), axis=1)
    return moving, true, points[inside]


# ---------------------------------------------------------------------------------- methods


def _regkit(metric: str) -> Callable[[Volume, Volume, int], np.ndarray]:
    def run(fixed: Volume, moving: Volume, seed: int) -> np.ndarray:
        return register_3d3d(fixed, moving, metric=metric, seed=seed).fixed_from_moving
    return run


def _to_itk(volume: Volume) -> Any:
    import itk

    affine = LPS_FROM_RAS @ volume.world_from_index
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = itk.GetImageFromArray(np.ascontiguousarray(
        np.asarray(volume.data, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(affine[:3, :3] / spacing)))
    return image


def _to_sitk(volume: Volume) -> Any:
    import SimpleITK as sitk

    affine = LPS_FROM_RAS @ volume.world_from_index
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(
        np.asarray(volume.data, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((affine[:3, :3] / spacing).ravel().tolist())
    return image


def _fixed_from_moving(moving_from_fixed_lps: Callable[[list[float]], Any]) -> np.ndarray:
    """Our fixed_from_moving (RAS) from a function mapping fixed LPS points to moving LPS."""
    points = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], dtype=np.float64)
    mapped = np.array([moving_from_fixed_lps(p.tolist()) for p in points])
    m = np.eye(4)
    m[:3, :3] = (mapped[1:] - mapped[0]).T / 100.0
    m[:3, 3] = mapped[0]
    return LPS_FROM_RAS @ np.linalg.inv(m) @ LPS_FROM_RAS


def _elastix(write_image: bool) -> Callable[[Volume, Volume, int], np.ndarray] | None:
    try:
        import itk
        import SimpleITK as sitk
    except ImportError:
        return None
    parameters = itk.ParameterObject.New()
    rigid = parameters.GetDefaultParameterMap("rigid")
    if not write_image:
        rigid["WriteResultImage"] = ["false"]
    parameters.AddParameterMap(rigid)

    def run(fixed: Volume, moving: Volume, _seed: int) -> np.ndarray:
        _, found = itk.elastix_registration_method(_to_itk(fixed), _to_itk(moving),
                                                   parameter_object=parameters,
                                                   log_to_console=False)
        p = [float(v) for v in found.GetParameter(0, "TransformParameters")]
        c = [float(v) for v in found.GetParameter(0, "CenterOfRotationPoint")]
        euler = sitk.Euler3DTransform(c, p[0], p[1], p[2], p[3:6])  # ITK's own convention
        return _fixed_from_moving(euler.TransformPoint)
    return run


def _simpleitk() -> Callable[[Volume, Volume, int], np.ndarray] | None:
    try:
        import SimpleITK as sitk
    except ImportError:
        return None

    def run(fixed: Volume, moving: Volume, seed: int) -> np.ndarray:
        f, m = _to_sitk(fixed), _to_sitk(moving)
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.01, seed)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=200,
            gradientMagnitudeTolerance=1e-8)
        method.SetOptimizerScalesFromPhysicalShift()
        start = sitk.CenteredTransformInitializer(
            f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)
        method.SetInitialTransform(start, inPlace=False)
        method.SetShrinkFactorsPerLevel([4, 2, 1])
        method.SetSmoothingSigmasPerLevel([2, 1, 0])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        found = method.Execute(f, m)
        return _fixed_from_moving(found.TransformPoint)
    return run


# ------------------------------------------------------------------------------ bookkeeping


def _summary(tre: list[float], seconds: list[float]) -> dict[str, Any]:
    t = np.asarray(tre)
    s = np.asarray(seconds)
    out: dict[str, Any] = {
        "pairs": len(t),
        "tre_median_mm": float(np.median(t)),
        "tre_p90_mm": float(np.percentile(t, 90)),
        "tre_max_mm": float(t.max()),
        "seconds_median": float(np.median(s)),
        "seconds_iqr": [float(np.percentile(s, 25)), float(np.percentile(s, 75))],
        "seconds_total": float(s.sum()),
    }
    for threshold in THRESHOLDS_MM:
        out[f"success_{threshold:g}mm"] = float(np.mean(t < threshold))
    return out


def _write(capsys: pytest.CaptureFixture[str], table: str) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    _FIGURES["machine"] = {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "load_average_at_write": list(os.getloadavg()), "torch": torch.__version__,
        "torch_threads_outside_regkit": torch.get_num_threads(),
    }
    RESULTS.write_text(json.dumps(_FIGURES, indent=2) + "\n")
    with capsys.disabled():
        print("\n" + table)


def _scenario(name: str, remap: bool, methods: dict[str, Any],
              capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    _, fixed, _ = _data()
    tre: dict[str, list[float]] = {k: [] for k in methods}
    seconds: dict[str, list[float]] = {k: [] for k in methods}
    start: list[float] = []
    load = []
    for seed in range(N_PAIRS):
        moving, true, points = _pair(seed, remap)
        start.append(mean_target_error(np.eye(4), true, points))
        load.append(os.getloadavg()[0])
        for label, method in methods.items():
            t0 = time.perf_counter()
            found = method(fixed, moving, seed)
            seconds[label].append(time.perf_counter() - t0)
            tre[label].append(mean_target_error(found, true, points))
        line = "  ".join(f"{k} {tre[k][-1]:7.3f} mm {seconds[k][-1]:5.2f} s" for k in methods)
        with capsys.disabled():
            print(f"{name} pair {seed:2d}: start {start[-1]:6.1f} mm | {line}", flush=True)
    s = np.asarray(start)
    figures = {
        "start_tre_mm": {"median": float(np.median(s)), "p10": float(np.percentile(s, 10)),
                         "p90": float(np.percentile(s, 90)), "min": float(s.min()),
                         "max": float(s.max()), "all": s.round(2).tolist()},
        "load_average_1min": {"median": float(np.median(load)), "max": float(max(load))},
        "methods": {k: {**_summary(tre[k], seconds[k]),
                        "tre_all_mm": np.round(tre[k], 4).tolist()} for k in methods},
    }
    _FIGURES[name] = figures
    rows = [f"{name}: {N_PAIRS} pairs, start mTRE median {np.median(s):.1f} mm "
            f"(p10 {np.percentile(s, 10):.1f}, p90 {np.percentile(s, 90):.1f}, max {s.max():.1f}),"
            f" load {np.median(load):.1f}",
            f"{'method':28s} {'mTRE med':>9s} {'p90':>7s} {'max':>8s} {'<1mm':>6s} {'<2mm':>6s}"
            f" {'<10mm':>6s} {'s med':>6s} {'s IQR':>12s}"]
    for k, v in figures["methods"].items():
        rows.append(f"{k:28s} {v['tre_median_mm']:9.3f} {v['tre_p90_mm']:7.3f} "
                    f"{v['tre_max_mm']:8.2f} {v['success_1mm']:6.0%} {v['success_2mm']:6.0%} "
                    f"{v['success_10mm']:6.0%} {v['seconds_median']:6.2f} "
                    f"{v['seconds_iqr'][0]:5.2f}-{v['seconds_iqr'][1]:5.2f}")
    _write(capsys, "\n".join(rows))
    return figures


def _peers() -> dict[str, Any]:
    peers = {"elastix default rigid": _elastix(True),
             "elastix rigid, no result image": _elastix(False),
             "SimpleITK MattesMI+RSGD": _simpleitk()}
    return {k: v for k, v in peers.items() if v is not None}


# ------------------------------------------------------------------------------------ tests


def test_same_modality(benchmark: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, fixed, _ = _data()
    methods = {"regkit ncc": _regkit("ncc"), **_peers()}
    figures = _scenario("same_modality", False, methods, capsys)
    moving, _, _ = _pair(0, False)
    benchmark.pedantic(register_3d3d, args=(fixed, moving), kwargs={"seed": 0}, rounds=5,
                       warmup_rounds=1)
    ours = figures["methods"]["regkit ncc"]
    assert ours["tre_median_mm"] < 0.5
    assert ours["success_1mm"] >= 0.95


def test_cross_modality(benchmark: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, fixed, _ = _data()
    methods = {"regkit nmi": _regkit("nmi"), "regkit mattes_mi": _regkit("mattes_mi"),
               **_peers()}
    figures = _scenario("cross_modality", True, methods, capsys)
    moving, _, _ = _pair(0, True)
    benchmark.pedantic(register_3d3d, args=(fixed, moving), kwargs={"seed": 0, "metric": "nmi"},
                       rounds=5, warmup_rounds=1)
    for label in ("regkit nmi", "regkit mattes_mi"):
        assert figures["methods"][label]["tre_median_mm"] < 0.5
        assert figures["methods"][label]["success_1mm"] >= 0.95


def _objective_level(metric: str) -> tuple[_Level, np.ndarray, np.ndarray]:
    """The coarsest default level of pair 0, the pivot, and the true transform."""
    from regkit.metrics import get_metric
    from regkit.registration.volume_registration import (
        DEFAULT_RIGID_LEVELS,
        Register3D3DOptions,
        _base_spacing,
    )

    _, fixed, _ = _data()
    moving, true, _ = _pair(0, False)
    level = _build_level(DEFAULT_RIGID_LEVELS[0], _base_spacing(fixed, moving), fixed, moving,
                         None, None, get_metric(metric, check_finite=False),
                         Register3D3DOptions(), None)
    return level, fixed.center_world, true


def test_batching_gain(benchmark: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Scoring a CMA-ES population in one call against one candidate per call, equal budget."""
    figures: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    budget = 400
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as register_3d3d runs by default
    try:
        for metric in ("ncc", "nmi"):
            level, pivot, true = _objective_level(metric)
            params = rng.normal(size=(budget, 6)) * np.array([0.1, 0.1, 0.1, 10.0, 10.0, 10.0])
            matrices = _rigid_matrices(params, pivot) @ true
            for popsize in (12, 20, 40):
                t0 = time.perf_counter()
                batched = [level.matrix_losses(matrices[i:i + popsize])[0]
                           for i in range(0, budget, popsize)]
                t_batched = time.perf_counter() - t0
                t0 = time.perf_counter()
                single = [level.matrix_losses(matrices[i:i + 1])[0] for i in range(budget)]
                t_single = time.perf_counter() - t0
                np.testing.assert_allclose(np.concatenate(batched), np.concatenate(single),
                                           rtol=1e-5, atol=1e-6)
                figures[f"{metric} level 0 popsize {popsize}"] = {
                    "grid": list(level.grid.shape), "candidates": budget,
                    "ms_per_candidate_batched": 1e3 * t_batched / budget,
                    "ms_per_candidate_one_at_a_time": 1e3 * t_single / budget,
                    "speed_up": t_single / t_batched}
        level, pivot, true = _objective_level("ncc")
        batch = _rigid_matrices(np.zeros((20, 6)), pivot) @ true
        benchmark(level.matrix_losses, batch)  # one population of 20 at level 0
    finally:
        torch.set_num_threads(previous)
    # Whole registrations: the population in one call (default) against max_batch = 1.
    _, fixed, _ = _data()
    whole: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    same = True
    for seed in range(min(N_PAIRS, 8)):
        moving, _, _ = _pair(seed, False)
        a = register_3d3d(fixed, moving, seed=seed)
        b = register_3d3d(fixed, moving, seed=seed, options={"max_batch": 1})
        whole["batched"].append(a.seconds)
        whole["one_at_a_time"].append(b.seconds)
        same &= bool(np.allclose(a.fixed_from_moving, b.fixed_from_moving, atol=1e-6))
    figures["whole registration (ncc, default levels)"] = {
        "pairs": len(whole["batched"]),
        "seconds_median_batched": float(np.median(whole["batched"])),
        "seconds_median_one_at_a_time": float(np.median(whole["one_at_a_time"])),
        "speed_up": float(np.median(whole["one_at_a_time"]) / np.median(whole["batched"])),
        "same_result": same}
    _FIGURES["batching"] = figures
    rows = ["batching gain (one call per population vs one call per candidate, equal budget):"]
    for k, v in figures.items():
        if "speed_up" in v and "ms_per_candidate_batched" in v:
            rows.append(f"  {k:28s} {v['ms_per_candidate_batched']:.3f} vs "
                        f"{v['ms_per_candidate_one_at_a_time']:.3f} ms/candidate: "
                        f"x{v['speed_up']:.2f}")
        else:
            rows.append(f"  {k}: {v['seconds_median_batched']:.2f} s vs "
                        f"{v['seconds_median_one_at_a_time']:.2f} s: x{v['speed_up']:.2f}")
    _write(capsys, "\n".join(rows))
    assert figures["whole registration (ncc, default levels)"]["speed_up"] > 1.0
