"""``regkit camera show CAMERA.json``: validate a camera file and summarise each view."""

from __future__ import annotations

import argparse
import json
from typing import Any

from regkit.geometry.camera import load_cameras

__all__ = ["register"]


def _show(args: argparse.Namespace) -> int:
    cameras = load_cameras(args.camera)
    if args.json:
        print(json.dumps([c.summary() for c in cameras], indent=2))
        return 0
    print(f"{args.camera}: {len(cameras)} view{'s' if len(cameras) != 1 else ''}, valid")
    for i, cam in enumerate(cameras):
        s = cam.summary()
        fx, fy = s["focal_lengths_px"]
        cx, cy = s["principal_point_px"]
        src = ", ".join(f"{x:.2f}" for x in s["source_world_mm"])
        view = ", ".join(f"{x:.4f}" for x in s["view_direction_world"])
        sdd = s["source_to_detector_mm"]
        print(f"view {i}: {cam.width} x {cam.height} px")
        print(f"  focal lengths    fx = {fx:.3f} px, fy = {fy:.3f} px")
        print(f"  principal point  ({cx:.3f}, {cy:.3f}) px")
        print(f"  source (world)   ({src}) mm")
        print(f"  view direction   ({view})")
        if sdd is not None:
            sx, sy = cam.pixel_spacing_mm or (0.0, 0.0)
            print(f"  pixel spacing    {sx:g} x {sy:g} mm; source to detector {sdd:.2f} mm")
    return 0


def register(subparsers: Any) -> None:
    """Add ``camera`` and its ``show`` action."""
    parser = subparsers.add_parser("camera", help="inspect camera files",
                                   description="Inspect camera files.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    show = actions.add_parser(
        "show", help="validate a camera file and print each view's summary",
        description="Validate a camera file (one camera or a list) and print each view's size, "
        "focal lengths, source position in world and viewing direction.")
    show.add_argument("camera", metavar="CAMERA.json", help="camera file")
    show.add_argument("--json", action="store_true", help="print the summaries as JSON")
    show.set_defaults(func=_show)
