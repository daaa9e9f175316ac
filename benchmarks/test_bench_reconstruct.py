"""Reconstruction benchmark (issue 12): time of one radiograph, with and without refinement.

Run (a few minutes on 2 cores)::

    .venv/bin/pytest benchmarks/test_bench_reconstruct.py --benchmark-only -p no:cacheprovider -s

Cases, on the demo hand the plugin ships (a held-out phantom, degraded 256² radiographs):

1. ``single_256``: :class:`regkit_recon.reconstruct.HandReconstructor` on the PA radiograph
   without refinement (network, back-projection, label volume, measurement); target ≤ 10 s on
   2 cores; with the time of each step, the ASSD against the phantom and the peak memory.
2. ``biplane_256``: PA + oblique with the reconstructor's defaults (each bone triangulated from
   the two views and their solids fused; no refinement); target ≤ 60 s.
3. ``biplane_refined_256``: the same with refinement by re-projection first (the common depth
   offset, then each bone's placement), then the fusion.

Accuracy over many held-out phantoms is measured by ``benchmarks/bench_reconstruct.py`` (its
summary is copied into ``results/bench_reconstruct.json`` beside these timings).
Results go to ``benchmarks/results/bench_reconstruct.json``.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("regkit_recon")

import numpy as np
import torch
from regkit_recon.data import demo_hand
from regkit_recon.groundtruth.sample import camera_of, phantom_of, read_sample
from regkit_recon.reconstruct import HandReconstructor, View
from regkit_recon.reconstruct.evaluate import surface_errors, truth_meshes

from regkit.testing.results import machine, save_case

RESULTS = Path(__file__).resolve().parent / "results" / "bench_reconstruct.json"


def _save(case: str, row: dict[str, Any]) -> None:
    save_case(RESULTS, case, row,
              command=".venv/bin/pytest benchmarks/test_bench_reconstruct.py --benchmark-only",
              machine_info=machine(torch=torch.__version__, threads=torch.get_num_threads()))


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    folder = demo_hand()
    samples = [read_sample(folder / "samples" / f"00000{i}.npz") for i in (0, 1)]
    phantom = phantom_of(samples[0])
    truth = truth_meshes(np.asarray(phantom.labels), phantom.volume.world_from_index,
                         dict(phantom.bone_table))
    views = [View(s["image"].astype(np.float64), camera_of(s)) for s in samples]
    return {"views": views, "truth": truth, "reconstructor": HandReconstructor()}


def _run(benchmark: Any, demo: dict[str, Any], views: list[View], refine: bool | None,
         rounds: int) -> tuple[Any, float]:
    rec = demo["reconstructor"]
    out = benchmark.pedantic(rec.reconstruct, args=(views,), kwargs={"refine": refine},
                             rounds=rounds, iterations=1)
    return out, benchmark.stats.stats.median


def test_single_256(benchmark: Any, demo: dict[str, Any]) -> None:
    views = demo["views"][:1]
    demo["reconstructor"].reconstruct(views, refine=False)          # warm-up
    out, median = _run(benchmark, demo, views, False, 3)
    errors = surface_errors(out.meshes, demo["truth"], views[0].camera.view_direction_world)
    _save("single_256", {
        "median_s": round(median, 3), "target_max_s": 10.0, "met": median <= 10.0,
        "steps_s": out.result["timings"],
        "median_assd_mm": errors["median_assd_mm"],
        "median_aligned_assd_mm": errors["median_aligned_assd_mm"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})


@pytest.mark.parametrize(("case", "refine"), [("biplane_256", None),
                                             ("biplane_refined_256", True)])
def test_biplane(benchmark: Any, demo: dict[str, Any], case: str, refine: bool | None) -> None:
    views = demo["views"]
    out, median = _run(benchmark, demo, views, refine, 1)
    errors = surface_errors(out.meshes, demo["truth"], views[0].camera.view_direction_world)
    _save(case, {
        "median_s": round(median, 3), "target_max_s": 60.0, "met": median <= 60.0,
        "steps_s": out.result["timings"], "refinement": out.result["refinement"],
        "fused_bones": out.result["fused_bones"], "offset_method": out.result["offset_method"],
        "median_assd_mm": errors["median_assd_mm"],
        "median_aligned_assd_mm": errors["median_aligned_assd_mm"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
