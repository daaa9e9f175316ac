"""Ground-truth factory benchmark (issue 5): ``regkit recon generate`` on hand phantoms.

Run (about 2 minutes on 2 cores; ``REGKIT_BENCH_RECON_SAMPLES`` sets N, the samples of the short
generate run, default 24)::

    .venv/bin/pytest benchmarks/test_bench_recon.py --benchmark-only -p no:cacheprovider

Cases:
    1. ``phantom``: :func:`make_hand_phantom` at 0.4 mm voxels (316 × 192 × 611 for seed 0),
       target ≤ 10 s.
    2. ``sample_1proc``: one 256² sample in this process: DRR, degradation, 29 bones × 2 depth
       layers, compressed write; the renderers are bound to the phantom outside the timing (a
       worker does that once per phantom).
    3. ``depth29``: the 29 bones' depth layers of one 256² view, gl backend, as the factory
       renders them (``GLRenderer.depth_per_bone``: one dispatch over an atlas of the bones'
       masks) against one ``depth`` call per bone on the full detector.
    4. ``generate_2workers``: ``generate(workers=2)`` of N and 4N samples of one ready phantom:
       the steady rate from their difference (target ≥ 10 samples/s) and the start-up cost
       (spawning two workers, loading the phantom, binding the renderers).

Results go to ``benchmarks/results/bench_recon.json``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("regkit_recon")

from regkit_recon import make_hand_phantom
from regkit_recon.groundtruth.generate import (
    GenerateSpec,
    generate,
    phantom_seed,
    release_renderers,
    render_sample,
)
from regkit_recon.groundtruth.sample import write_sample

from regkit.testing.results import save_case

RESULTS = Path(__file__).resolve().parent / "results" / "bench_recon.json"
SAMPLES = int(os.environ.get("REGKIT_BENCH_RECON_SAMPLES", "24"))
SIZE, LAYERS, VOXEL, SEED = 256, 2, 0.4, 0


@pytest.fixture(scope="module")
def ready(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose one phantom is already made (so only samples are timed)."""
    out = tmp_path_factory.mktemp("bench_recon") / "run"
    make_hand_phantom(phantom_seed(SEED, 0), voxel_mm=VOXEL).save(out / "phantoms" / "p000")
    return out


def _spec(out: Path, workers: int, views: int = SAMPLES) -> GenerateSpec:
    return GenerateSpec(out=str(out), phantoms=1, views=views, size=SIZE, layers=LAYERS,
                        seed=SEED, workers=workers, voxel_mm=VOXEL, montage=0)


def _save(case: str, row: dict[str, Any]) -> None:
    save_case(RESULTS, case, row,
              command=".venv/bin/pytest benchmarks/test_bench_recon.py --benchmark-only")


def test_phantom(benchmark: Any) -> None:
    benchmark.pedantic(make_hand_phantom, args=(7,), kwargs={"voxel_mm": VOXEL}, rounds=2,
                       iterations=1)
    median = benchmark.stats.stats.median
    _save("phantom", {"median_s": median, "target_max_s": 10.0, "met": median <= 10.0})


def test_sample_1proc(benchmark: Any, ready: Path) -> None:
    spec = _spec(ready / "unused", 1).checked()
    params = spec.parameters()
    rel = "phantoms/p000"
    source = {"id": rel, "ct": str(ready / rel / "ct.nii.gz"),
              "labels": str(ready / rel / "labels.nii.gz"), "bones": list(range(1, 30)),
              "record": {"kind": "phantom", "path": rel}}
    render_sample(0, source, params, 0)  # binds the renderers (once per phantom per worker)
    index = iter(range(1, 10_000))

    def one() -> None:
        i = next(index)
        write_sample(ready / "bench_tmp.npz", render_sample(i, source, params, i))

    benchmark.pedantic(one, rounds=max(3, SAMPLES // 2), iterations=1)
    release_renderers()
    median = benchmark.stats.stats.median
    _save("sample_1proc", {"median_s": median, "samples_per_s": 1.0 / median,
                           "size": SIZE, "bones": 29, "layers": LAYERS})


def test_generate_2workers(benchmark: Any, ready: Path) -> None:
    """Two runs of different lengths on the ready phantom.

    The difference gives the steady rate (what a long run sustains), the short run the fixed cost of
    starting two workers and binding their renderers (paid once per phantom per worker).
    """
    short, long = SAMPLES, 4 * SAMPLES
    times: dict[int, float] = {}

    def run() -> None:
        for n in (short, long):
            for f in (ready / "samples").glob("*.npz"):
                f.unlink()
            (ready / "manifest.json").unlink(missing_ok=True)
            start = time.perf_counter()
            generate(_spec(ready, 2, views=n))
            times[n] = time.perf_counter() - start

    benchmark.pedantic(run, rounds=1, iterations=1)
    steady = (long - short) / (times[long] - times[short])
    startup = times[short] - short / steady
    _save("generate_2workers", {
        "samples": [short, long], "seconds": [times[short], times[long]],
        "steady_samples_per_s": steady, "startup_s": startup,
        "samples_per_s_including_startup": {str(short): short / times[short],
                                            str(long): long / times[long]},
        "target_min_per_s": 10.0, "met_steady": steady >= 10.0})


def test_depth29(benchmark: Any, ready: Path) -> None:
    import numpy as np
    from regkit_recon.groundtruth.views import anatomy_corners, draw_view

    from regkit import load_nifti
    from regkit.render import Views, available_backends, make_renderer
    from regkit.render.base import Renderer

    if "gl" not in available_backends():
        pytest.skip("no OpenGL context")
    rel = ready / "phantoms" / "p000"
    volume = load_nifti(rel / "ct.nii.gz", labels=rel / "labels.nii.gz")
    bones = list(range(1, 30))
    camera, _ = draw_view(np.random.default_rng(0), "pa", anatomy_corners(volume, bones), SIZE)
    views = Views.from_cameras(camera)
    renderer = make_renderer(volume, backend="gl")
    renderer.depth_per_bone(views, bones, layers=LAYERS)  # first call compiles and uploads
    benchmark.pedantic(renderer.depth_per_bone, args=(views, bones), kwargs={"layers": LAYERS},
                       rounds=5, iterations=1)
    start = time.perf_counter()
    Renderer.depth_per_bone(renderer, views, bones, layers=LAYERS)  # one depth() per bone
    loop_s = time.perf_counter() - start
    renderer.close()
    median = benchmark.stats.stats.median
    _save("depth29", {"atlas_median_s": median, "loop_over_bones_s": loop_s,
                      "speedup": loop_s / median, "backend": "gl", "size": SIZE})
