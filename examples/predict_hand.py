"""Bone network demo: one hand radiograph in, every bone's mask and depth out.

Takes the PA radiograph of the demo hand that regkit-recon ships (a phantom with two malunited
phalanges, never seen in training), writes it and its camera as a user would have them, runs
``regkit recon predict`` with the shipped model, then ``regkit recon evaluate`` on the three
demo views (PA, oblique, lateral) against their ground truth, writing ``report.png``.

Usage: python examples/predict_hand.py --out quickstart-output/hand
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from regkit.cli.main import main as regkit_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("quickstart-output/hand"))
    args = parser.parse_args()
    from regkit_recon.data import demo_hand
    from regkit_recon.groundtruth.sample import read_sample
    from regkit_recon.net.predict import load_prediction

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    folder = demo_hand()
    sample = read_sample(folder / "samples" / "000000.npz")
    np.save(out / "radiograph.npy", sample["image"])
    (out / "camera.json").write_text(sample["camera"] + "\n", encoding="utf-8")
    start = time.perf_counter()
    status = regkit_main(["recon", "predict", "--image", str(out / "radiograph.npy"),
                          "--camera", str(out / "camera.json"), "--out",
                          str(out / "prediction.npz")])
    if status:
        raise SystemExit(status)
    pred = load_prediction(out / "prediction.npz")
    truth = sample["hit"]
    dice = [2 * (p & t).sum() / (p.sum() + t.sum()) for p, t in zip(pred["hit"], truth,
                                                                      strict=True) if t.any()]
    print(f"predicted {int(pred['hit'].any(axis=(1, 2)).sum())} of {len(pred['bones'])} bones in "
          f"{time.perf_counter() - start:.2f} s (start-up included); mean Dice against the "
          f"truth {np.mean(dice):.3f}")
    status = regkit_main(["recon", "evaluate", "--data", str(folder), "--out", str(out)])
    if status:
        raise SystemExit(status)
    print(f"done: {out}/prediction.npz, {out}/report.png, {out}/report.json")


if __name__ == "__main__":
    main()
