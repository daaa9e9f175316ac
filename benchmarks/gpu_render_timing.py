"""DRR and depth-map speed of every renderer this machine offers, on the CT crop regkit ships.

For a machine with a GPU (``scripts/device_gpu_check.sh`` runs it): the torch renderer on the CPU
and on CUDA, and the OpenGL renderer on whatever EGL driver the machine has, rendering the same
256² view (1.2 mm pixels, 0.5 mm steps) of ``regkit.data.chest_ct_crop``; a batch of 16 views;
the bones' depth maps; and a DRR's gradient with respect to the pose on CUDA. The OpenGL renderer
is timed twice: interpolating the texels in float (``filtering="exact"``, what ``"auto"`` picks
where the texture unit is not exact) and with the texture unit's own filtering; the unit's
measured error (``regkit.render.gl.context.filtering_error``) is recorded beside them. Each
figure is the median of 20 calls after 3 warm-ups (CUDA synchronised). The renderers' images are
compared with the torch CPU renderer's.

Usage: python benchmarks/gpu_render_timing.py OUT.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from regkit.data import chest_ct_crop
from regkit.errors import BackendUnavailableError
from regkit.geometry.carm import camera_from_carm
from regkit.io.nifti import load_nifti
from regkit.render.base import Views
from regkit.render.select import make_renderer

STEP_MM = 0.5


def _median_s(fn: Callable[[], Any], cuda: bool, rounds: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(path: str) -> None:
    paths = chest_ct_crop()
    volume = load_nifti(paths["ct"], labels=paths["bones"])
    labels = np.unique(np.asarray(volume.labels))
    bones = [int(v) for v in labels[labels > 0][:4]]
    centre = tuple(float(x) for x in volume.center_world)
    cam = camera_from_carm(source_to_detector_mm=1020.0, source_to_isocenter_mm=850.0,
                           pixel_spacing_mm=1.2, width=256, height=256, isocenter_world=centre)
    one = Views.from_cameras([cam])
    many = Views.from_cameras([cam] * 16)
    rows: dict[str, Any] = {"volume_shape": list(volume.shape), "step_mm": STEP_MM,
                            "bones": bones, "torch": torch.__version__,
                            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        rows["gpu"] = torch.cuda.get_device_name(0)
    reference = None
    runs: list[tuple[str, str, dict[str, Any]]] = [
        ("torch_cpu", "torch", {"device": "cpu"}),
        ("torch_cuda", "torch", {"device": "cuda"}),
        ("gl", "gl", {"filtering": "exact"}),
        ("gl_texture_unit", "gl", {"filtering": "texture-unit"})]
    for name, backend, options in runs:
        if name == "torch_cuda" and not torch.cuda.is_available():
            continue
        try:
            renderer = make_renderer(volume, backend=backend, step_mm=STEP_MM, **options)
        except BackendUnavailableError as err:
            rows[name] = {"unavailable": str(err)}
            continue
        cuda = name == "torch_cuda"
        image = np.asarray(renderer.drr(one)[0].detach().cpu(), dtype=np.float64)
        row: dict[str, Any] = {
            "drr_256_s": _median_s(partial(renderer.drr, one), cuda),
            "drr_16x256_s": _median_s(partial(renderer.drr, many), cuda, rounds=5),
            "depth_256_s": _median_s(partial(renderer.depth, one, bones), cuda, rounds=5),
        }
        if reference is None:
            reference = image
        else:
            row["drr_max_rel_diff_vs_torch_cpu"] = float(
                np.abs(image - reference).max() / np.abs(reference).max())
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    try:
        from regkit.render.gl.context import filtering_error

        rows["gl_texture_unit_filtering_error"] = {
            fmt: filtering_error(fmt) for fmt in ("f4", "f2", "nu2", "nu1")}
    except (BackendUnavailableError, ImportError) as err:
        rows["gl_texture_unit_filtering_error"] = {"unavailable": str(err)}
    print("texture unit's filtering error", rows["gl_texture_unit_filtering_error"], flush=True)
    if torch.cuda.is_available():
        grad = make_renderer(volume, backend="torch", step_mm=STEP_MM, device="cuda",
                             requires_grad=True)
        pose = torch.as_tensor(np.asarray(cam.camera_from_world), dtype=torch.float32,
                               device="cuda")
        kmat = torch.as_tensor(np.asarray(cam.intrinsic), dtype=torch.float32, device="cuda")

        def backward() -> None:
            p = pose.clone().requires_grad_(True)
            grad.drr(Views(kmat[None], p[None], 256, 256)).sum().backward()

        rows["torch_cuda_drr_256_forward_backward_s"] = _median_s(backward, True)
        print("gradient", rows["torch_cuda_drr_256_forward_backward_s"], flush=True)
    with open(path, "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
