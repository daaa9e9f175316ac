"""``regkit recon``: the reconstruction plugin's commands.

Actions:
    ``regkit recon phantom --seed N --out DIR [--deformity SPEC]... [--voxel-mm 0.4]
    [--preview PNG]`` writes a procedural hand CT phantom: ``ct.nii.gz`` (int16 HU),
    ``labels.nii.gz`` (uint8, 29 bones), ``labels.csv`` (label,bone) and ``phantom.json``
    (every drawn parameter, the deformities, the seed and the plugin's version). DIR appears
    whole or not at all.

Registered through the ``regkit.commands`` entry point ``recon``; nothing heavy is imported until
an action runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def _phantom(args: argparse.Namespace) -> int:
    from regkit_recon.phantom.phantom import make_hand_phantom

    spec: Any = None
    if args.deformity:
        spec = args.deformity[0] if len(args.deformity) == 1 else list(args.deformity)
    phantom = make_hand_phantom(args.seed, deformity=spec, voxel_mm=args.voxel_mm)
    out = phantom.save(args.out)
    if args.preview:
        from regkit_recon.phantom.preview import write_preview

        write_preview(phantom.volume, args.preview)
    shape = " x ".join(str(n) for n in phantom.volume.shape)
    print(f"regkit recon phantom: seed {phantom.seed}, {shape} voxels of {phantom.voxel_mm:g} mm, "
          f"{len(phantom.deformities)} deformit{'y' if len(phantom.deformities) == 1 else 'ies'},"
          f" smallest gap {phantom.min_gap_mm:.2f} mm ({' / '.join(phantom.closest_pair)}) "
          f"-> {out}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``recon`` and its actions to the ``regkit`` command line."""
    recon = subparsers.add_parser(
        "recon", help="single-radiograph bone reconstruction (phantoms)",
        description="Single-radiograph bone reconstruction: synthetic data and tools.")
    actions = recon.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    phantom = actions.add_parser(
        "phantom", help="write a procedural hand CT phantom with bone labels",
        description="Write a procedural CT of a right hand and distal forearm (RAS+ world, hand "
        "in the anatomical position: palm anterior, fingers inferior, thumb to the right) to "
        "DIR: ct.nii.gz (int16 HU), labels.nii.gz (uint8, 29 bones), labels.csv and "
        "phantom.json. The same seed gives the same phantom.",
        epilog="SPEC: bone=NAME,FIELD=VALUE,...  (or JSON). Metacarpals and phalanges take "
        "level (0.2-0.8 of the length), angulation_deg (sagittal, + apex dorsal), "
        "angulation2_deg (coronal, + distal fragment radial), rotation_deg, shortening_mm; "
        "the radius takes dorsal_tilt_deg, radial_inclination_deg, level_mm. Example: "
        "bone=metacarpal_5,angulation_deg=20,angulation2_deg=5,rotation_deg=10,"
        "shortening_mm=3")
    phantom.add_argument("--seed", type=int, required=True, metavar="N",
                         help="random seed (whole number >= 0)")
    phantom.add_argument("--out", required=True, metavar="DIR", help="output folder")
    phantom.add_argument("--deformity", action="append", metavar="SPEC",
                         help="a malunion to build in; repeat for several bones")
    phantom.add_argument("--voxel-mm", type=float, default=0.4, metavar="MM",
                         help="isotropic voxel size in mm (default 0.4; 0.3-0.5 recommended)")
    phantom.add_argument("--preview", metavar="PNG",
                         help="also write a PNG preview (PA and lateral projections, slices)")
    phantom.set_defaults(func=_phantom)
