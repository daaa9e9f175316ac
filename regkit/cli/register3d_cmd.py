"""``regkit register-3d3d``: register one volume to another (rigid or affine), write the result."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from regkit.cli._warm import (
    Background,
    import_registration_modules,
    read_nifti_files,
    take,
)
from regkit.cli.progress import ProgressPrinter
from regkit.errors import InputError
from regkit.registration.levels import DEFAULT_SEED
from regkit.utils.files import check_output, check_outputs, path_arg

__all__ = ["register"]


def _mask(path: Path | None, like: Any, flag: str) -> np.ndarray | None:
    from regkit.io.nifti import load_labels

    if path is None:
        return None
    labels = load_labels(path, like=like)
    mask = labels > 0
    if not mask.any():
        raise InputError("selects no voxel (no value above 0)", source=path, key=flag)
    return mask


def _register3d3d(args: argparse.Namespace) -> int:
    if args.seed is not None and args.seed < 0:
        raise InputError(f"must be >= 0, got {args.seed}", key="--seed")
    for flag, path, suffixes in (("--out", args.out, (".json",)),
                                 ("--resampled", args.resampled, (".nii", ".nii.gz")),
                                 ("--itk-transform", args.itk_transform, (".tfm", ".txt"))):
        if path is not None and not path.name.lower().endswith(suffixes):
            raise InputError(f"must end with {' or '.join(suffixes)}, got '{path.name}'",
                             key=flag)
    inputs = [p for p in (args.fixed, args.moving, args.fixed_mask, args.moving_mask)
              if p is not None]
    outputs: list[tuple[str, Path | None]] = [
        ("--out", args.out), ("--resampled", args.resampled),
        ("--itk-transform", args.itk_transform)]
    if args.report is not None:
        from regkit.registration._report_files import volume_report_files as report_files

        check_output(args.report, inputs, kind="into", key="--report")
        outputs += [("--report", p) for p in report_files(args.report)]
    check_outputs(outputs, inputs)
    # The volumes are read and inflated on a thread while torch and the registration modules
    # import (see _warm); a bad file still reports after the metric's check, fixed first.
    reading = Background(read_nifti_files, [args.fixed, args.moving])
    try:
        from regkit.io.itk import write_itk_transform
        from regkit.io.nifti import load_nifti, save_nifti
        from regkit.metrics import get_metric
        from regkit.registration.volume_registration import (
            register_3d3d,
            resample_moving,
            save_report,
        )

        get_metric(args.metric)  # an unknown metric fails before the volumes are looked at
        import_registration_modules()
        fixed_file, moving_file = reading.result()
    finally:   # also on an error: no read left running behind it
        reading.wait()
    fixed = load_nifti(take(fixed_file))
    moving = load_nifti(take(moving_file))
    fixed_mask = _mask(args.fixed_mask, fixed, "--fixed-mask")
    moving_mask = _mask(args.moving_mask, moving, "--moving-mask")

    result = register_3d3d(fixed, moving, transform=args.transform, metric=args.metric,
                           fixed_mask=fixed_mask, moving_mask=moving_mask, init=args.init,
                           seed=args.seed, backend=args.backend,
                           progress=ProgressPrinter("register-3d3d", show_stage=True))
    result.save(args.out)
    if args.itk_transform is not None:
        write_itk_transform(args.itk_transform, result.fixed_from_moving)
    if args.resampled is not None:
        save_nifti(resample_moving(fixed, moving, result.fixed_from_moving), args.resampled)
    if args.report is not None:
        save_report(args.report, fixed, moving, result)
    print(f"register-3d3d: {args.transform} registration, {result.metric} "
          f"{result.final_score:.5g}, {result.evaluations} evaluations in "
          f"{result.seconds:.2f} s (seed {result.extras['seed']}) -> {args.out}",
          file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``register-3d3d``."""
    p = subparsers.add_parser(
        "register-3d3d", help="register two volumes (CT to CT, rigid or affine)",
        description="Find fixed_from_moving, the transform from the moving image's world (mm) "
        "to the fixed image's, by a multi-resolution search (CMA-ES, then a quadratic-model "
        "polish), and write it as a result "
        "JSON (and optionally as an ITK .tfm, the resampled moving image and a PNG report).")
    p.add_argument("--fixed", required=True, type=path_arg, metavar="A.nii.gz")
    p.add_argument("--moving", required=True, type=path_arg, metavar="B.nii.gz")
    p.add_argument("--out", required=True, type=path_arg, metavar="RESULT.json")
    p.add_argument("--transform", choices=("rigid", "affine"), default="rigid")
    p.add_argument("--metric", default="ncc",
                   help="similarity: ncc (default, same modality), nmi or mattes_mi (across "
                   "modalities), ssd, lncc, ...")
    p.add_argument("--fixed-mask", type=path_arg, default=None, metavar="M.nii.gz",
                   help="score only the fixed voxels where this label map is non-zero")
    p.add_argument("--moving-mask", type=path_arg, default=None, metavar="M.nii.gz",
                   help="score only where the moving image's label map is non-zero")
    p.add_argument("--init", choices=("identity", "center", "moments"), default="center",
                   help="start: the world frames as given, centres of mass aligned (default), "
                   "or principal axes")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed (default {DEFAULT_SEED}: runs repeat)")
    p.add_argument("--backend", default=None,
                   help="renderer that resamples: torch or gl (default: the faster one here)")
    p.add_argument("--resampled", type=path_arg, default=None, metavar="OUT.nii.gz",
                   help="write the moving image resampled onto the fixed grid")
    p.add_argument("--itk-transform", type=path_arg, default=None, metavar="OUT.tfm",
                   help="write the result as an ITK transform (resamples moving onto fixed in "
                   "SimpleITK, Slicer)")
    p.add_argument("--report", type=path_arg, default=None, metavar="DIR",
                   help="write PNGs: checkerboards and edge overlays before and after, "
                   "convergence")
    p.set_defaults(func=_register3d3d)
