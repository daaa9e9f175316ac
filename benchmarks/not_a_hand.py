r"""Where ``recon reconstruct`` refuses an image as "not a hand radiograph", and why there.

Usage::

    regkit recon generate --out DATA/test --phantoms 10 --views 12 --seed 303
    regkit recon generate --out DATA/extra --phantoms 30 --views 1 --seed 404
    .venv/bin/python benchmarks/not_a_hand.py DATA/test DATA/extra --out not_a_hand.json

For each held-out radiograph, in each variant of ``recon evaluate`` (``right``, ``left``:
mirrored, ``up``: turned half a turn, each with its camera turned to match), the shipped model's
prediction and the statistic the reconstructor checks
(:func:`regkit_recon.reconstruct.hand._whole_share`: the median, over the bones seen, of the share
of a bone's mask in its largest connected piece), the number of bones seen, and the spread of the
bones' median front depths. Then the same for images that are not hand radiographs, on the first
radiograph's camera: uniform noise, smoothed noise, a checkerboard, the radiograph inverted (a
transmitted image read as line integrals) and a linear ramp. The refusal threshold
(:data:`regkit_recon.reconstruct.hand.MIN_WHOLE_SHARE`) must lie below every radiograph's figure.
About 0.3 s a case on 2 cores (450 cases for the two folders above: 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from regkit_recon.groundtruth.sample import camera_of, read_sample
from regkit_recon.net.evaluate import VARIANTS
from regkit_recon.net.predict import predict, resolve_model, turn_array, turn_camera
from regkit_recon.reconstruct.hand import MIN_WHOLE_SHARE, _whole_share
from scipy import ndimage

from regkit.geometry.camera import Camera


def figures(image: np.ndarray, camera: Camera, loaded: Any) -> dict[str, float]:
    """The reconstructor's check and two more plain figures of one prediction."""
    pred = predict(image, camera, model=loaded)
    seen = [b for b in range(len(pred.bone_names)) if pred.hit[b].sum() >= 5]
    depths = [float(np.median(pred.front[b, 0][pred.hit[b]])) for b in seen]
    return {"whole_share": round(_whole_share(pred.hit), 4), "bones_seen": len(seen),
            "depth_spread_mm": round(float(np.ptp(depths)), 1) if depths else 0.0}


def not_hands(image: np.ndarray) -> dict[str, np.ndarray]:
    """Images of the radiograph's size and range that are not hand radiographs."""
    rng = np.random.default_rng(0)
    top = float(image.max())
    rows, cols = np.mgrid[:image.shape[0], :image.shape[1]]
    return {
        "uniform noise": rng.random(image.shape) * top,
        "smoothed noise": ndimage.gaussian_filter(rng.random(image.shape), 4) * top,
        "checkerboard": (((cols // 16) + (rows // 16)) % 2 + 0.1 * rng.random(image.shape)) * top,
        "inverted radiograph": top - image,
        "ramp": (cols + rows) / float(cols.max() + rows.max()) * top,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="+", help="ground-truth folders (regkit recon generate)")
    parser.add_argument("--out", required=True, help="the JSON to write")
    args = parser.parse_args(argv)
    loaded = resolve_model(None)
    rows: list[dict[str, Any]] = []
    files = [f for d in args.data for f in sorted((Path(d) / "samples").glob("*.npz"))]
    for n, path in enumerate(files):
        sample = read_sample(path)
        camera = camera_of(sample)
        view = json.loads(str(sample["meta"]))["view"]["kind"]
        for variant in ("right", "left", "up"):
            k, mirror = VARIANTS[variant]
            rows.append({"file": f"{path.parent.parent.name}/{path.name}", "view": view,
                         "variant": variant,
                         **figures(turn_array(sample["image"], k, mirror),
                                   turn_camera(camera, k, mirror), loaded)})
        print(f"{n + 1}/{len(files)} {path.name}: {rows[-1]}", file=sys.stderr, flush=True)
    first = read_sample(files[0])
    others = {name: figures(image, camera_of(first), loaded)
              for name, image in not_hands(first["image"].astype(np.float64)).items()}
    shares = np.array([r["whole_share"] for r in rows])
    summary = {
        "threshold": MIN_WHOLE_SHARE, "cases": len(rows),
        "whole_share": {"min": float(shares.min()), "p1": float(np.percentile(shares, 1)),
                        "median": float(np.median(shares))},
        "by_view": {v: float(min(r["whole_share"] for r in rows if r["view"] == v))
                    for v in sorted({r["view"] for r in rows})},
        "bones_seen_min": min(r["bones_seen"] for r in rows),
        "radiographs_refused": int((shares < MIN_WHOLE_SHARE).sum()),
        "not_hands": others,
        "not_hands_refused": sorted(k for k, v in others.items()
                                    if v["whole_share"] < MIN_WHOLE_SHARE),
    }
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
