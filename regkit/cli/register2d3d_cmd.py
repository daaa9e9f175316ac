"""``regkit register-2d3d``: register a CT to one or several radiographs, write the result."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from regkit.cli._units import add_units_argument, apply_units
from regkit.cli._warm import (
    Background,
    import_registration_modules,
    read_nifti_files,
    take,
)
from regkit.cli.progress import ProgressPrinter
from regkit.errors import InputError
from regkit.labels import parse_labels
from regkit.registration.levels import DEFAULT_SEED
from regkit.utils.files import check_output, check_outputs, path_arg

__all__ = ["register"]


def _register2d3d(args: argparse.Namespace) -> int:
    if args.seed is not None and args.seed < 0:
        raise InputError(f"must be >= 0, got {args.seed}", key="--seed")
    if not args.out.name.lower().endswith(".json"):
        raise InputError(f"must end with .json, got '{args.out.name}'", key="--out")
    bones = None if args.bones is None else parse_labels(args.bones)
    if bones is not None and args.labels is None:
        raise InputError("needs --labels (the label map the bones are numbered in)",
                         key="--bones")
    inputs = [p for p in (args.volume, args.labels, args.camera, *args.image) if p is not None]
    outputs: list[tuple[str, Path | None]] = [("--out", args.out)]
    if args.report is not None:
        from regkit.registration._report_files import radiograph_report_files as report_files

        check_output(args.report, inputs, kind="into", key="--report")
        outputs += [("--report", p) for p in report_files(args.report, len(args.image))]
    check_outputs(outputs, inputs)
    # The CT (and labels) are read and inflated on a thread while torch and the registration
    # modules import (see _warm); a bad file still reports after the checks and files before it.
    reading = Background(read_nifti_files, [args.volume, args.labels])
    try:
        from regkit.geometry.camera import load_cameras
        from regkit.io.nifti import load_labels, load_nifti
        from regkit.io.radiograph import load_radiograph
        from regkit.metrics import get_metric
        from regkit.optim import gradient_methods, optimizers
        from regkit.registration import Register2D3DOptions
        from regkit.registration.radiograph_registration import register_2d3d, save_report

        get_metric(args.metric)  # unknown names fail before the files are looked at
        if args.optimizer not in gradient_methods:
            optimizers.get(args.optimizer)
        options: dict[str, Any] = {}
        if args.detector_blur is not None:
            blur: Any = args.detector_blur
            if blur != "estimate":
                try:
                    blur = float(blur)
                except ValueError:
                    raise InputError(f"must be 'estimate' or a number of detector pixels, got "
                                     f"{args.detector_blur!r}", key="--detector-blur") from None
            try:
                options["detector_blur_px"] = Register2D3DOptions(detector_blur_px=blur) \
                    .detector_blur_px
            except InputError as err:
                raise InputError(err.reason, key="--detector-blur") from None
        if args.full_detector:
            options["full_detector"] = True
        import_registration_modules()
        cameras = load_cameras(args.camera)
        if len(args.image) != len(cameras):
            raise InputError(f"{len(args.image)} --image for {len(cameras)} camera(s) in "
                             f"{args.camera}: give one --image per camera, in file order",
                             key="--image")
        images = [load_radiograph(p, kind=args.image_kind) for p in args.image]
        ct_file, labels_file = reading.result()
    finally:   # also on an error: no read left running behind it
        reading.wait()
    volume = load_nifti(take(ct_file))     # its errors before the label map's, as in line
    volume = apply_units(volume, args.units, args.volume, "regkit register-2d3d")
    if labels_file is not None:
        volume = volume.with_labels(load_labels(take(labels_file), like=volume))
    result = register_2d3d(volume, cameras, images, bones=bones, metric=args.metric,
                           optimizer=args.optimizer, seed=args.seed, backend=args.backend,
                           options=options or None, progress=ProgressPrinter("register-2d3d"))
    result.save(args.out)
    if args.report is not None:
        save_report(args.report, volume, cameras, images, result, bones=bones,
                    backend=args.backend)
    print(f"register-2d3d: {len(cameras)} view(s), {result.metric} {result.final_score:.5g}, "
          f"{result.evaluations} evaluations in {result.seconds:.2f} s (seed "
          f"{result.extras['seed']}) -> {args.out}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``register-2d3d``."""
    p = subparsers.add_parser(
        "register-2d3d", help="register a CT to one or several radiographs (2D-3D)",
        description="Find world_correction, the one rigid transform of the CT's world that "
        "makes its DRRs match the radiographs, by a multi-resolution CMA-ES search, and write "
        "the refined cameras (camera_from_world_input @ world_correction) as a result JSON.")
    p.add_argument("--volume", required=True, type=path_arg, metavar="CT.nii.gz",
                   help="the CT (HU, or μ with --units mu)")
    add_units_argument(p)
    p.add_argument("--camera", required=True, type=path_arg, metavar="INIT.json",
                   help="camera file: one view or a list, the initial poses")
    p.add_argument("--image", required=True, type=path_arg, action="append", metavar="X",
                   help="a radiograph (.npy, PNG, TIFF, DICOM), one per camera in file order")
    p.add_argument("--out", required=True, type=path_arg, metavar="RESULT.json")
    p.add_argument("--image-kind", choices=("line-integral", "transmitted"),
                   default="line-integral",
                   help="what the images hold: line integrals (bone bright, default) or "
                   "detector intensity (bone dark)")
    p.add_argument("--labels", type=path_arg, default=None, metavar="LABELS.nii.gz",
                   help="label map of the CT (needed by --bones)")
    p.add_argument("--bones", default=None, metavar="70,72",
                   help="register these labelled bones only, ignoring their neighbours")
    p.add_argument("--metric", default="gncc",
                   help="similarity: gncc (default), gc, ncc, lncc, ...")
    p.add_argument("--optimizer", default="cmaes",
                   help="method of the search levels: cmaes (default), powell, nelder_mead")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed (default {DEFAULT_SEED}: runs repeat)")
    p.add_argument("--backend", default=None,
                   help="renderer: gl or torch (default: the faster one here)")
    p.add_argument("--detector-blur", default=None, metavar="PX|estimate",
                   help="model the detector's blur in every DRR (σ in detector pixels, applied "
                   "to the transmitted intensity), or 'estimate' it at each level past the "
                   "first (the last level then runs twice); default off. Unmodelled, it "
                   "moves one view's depth by about 1 mm per pixel "
                   "(see Register2D3DOptions.detector_blur_px)")
    p.add_argument("--full-detector", action="store_true",
                   help="finish with a level at each radiograph's full resolution (up to 512^2 "
                   "pixels; about 2 s more per 256^2 view on 2 cores; with --detector-blur, "
                   "single-view precision about 0.11-0.13 mm on the benchmark; see "
                   "Register2D3DOptions.full_detector)")
    p.add_argument("--report", type=path_arg, default=None, metavar="DIR",
                   help="write PNGs: DRR edges over each radiograph before and after, "
                   "convergence")
    p.set_defaults(func=_register2d3d)
