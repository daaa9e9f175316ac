"""Bone network benchmark (issue 10): inference and training speed on this machine.

Run (about a minute on 2 cores)::

    .venv/bin/pytest benchmarks/test_bench_recon_net.py --benchmark-only -p no:cacheprovider

Cases:
    1. ``predict_256``: :func:`regkit_recon.net.predict.predict` of one degraded 256² radiograph
       of a phantom (29 bones) with the shipped model: fitting, the network, depths on the
       detector; target ≤ 0.5 s on 2 cores. Also with ``tta=True`` (8 flips and turns at two
       sizes; the median of 3 runs after a warm-up), and the process's peak resident memory.
    2. ``train_step``: one optimiser step of the default network on a global batch of 8 real
       training items (256², augmented), with bfloat16 autocast where the CPU has it and in
       float32, items per second; loading the items is timed apart.

Results go to ``benchmarks/results/bench_recon_net.json``.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("regkit_recon")

import torch
from regkit_recon.groundtruth.generate import GenerateSpec, generate
from regkit_recon.groundtruth.sample import camera_of, read_sample
from regkit_recon.net.predict import DEFAULT_MODEL, predict, resolve_model

from regkit.testing.results import machine, save_case

RESULTS = Path(__file__).resolve().parent / "results" / "bench_recon_net.json"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One phantom (seed never used in training) and 8 samples at 256², 29 bones."""
    out = tmp_path_factory.mktemp("bench_net") / "gt"
    generate(GenerateSpec(out=str(out), phantoms=1, views=8, size=256, seed=90210,
                          workers=1, montage=0, malunion_fraction=0.0))
    return out


def _save(case: str, row: dict[str, Any]) -> None:
    save_case(RESULTS, case, row,
              command=".venv/bin/pytest benchmarks/test_bench_recon_net.py --benchmark-only",
              machine_info=machine(torch=torch.__version__, threads=torch.get_num_threads()))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_predict_256(benchmark: Any, data: Path, device: str) -> None:
    sample = read_sample(sorted((data / "samples").glob("*.npz"))[0])
    camera = camera_of(sample)
    model = resolve_model(device=device)
    predict(sample["image"], camera, model=model, device=device)  # warm-up
    benchmark.pedantic(predict, args=(sample["image"], camera),
                       kwargs={"model": model, "device": device}, rounds=10, iterations=1)
    median = benchmark.stats.stats.median
    predict(sample["image"], camera, model=model, tta=True, device=device)  # warm-up
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        predict(sample["image"], camera, model=model, tta=True, device=device)
        runs.append(time.perf_counter() - start)
    tta_s = sorted(runs)[1]   # the median of 3
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _save("predict_256" if device == "cpu" else "predict_256_cuda", {
        "median_s": median, "tta_s": tta_s, "peak_rss_mb": peak_mb, "target_max_s": 0.5,
        "met": median <= 0.5, "model_mb": DEFAULT_MODEL.stat().st_size / 2**20})


@pytest.mark.parametrize(("precision", "device", "batch"), [
    ("auto", "cpu", 8), ("fp32", "cpu", 8),
    pytest.param("auto", "cuda", 8, marks=CUDA), pytest.param("auto", "cuda", 32, marks=CUDA),
    pytest.param("fp32", "cuda", 32, marks=CUDA)])
def test_train_step(benchmark: Any, data: Path, precision: str, device: str, batch: int) -> None:
    from regkit_recon.groundtruth.dataset import collate_ground_truth
    from regkit_recon.net.data import TrainItems
    from regkit_recon.net.model import BoneNet, load_model
    from regkit_recon.net.train import TrainSpec, autocast_dtype, batch_loss

    spec = TrainSpec(data=(str(data),), out="unused", precision=precision)
    config = load_model(DEFAULT_MODEL).net.config  # the shipped network's shape, fresh weights
    bones = config.bones
    items = TrainItems(sorted((data / "samples").glob("*.npz")), config.size, bones, 0,
                       last=config.last)   # the shipped model predicts the last exit
    start = time.perf_counter()
    batch_items = collate_ground_truth([items[i % len(items)] for i in range(8)])
    load_s = time.perf_counter() - start
    dev = torch.device(device)
    batch_items = {k: v.repeat(batch // 8, *([1] * (v.ndim - 1))).to(dev)
                   for k, v in batch_items.items()}
    torch.manual_seed(0)
    net = BoneNet(config).to(dev)
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-4)
    amp = autocast_dtype(precision, dev)

    def step() -> None:
        with torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            out = net(batch_items["image"])
        terms = batch_loss(out, batch_items, depth_weight=spec.depth_weight,
                           offset_weight=spec.offset_weight)
        optimiser.zero_grad()
        terms["loss"].backward()
        optimiser.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
    benchmark.pedantic(step, rounds=4 if dev.type == "cpu" else 20, iterations=1)
    median = benchmark.stats.stats.median
    row: dict[str, Any] = {
        "median_s": median, "items_per_s": batch / median, "batch": batch,
        "load_8_items_s": load_s, "autocast": str(amp or "float32"),
        "parameters": sum(p.numel() for p in net.parameters())}
    if dev.type == "cuda":
        row["device"] = torch.cuda.get_device_name(dev)
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        _save(f"train_step_cuda_{precision}_b{batch}", row)
    else:
        _save(f"train_step_{precision}", row)
