"""Quick-start demo on the chest CT crop that regkit ships.

Loads the CT and its bone labels, builds a C-arm sweep around the crop (AP, LAO 30°, RAO 30° and a
lateral view), writes the camera file, renders the DRRs and the depth maps of one vertebra with
every renderer backend available here, and writes PNG previews. Prints what it wrote and how long
each backend took.

Usage: python examples/quickstart.py --out quickstart-output
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import regkit
from regkit.data import chest_ct_crop
from regkit.io.png import montage, to_uint8, write_png
from regkit.render.base import Views
from regkit.render.select import available_backends, make_renderer
from regkit.utils.files import atomic_path

VERTEBRA_T8 = 36


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("quickstart-output"))
    parser.add_argument("--size", type=int, default=256, help="detector size in pixels")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    paths = chest_ct_crop()
    ct = regkit.load_nifti(paths["ct"], labels=paths["bones"])
    print(f"CT crop: {ct.shape} voxels, spacing {np.round(ct.spacing, 3)} mm, "
          f"{len(np.unique(ct.labels)) - 1} labelled bones")

    # A C-arm sweep about the crop's centre: SID 1020 mm, isocentre 850 mm from the source. The
    # detector spacing is chosen so the crop fills most of the image.
    spacing = 0.8 * 256 / args.size
    cameras = [
        regkit.camera_from_carm(
            source_to_detector_mm=1020.0, source_to_isocenter_mm=850.0,
            pixel_spacing_mm=spacing, width=args.size, height=args.size,
            primary_angle=np.deg2rad(angle), isocenter_world=ct.center_world)
        for angle in (0.0, 30.0, -30.0, 90.0)
    ]
    regkit.save_cameras(out / "cameras.json", cameras)
    print(f"wrote {out / 'cameras.json'}: AP, LAO 30, RAO 30, LAO 90 (lateral)")

    views = Views.from_cameras(cameras)
    for backend in available_backends():
        try:
            renderer = make_renderer(ct, backend=backend)
        except regkit.BackendUnavailableError as err:
            print(f"[{backend}] skipped: {err}")
            continue
        renderer.drr(views)  # warm-up (context, kernels, caches)
        t0 = time.perf_counter()
        drr = renderer.drr(views).cpu().numpy()
        t_drr = time.perf_counter() - t0
        t0 = time.perf_counter()
        depth = renderer.depth(views, [VERTEBRA_T8], layers=2)
        t_depth = time.perf_counter() - t0
        with atomic_path(out / f"drr_{backend}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, drr.astype(np.float32))
        arrays = depth.to_numpy()
        with atomic_path(out / f"depth_T8_{backend}.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, front=arrays["front"], back=arrays["back"],
                                layers=arrays["layers"])
        thickness = depth.thickness().cpu().numpy()
        front = arrays["front"][:, 0]
        window = (float(np.nanmin(front)), float(np.nanmax(front))) if np.isfinite(front).any() \
            else None
        tiles = [to_uint8(d) for d in drr] + [to_uint8(f, window) for f in front] \
            + [to_uint8(t) for t in thickness]
        write_png(out / f"preview_{backend}.png", montage(tiles, columns=len(cameras)))
        print(f"[{backend}] {len(cameras)} DRRs of {args.size}² in {t_drr * 1e3:.0f} ms, "
              f"T8 depth maps in {t_depth * 1e3:.0f} ms; "
              f"wrote drr_{backend}.npy, depth_T8_{backend}.npz, preview_{backend}.png "
              "(rows: DRR, front depth of T8, T8 thickness)")
    print(f"done: results in {out}/")


if __name__ == "__main__":
    main()
