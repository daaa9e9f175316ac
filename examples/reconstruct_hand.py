"""Reconstruction demo: the bones of a hand from one radiograph, and from two, measured.

Takes the demo hand that regkit-recon ships (a phantom with two malunited phalanges, rendered and
degraded like the training data, never trained on), writes its PA and oblique radiographs and
cameras as a user would have them, and runs

* ``regkit recon reconstruct`` on the PA radiograph alone (``OUT/single``), and on PA + oblique
  (``OUT/biplane``, each bone triangulated and fused from both views): label volume, meshes, depth
  maps, measurements, ``report.png``;
* ``regkit recon measure`` on the phantom's own labels (rebuilt from its seed) for the truth;

then prints the measured deformity and the surface error beside the truth: "truth" is the same
measurement of the phantom's labels, "recorded" what the phantom was built with (a distal phalanx
broken near its tuft is too short for the measurement to see; see the plugin README).

Usage: python examples/reconstruct_hand.py --out quickstart-output/reconstruction
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from regkit.cli.main import main as regkit_main

_FIELDS = ("angulation_deg", "angulation2_deg", "dorsal_tilt_deg", "radial_inclination_deg")


def _run(args: list[str]) -> None:
    status = regkit_main(args)
    if status:
        raise SystemExit(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("quickstart-output/reconstruction"))
    args = parser.parse_args()
    from regkit_recon.data import demo_hand
    from regkit_recon.groundtruth.sample import phantom_of, read_sample
    from regkit_recon.reconstruct.evaluate import surface_errors, truth_meshes
    from regkit_recon.reconstruct.mesh import read_stl

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    folder = demo_hand()
    samples = [read_sample(folder / "samples" / f"00000{i}.npz") for i in (0, 1)]
    for i, sample in enumerate(samples):
        np.save(out / f"radiograph_{i}.npy", sample["image"])
        (out / f"camera_{i}.json").write_text(sample["camera"] + "\n", encoding="utf-8")

    timings = {}
    for name, views in (("single", [0]), ("biplane", [0, 1])):
        images = [a for i in views for a in ("--image", str(out / f"radiograph_{i}.npy"),
                                             "--camera", str(out / f"camera_{i}.json"))]
        start = time.perf_counter()
        _run(["recon", "reconstruct", *images, "--out", str(out / name), "--overwrite"])
        timings[name] = time.perf_counter() - start

    # The truth: the phantom rebuilt from its seed and recorded malunions, measured alike.
    meta = json.loads(samples[0]["meta"])
    phantom = phantom_of(samples[0])
    phantom.save(out / "truth")
    _run(["recon", "measure", "--labels", str(out / "truth" / "labels.nii.gz"), "--out",
          str(out / "truth" / "measurements.json")])
    truth = json.loads((out / "truth" / "measurements.json").read_text())["bones"]
    names = dict(phantom.bone_table)
    true_meshes = truth_meshes(np.asarray(phantom.labels), phantom.volume.world_from_index,
                               names)
    direction = np.asarray(json.loads(samples[0]["camera"])["camera_from_world"])[2, :3]

    shown = [d["bone"] for d in meta["deformities"]] + ["radius"]
    for name in ("single", "biplane"):
        measured = json.loads((out / name / "measurements.json").read_text())["bones"]
        meshes = {p.stem: read_stl(p) for p in sorted((out / name / "meshes").glob("*.stl"))}
        errors = surface_errors(meshes, true_meshes, direction)
        print(f"\n{name}: {timings[name]:.1f} s; surface error (median over bones) "
              f"{errors['median_assd_mm']:.2f} mm ASSD, {errors['median_aligned_assd_mm']:.2f} "
              f"mm shift-aligned")
        print(f"  {'bone':20s} {'field':24s} {'measured':>9s} {'truth':>9s} {'recorded':>9s}")
        for bone in shown:
            record = next((d for d in meta["deformities"] if d["bone"] == bone), {})
            for key in _FIELDS:
                if key in truth.get(bone, {}):
                    got = measured.get(bone, {}).get(key)
                    text = f"{got:+9.1f}" if got is not None else "      n/a"
                    asked = record.get(key)
                    asked_text = f"{asked:+9.1f}" if asked is not None else "        -"
                    print(f"  {bone:20s} {key:24s} {text} {truth[bone][key]:+9.1f} "
                          f"{asked_text}")
    print(f"\nreports: {out / 'single' / 'report.png'}, {out / 'biplane' / 'report.png'}")


if __name__ == "__main__":
    main()
