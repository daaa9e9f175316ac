"""Renderer benchmarks (issue 3): regkit's ``torch`` and ``gl`` backends, and nanodrr 0.1.7.

The ``torch`` and ``gl`` backends run on the full chest CT, nanodrr 0.1.7's PyTorch CPU renderer at
an equal number of samples per ray.

Run (about 5 minutes on 2 cores)::

    .venv/bin/pytest benchmarks/test_bench_render.py --benchmark-only -p no:cacheprovider

Cases (see benchmarks/README.md for the targets and what the figures mean):
    1. ``drr_256``: one 256² DRR, AP view (SDD 1020 mm, SID 850 mm, 1.6 mm pixels, isocentre at the
       CT's centre), step 0.7 mm (≥ 1 sample per voxel; the smallest spacing is 0.703 mm).
    2. ``batch_64x128``: 64 poses of 128² (3.2 mm pixels), random rotations of up to 5° about the
       isocentre.
    3. ``depth_256``: front and back depth maps of vertebra T8 (label 36), 256², 2 layers.
    4. ``resample_128``: the CT resampled to 128³ (outside the timing), warped under 64 random
       rigid transforms (up to 5°, up to 5 mm).

The CT's directory can be moved with ``REGKIT_CHEST_CT_DIR``; PNGs for eyeballing go to
``REGKIT_BENCH_PNG_DIR`` (default ``/tmp/bench_png``).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

DATA = Path(os.environ.get("REGKIT_CHEST_CT_DIR", "/work/shared/data/chest_ct"))
CT = DATA / "ct.nii.gz"
BONES = DATA / "bones.nii.gz"
BONE_TABLE = DATA / "bones.csv"

if not (CT.is_file() and BONES.is_file()):
    pytest.skip(f"renderer benchmarks need the full chest CT: {CT} and {BONES} are not both "
                "there (set REGKIT_CHEST_CT_DIR to the folder that holds them)",
                allow_module_level=True)

from regkit.errors import BackendUnavailableError  # noqa: E402
from regkit.geometry.camera import Camera  # noqa: E402
from regkit.geometry.carm import camera_from_carm  # noqa: E402
from regkit.io.nifti import load_nifti  # noqa: E402
from regkit.render.base import Renderer, Views  # noqa: E402
from regkit.render.select import make_renderer  # noqa: E402
from regkit.volume import Volume  # noqa: E402

PNG_DIR = Path(os.environ.get("REGKIT_BENCH_PNG_DIR", "/tmp/bench_png"))

SDD_MM = 1020.0
SID_MM = 850.0
STEP_MM = 0.7                 # ≤ the smallest voxel spacing (0.703 mm): ≥ 1 sample per voxel
DRR_SIZE, DRR_PIXEL_MM = 256, 1.6
BATCH, BATCH_SIZE, BATCH_PIXEL_MM = 64, 128, 3.2   # same field of view as the 256² view
MAX_ANGLE_DEG = 5.0           # random rotations: uniform axis, angle uniform in [0, 5°]
MAX_SHIFT_MM = 5.0            # resampling: translations uniform in [-5, 5] mm per axis
BONE_LABEL, BONE_NAME = 36, "vertebrae_T8"
LAYERS = 2
GRID = 128

# nanodrr's HU → μ with these parameters is exactly regkit's μ = 0.02 (1 + HU/1000), clamped at 0:
# the same μ volume for both, so their images can be compared pixel for pixel.
NANODRR_MU = {"mu_water": 0.02, "mu_bone": 0.04, "hu_bone": 1000.0}
NANODRR_BYTES_PER_SAMPLE = 12 * 1.6  # xyz float32 per sample, plus grid_sample's output and slack

TARGETS: dict[tuple[str, str], dict[str, Any]] = {
    ("drr_256", "gl"): {"kind": "max_s", "value": 0.100},
    ("drr_256", "torch"): {"kind": "speedup", "over": "nanodrr", "value": 2.0},
    ("batch_64x128", "gl"): {"kind": "max_s", "value": 1.0},
    ("batch_64x128", "torch"): {"kind": "speedup", "over": "nanodrr", "value": 2.0},
    ("depth_256", "gl"): {"kind": "max_s", "value": 0.050},
    ("resample_128", "gl"): {"kind": "max_s", "value": 1.0},
    ("resample_128", "torch"): {"kind": "max_s", "value": 1.0},
}
TITLES = {
    "drr_256": "DRR 256², AP, step 0.7 mm",
    "batch_64x128": "DRR batch 64 × 128²",
    "depth_256": "depth T8, 256², 2 layers",
    "resample_128": "resample 128³ × 64 rigid",
}

BACKENDS = ["torch", "gl"]
_OUTPUTS: dict[tuple[str, str], Any] = {}   # first outputs, for the agreement checks


# ------------------------------------------------------------------ geometry helpers
def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: rotation by ``angle`` radians about the unit vector ``axis``."""
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def _random_rigid(rng: np.random.Generator, centre: np.ndarray, max_angle_deg: float,
                  max_shift_mm: float) -> np.ndarray:
    """A 4×4 rotation about ``centre`` by a random axis and angle, then a random shift."""
    r = _rotation(rng.normal(size=3), math.radians(rng.uniform(0.0, max_angle_deg)))
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = centre - r @ centre + rng.uniform(-max_shift_mm, max_shift_mm, 3)
    return out


def _camera(volume: Volume, size: int, pixel_mm: float) -> Camera:
    return camera_from_carm(source_to_detector_mm=SDD_MM, source_to_isocenter_mm=SID_MM,
                            pixel_spacing_mm=pixel_mm, width=size, height=size,
                            isocenter_world=tuple(float(x) for x in volume.center_world))


def view_sampling(cam: Camera, volume: Volume, step_mm: float) -> dict[str, Any]:
    """How many samples regkit takes along the rays of one view.

    regkit's rule (torch_backend's module docstring, shared by gl): march across the planes
    perpendicular to one index axis, with the least multiple of 1/32 cells per voxel that keeps
    every ray of the detector's border at or under ``step_mm`` per cell, on the axis that needs
    the fewest cells. A ray that crosses the whole volume along that axis takes ``n_cells``
    samples; one that leaves through a side takes fewer.

    Returns:
        ``axis``, ``n_cells``, ``cells_per_voxel``; ``central_length_mm`` (the central ray's
        length inside the voxel-edge box) and ``central_length_over_step`` (its ceil(L / step));
        ``mean_samples_hit`` (mean samples over the rays that hit the volume) and ``hit_fraction``.
    """
    shape = np.asarray(volume.shape, dtype=np.float64)
    index_from_world = np.linalg.inv(np.asarray(volume.world_from_index, dtype=np.float64))
    origin_w, dirs_w = cam.rays()
    o = index_from_world[:3, :3] @ origin_w + index_from_world[:3, 3]
    d = dirs_w @ index_from_world[:3, :3].T                    # (H, W, 3) voxels per mm
    border = np.concatenate([d[0], d[-1], d[:, 0], d[:, -1]])
    dmin = np.abs(border).min(axis=0)
    best: tuple[int, int, float] | None = None
    for a in range(3):
        if dmin[a] <= 1e-12:
            continue
        parts = math.ceil(32.0 / (step_mm * dmin[a]) * (1.0 - 1e-9))
        cells = max(1, math.ceil(parts * shape[a] / 32.0))
        if best is None or cells < best[1]:
            best = (a, cells, parts / 32.0)
    assert best is not None
    axis, n_cells, per_voxel = best

    def clipped_mm(dd: np.ndarray) -> np.ndarray:
        safe = np.where(np.abs(dd) < 1e-12, 1e-12, dd)
        ta, tb = (-0.5 - o) / safe, (shape - 0.5 - o) / safe
        t0 = np.maximum(np.minimum(ta, tb).max(axis=-1), 0.0)
        t1 = np.maximum(ta, tb).min(axis=-1)
        return np.maximum(t1 - t0, 0.0)

    length = clipped_mm(d)
    hit = length > 0
    samples = np.abs(d[..., axis]) * length * n_cells / shape[axis]
    central_dir = cam.camera_from_world[2, :3]                  # +z of the camera in world
    central_dir = index_from_world[:3, :3] @ central_dir
    central_mm = float(clipped_mm(central_dir[None])[0])
    return {
        "axis": int(axis),
        "n_cells": int(n_cells),
        "cells_per_voxel": float(per_voxel),
        "central_length_mm": round(central_mm, 2),
        "central_length_over_step": math.ceil(central_mm / step_mm),
        "mean_samples_hit": round(float(samples[hit].mean()), 1) if hit.any() else 0.0,
        "hit_fraction": round(float(hit.mean()), 4),
    }


def regkit_plan(renderer: Renderer, views: Views) -> dict[str, int] | None:
    """The torch renderer's own plan ``{"axis/n_cells": views}`` (private API; None if gone)."""
    try:
        k, t = renderer._poses(views)  # type: ignore[attr-defined]
        groups = renderer._groups(k, t, views, None)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None
    return {f"{axis}/{cells}": len(members) for (axis, cells), members in groups.items()}


def _write_png(name: str, image: np.ndarray, scale: float | None = None) -> None:
    """A grey PNG of a 2-D array for eyeballing (NaN black); silently nothing without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        return
    PNG_DIR.mkdir(parents=True, exist_ok=True)
    a = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    lo = float(np.nanmin(image)) if np.isfinite(image).any() else 0.0
    hi = scale if scale is not None else float(a.max())
    lo = 0.0 if scale is not None else lo
    grey = np.clip((a - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    Image.fromarray((grey * 255).round().astype(np.uint8)).save(PNG_DIR / f"{name}.png")


def _rel_diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Max and median absolute difference, relative to ``b``'s maximum."""
    scale = float(np.abs(b).max()) or 1.0
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return {"max_rel": float(diff.max() / scale), "median_rel": float(np.median(diff) / scale)}


def _time_once(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def volume(run_info: dict[str, Any]) -> Volume:
    t0 = time.perf_counter()
    vol = load_nifti(CT, labels=BONES)
    run_info.setdefault("inputs", {})["volume"] = {
        "path": str(CT), "labels": str(BONES), "shape": list(vol.shape),
        "spacing_mm": [round(float(s), 4) for s in vol.spacing],
        "load_s": round(time.perf_counter() - t0, 3),
    }
    return vol


@pytest.fixture(scope="module")
def bone_label(volume: Volume) -> int:
    """Label 36, checked against bones.csv and the label map."""
    if BONE_TABLE.is_file():
        with BONE_TABLE.open(newline="") as fh:
            names = {int(row["label"]): row["name"] for row in csv.DictReader(fh)}
        if names.get(BONE_LABEL) != BONE_NAME:
            pytest.skip(f"{BONE_TABLE} does not list label {BONE_LABEL} as {BONE_NAME} "
                        f"(it says {names.get(BONE_LABEL)!r})")
    assert volume.labels is not None
    if not np.any(np.asarray(volume.labels) == BONE_LABEL):
        pytest.skip(f"label {BONE_LABEL} does not occur in {BONES}")
    return BONE_LABEL


@pytest.fixture(scope="module")
def ap_view(volume: Volume, run_info: dict[str, Any]) -> tuple[Camera, Views]:
    cam = _camera(volume, DRR_SIZE, DRR_PIXEL_MM)
    run_info.setdefault("inputs", {})["ap_view"] = {
        "sdd_mm": SDD_MM, "sid_mm": SID_MM, "size": DRR_SIZE, "pixel_mm": DRR_PIXEL_MM,
        "isocenter_world": [round(float(x), 3) for x in volume.center_world],
        "step_mm": STEP_MM, "sampling": view_sampling(cam, volume, STEP_MM),
    }
    return cam, Views.from_cameras([cam])


@pytest.fixture(scope="module")
def batch_views(volume: Volume, seed: int,
                run_info: dict[str, Any]) -> tuple[list[Camera], Views]:
    rng = np.random.default_rng(seed)
    base = _camera(volume, BATCH_SIZE, BATCH_PIXEL_MM)
    iso = np.asarray(volume.center_world, dtype=np.float64)
    cams = [base.with_pose(base.camera_from_world @ _random_rigid(rng, iso, MAX_ANGLE_DEG, 0.0))
            for _ in range(BATCH)]
    cells = [view_sampling(c, volume, STEP_MM)["n_cells"] for c in cams]
    run_info.setdefault("inputs", {})["batch"] = {
        "views": BATCH, "size": BATCH_SIZE, "pixel_mm": BATCH_PIXEL_MM, "seed": seed,
        "max_angle_deg": MAX_ANGLE_DEG, "n_cells_min": min(cells), "n_cells_max": max(cells),
        "n_cells_mean": round(float(np.mean(cells)), 2),
    }
    return cams, Views.from_cameras(cams)


@pytest.fixture(scope="module")
def renderers(volume: Volume, run_info: dict[str, Any]  # noqa: ARG001 - they outlive this fixture
              ) -> Iterator[dict[str, Renderer]]:
    """Renderers bound to the full CT, built on first use (build time kept, not timed)."""
    built: dict[str, Renderer] = {}
    yield built
    for r in built.values():
        close = getattr(r, "close", None)
        if close is not None:
            close()


def _renderer(renderers: dict[str, Renderer], volume: Volume, backend: str,
              run_info: dict[str, Any], key: str = "full") -> Renderer:
    name = f"{backend}:{key}"
    if name not in renderers:
        t0 = time.perf_counter()
        try:
            renderers[name] = make_renderer(volume, backend=backend, step_mm=STEP_MM)
        except BackendUnavailableError as err:
            pytest.skip(f"backend {backend!r} cannot run here: {err}")
        run_info.setdefault("build_s", {})[name] = round(time.perf_counter() - t0, 3)
        if backend == "gl" and "gl_info" not in run_info:
            from regkit.render.gl.context import context_info

            run_info["gl_info"] = context_info()
    return renderers[name]


@pytest.fixture(scope="module")
def volume128(volume: Volume, run_info: dict[str, Any]) -> Volume:
    """The CT on a 128³ grid over the same box (same axes, same centre), trilinear."""
    n = np.asarray(volume.shape, dtype=np.float64)
    ratio = n / GRID
    old_from_new = np.diag(np.append(ratio, 1.0))
    old_from_new[:3, 3] = (n - 1.0) / 2.0 - (GRID - 1.0) / 2.0 * ratio
    affine = np.asarray(volume.world_from_index, dtype=np.float64) @ old_from_new
    out = volume.resample_to_grid((GRID, GRID, GRID), affine)
    run_info.setdefault("inputs", {})["grid128"] = {
        "shape": list(out.shape), "spacing_mm": [round(float(s), 4) for s in out.spacing],
        "units": out.units}
    return out


@pytest.fixture(scope="module")
def rigid_maps(volume128: Volume, seed: int, run_info: dict[str, Any]) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    centre = np.asarray(volume128.center_world, dtype=np.float64)
    maps = np.stack([_random_rigid(rng, centre, MAX_ANGLE_DEG, MAX_SHIFT_MM)
                     for _ in range(BATCH)])
    run_info.setdefault("inputs", {})["resample"] = {
        "transforms": BATCH, "seed": seed + 1, "max_angle_deg": MAX_ANGLE_DEG,
        "max_shift_mm": MAX_SHIFT_MM}
    return maps


@pytest.fixture(scope="module")
def nanodrr_subject(run_info: dict[str, Any]) -> Any:
    pytest.importorskip("nanodrr", reason="nanodrr is not installed (pip install nanodrr==0.1.7)")
    from nanodrr.data import Subject

    t0 = time.perf_counter()
    subject = Subject.from_filepath(str(CT), mu_water=NANODRR_MU["mu_water"],
                                    mu_bone=NANODRR_MU["mu_bone"], hu_bone=NANODRR_MU["hu_bone"])
    _ = subject.image  # HU → μ once, outside the timing
    run_info.setdefault("build_s", {})["nanodrr:subject"] = round(time.perf_counter() - t0, 3)
    return subject


def _nanodrr_drr(size: int, pixel_mm: float) -> Any:
    from nanodrr.drr import DRR

    return DRR.from_carm_intrinsics(SDD_MM, pixel_mm, pixel_mm, 0.0, 0.0, size, size,
                                    dtype=torch.float32)


def _rt_inv(cams: list[Camera]) -> torch.Tensor:
    """The nanodrr pose: camera → world, the inverse of regkit's camera_from_world.

    Same frames: a pinhole at the source with +z to the detector, and RAS+ world from the NIfTI
    affine.
    """
    return torch.from_numpy(np.stack([np.linalg.inv(c.camera_from_world) for c in cams])).float()


def _run(benchmark: Any, monitor: Any, fn: Callable[[], Any], *, rounds: int,
         warmup_rounds: int, digest: Callable[[Any], Any]) -> tuple[Any, float]:
    """Time one first call by hand, keep ``digest(output)`` of it, then the timed rounds.

    The first call builds caches and first touches memory. Peak memory is taken over both.

    Each round's output is released after the round, outside the timing, so that a round never
    runs while the previous round's output (0.7 GB for the resampling) is still held.
    """
    held: list[Any] = []

    def timed() -> None:
        held.append(fn())

    def release() -> None:
        held.clear()

    with monitor.measure():
        first_out, first_s = _time_once(fn)
        kept = digest(first_out)
        del first_out
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1,
                           teardown=release)
    release()
    return kept, first_s


# ------------------------------------------------------------------ 1. DRR 256²
@pytest.mark.parametrize("backend", BACKENDS)
def test_drr_256(benchmark: Any, record: Any, monitor: Any, renderers: dict[str, Renderer],
                 volume: Volume, ap_view: tuple[Camera, Views], run_info: dict[str, Any],
                 backend: str) -> None:
    _, views = ap_view
    renderer = _renderer(renderers, volume, backend, run_info)
    benchmark.group = "drr_256"
    img, first_s = _run(benchmark, monitor, lambda: renderer.drr(views), rounds=20,
                        warmup_rounds=2, digest=lambda out: out[0].numpy().copy())
    assert img.shape == (DRR_SIZE, DRR_SIZE)
    assert np.isfinite(img).all()
    assert img.max() > 1.0
    _OUTPUTS[("drr_256", backend)] = img
    sampling = run_info["inputs"]["ap_view"]["sampling"]
    checks = run_info.setdefault("checks", {})
    if backend == "torch":
        plan = regkit_plan(renderer, views)
        checks["drr_256_torch_plan"] = plan
        if plan is not None:
            assert plan == {f"{sampling['axis']}/{sampling['n_cells']}": 1}, \
                f"view_sampling disagrees with the renderer's plan {plan}"
    if ("drr_256", "torch") in _OUTPUTS and backend != "torch":
        checks["drr_256_gl_vs_torch"] = _rel_diff(img, _OUTPUTS[("drr_256", "torch")])
        assert checks["drr_256_gl_vs_torch"]["max_rel"] < 1e-3
    _write_png(f"drr_256_{backend}", img, scale=float(img.max()))
    record(benchmark, case="drr_256", backend=backend, case_title=TITLES["drr_256"],
           first_call_s=first_s, samples_per_ray=sampling["n_cells"],
           samples_per_ray_text=str(sampling["n_cells"]), sampling=sampling,
           target=TARGETS.get(("drr_256", backend)), **monitor.fields(),
           notes=[f"samples/ray: regkit marches {sampling['cells_per_voxel']:g} cells per voxel "
                  f"across index axis {sampling['axis']}, {sampling['n_cells']} cells through the "
                  f"whole volume (the central ray is {sampling['central_length_mm']:g} mm inside "
                  f"it: ceil(L / {STEP_MM:g} mm) = {sampling['central_length_over_step']}; mean "
                  f"over rays that hit: {sampling['mean_samples_hit']:g}); nanodrr gets "
                  f"n_samples = {sampling['n_cells']} on every ray"])


def test_drr_256_nanodrr(benchmark: Any, record: Any, monitor: Any, nanodrr_subject: Any,
                         ap_view: tuple[Camera, Views], run_info: dict[str, Any]) -> None:
    cam, _ = ap_view
    n_samples = run_info["inputs"]["ap_view"]["sampling"]["n_cells"]
    drr = _nanodrr_drr(DRR_SIZE, DRR_PIXEL_MM)
    rt_inv = _rt_inv([cam])

    def fn() -> torch.Tensor:
        with torch.no_grad():
            return drr(nanodrr_subject, rt_inv, n_samples=n_samples, backend="torch")

    benchmark.group = "drr_256"
    img, first_s = _run(benchmark, monitor, fn, rounds=5, warmup_rounds=0,
                        digest=lambda out: out[0, 0].numpy().copy())
    checks = run_info.setdefault("checks", {})
    ref = _OUTPUTS.get(("drr_256", "torch"))
    if ref is not None:
        checks["drr_256_nanodrr_vs_torch"] = _rel_diff(img, ref)
        assert checks["drr_256_nanodrr_vs_torch"]["median_rel"] < 0.01, \
            "nanodrr's image is not the same view as regkit's"
    _write_png("drr_256_nanodrr", img, scale=float(ref.max() if ref is not None else img.max()))
    record(benchmark, case="drr_256", backend="nanodrr", label="nanodrr 0.1.7 (torch CPU)",
           case_title=TITLES["drr_256"], first_call_s=first_s, samples_per_ray=n_samples,
           samples_per_ray_text=str(n_samples), **monitor.fields(), target=None)


# ------------------------------------------------------------------ 2. batch 64 × 128²
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_64x128(benchmark: Any, record: Any, monitor: Any,
                      renderers: dict[str, Renderer], volume: Volume,
                      batch_views: tuple[list[Camera], Views], run_info: dict[str, Any],
                      backend: str) -> None:
    _, views = batch_views
    renderer = _renderer(renderers, volume, backend, run_info)
    benchmark.group = "batch_64x128"
    imgs, first_s = _run(benchmark, monitor, lambda: renderer.drr(views), rounds=5,
                         warmup_rounds=1, digest=lambda out: out.numpy().copy())
    assert imgs.shape == (BATCH, BATCH_SIZE, BATCH_SIZE)
    assert np.isfinite(imgs).all()
    _OUTPUTS[("batch_64x128", backend)] = imgs
    checks = run_info.setdefault("checks", {})
    if backend == "torch":
        checks["batch_torch_plan"] = regkit_plan(renderer, views)
    if ("batch_64x128", "torch") in _OUTPUTS and backend != "torch":
        checks["batch_gl_vs_torch"] = _rel_diff(imgs, _OUTPUTS[("batch_64x128", "torch")])
        assert checks["batch_gl_vs_torch"]["max_rel"] < 1e-3
    b = run_info["inputs"]["batch"]
    record(benchmark, case="batch_64x128", backend=backend, case_title=TITLES["batch_64x128"],
           first_call_s=first_s, samples_per_ray=b["n_cells_mean"],
           samples_per_ray_text=f"{b['n_cells_min']}–{b['n_cells_max']}",
           target=TARGETS.get(("batch_64x128", backend)), **monitor.fields())


# ------------------------------------------------------------------ 3. depth maps
@pytest.mark.parametrize("backend", BACKENDS)
def test_depth_256(benchmark: Any, record: Any, monitor: Any, renderers: dict[str, Renderer],
                   volume: Volume, bone_label: int, ap_view: tuple[Camera, Views],
                   run_info: dict[str, Any], backend: str) -> None:
    _, views = ap_view
    renderer = _renderer(renderers, volume, backend, run_info)
    benchmark.group = "depth_256"
    (shape, front, hit), first_s = _run(
        benchmark, monitor, lambda: renderer.depth(views, [bone_label], layers=LAYERS),
        rounds=30, warmup_rounds=3,
        digest=lambda out: (tuple(out.front.shape), out.front[0, 0].numpy().copy(),
                            out.hit[0].numpy().copy()))
    hits = int(hit.sum())
    assert shape == (1, LAYERS, DRR_SIZE, DRR_SIZE)
    assert hits > 100
    _OUTPUTS[("depth_256", backend)] = (front, hit)
    checks = run_info.setdefault("checks", {})
    checks[f"depth_256_{backend}_hit_pixels"] = hits
    if ("depth_256", "torch") in _OUTPUTS and backend != "torch":
        ref_front, ref_hit = _OUTPUTS[("depth_256", "torch")]
        both = ref_hit & hit
        checks["depth_256_gl_vs_torch"] = {
            "hit_mismatch_pixels": int((ref_hit != hit).sum()),
            "front_max_abs_mm": float(np.abs(front[both] - ref_front[both]).max()),
        }
    _write_png(f"depth_256_front_{backend}", front)
    record(benchmark, case="depth_256", backend=backend, case_title=TITLES["depth_256"],
           first_call_s=first_s, samples_per_ray_text="≤ 0.7 mm, bone box",
           target=TARGETS.get(("depth_256", backend)), **monitor.fields(),
           notes=["depth: the first call builds the bone set's mask (torch) or cropped textures "
                  "(gl), cached after; rays are marched on the DRR's lattice, across the bone's "
                  "box only"])


# ------------------------------------------------------------------ 4. resampling
@pytest.mark.parametrize("backend", BACKENDS)
def test_resample_128(benchmark: Any, record: Any, monitor: Any,
                      renderers: dict[str, Renderer], volume128: Volume,
                      rigid_maps: np.ndarray, run_info: dict[str, Any], backend: str) -> None:
    renderer = _renderer(renderers, volume128, backend, run_info, key="grid128")
    affine = volume128.world_from_index
    shape = (GRID, GRID, GRID)
    benchmark.group = "resample_128"
    (out_shape, inside, probe), first_s = _run(
        benchmark, monitor, lambda: renderer.resample(shape, affine, rigid_maps),
        rounds=5, warmup_rounds=1,
        digest=lambda out: (tuple(out.values.shape), float(out.mask.float().mean()),
                            out.values[:, ::8, ::8, ::8].numpy().copy()))
    assert out_shape == (BATCH, *shape)
    checks = run_info.setdefault("checks", {})
    checks[f"resample_{backend}_inside_fraction"] = round(inside, 4)
    _OUTPUTS[("resample_128", backend)] = probe
    if ("resample_128", "torch") in _OUTPUTS and backend != "torch":
        ref = _OUTPUTS[("resample_128", "torch")]
        checks["resample_gl_vs_torch_max_abs_hu"] = float(np.abs(probe - ref).max())
    record(benchmark, case="resample_128", backend=backend, case_title=TITLES["resample_128"],
           first_call_s=first_s, target=TARGETS.get(("resample_128", backend)),
           **monitor.fields())


# ------------------------------------------------------------------ 2b. nanodrr batch (~10 GB)
def _nanodrr_batch() -> tuple[int, str]:
    """How many views nanodrr renders at once: 64 where memory allows, else 8 (and scale)."""
    forced = os.environ.get("REGKIT_BENCH_NANODRR_BATCH")
    if forced:
        return int(forced), "REGKIT_BENCH_NANODRR_BATCH"
    need = BATCH * BATCH_SIZE * BATCH_SIZE * 560 * NANODRR_BYTES_PER_SAMPLE
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is not None and need < 0.8 * avail:
        return BATCH, f"needs ~{need / 2**30:.1f} GiB of {avail / 2**30:.1f} GiB available"
    return 8, f"B=64 needs ~{need / 2**30:.1f} GiB; available: {avail}"


def test_batch_64x128_nanodrr(benchmark: Any, record: Any, monitor: Any, nanodrr_subject: Any,
                              batch_views: tuple[list[Camera], Views],
                              run_info: dict[str, Any]) -> None:
    cams, _ = batch_views
    b = run_info["inputs"]["batch"]
    n_samples = round(b["n_cells_mean"])
    size, why = _nanodrr_batch()
    size = max(1, min(size, BATCH))
    drr = _nanodrr_drr(BATCH_SIZE, BATCH_PIXEL_MM)
    rt_inv = _rt_inv(cams[:size])

    def fn() -> torch.Tensor:
        with torch.no_grad():
            return drr(nanodrr_subject, rt_inv, n_samples=n_samples, backend="torch")

    benchmark.group = "batch_64x128"
    imgs, first_s = _run(benchmark, monitor, fn, rounds=3, warmup_rounds=0,
                         digest=lambda out: out[:, 0].numpy().copy())
    ref = _OUTPUTS.get(("batch_64x128", "torch"))
    if ref is not None:
        check = _rel_diff(imgs, ref[:size])
        run_info.setdefault("checks", {})["batch_nanodrr_vs_torch"] = check
        assert check["median_rel"] < 0.01
    scale = BATCH / size
    label = "nanodrr 0.1.7 (torch CPU)" if size == BATCH else \
        f"nanodrr 0.1.7 (torch CPU), B={size} × {scale:g} (scaled)"
    record(benchmark, case="batch_64x128", backend="nanodrr", label=label,
           case_title=TITLES["batch_64x128"], scale=scale, nanodrr_batch=size,
           nanodrr_batch_reason=why, first_call_s=first_s * scale, samples_per_ray=n_samples,
           samples_per_ray_text=str(n_samples), **monitor.fields(), target=None,
           notes=[f"batch samples/ray: regkit's plan differs per view ({b['n_cells_min']} to "
                  f"{b['n_cells_max']} cells, mean {b['n_cells_mean']:g}); nanodrr takes one "
                  f"n_samples for the batch: {n_samples}"])
