r"""Reconstruction accuracy and speed on held-out phantoms (issue 12's targets).

Usage::

    regkit recon generate --out DATA/test --phantoms 10 --views 12 --seed 303   # the test split
    .venv/bin/python benchmarks/bench_reconstruct.py --data DATA/test --out results.json \
        [--limit N] [--variants right,left,up] [--biplane [--biplane-phantoms K]
        [--biplane-configs first_view,fused,placed,placed_fused]] [--no-single] [--model M]
    .venv/bin/python benchmarks/bench_reconstruct.py --data DATA/test --out exact.json \
        --exact-deformity

Per sample (PA and oblique views only; the lateral is not a target), per variant (``right`` as
generated, ``left`` mirrored, ``up`` turned half a turn; see :mod:`regkit_recon.net.evaluate`):

* ``network``: :func:`regkit_recon.reconstruct.reconstruct` without refinement; ASSD and HD95 per
  bone against the phantom's labels, absolute and shift-aligned
  (:func:`regkit_recon.reconstruct.evaluate.surface_errors`), the time;
* ``exact`` (right variant): the sample's true masks and depths through the same back-projection,
  the floor the pipeline sets when the network is perfect (and, on PA views of malunited
  phantoms, the deformity measured on that reconstruction: ``exact_deformity``);
* ``deformity`` (PA, malunited phantoms): :func:`regkit_recon.measure_hand.measure_hand` of the
  reconstruction against the same function on the phantom's labels: angulation (both planes) and
  apex of each malunited bone, the radius' tilt and inclination; and against the generator's
  record (``recorded_*`` fields, counted in ``within_3deg_3mm_of_record``; the radius' pairs of
  (tilt, inclination) errors in ``malunited_of_record``), which adds the measurement's own error;
* ``--biplane``: the first PA and oblique views of each phantom together: ``first_view`` (the
  first view's solids alone, neither refined nor fused), ``fused`` (each bone triangulated from the
  two views and their fields averaged, the default), ``placed`` (refinement by re-projection: the
  common depth offset and each bone's translation, not fused; the default until 2026-12-04) and
  ``placed_fused`` (both): absolute and aligned ASSD and the time of each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
from regkit_recon.groundtruth.sample import camera_of, read_sample
from regkit_recon.measure_hand import measure_hand
from regkit_recon.net.evaluate import VARIANTS
from regkit_recon.net.predict import DEFAULT_MODEL, resolve_model, turn_array, turn_camera
from regkit_recon.reconstruct import HandReconstructor, View
from regkit_recon.reconstruct.backproject import backproject, label_volume
from regkit_recon.reconstruct.evaluate import surface_errors, truth_meshes
from regkit_recon.reconstruct.mesh import Mesh

MIRROR = np.diag([-1.0, 1.0, 1.0, 1.0])
BIPLANE_CONFIGS = ("first_view", "fused", "placed", "placed_fused")


class Truth:
    """One phantom's labels, meshes and measurements (cached per phantom)."""

    def __init__(self, folder: Path) -> None:
        image = cast(nib.Nifti1Image, nib.load(folder / "labels.nii.gz"))
        self.labels = np.asarray(image.dataobj)
        self.affine = np.asarray(image.affine, dtype=np.float64)
        rows = (folder / "labels.csv").read_text().split()[1:]
        self.names = {int(r.split(",")[0]): r.split(",")[1] for r in rows}
        self.meshes = truth_meshes(self.labels, self.affine, self.names)
        self.measured = measure_hand(self.labels, self.affine, self.names)
        record = json.loads((folder / "phantom.json").read_text())
        self.deformities = record.get("deformities", [])

    def meshes_for(self, mirror: bool) -> dict[str, Mesh]:
        return {n: m.transformed(MIRROR) for n, m in self.meshes.items()} if mirror \
            else self.meshes


def _shaft_errors(got: dict[str, Any], reference: dict[str, Any], apex: Any, prefix: str = ""
                  ) -> dict[str, float]:
    """Angle and apex errors of a measured malunited bone against one reference."""
    return {
        f"{prefix}angulation_error_deg": round(abs(got["angulation_deg"]
                                                   - reference["angulation_deg"]), 2),
        f"{prefix}angulation2_error_deg": round(abs(got["angulation2_deg"]
                                                    - reference["angulation2_deg"]), 2),
        f"{prefix}apex_error_mm": round(float(np.linalg.norm(np.asarray(got["apex_world"])
                                                             - np.asarray(apex))), 2)}


def _deformity_errors(measured: dict[str, Any], truth: Truth, mirror: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    bones = measured.get("bones", {})
    flip = np.array([-1.0, 1.0, 1.0]) if mirror else np.ones(3)   # world x of a mirrored view
    for item in truth.deformities:
        name = item["bone"]
        got, want = bones.get(name), truth.measured["bones"].get(name)
        if name == "radius" or got is None or want is None or "angulation_deg" not in got:
            continue
        out[name] = {
            **_shaft_errors(got, want, np.asarray(want["apex_world"]) * flip),
            "truth_angulation_deg": want["angulation_deg"],
            "truth_angulation2_deg": want["angulation2_deg"],
            # Against the generator's record too: the measurement's own error adds to these.
            **_shaft_errors(got, item, np.asarray(item["fracture_point_world"]) * flip,
                            "recorded_")}
    got, want = bones.get("radius", {}), truth.measured["bones"].get("radius", {})
    recorded: dict[str, Any] = next((d for d in truth.deformities if d["bone"] == "radius"), {})
    for key in ("dorsal_tilt_deg", "radial_inclination_deg"):
        if key in got and key in want:
            out.setdefault("radius", {})[key.replace("_deg", "_error_deg")] = \
                round(abs(got[key] - want[key]), 2)
        if key in got and recorded.get(key) is not None:
            out.setdefault("radius", {})["recorded_" + key.replace("_deg", "_error_deg")] = \
                round(abs(got[key] - recorded[key]), 2)
    return out


def run(data: Path, limit: int | None, variants: list[str], biplane: bool,  # noqa: C901 - one linear driver over variants and cases
        stream: Any = sys.stderr, *, single: bool = True,
        biplane_phantoms: int | None = None,
        biplane_configs: tuple[str, ...] = BIPLANE_CONFIGS, tta: bool = True,
        model: str | None = None) -> dict[str, Any]:
    loaded = resolve_model(model)
    rec = HandReconstructor(loaded, tta=tta)                   # the defaults
    plain = HandReconstructor(loaded, fuse_views=False, tta=tta)   # biplane: no fusion
    files = sorted((data / "samples").glob("*.npz"))
    picked = []
    for f in files:
        sample = read_sample(f)
        kind = json.loads(str(sample["meta"]))["view"]["kind"]
        if kind in ("pa", "oblique"):
            picked.append((f, kind))
    truths: dict[str, Truth] = {}
    cases: list[dict[str, Any]] = []
    by_phantom: dict[str, dict[str, Path]] = {}
    for f, kind in picked:                      # the first PA and oblique view of each phantom
        key = json.loads(str(read_sample(f)["source"]))["path"]
        by_phantom.setdefault(key, {}).setdefault(kind, f)
    if biplane_phantoms is not None:
        by_phantom = dict(list(by_phantom.items())[:biplane_phantoms])
    if limit is not None:
        picked = picked[:limit]
    for i, (f, kind) in enumerate(picked if single else []):
        sample = read_sample(f)
        source = json.loads(str(sample["source"]))
        key = source["path"]
        if key not in truths:
            truths[key] = Truth(data / key)
        truth = truths[key]
        camera = camera_of(sample)
        for variant in variants:
            k, mirror = VARIANTS[variant]
            cam = turn_camera(camera, k, mirror)
            image = turn_array(sample["image"], k, mirror).astype(np.float64)
            t = time.perf_counter()
            out = rec.reconstruct([View(image, cam, name=f.name)], refine=False)
            seconds = time.perf_counter() - t
            errors = surface_errors(out.meshes, truth.meshes_for(mirror),
                                    cam.view_direction_world)
            case: dict[str, Any] = {
                "sample": f.name, "phantom": key, "view": kind, "variant": variant,
                "seconds": round(seconds, 2), "timings": out.result["timings"],
                **{k2: errors[k2] for k2 in ("median_assd_mm", "median_aligned_assd_mm",
                                              "median_hd95_mm", "median_aligned_hd95_mm",
                                              "offset_mm", "missing")},
                "bones": errors["bones"]}
            if kind == "pa" and truth.deformities:
                case["deformity"] = _deformity_errors(out.measurements, truth, mirror)
            if variant == "right":
                solids = backproject(sample["front"], sample["back"], sample["hit"], camera,
                                     bones=[int(b) for b in sample["bones"]],
                                     names=[truth.names[int(b)] for b in sample["bones"]])
                exact = surface_errors({s.name: s.mesh() for s in solids}, truth.meshes,
                                       camera.view_direction_world, max_offset_mm=0.0)
                case["exact_median_assd_mm"] = exact["median_assd_mm"]
                case["exact_median_hd95_mm"] = exact["median_hd95_mm"]
                if kind == "pa" and truth.deformities:
                    meshes = [s.mesh() for s in solids]
                    volume = label_volume(solids, meshes)
                    measured = measure_hand(volume.labels, volume.world_from_index, truth.names)
                    case["exact_deformity"] = _deformity_errors(measured, truth, False)
            cases.append(case)
            print(f"reconstruct {i + 1}/{len(picked)} {f.name} {kind} {variant}: ASSD "
                  f"{case['median_assd_mm']:.2f} mm, aligned {case['median_aligned_assd_mm']:.2f}"
                  f" (HD95 {case['median_aligned_hd95_mm']:.2f}), {seconds:.1f} s",
                  file=stream, flush=True)
    biplanes = []
    if biplane:
        for key, kinds in by_phantom.items():
            if not {"pa", "oblique"} <= set(kinds):
                continue
            samples = [read_sample(kinds[k]) for k in ("pa", "oblique")]
            if key not in truths:
                truths[key] = Truth(data / key)
            views = [View(s["image"].astype(np.float64), camera_of(s)) for s in samples]
            row: dict[str, Any] = {"phantom": key}
            setups = {"first_view": (plain, False), "fused": (rec, False),
                      "placed": (plain, True), "placed_fused": (rec, True)}
            for tag in biplane_configs:
                how, refine = setups[tag]
                t = time.perf_counter()
                out = how.reconstruct(views, refine=refine)
                seconds = time.perf_counter() - t
                errors = surface_errors(out.meshes, truths[key].meshes,
                                        views[0].camera.view_direction_world)
                row[tag] = {"median_assd_mm": errors["median_assd_mm"],
                            "median_aligned_assd_mm": errors["median_aligned_assd_mm"],
                            "median_hd95_mm": errors["median_hd95_mm"],
                            "fused_bones": out.result["fused_bones"],
                            "bones_from_other_views": out.result["bones_from_other_views"],
                            "seconds": round(seconds, 2)}
                if tag == "placed":
                    row["placement"] = out.result["refinement"]
            biplanes.append(row)
            print(f"biplane {key}: absolute ASSD " + ", ".join(
                f"{tag} {row[tag]['median_assd_mm']:.2f} mm ({row[tag]['seconds']:.1f} s)"
                for tag in biplane_configs), file=stream, flush=True)
    return {"cases": cases, "biplane": biplanes, "summary": summarise(cases, biplanes)}


def measure_backprojection(front: Any, back: Any, hit: Any, sample: Any, truth: Truth
                           ) -> dict[str, Any]:
    """``measure_hand`` of the back-projection of ``[NB, L, H, W]`` depths on a sample's camera."""
    bones = [int(b) for b in sample["bones"]]
    solids = backproject(front, back, hit, camera_of(sample), bones=bones,
                         names=[truth.names[b] for b in bones])
    volume = label_volume(solids, [s.mesh() for s in solids])
    return measure_hand(volume.labels, volume.world_from_index, truth.names)


def exact_deformity(data: Path, stream: Any = sys.stderr) -> dict[str, Any]:
    """Deformity measured on the exact back-projection of every PA view of a malunited phantom.

    This is the pipeline's floor for the deformity targets.
    """
    truths: dict[str, Truth] = {}
    cases = []
    for f in sorted((data / "samples").glob("*.npz")):
        sample = read_sample(f)
        if json.loads(str(sample["meta"]))["view"]["kind"] != "pa":
            continue
        key = json.loads(str(sample["source"]))["path"]
        if not json.loads((data / key / "phantom.json").read_text()).get("deformities"):
            continue
        if key not in truths:
            truths[key] = Truth(data / key)
        truth = truths[key]
        measured = measure_backprojection(sample["front"], sample["back"], sample["hit"], sample,
                                          truth)
        cases.append({"sample": f.name, "phantom": key,
                      "exact_deformity": _deformity_errors(measured, truth, False),
                      "bones": {}, "variant": "right", "view": "pa", "seconds": float("nan")})
        print(f"exact deformity {f.name}: {cases[-1]['exact_deformity']}", file=stream,
              flush=True)
    summary = summarise(cases, [])
    return {"cases": cases, "summary": {k: summary[k] for k in ("exact_deformity",
                                                                "exact_radius") if k in summary}}


def _within(errors: dict[str, Any], prefix: str = "") -> bool:
    """Both angles within 3° and the apex within 3 mm (the issue's deformity target)."""
    return (errors[f"{prefix}angulation_error_deg"] <= 3
            and errors[f"{prefix}angulation2_error_deg"] <= 3
            and errors[f"{prefix}apex_error_mm"] <= 3)


def summarise(cases: list[dict[str, Any]], biplanes: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[float | None]) -> float:
        v = [x for x in values if x is not None and np.isfinite(x)]
        return round(float(np.median(v)), 3) if v else float("nan")

    per_bone = [b for c in cases for b in c["bones"].values()]
    out_deformity: dict[str, Any] = {}
    for key in ("deformity", "exact_deformity"):
        bones = [d for c in cases for name, d in c.get(key, {}).items() if name != "radius"]
        radius = [c[key]["radius"] for c in cases if "radius" in c.get(key, {})]
        if bones:
            out_deformity[key] = {
                "bones": len(bones),
                "median_angulation_error_deg": med([d["angulation_error_deg"] for d in bones]),
                "median_angulation2_error_deg": med([d["angulation2_error_deg"] for d in bones]),
                "median_apex_error_mm": med([d["apex_error_mm"] for d in bones]),
                "within_3deg_3mm": sum(_within(d) for d in bones),
                "within_3deg_3mm_of_record": sum(_within(d, "recorded_") for d in bones)}
        if radius:
            out_deformity[key.replace("deformity", "radius")] = {
                "median_tilt_error_deg": med([r["dorsal_tilt_error_deg"] for r in radius]),
                "median_inclination_error_deg": med([r["radial_inclination_error_deg"]
                                                     for r in radius]),
                "malunited_of_record": [
                    [r["recorded_dorsal_tilt_error_deg"],
                     r["recorded_radial_inclination_error_deg"]]
                    for r in radius if "recorded_dorsal_tilt_error_deg" in r
                    and "recorded_radial_inclination_error_deg" in r]}
    out: dict[str, Any] = {
        "cases": len(cases),
        "median_assd_mm": med([b["assd_mm"] for b in per_bone]),
        "median_aligned_assd_mm": med([b["aligned_assd_mm"] for b in per_bone]),
        "median_aligned_hd95_mm": med([b["aligned_hd95_mm"] for b in per_bone]),
        "median_seconds": med([c["seconds"] for c in cases]),
        "max_seconds": max((c["seconds"] for c in cases), default=float("nan")),
        "exact_median_assd_mm": med([c.get("exact_median_assd_mm") for c in cases]),
        "by_variant": {v: med([c.get("median_aligned_assd_mm") for c in cases if c["variant"] == v])
                       for v in sorted({c["variant"] for c in cases})},
        "by_view": {v: med([c.get("median_aligned_assd_mm") for c in cases if c["view"] == v])
                    for v in sorted({c["view"] for c in cases})},
    }
    out.update(out_deformity)
    if biplanes:
        out["biplane"] = {
            f"median_{figure}_{tag}": med([b[tag][key] for b in biplanes])
            for tag in BIPLANE_CONFIGS if tag in biplanes[0]
            for figure, key in (("assd_mm", "median_assd_mm"),
                                ("aligned_mm", "median_aligned_assd_mm"),
                                ("hd95_mm", "median_hd95_mm"), ("seconds", "seconds"))}
        if "fused" in biplanes[0] and "placed" in biplanes[0]:
            out["biplane"]["fused_better_than_placed"] = sum(
                b["fused"]["median_assd_mm"] < b["placed"]["median_assd_mm"] for b in biplanes)
        for tag in ("fused", "placed"):
            if tag in biplanes[0]:
                out["biplane"][f"worst_assd_{tag}_mm"] = max(b[tag]["median_assd_mm"]
                                                             for b in biplanes)
    return out


def _configs(text: str) -> tuple[str, ...]:
    configs = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in configs if c not in BIPLANE_CONFIGS]
    if unknown or not configs:
        raise SystemExit(f"--biplane-configs: unknown {unknown or text!r}; choose from "
                         f"{', '.join(BIPLANE_CONFIGS)}")
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--variants", default="right,left,up")
    parser.add_argument("--biplane", action="store_true")
    parser.add_argument("--biplane-phantoms", type=int, default=None)
    parser.add_argument("--biplane-configs", default=",".join(BIPLANE_CONFIGS))
    parser.add_argument("--no-single", dest="single", action="store_false")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="the network averaged over the 8 flips and turns of each image "
                             "(the reconstructor's default)")
    parser.add_argument("--exact-deformity", action="store_true",
                        help="only the deformity of exact back-projections (PA, malunited)")
    parser.add_argument("--model", default=None,
                        help="a model file to reconstruct with (default: the shipped model)")
    args = parser.parse_args(argv)
    if args.exact_deformity:
        result = exact_deformity(args.data)
    else:
        result = run(args.data, args.limit, args.variants.split(","), args.biplane,
                     single=args.single, biplane_phantoms=args.biplane_phantoms,
                     biplane_configs=_configs(args.biplane_configs), tta=args.tta,
                     model=args.model)
        result["summary"]["tta"] = args.tta
        result["summary"]["model"] = str(Path(args.model).resolve()) if args.model \
            else f"{DEFAULT_MODEL.name} (shipped)"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
