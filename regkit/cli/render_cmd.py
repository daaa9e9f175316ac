"""``regkit render``: DRRs (and bone depth maps) of a volume for every view of a camera file."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from regkit.cli._units import add_units_argument, apply_units
from regkit.errors import InputError
from regkit.geometry.camera import load_cameras
from regkit.io.nifti import load_nifti
from regkit.io.png import montage, to_uint8, write_png
from regkit.labels import check_present, parse_labels, present_labels
from regkit.utils.files import atomic_path, check_outputs, path_arg

__all__ = ["register"]


def _render(args: argparse.Namespace) -> int:
    from regkit.render.base import Views
    from regkit.render.select import make_renderer

    depth_wanted = args.depth_out is not None
    if depth_wanted and (args.labels is None or args.bones is None):
        raise InputError("--depth-out needs --labels and --bones", key="--depth-out")
    if args.bones is not None and args.labels is None:
        raise InputError("--bones needs --labels", key="--bones")
    if args.bones is not None and not depth_wanted:
        raise InputError("--bones selects the bones of the depth maps: give --depth-out too",
                         key="--bones")
    if args.layers < 1 or args.layers > 255:
        raise InputError(f"must be between 1 and 255, got {args.layers}", key="--layers")
    if args.step_mm is not None and not args.step_mm > 0:
        raise InputError(f"must be positive, got {args.step_mm}", key="--step-mm")
    check_outputs([("--out", args.out), ("--depth-out", args.depth_out), ("--png", args.png)],
                  [args.volume, args.camera, args.labels])
    cameras = load_cameras(args.camera)
    volume = load_nifti(args.volume, labels=args.labels)
    volume = apply_units(volume, args.units, args.volume, "regkit render")
    bones = parse_labels(args.bones) if args.bones is not None else None
    if bones is not None and volume.labels is not None:
        check_present(bones, present_labels(volume.labels), key="--bones",
                      source=str(args.labels))
    try:
        views = Views.from_cameras(cameras)
    except ValueError as err:
        raise InputError(f"the views must share one detector size for a DRR file ({err})",
                         source=args.camera) from None

    t0 = time.perf_counter()
    renderer = make_renderer(volume, backend=args.backend, step_mm=args.step_mm)
    drr = renderer.drr(views).detach().cpu().numpy().astype(np.float32)
    depth = renderer.depth(views, bones, layers=args.layers) if bones is not None else None
    seconds = time.perf_counter() - t0

    with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
        np.save(f, drr)
    if depth is not None:
        with atomic_path(args.depth_out) as tmp, open(tmp, "wb") as f:
            arrays = depth.to_numpy()
            np.savez_compressed(f, front=arrays["front"], back=arrays["back"],
                                layers=arrays["layers"])
    if args.png is not None:
        tiles = [to_uint8(d) for d in drr]
        if depth is not None:
            arrays = depth.to_numpy()
            tiles += [to_uint8(arrays["front"][b, 0]) for b in range(drr.shape[0])]
            tiles += [to_uint8(depth.thickness()[b].cpu().numpy()) for b in range(drr.shape[0])]
        write_png(args.png, montage(tiles, columns=drr.shape[0]))
    print(f"rendered {drr.shape[0]} view(s) of {drr.shape[1]} x {drr.shape[2]} px with the "
          f"'{renderer.backend}' backend in {seconds:.2f} s -> {args.out}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``render``."""
    p = subparsers.add_parser(
        "render", help="render DRRs and bone depth maps",
        description="Render the DRR of a volume for every view of a camera file, in file order, "
        "as float32 [B, H, W] line integrals. With --labels, --bones and --depth-out, also the "
        "front and back depths of those bones' surface (depth file layout of the conventions).")
    p.add_argument("--volume", required=True, type=path_arg, metavar="CT.nii.gz")
    p.add_argument("--camera", required=True, type=path_arg, metavar="CAMERA.json")
    p.add_argument("--out", required=True, type=path_arg, metavar="DRR.npy")
    p.add_argument("--backend", default=None, help="torch or gl (default: the faster one here)")
    p.add_argument("--step-mm", type=float, default=None,
                   help="sampling step along rays in mm (default: half the smallest spacing)")
    add_units_argument(p)
    p.add_argument("--labels", type=path_arg, default=None, metavar="LABELS.nii.gz")
    p.add_argument("--bones", default=None, metavar="70,72", help="label values of the bones")
    p.add_argument("--layers", type=int, default=2, help="depth layers to keep (default 2)")
    p.add_argument("--depth-out", type=path_arg, default=None, metavar="DEPTH.npz")
    p.add_argument("--png", type=path_arg, default=None, metavar="PREVIEW.png",
                   help="a preview: DRRs (and front depth and thickness) side by side")
    p.set_defaults(func=_render)
