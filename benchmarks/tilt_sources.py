r"""Where the radius' dorsal tilt from one PA radiograph goes wrong: layers, depths or masks.

Usage::

    regkit recon generate --out DATA/test --phantoms 10 --views 12 --seed 303
    .venv/bin/python benchmarks/tilt_sources.py --data DATA/test --out tilt_sources.json \
        [--cases 16] [--start 0] [--stride 6] [--model M] [--malunions]

For each PA view (the first ``--cases`` PA views among every ``--stride``-th sample from
``--start``), the radius' dorsal tilt and radial inclination of the same back-projection
(``bench_reconstruct.measure_backprojection``: ``measure_hand`` of ``backproject``) fed six
ways, against the same measurement of the phantom's own labels:

* ``exact``: the sample's true masks and both depth layers (the pipeline's floor);
* ``exact_first_layer``: the true masks and the first layer only, all the network predicts (a ray
  that leaves a bone and enters it again, through the distal radius' dorsal and palmar rims,
  keeps only its first piece);
* ``exact_extent``: the true masks and each ray's whole passage through the bone, from the first
  entry to the last exit (what a model with the last exit, ``--last``, predicts: the concavity
  between the rims filled, the rims kept);
* ``exact_first_layer_blurred``: the same first layer smoothed inside each mask (normalised
  Gaussian, ``--blur-px``), as a network's depth maps are smooth;
* ``true_masks_network_depth``: the true masks with the network's depths (no TTA; to its last
  exit where the model predicts one);
* ``network``: the network's masks and depths (no TTA), as ``recon reconstruct --no-tta``.

Signed errors (measured − truth, degrees) per case and their medians; a negative tilt error is
a tilt more dorsal than the truth's.

With ``--malunions``, every PA view of the phantoms with a shaft malunion instead (``--cases``,
``--start`` and ``--stride`` still apply), and each malunited metacarpal's or phalanx's errors the
same six ways: sagittal and coronal angulation and the apex, against the same measurement of the
labels (absolute errors, as ``bench_reconstruct.py`` reports them), and how many are within 3°
and 3 mm.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from bench_reconstruct import Truth, _deformity_errors, _within, measure_backprojection
from numpy.typing import NDArray
from regkit_recon.groundtruth.sample import camera_of, read_sample
from regkit_recon.net.data import last_exit_depth
from regkit_recon.net.predict import DEFAULT_MODEL, predict, resolve_model
from scipy.ndimage import gaussian_filter

WAYS = ("exact", "exact_first_layer", "exact_extent", "exact_first_layer_blurred",
        "true_masks_network_depth", "network")
FIELDS = ("dorsal_tilt_deg", "radial_inclination_deg")
SHAFT = ("angulation_error_deg", "angulation2_error_deg", "apex_error_mm")


def blurred(depth: NDArray[Any], inside: NDArray[np.bool_], sigma: float) -> NDArray[np.float32]:
    """``depth`` smoothed by a Gaussian inside ``inside`` only (normalised convolution)."""
    weight = gaussian_filter(inside.astype(np.float64), sigma)
    total = gaussian_filter(np.where(inside, depth, 0.0).astype(np.float64), sigma)
    return np.where(inside, total / np.maximum(weight, 1e-9), np.nan).astype(np.float32)


def _error(got: float | None, want: float) -> float | None:
    return None if got is None else round(float(got) - float(want), 2)


def run(data: Path, cases: int, start: int, stride: int, blur_px: float, model: str | None,
        stream: Any = sys.stderr, *, malunions: bool = False) -> dict[str, Any]:
    loaded = resolve_model(model)
    truths: dict[str, Truth] = {}
    rows: list[dict[str, Any]] = []
    for f in sorted((data / "samples").glob("*.npz"))[start::stride]:
        sample = read_sample(f)
        if json.loads(str(sample["meta"]))["view"]["kind"] != "pa":
            continue
        key = json.loads(str(sample["source"]))["path"]
        if malunions and not any(
                d["bone"] != "radius" for d in json.loads(
                    (data / key / "phantom.json").read_text()).get("deformities", [])):
            continue
        if key not in truths:
            truths[key] = Truth(data / key)
        truth = truths[key]
        want = truth.measured["bones"]["radius"]
        hit = sample["hit"]
        first_front, first_back = sample["front"][:, 0], sample["back"][:, 0]
        last_exit = last_exit_depth(sample["back"])
        seen = hit & np.isfinite(first_front) & np.isfinite(first_back)
        pred = predict(sample["image"], camera_of(sample), model=loaded)
        assert pred.front_all is not None
        assert pred.back_all is not None
        fed = {
            "exact": (sample["front"], sample["back"], hit),
            "exact_first_layer": (first_front, first_back, hit),
            "exact_extent": (first_front, last_exit, hit),
            "exact_first_layer_blurred": (
                np.stack([blurred(d, s, blur_px) for d, s in zip(first_front, seen, strict=True)]),
                np.stack([blurred(d, s, blur_px) for d, s in zip(first_back, seen, strict=True)]),
                hit),
            "true_masks_network_depth": (
                np.where(hit, pred.front_all, np.nan),
                np.where(hit, pred.back_all if pred.last_all is None else pred.last_all, np.nan),
                hit),
            "network": (pred.extent[0][:, 0], pred.extent[1][:, 0], pred.hit),
        }
        row: dict[str, Any] = {"sample": f.name, "phantom": key,
                               "truth": {k: round(float(want[k]), 2) for k in FIELDS}}
        for way, (front, back, mask) in fed.items():
            got = measure_backprojection(front, back, mask, sample, truth)
            radius = got["bones"].get("radius", {})
            row[way] = {k: _error(radius.get(k), want[k]) for k in FIELDS}
            if malunions:
                row[way]["bones"] = {name: {k: e[k] for k in SHAFT}
                                     for name, e in _deformity_errors(got, truth, False).items()
                                     if name != "radius"}
        rows.append(row)
        print(f"tilt sources {len(rows)}/{cases} {f.name}: " + ", ".join(
            f"{w} {row[w]['dorsal_tilt_deg']}" for w in WAYS), file=stream, flush=True)
        if len(rows) >= cases:
            break
    summary: dict[str, Any] = {"cases": len(rows), "phantoms": len(truths), "blur_px": blur_px,
                               "model": str(Path(model).resolve()) if model
                               else f"{DEFAULT_MODEL.name} (shipped)"}
    for way in WAYS:
        tilt = [r[way]["dorsal_tilt_deg"] for r in rows if r[way]["dorsal_tilt_deg"] is not None]
        incl = [r[way]["radial_inclination_deg"] for r in rows
                if r[way]["radial_inclination_deg"] is not None]
        summary[way] = {"median_tilt_error_deg": round(float(np.median(tilt)), 2),
                        "median_abs_tilt_error_deg": round(float(np.median(np.abs(tilt))), 2),
                        "tilt_errors_negative": int(np.sum(np.asarray(tilt) < 0)),
                        "median_abs_inclination_error_deg":
                            round(float(np.median(np.abs(incl))), 2)}
        if malunions:
            shafts = [e for r in rows for e in r[way]["bones"].values()]
            summary[way]["malunited_bones"] = {
                "bones": len(shafts),
                **{f"median_{k}": round(float(np.median([e[k] for e in shafts])), 2)
                   for k in SHAFT},
                "within_3deg_3mm": sum(_within(e) for e in shafts)}
    return {"summary": summary, "cases": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stride", type=int, default=6)
    parser.add_argument("--blur-px", type=float, default=2.0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--malunions", action="store_true",
                        help="PA views of phantoms with a shaft malunion, and its errors too")
    args = parser.parse_args(argv)
    result = run(args.data, args.cases, args.start, args.stride, args.blur_px, args.model,
                 malunions=args.malunions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
