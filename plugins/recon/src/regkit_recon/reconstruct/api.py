"""``reconstruct()`` and ``regkit recon reconstruct`` / ``regkit recon measure``.

Cameras: each radiograph's camera comes from, in order, its ``--camera`` file, the DICOM
radiograph's geometry fields, or the **standard hand-radiograph geometry**: the source
``--sdd-mm`` (default 1000) from the detector, the hand lying on the detector (the central ray
through the detector's centre meets the hand's mid-plane :data:`HAND_ABOVE_DETECTOR_MM` above
it), the detector pixel ``--pixel-spacing-mm`` (required then). ``result.json`` says which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.utils.files import check_output

from .base import Reconstruction, View, check_views, reconstructors

__all__ = ["HAND_ABOVE_DETECTOR_MM", "load_view", "reconstruct", "standard_camera"]

HAND_ABOVE_DETECTOR_MM = 15.0
"""The standard geometry's hand mid-plane height above the detector, mm."""


def standard_camera(width: int, height: int, *, pixel_spacing_mm: float,
                    sdd_mm: float = 1000.0) -> Camera:
    """A hand radiograph's standard geometry.

    The central ray through the detector's centre, the hand on the detector (see the module notes),
    looking along world +y (the C-arm convention at zero angles; a PA view of the plugin's hand
    phantom).
    """
    from regkit.geometry.carm import camera_from_carm

    if not pixel_spacing_mm > 0:
        raise InputError(f"must be > 0, got {pixel_spacing_mm}", key="--pixel-spacing-mm")
    if not sdd_mm > 2 * HAND_ABOVE_DETECTOR_MM:
        raise InputError(f"must exceed {2 * HAND_ABOVE_DETECTOR_MM} mm, got {sdd_mm}",
                         key="--sdd-mm")
    return camera_from_carm(source_to_detector_mm=sdd_mm,
                            source_to_isocenter_mm=sdd_mm - HAND_ABOVE_DETECTOR_MM,
                            pixel_spacing_mm=pixel_spacing_mm, width=width, height=height)


def load_view(image: str | os.PathLike[str], camera: str | os.PathLike[str] | None = None, *,
              image_kind: str = "line-integral", i0: float | None = None,
              pixel_spacing_mm: float | None = None, sdd_mm: float = 1000.0) -> View:
    """Read one radiograph and find its camera (see the module notes).

    Raises:
        FileFormatError: an unreadable image or camera file.
        InputError: a camera that does not match the image, or no way to know the geometry.
    """
    from regkit.geometry.camera import load_cameras
    from regkit.io.radiograph import load_radiograph

    if image_kind not in ("line-integral", "transmitted"):
        raise InputError(f"must be line-integral or transmitted, got {image_kind!r}",
                         key="--image-kind")
    radiograph = load_radiograph(image, kind=image_kind, i0=i0)  # type: ignore[arg-type]
    h, w = radiograph.shape
    if camera is not None:
        cameras = load_cameras(camera)
        if len(cameras) != 1:
            raise InputError(f"holds {len(cameras)} cameras; a radiograph needs its one camera",
                             source=camera, key="camera")
        cam, source = cameras[0], "camera file"
        if (cam.width, cam.height) != (w, h):
            raise InputError(f"the camera is {cam.width} x {cam.height} pixels but the image "
                             f"{image} is {w} x {h}", source=camera, key="camera")
    elif radiograph.camera is not None:
        cam, source = radiograph.camera, "DICOM geometry"
    elif pixel_spacing_mm is not None:
        cam = standard_camera(w, h, pixel_spacing_mm=pixel_spacing_mm, sdd_mm=sdd_mm)
        source = (f"standard hand geometry (SDD {sdd_mm:g} mm, pixel {pixel_spacing_mm:g} mm, "
                  f"hand {HAND_ABOVE_DETECTOR_MM:g} mm above the detector)")
    else:
        raise InputError(f"{image}: no camera file, no DICOM geometry and no "
                         "--pixel-spacing-mm: the X-ray geometry is unknown", key="--camera")
    if cam.pixel_spacing_mm is None:
        raise InputError("the camera has no pixel_spacing_mm, so depths in mm are unknown; add "
                         "it to the camera file", source=camera, key="pixel_spacing_mm")
    return View(radiograph.image, cam, camera_source=source, name=os.fspath(image))


def reconstruct(views: Sequence[View], *, reconstructor: str = "hand", model: Any = None,
                refine: bool | None = None, progress: Any = None,
                **options: Any) -> Reconstruction:
    """Reconstruct bones from radiographs with a registered reconstructor.

    Args:
        views: The radiographs (:func:`load_view`), the first being the main one.
        reconstructor: A name in :data:`~regkit_recon.reconstruct.base.reconstructors`.
        model: The model (file) the reconstructor uses; None for its default.
        refine: Refinement by re-projection (None: the reconstructor's default).
        progress: Called with one line per step.
        **options: The reconstructor's own options.
    """
    import inspect

    cls = reconstructors.get(reconstructor)
    checked = check_views(views)
    try:
        inspect.signature(cls).bind(model, **options)
    except TypeError as err:
        raise InputError(f"reconstructor {reconstructor!r} does not take these options ({err})",
                         key="options") from None
    return cls(model, **options).reconstruct(checked, refine=refine,  # type: ignore[call-arg]
                                             progress=progress)


# ------------------------------------------------------------------------------ command line


def add_reconstruct_arguments(parser: argparse.ArgumentParser) -> None:
    """``regkit recon reconstruct``'s arguments."""
    parser.add_argument("--image", action="append", required=True, metavar="X",
                        help="a radiograph (.npy, .png, .tif, DICOM); repeat for more views of "
                             "the same hand, each with its --camera")
    parser.add_argument("--camera", action="append", default=None, metavar="CAMERA.json",
                        help="the radiograph's camera file, once per --image (default: DICOM "
                             "geometry, or the standard geometry with --pixel-spacing-mm)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new)")
    parser.add_argument("--image-kind", choices=("line-integral", "transmitted"),
                        default="line-integral",
                        help="pixel values: line integrals (bone bright, default) or "
                             "transmitted intensity (bone dark)")
    parser.add_argument("--i0", type=float, default=None, metavar="I0",
                        help="unattenuated intensity of a transmitted image")
    parser.add_argument("--pixel-spacing-mm", type=float, default=None, metavar="MM",
                        help="detector pixel size for the standard geometry (no camera file)")
    parser.add_argument("--sdd-mm", type=float, default=1000.0, metavar="MM",
                        help="source-to-detector distance of the standard geometry (1000)")
    parser.add_argument("--model", default=None, metavar="M",
                        help="model file (default: the shipped model)")
    parser.add_argument("--reconstructor", default="hand", metavar="NAME",
                        help="registered reconstructor (default hand)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-refine", dest="refine", action="store_false", default=None,
                       help="skip refinement by re-projection (the default)")
    group.add_argument("--refine", dest="refine", action="store_true",
                       help="refine by re-projection (default off: with two or more views the "
                            "fusion alone measured better)")
    parser.add_argument("--refine-placement", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="with --refine and two or more views, also fit each bone's own "
                             "translation after the common depth offset (default: %(default)s)")
    parser.add_argument("--fuse-views", action=argparse.BooleanOptionalAction, default=True,
                        help="with two or more views, fuse each bone's solid with the same bone "
                             "back-projected from the other views (default: %(default)s)")
    parser.add_argument("--voxel-mm", type=float, default=0.5, metavar="MM",
                        help="label volume voxel size, 0.1 to 0.5 (default 0.5)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="average the network over the 8 flips and turns of each image at "
                             "two sizes (about 4 s more a radiograph on 2 cores; default: "
                             "%(default)s, see the plugin README)")
    parser.add_argument("--device", default="cpu", metavar="DEV", help="torch device (cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DIR")


def run_reconstruct(args: argparse.Namespace) -> int:
    """Run ``regkit recon reconstruct``."""
    cameras = args.camera or []
    if cameras and len(cameras) != len(args.image):
        raise InputError(f"{len(args.image)} images but {len(cameras)} cameras: give one "
                         "--camera per --image, or none", key="--camera")
    start = time.perf_counter()
    views = [load_view(image, cameras[i] if cameras else None, image_kind=args.image_kind,
                       i0=args.i0, pixel_spacing_mm=args.pixel_spacing_mm, sdd_mm=args.sdd_mm)
             for i, image in enumerate(args.image)]
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError("exists already (pass --overwrite to replace it)", source=out,
                         key="--out")
    check_output(out, [*args.image, *cameras], kind="folder")
    rec = reconstruct(views, reconstructor=args.reconstructor, model=args.model,
                      refine=args.refine, device=args.device, voxel_mm=args.voxel_mm,
                      refine_placement=args.refine_placement, fuse_views=args.fuse_views,
                      tta=args.tta, progress=lambda line: print(f"  {line}", file=sys.stderr))
    rec.save(out, overwrite=args.overwrite)
    print(f"regkit recon reconstruct: {rec.result['bones']} bones in "
          f"{time.perf_counter() - start:.1f} s -> {out}", file=sys.stderr)
    _print_measurements(rec.measurements)
    return 0


def _print_measurements(measurements: dict[str, Any]) -> None:
    for name, fields in measurements.get("bones", {}).items():
        shown = {k: v for k, v in fields.items()
                 if k in ("angulation_deg", "angulation2_deg", "dorsal_tilt_deg",
                          "radial_inclination_deg", "ulnar_variance_mm")}
        if shown:
            print(f"  {name:20s} " + "  ".join(f"{k} {v:+.1f}" for k, v in shown.items()))


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    """``regkit recon measure``'s arguments."""
    parser.add_argument("--labels", required=True, metavar="LABELS.nii.gz",
                        help="a hand label map (truth or reconstruction); bone names from the "
                             "labels.csv beside it, else the plugin's bone table")
    parser.add_argument("--out", required=True, metavar="M.json", help="measurements to write")


def run_measure(args: argparse.Namespace) -> int:
    """Run ``regkit recon measure``."""
    from regkit.utils.files import atomic_write_text, check_output
    from regkit_recon.measure_hand import (
        labels_table_beside,
        measure_labels_file,
        unmeasured_names_note,
    )

    check_output(args.out, [args.labels, labels_table_beside(args.labels)])
    note = unmeasured_names_note(args.labels)
    try:
        result = measure_labels_file(args.labels)
    except InputError as err:
        if note is None:
            raise
        # a bone the frame needs may be among the misspelt names
        raise InputError(f"{err.reason}; {note}", source=err.source, key=err.key) from None
    if note is not None:
        print(f"regkit recon measure: warning: {note}", file=sys.stderr)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"regkit recon measure: {len(result['bones'])} bones -> {args.out}", file=sys.stderr)
    return 0
