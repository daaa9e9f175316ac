r"""How much Dice a boundary error of one pixel costs each bone at the test radiographs' size.

Usage::

    regkit recon generate --out DATA/test --phantoms 10 --views 12 --seed 303
    regkit recon generate --out DATA/train111 --phantoms 10 --views 16 --seed 111 --montage 0
    regkit recon evaluate --data DATA/test --out EVAL/test
    regkit recon evaluate --data DATA/train111 --out EVAL/train111
    .venv/bin/python benchmarks/dice_ceiling.py DATA/test --report EVAL/test/report.json \
        --report EVAL/train111/report.json --out dice_ceiling.json

For every bone of every radiograph in the folders, the Dice of its true mask against the same mask
eroded by one pixel, dilated by one pixel, and shifted by one pixel (the mean of a shift along
the rows and one along the columns), and the mask's area in pixels. These are not what a
network scores. They measure how fine issue 10's target (mean Dice 0.92 over the 29 bones of 256²
radiographs) is against the bones' size in pixels: where a one-pixel error already costs a bone
0.2 of Dice, the target asks for boundaries placed to a fraction of a pixel on a blurred, noisy
image. Each ``--report`` (``regkit recon
evaluate``'s JSON) adds the network's own per-bone Dice beside them. ``generate --phantoms 10
--views 16 --seed 111`` remakes hand_v6's first 160 training radiographs (a sample depends only
on the seed, its index and the generation parameters; hand_v6 trained on 128 phantoms of 16
views, the same parameters otherwise): the network's Dice there against the test split's
shows whether it over-fits its training radiographs or under-fits them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from regkit_recon.groundtruth.sample import read_sample
from regkit_recon.phantom.anatomy import BONE_NAMES
from scipy import ndimage


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def one_pixel_errors(folders: list[str]) -> dict[str, dict[str, float]]:
    """Per bone name: median area (px) and mean Dice after a one-pixel erosion, dilation, shift.

    The shift is the mean of one pixel along the rows and one along the columns (both given too):
    fingers run along the columns in fingers-down images, so a shift along the rows crosses them.
    """
    rows: dict[int, list[tuple[float, float, float, float, int]]] = {}
    for folder in folders:
        for path in sorted((Path(folder) / "samples").glob("*.npz")):
            sample = read_sample(path)
            for label, mask in zip(sample["bones"], sample["hit"], strict=True):
                if mask.sum() < 5:
                    continue
                rows.setdefault(int(label), []).append((
                    _dice(mask, ndimage.binary_erosion(mask)),
                    _dice(mask, ndimage.binary_dilation(mask)),
                    _dice(mask, np.roll(mask, 1, axis=1)), _dice(mask, np.roll(mask, 1, axis=0)),
                    int(mask.sum())))
    out = {}
    for label in sorted(rows):
        v = np.array(rows[label], dtype=np.float64)
        out[BONE_NAMES[label]] = {"area_px_median": float(np.median(v[:, 4])),
                                  "erode_1px": round(float(v[:, 0].mean()), 4),
                                  "dilate_1px": round(float(v[:, 1].mean()), 4),
                                  "shift_1px": round(float(v[:, 2:4].mean()), 4),
                                  "shift_1px_across_columns": round(float(v[:, 2].mean()), 4),
                                  "shift_1px_across_rows": round(float(v[:, 3].mean()), 4),
                                  "masks": len(v)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="+", help="ground-truth folders (regkit recon generate)")
    parser.add_argument("--report", action="append", default=[],
                        help="a `regkit recon evaluate` report.json whose per-bone Dice to add")
    parser.add_argument("--out", required=True, help="the JSON to write")
    args = parser.parse_args(argv)
    bones = one_pixel_errors(args.data)
    networks: dict[str, Any] = {}
    for report in args.report:
        data = json.loads(Path(report).read_text())
        per_bone = data["overall"]["dice"]["per_bone"]
        networks[report] = {"samples": data.get("samples"), "mean": data["overall"]["dice"]["mean"],
                            "per_bone": per_bone}
    mean = {k: round(float(np.mean([b[k] for b in bones.values()])), 4)
            for k in ("erode_1px", "dilate_1px", "shift_1px")}
    result = {"data": args.data, "mean_over_bones": mean, "bones": bones, "networks": networks}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    head = f"{'bone':20s} {'area':>6s} {'erode':>6s} {'dilate':>6s} {'shift':>6s}"
    print(head + "".join(f" {Path(r).parent.name[:9]:>9s}" for r in networks))
    for name, b in bones.items():
        nets = "".join(f" {n['per_bone'].get(name, float('nan')):9.3f}" for n in networks.values())
        print(f"{name:20s} {b['area_px_median']:6.0f} {b['erode_1px']:6.3f} {b['dilate_1px']:6.3f} "
              f"{b['shift_1px']:6.3f}{nets}")
    nets = "".join(f" {n['mean']:9.3f}" for n in networks.values())
    print(f"{'mean over bones':20s} {'':6s} {mean['erode_1px']:6.3f} {mean['dilate_1px']:6.3f} "
          f"{mean['shift_1px']:6.3f}{nets}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
