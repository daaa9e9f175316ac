"""``regkit project``: project world points through every view of a camera file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from regkit.geometry.camera import load_cameras
from regkit.io.points import read_points, write_pixels
from regkit.utils.files import check_output

__all__ = ["register"]


def _project(args: argparse.Namespace) -> int:
    check_output(args.out, [args.camera, args.points])
    cameras = load_cameras(args.camera)
    points = read_points(args.points)
    uv = np.stack([c.project(points) for c in cameras])  # (B, N, 2)
    write_pixels(args.out, uv)
    behind = int(np.isnan(uv[..., 0]).sum())
    if behind:
        print(f"regkit: warning: {behind} point projection(s) lie at or behind the source and "
              "are NaN", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``project``."""
    parser = subparsers.add_parser(
        "project", help="project world points to pixels",
        description="Project world points (N, 3), in mm (RAS+), through every view of a camera "
        "file to pixel coordinates (u, v) = (column, row). A .npy output holds (B, N, 2) for B "
        "views; a .csv output holds (N, 2) and needs a single view. Points at or behind a "
        "view's source give NaN.")
    parser.add_argument("--camera", required=True, metavar="CAMERA.json", help="camera file")
    parser.add_argument("--points", required=True, metavar="POINTS",
                        help="world points: .npy (N, 3) or .csv with 3 columns")
    parser.add_argument("--out", required=True, metavar="UV", help="output .npy or .csv")
    parser.set_defaults(func=_project)
