"""The output folder's manifest (layout: :mod:`regkit_recon.groundtruth.generate`).

Sample file names, the sources (phantoms or a CT) a run renders, the check that a rerun may resume a
folder, the clean-up of an interrupted run's temporary files and the writing of
``DIR/manifest.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from regkit.errors import InputError
from regkit.labels import present_labels
from regkit.utils.files import atomic_write_text
from regkit_recon.groundtruth.spec import (
    FORMAT_VERSION,
    GenerateSpec,
    phantom_is_malunited,
    phantom_seed,
)

__all__ = ["check_resume", "clean_temporaries", "list_sources", "manifest_path", "sample_name",
           "write_manifest"]


def sample_name(index: int) -> str:
    """The file name of sample ``index`` inside ``DIR/samples``."""
    return f"{index:06d}.npz"


def manifest_path(out: Path) -> Path:
    """The manifest of the output folder ``out``."""
    return out / "manifest.json"


def _bones_of(ct: str, labels: str, bones: tuple[int, ...] | None) -> tuple[int, ...]:
    """Validate the CT, its labels' grid and the bones there; the bones to render."""
    from regkit import load_nifti

    volume = load_nifti(ct, labels=labels)
    assert volume.labels is not None
    present = sorted(v for v in present_labels(volume.labels) if v > 0)
    if not present:
        raise InputError("the label map holds no bone (every voxel is 0)", source=labels,
                         key="labels")
    if bones is None:
        return tuple(present)
    missing = [b for b in bones if b not in present]
    if missing:
        raise InputError(f"bone label(s) {missing} do not occur in the label map (present: "
                         f"{', '.join(str(v) for v in present[:40])})", source=labels,
                         key="bones")
    return tuple(bones)


def check_resume(out: Path, params: dict[str, Any],
                 shard: tuple[int, int] | None = None) -> None:
    """Refuse ``out`` (InputError) unless a run with ``params`` and ``shard`` may resume there."""
    path = manifest_path(out)
    if not path.is_file():
        if any((out / "samples").glob("[0-9]*.npz")):
            raise InputError("holds samples but no manifest.json, so what made them is unknown; "
                             "use a new --out", source=out, key="out")
        return
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        old, version = manifest["parameters"], manifest.get("format_version")
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError("holds an unreadable manifest.json; use a new --out", source=out,
                         key="out") from None
    if version != FORMAT_VERSION:
        raise InputError(f"holds samples of format_version {version!r}, not {FORMAT_VERSION} "
                         "(made by another regkit-recon); use a new --out", source=out,
                         key="out")
    old_shard = manifest.get("shard")
    if old_shard != (None if shard is None else list(shard)):
        def said(s: Any) -> str:
            return "the whole data set" if s is None else f"shard {s[0]}/{s[1]} of a data set"

        raise InputError(f"holds {said(old_shard)}, not {said(shard)}; rerun with the same "
                         "--shard to resume, or use a new --out", source=out, key="out")
    for key in sorted(set(old) | set(params)):
        if old.get(key) != params.get(key):
            raise InputError(f"holds samples made with other parameters ({key} was "
                             f"{old.get(key)!r}, now {params.get(key)!r}); rerun with the same "
                             "parameters to resume, or use a new --out", source=out, key="out")


def clean_temporaries(folder: Path, phantoms: Path) -> int:
    """Delete what an interrupted run left: temporary sample files and phantom staging folders."""
    import shutil

    n = 0
    for leftover in folder.glob(".*.npz"):
        leftover.unlink(missing_ok=True)
        n += 1
    for staging in phantoms.glob(".p*.tmp"):
        shutil.rmtree(staging, ignore_errors=True)
        n += 1
    return n


def _bone_names(labels: str, bones: tuple[int, ...]) -> dict[str, str]:
    """Names of ``bones`` from a ``label,name`` CSV beside the label map.

    The CSV of ``bones.nii.gz`` is ``bones.csv``. Returns {} when there is none or it cannot be
    read.
    """
    import csv

    path = Path(labels)
    table = path.with_name(path.name.split(".")[0] + ".csv")
    names: dict[str, str] = {}
    try:
        with open(table, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                label, name = row.get("label"), row.get("name") or row.get("bone")
                if label is not None and name and int(label) in bones:
                    names[str(int(label))] = name
    except (OSError, ValueError):
        return {}
    return names


def list_sources(spec: GenerateSpec, out: Path) -> list[dict[str, Any]]:
    """The sources ``spec`` renders (its phantoms under ``out``, or its CT), validated."""
    if spec.phantoms is not None:
        from regkit_recon.phantom.anatomy import BONE_NAMES

        bones = spec.bones or tuple(range(1, 30))
        bad = [b for b in bones if not 1 <= b <= 29]
        if bad:
            raise InputError(f"bone label(s) {bad} are not phantom bones (1-29)", key="bones")
        out_sources = []
        for k in range(spec.phantoms):
            seed = phantom_seed(spec.seed, k)
            rel = f"phantoms/p{k:03d}"
            out_sources.append({
                "id": rel, "ct": str(out / rel / "ct.nii.gz"),
                "labels": str(out / rel / "labels.nii.gz"), "bones": list(bones),
                "bone_names": {str(b): BONE_NAMES[b] for b in bones},
                "record": {"kind": "phantom", "path": rel, "seed": seed, "index": k,
                           "voxel_mm": spec.voxel_mm,
                           "malunited": phantom_is_malunited(spec.seed, k,
                                                             spec.malunion_fraction)}})
        return out_sources
    assert spec.ct is not None
    assert spec.labels is not None
    bones = _bones_of(spec.ct, spec.labels, spec.bones)
    ct, labels = str(Path(spec.ct).absolute()), str(Path(spec.labels).absolute())
    return [{"id": "ct", "ct": ct, "labels": labels, "bones": list(bones),
             "bone_names": _bone_names(labels, bones),
             "record": {"kind": "ct", "ct": ct, "labels": labels}}]


def write_manifest(out: Path, spec: GenerateSpec, sources: list[dict[str, Any]],
                   samples: list[dict[str, Any]], complete: bool,
                   extra: dict[str, Any] | None = None) -> None:
    """Write ``out``'s manifest (atomically), with ``extra`` added at its top level."""
    from regkit_recon.groundtruth.degrade import DegradeRanges
    from regkit_recon.groundtruth.views import ViewRanges

    manifest = {
        "format": "regkit-recon ground truth",
        "format_version": FORMAT_VERSION,
        "parameters": spec.parameters(),
        "view_ranges": ViewRanges().to_json(),
        "degrade_ranges": DegradeRanges().to_json(),
        "sources": [{"id": s["id"], "bones": s["bones"], "bone_names": s["bone_names"],
                     **s["record"]} for s in sources],
        "shard": None if spec.shard is None else list(spec.shard),
        "samples": samples,
        "complete": complete,
        **(extra or {}),
    }
    atomic_write_text(manifest_path(out), json.dumps(manifest, indent=1) + "\n")
