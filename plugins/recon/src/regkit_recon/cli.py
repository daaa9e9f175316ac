"""``regkit recon``: the reconstruction plugin's commands.

Actions:
    ``regkit recon phantom --seed N --out DIR [--deformity SPEC]... [--voxel-mm 0.4]
    [--preview PNG]`` writes a procedural hand CT phantom: ``ct.nii.gz`` (int16 HU),
    ``labels.nii.gz`` (uint8, 29 bones), ``labels.csv`` (label,bone) and ``phantom.json``
    (every drawn parameter, the deformities, the seed and the plugin's version). DIR appears
    whole or not at all.

    ``regkit recon generate --out DIR (--phantoms K | --ct CT --labels LABELS [--bones 70,72])
    --views V [--size 256] [--layers 2] [--seed S] [--workers N] [--malunion-fraction F]
    [--shard K/N]`` writes ground-truth samples (radiograph, camera, per-bone masks and depth
    layers); ``--radiograph X --camera INIT.json`` with ``--ct`` registers the CT to a real
    radiograph first. See :mod:`regkit_recon.groundtruth.generate`.

    ``regkit recon train --data DIR... --out RUN [--val DIR...] [--epochs N] [--batch B]
    [--size S] [--seed S] [--resume]`` trains the bone network (also under torchrun), see
    :mod:`regkit_recon.net.train`; ``regkit recon predict --image X --camera CAMERA.json --out
    PRED.npz`` runs it on one radiograph (:mod:`regkit_recon.net.predict`); ``regkit recon
    evaluate --data DIR... [--out REPORT_DIR]`` scores it (:mod:`regkit_recon.net.evaluate`).

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
    if args.preview:
        from regkit.utils.files import check_output

        check_output(args.preview, [], key="--preview")
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


def _generate(args: argparse.Namespace) -> int:
    from regkit.errors import InputError
    from regkit_recon.groundtruth.generate import (
        GenerateSpec,
        generate,
        parse_bones,
        parse_shard,
    )

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if args.radiograph is not None and args.ct is None:
        raise InputError("--radiograph needs the patient's CT (--ct and --labels)", key="ct")
    spec = GenerateSpec(out=args.out, phantoms=args.phantoms, ct=args.ct, labels=args.labels,
                        bones=parse_bones(args.bones), views=args.views, size=args.size,
                        layers=args.layers, seed=args.seed, workers=args.workers,
                        backend=args.backend, voxel_mm=args.voxel_mm, step_mm=args.step_mm,
                        drr_factor=args.drr_factor, kinds=kinds, montage=args.montage,
                        radiograph=args.radiograph, camera=args.camera,
                        malunion_fraction=args.malunion_fraction,
                        shard=parse_shard(args.shard))
    manifest = generate(spec)
    print(f"regkit recon generate: {len(manifest['samples'])} samples in {args.out} "
          f"({manifest.get('generated_last_run', 0)} made now, "
          f"{manifest.get('seconds_last_run', 0):.1f} s)", file=sys.stderr)
    return 0


def _train(args: argparse.Namespace) -> int:
    from regkit.errors import InputError
    from regkit_recon.net.train import TrainSpec, train

    shape: dict[str, Any] = {}
    if args.widths:
        try:
            shape["widths"] = tuple(int(w) for w in args.widths.split(","))
        except ValueError:
            raise InputError(f"must be whole numbers separated by commas, got "
                             f"{args.widths!r}", key="widths") from None
    if args.stem is not None:
        shape["stem"] = args.stem
    if args.context is not None:
        shape["context"] = args.context
    if args.head is not None:
        shape["head"] = args.head
    if args.head_blocks is not None:
        shape["head_blocks"] = args.head_blocks
    if args.last:
        shape["last"] = True
    if args.refine is not None:
        shape["refine"] = args.refine
    spec = TrainSpec(data=tuple(args.data), out=args.out,
                     val=tuple(args.val) if args.val else None, epochs=args.epochs,
                     batch=args.batch, size=args.size, seed=args.seed, lr=args.lr,
                     checkpoint_s=args.checkpoint_s, max_steps=args.max_steps,
                     val_limit=None if args.val_limit == 0 else args.val_limit, device=args.device,
                     precision=args.precision, init=args.init,
                     loader_workers=args.loader_workers, device_cache=args.cache_on_device,
                     trainable=args.trainable, outline_targets=args.outline_targets,
                     thickness_weight=args.thickness_weight, **shape)
    if args.stop_at is not None and args.stop_at < 1:
        raise InputError(f"must be a whole number >= 1, got {args.stop_at}", key="--stop-at")
    record = train(spec, resume=args.resume, stop_at=args.stop_at)
    if record["rank"] == 0:
        print(f"regkit recon train: {record['steps']} steps in {record['seconds']:.0f} s -> "
              f"{args.out}/model.pt", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``recon`` and its actions to the ``regkit`` command line."""
    recon = subparsers.add_parser(
        "recon", help="single-radiograph bone reconstruction (phantoms, ground truth)",
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

    gen = actions.add_parser(
        "generate", help="write ground-truth samples: radiographs, cameras, bone depth layers",
        description="Render ground truth for single-radiograph reconstruction: per sample a "
        "degraded and a clean radiograph (line integrals), its camera, and per bone the hit "
        "mask and the front and back depth layers (mm from the source). Samples go to "
        "DIR/samples/NNNNNN.npz, listed in DIR/manifest.json; a rerun resumes. The content of "
        "a sample depends only on the seed, its index and the parameters.")
    gen.add_argument("--out", required=True, metavar="DIR", help="output folder")
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--phantoms", type=int, metavar="K",
                     help="generate K procedural hand phantoms into DIR/phantoms/")
    src.add_argument("--ct", metavar="CT.nii.gz", help="a CT (HU) with bone labels")
    gen.add_argument("--labels", metavar="LABELS.nii.gz", help="the CT's bone label map")
    gen.add_argument("--bones", metavar="L1,L2,...",
                     help="label values to render (default: every bone of the label map)")
    gen.add_argument("--views", type=int, default=1, metavar="V",
                     help="samples (views) per phantom or CT (default 1)")
    gen.add_argument("--size", type=int, default=256, metavar="PX",
                     help="detector width = height in pixels (default 256; 32-2048)")
    gen.add_argument("--layers", type=int, default=2, metavar="L",
                     help="depth layers per bone (default 2)")
    gen.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    gen.add_argument("--workers", type=int, default=1, metavar="N",
                     help="worker processes (default 1)")
    gen.add_argument("--backend", choices=("torch", "gl"), default=None,
                     help="renderer backend (default: regkit's choice)")
    gen.add_argument("--voxel-mm", type=float, default=0.4, metavar="MM",
                     help="phantom voxel size in mm (default 0.4)")
    gen.add_argument("--step-mm", type=float, default=None, metavar="MM",
                     help="DRR step along the ray in mm (default: one DRR voxel when the CT "
                          "is block-averaged, else half a voxel)")
    gen.add_argument("--drr-factor", type=int, default=None, metavar="F",
                     help="block-average the CT over F voxels per axis for the DRR (default: "
                          "as coarse as stays under 3/4 of the pixel footprint; 1: none)")
    gen.add_argument("--kinds", default="pa,oblique,lateral", metavar="K1,K2",
                     help="view kinds cycled through (default pa,oblique,lateral)")
    gen.add_argument("--montage", type=int, default=4, metavar="N",
                     help="samples shown in DIR/montage.png (default 4; 0: none)")
    gen.add_argument("--radiograph", metavar="X.(npy|png|dcm)",
                     help="a real radiograph of the CT's patient: register the CT to it first")
    gen.add_argument("--camera", metavar="INIT.json",
                     help="the radiograph's starting camera (camera file)")
    gen.add_argument("--malunion-fraction", type=float, default=1.0 / 3.0, metavar="F",
                     help="fraction of phantoms with 1-2 random malunions, drawn from the "
                          "ranges of 'recon phantom --deformity' (default 1/3)")
    gen.add_argument("--shard", metavar="K/N",
                     help="make only the samples with index %% N == K (byte-identical to the "
                          "same samples of an unsharded run); train reads the shard folders "
                          "together")
    gen.set_defaults(func=_generate)

    tr = actions.add_parser(
        "train", help="train the bone segmentation and depth network",
        description="Train the bone network on ground-truth folders (regkit recon generate). "
        "Writes RUN/checkpoint.pt (atomic, periodic and on Ctrl-C), RUN/model.pt (float16), "
        "RUN/log.jsonl, RUN/curves.png. Deterministic for a seed; --resume continues an "
        "interrupted run. Under torchrun the same command trains with "
        "DistributedDataParallel (gloo on CPU, NCCL on GPUs); --batch is the global batch.")
    tr.add_argument("--data", nargs="+", required=True, metavar="DIR",
                    help="ground-truth folders (shards of one set, or several sets)")
    tr.add_argument("--out", required=True, metavar="RUN", help="the run folder")
    tr.add_argument("--val", nargs="+", metavar="DIR", help="validation folders")
    tr.add_argument("--epochs", type=int, default=10, metavar="N", help="epochs (default 10)")
    tr.add_argument("--batch", type=int, default=8, metavar="B",
                    help="global batch (default 8)")
    tr.add_argument("--size", type=int, default=256, metavar="S",
                    help="network input size (default 256)")
    tr.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default 0)")
    tr.add_argument("--lr", type=float, default=2e-3, metavar="LR",
                    help="peak learning rate (default 2e-3)")
    tr.add_argument("--widths", metavar="W1,W2,...",
                    help="U-Net channels per level (default 24,48,96,128,160)")
    tr.add_argument("--stem", type=int, default=None, metavar="C",
                    help="full-resolution channels (default 16)")
    tr.add_argument("--context", type=int, default=None, metavar="N",
                    help="self-attention blocks over the coarsest level (default 0)")
    tr.add_argument("--head", type=int, default=None, metavar="C",
                    help="channels of the full-resolution segmentation head (default: the "
                         "stem's)")
    tr.add_argument("--head-blocks", type=int, default=None, metavar="N",
                    help="residual blocks in the segmentation head (default 0)")
    tr.add_argument("--last", action="store_true",
                    help="also predict where each ray leaves each bone for the last time (the "
                         "reconstruction fills from the first entry to it)")
    tr.add_argument("--refine", type=int, default=None, metavar="C",
                    help="channels of a full-resolution depth refinement, which corrects the "
                         "half-resolution depth maps at the outlines (default 0: none)")
    tr.add_argument("--outline-targets", action="store_true",
                    help="keep the depth targets where an augmented pixel straddles a bone's "
                         "outline (the bone pixels' mean height) instead of dropping them")
    tr.add_argument("--thickness-weight", type=float, default=0.0, metavar="W",
                    help="weight of a loss term on each pixel's thickness, front minus back "
                         "(default 0: none; the depth term's weight is 0.1)")
    tr.add_argument("--trainable", choices=("all", "head", "heads", "depth"), default="all",
                    help="what learns: all (default), only the segmentation head (head), "
                         "the segmentation and depth heads (heads), or only the depth head and "
                         "its refinement (depth); the rest is kept as --init gave it")
    tr.add_argument("--checkpoint-s", type=float, default=300.0, metavar="S",
                    help="seconds between checkpoints (default 300)")
    tr.add_argument("--max-steps", type=int, default=None, metavar="N",
                    help="a run of N steps in all (the schedule is fitted to them)")
    tr.add_argument("--stop-at", type=int, default=None, metavar="N",
                    help="stop at step N as an interruption would, the schedule unchanged "
                    "(replays a history; --resume goes on)")
    tr.add_argument("--val-limit", type=int, default=64, metavar="N",
                    help="validation items (default 64; 0: all)")
    tr.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="default: cuda when present")
    tr.add_argument("--loader-workers", type=int, default=1, metavar="N",
                    help="data loader processes per training process (default 1; a GPU "
                         "wants most of the machine's cores: an augmented item costs about "
                         "0.2 s of one core)")
    tr.add_argument("--cache-on-device", action="store_true",
                    help="decode the training items once, hold them on the training device "
                         "and augment there: a GPU's pace instead of the loader's (1,536 items "
                         "of 256² and 29 bones take 25 GiB; the loader's augmentations)")
    tr.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="bf16 autocast or fp32 (default auto: bf16 on CUDA and on CPUs with "
                         "native bfloat16)")
    tr.add_argument("--init", metavar="MODEL.pt",
                    help="start from this model's weights (fine-tuning; the same configuration, "
                         "or fewer context blocks, a narrower segmentation head or fewer head "
                         "blocks: the run starts from the model's own outputs)")
    tr.add_argument("--resume", action="store_true", help="continue RUN/checkpoint.pt")
    tr.set_defaults(func=_train)

    from regkit_recon.net.evaluate import add_evaluate_arguments, run_evaluate
    from regkit_recon.net.predict import add_predict_arguments, run_predict

    pred = actions.add_parser(
        "predict", help="segment every bone of a radiograph and predict its depth",
        description="Run the bone network on one radiograph: writes PRED.npz with bones, hit, "
        "prob and front/back depths (mm along each ray from the source, NaN where the bone "
        "is not seen) at the radiograph's own size and camera.")
    add_predict_arguments(pred)
    pred.set_defaults(func=run_predict)
    ev = actions.add_parser(
        "evaluate", help="score the bone network on ground-truth folders",
        description="Dice per bone and depth errors (front, back, thickness; absolute and "
        "shift-aligned; on the true and on the predicted masks) of a model on ground-truth "
        "folders, by view, hand and orientation; writes report.json and report.png.")
    add_evaluate_arguments(ev)
    ev.set_defaults(func=run_evaluate)

    from regkit_recon.reconstruct.api import (
        add_measure_arguments,
        add_reconstruct_arguments,
        run_measure,
        run_reconstruct,
    )

    rec = actions.add_parser(
        "reconstruct", help="reconstruct the bones of a hand from one or more radiographs",
        description="Reconstruct every bone from radiographs with known cameras: the network's "
        "masks and front/back depths are back-projected into closed solids; with two or more views "
        "each bone is triangulated and its views fused (refinement by re-projection with "
        "--refine); the bones are measured for deformity. Writes "
        "DIR/labels.nii.gz (uint8, RAS+), labels.csv, meshes/NAME.stl (binary STL in LPS mm, "
        "as 3D Slicer reads STL), depth.npz, measurements.json, result.json and report.png.")
    add_reconstruct_arguments(rec)
    rec.set_defaults(func=run_reconstruct)
    mea = actions.add_parser(
        "measure", help="measure the deformity of a hand label map",
        description="Measure any hand label map (the truth or a reconstruction) with the same "
        "code, in the hand's own frame found from its bones: angulation in two planes with "
        "the apex found (metacarpals, phalanges), the radius' dorsal tilt and radial "
        "inclination, lengths and ulnar variance. Writes {\"bones\": {NAME: {FIELD: "
        "value}}} with the deformity SPEC's names and signs.")
    add_measure_arguments(mea)
    mea.set_defaults(func=run_measure)
