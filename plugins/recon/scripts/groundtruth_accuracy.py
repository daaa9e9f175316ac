"""Accuracy figures of ``regkit recon generate``'s depth maps (the README's numbers).

Run from the repository root::

    .venv/bin/python plugins/recon/scripts/groundtruth_accuracy.py [OUT_DIR]

1. One phantom (seed-3 run, 0.8 mm voxels), one 96² PA sample; for every bone, up to 8 random
   pixels where it is over 1 mm thick: the first entry and exit against an independent march of
   the trilinear 0.5 level set (the test suite's, step 0.01 mm, bisection).
2. The same view rendered by the torch and the gl backends: DRR, hit masks and depths.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from regkit_recon.groundtruth.generate import GenerateSpec, generate, render_sample
from regkit_recon.groundtruth.sample import read_sample

from regkit.testing.oracles import trilinear_crossings


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gt_accuracy")
    generate(GenerateSpec(out=str(out), phantoms=1, views=3, size=96, voxel_mm=0.8, seed=3,
                          montage=0))
    s = read_sample(out / "samples" / "000000.npz")
    img = nib.load(out / "phantoms" / "p000" / "labels.nii.gz")
    labels = np.asarray(img.dataobj)
    index_from_world = np.linalg.inv(img.affine)
    cam = json.loads(s["camera"])
    k, t = np.array(cam["intrinsic"]), np.array(cam["camera_from_world"])
    rot = t[:3, :3]
    origin = -rot.T @ t[:3, 3]
    rng = np.random.default_rng(1)
    errors, skipped, pixels = [], 0, 0
    for b, bone in enumerate(s["bones"].tolist()):
        thick = np.nan_to_num(s["back"][b, 0] - s["front"][b, 0], nan=0.0)
        rows, cols = np.nonzero(thick > 1.0)
        mask = (labels == bone).astype(np.float64)
        for n in rng.choice(rows.size, size=min(8, rows.size), replace=False):
            r, c = rows[n], cols[n]
            d = rot.T @ np.linalg.solve(k, np.array([c + 0.5, r + 0.5, 1.0]))
            d /= np.linalg.norm(d)
            entries, exits = trilinear_crossings(
                mask, index_from_world, origin, d, float(s["front"][b, 0, r, c]) - 3.0,
                float(np.nanmax(s["back"][b, :, r, c])) + 3.0)
            pixels += 1
            if len(entries) != int(s["layers"][b, r, c]):
                skipped += 1
                continue
            errors += [abs(entries[0] - s["front"][b, 0, r, c]),
                       abs(exits[0] - s["back"][b, 0, r, c])]
    e = np.array(errors)
    print(f"independent march: {pixels} pixels, {skipped} with a gap the renderer stepped over; "
          f"first entry/exit |error| median {np.median(e):.2e} mm, max {e.max():.2e} mm")
    manifest = json.loads((out / "manifest.json").read_text())
    src = manifest["sources"][0]
    rel = src["path"]
    source = {"id": rel, "ct": str(out / rel / "ct.nii.gz"),
              "labels": str(out / rel / "labels.nii.gz"), "bones": src["bones"], "record": {}}
    a, g = (render_sample(0, source, {**manifest["parameters"], "backend": be}, 0)
            for be in ("torch", "gl"))
    drr = np.abs(a["image_clean"] - g["image_clean"]).max() / np.abs(a["image_clean"]).max()
    print(f"torch vs gl: DRR max |diff| / max {drr:.1e}; hit masks differ on "
          f"{int((a['hit'] != g['hit']).sum())} of {int(a['hit'].sum())} hit pixels")
    same = (a["layers"] == g["layers"])[:, None] & np.isfinite(a["front"]) \
        & np.isfinite(g["front"])
    for key in ("front", "back"):
        diff = np.abs(a[key] - g[key])[same]
        print(f"  {key}: |diff| median {np.median(diff):.1e} mm, max {diff.max():.1e} mm")


if __name__ == "__main__":
    main()
