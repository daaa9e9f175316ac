r"""The deformity measurement's own error: each phantom's labels measured against its record.

Usage::

    regkit recon generate --out DATA/test --phantoms 10 --views 12 --seed 303
    regkit recon generate --out DATA/extra --phantoms 30 --views 1 --seed 404
    .venv/bin/python benchmarks/measure_vs_record.py DATA/test DATA/extra --out m.json

For every shaft malunion a generator recorded (``phantom.json``, ``deformities``; the radius'
are left out), :func:`regkit_recon.measure_hand.measure_hand` of the phantom's own label map
(no reconstruction involved) against the record: the two angulations and the apex's distance
from the recorded fracture point, and whether all three are within issue 12's 3° and 3 mm. This
bounds what any reconstruction can score against the record.

Each row also gives ``free_mm``: how much of the shorter fragment stays clear of the other. The
phantom shortens a malunion by sliding the distal fragment into the proximal one, which then
share ``shortening_mm`` of length; the proximal fragment keeps ``level·L − shortening`` of its
own, the distal one ``(1 − level)·L − shortening`` beyond the fracture point, of which the last
head radius is its head (a spheroid as long as it is wide radially, so round in the coronal
plane): ``free_mm`` is the smaller of the proximal part and the distal part up to its head's
centre. The summary splits the rows at :data:`FREE_MM`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from regkit_recon.measure_hand import measure_labels_file
from regkit_recon.phantom.anatomy import LONG_BONES

FREE_MM = 3.0
"""The summary counts apart the rows whose shorter fragment keeps at least this much clear."""


def free_length(item: dict[str, Any], length_mm: float) -> float:
    """The shorter fragment's part clear of the other, mm (see the module notes)."""
    spec = LONG_BONES[item["bone"]]
    head = spec.head_radius * length_mm / spec.length
    short = float(item.get("shortening_mm", 0.0))
    level = float(item["level"])
    return min(level * length_mm - short, (1.0 - level) * length_mm - short - head)


def measure_folder(data: Path) -> list[dict[str, Any]]:
    """One row per recorded shaft malunion of the phantoms under ``data/phantoms``."""
    rows = []
    for folder in sorted((data / "phantoms").iterdir()):
        record = json.loads((folder / "phantom.json").read_text())
        malunions = [d for d in record.get("deformities") or [] if d["bone"] != "radius"]
        if not malunions:
            continue
        measured = measure_labels_file(folder / "labels.nii.gz")   # names from labels.csv
        lengths = {b["name"]: b["length_mm"] for b in record["bones"]}
        for item in malunions:
            got = measured["bones"][item["bone"]]
            apex = float(np.linalg.norm(np.asarray(got["apex_world"])
                                        - np.asarray(item["fracture_point_world"])))
            e1 = abs(got["angulation_deg"] - item["angulation_deg"])
            e2 = abs(got["angulation2_deg"] - item["angulation2_deg"])
            rows.append({"data": str(data), "phantom": folder.name, "bone": item["bone"],
                         "level": round(item["level"], 3),
                         "shortening_mm": round(float(item.get("shortening_mm", 0.0)), 2),
                         "free_mm": round(free_length(item, float(lengths[item["bone"]])), 2),
                         "recorded_angulation_deg": round(item["angulation_deg"], 2),
                         "recorded_angulation2_deg": round(item["angulation2_deg"], 2),
                         "angulation_error_deg": round(e1, 2),
                         "angulation2_error_deg": round(e2, 2), "apex_error_mm": round(apex, 2),
                         "apex_fit_gain": got.get("apex_fit_gain"),
                         "within_3deg_3mm": bool(e1 <= 3 and e2 <= 3 and apex <= 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", type=Path, help="folders of `regkit recon generate`")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    rows = [row for data in args.data for row in measure_folder(data)]
    for r in rows:
        print(f"{r['phantom']} {r['bone']:<20} level {r['level']:.2f} free {r['free_mm']:5.1f} mm: "
              f"errors "
              f"{r['angulation_error_deg']:5.1f}° {r['angulation2_error_deg']:5.1f}° apex "
              f"{r['apex_error_mm']:4.1f} mm {'ok' if r['within_3deg_3mm'] else 'MISS'}")
    by_kind: dict[str, list[int]] = {}
    for r in rows:
        kind = r["bone"].rsplit("_", 1)[0]
        by_kind.setdefault(kind, [0, 0])
        by_kind[kind][0] += r["within_3deg_3mm"]
        by_kind[kind][1] += 1
    clear = [r for r in rows if r["free_mm"] >= FREE_MM]
    tight = [r for r in rows if r["free_mm"] < FREE_MM]
    summary = {"malunions": len(rows), "within_3deg_3mm": sum(r["within_3deg_3mm"] for r in rows),
               "within_by_bone_kind": {k: f"{v[0]} of {v[1]}" for k, v in by_kind.items()},
               f"free_at_least_{FREE_MM:g}mm": f"{sum(r['within_3deg_3mm'] for r in clear)} of "
                                                f"{len(clear)}",
               f"free_under_{FREE_MM:g}mm": f"{sum(r['within_3deg_3mm'] for r in tight)} of "
                                            f"{len(tight)}"}
    print(json.dumps(summary))
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
