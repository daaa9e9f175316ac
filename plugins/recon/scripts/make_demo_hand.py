"""Remake the shipped demo hand (``regkit_recon/data/demo_hand``) from a test split.

The demo is the first phantom's PA, oblique and lateral radiographs of the shipped model's test
split (``regkit recon generate --phantoms 10 --views 12 --seed 303``), never trained on. This
copies those three sample files unchanged and writes a manifest that lists only them (the
phantom volumes themselves are not shipped)::

    .venv/bin/regkit recon generate --out work/test --phantoms 10 --views 12 --seed 303
    .venv/bin/python plugins/recon/scripts/make_demo_hand.py work/test

The folder is replaced whole (:func:`regkit.utils.files.atomic_dir`): a failure leaves the old demo
in place.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from regkit_recon.groundtruth.spec import FORMAT_VERSION

from regkit.utils.files import atomic_dir

DEMO = Path(__file__).resolve().parents[1] / "src" / "regkit_recon" / "data" / "demo_hand"
KINDS = ("pa", "oblique", "lateral")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test", type=Path, help="the test split's ground-truth folder")
    parser.add_argument("--out", type=Path, default=DEMO, help="the demo folder to replace")
    args = parser.parse_args(argv)
    manifest = json.loads((args.test / "manifest.json").read_text())
    params = manifest["parameters"]
    if (params.get("seed"), params.get("views"), params.get("phantoms")) != (303, 12, 10):
        print(f"error: {args.test} is not the test split (--phantoms 10 --views 12 --seed 303)",
              file=sys.stderr)
        return 2
    if manifest.get("format_version") != FORMAT_VERSION:
        print(f"error: {args.test} holds ground truth of format_version "
              f"{manifest.get('format_version')!r}, not {FORMAT_VERSION}: regenerate it",
              file=sys.stderr)
        return 2
    if not manifest.get("complete") or manifest.get("shard") is not None:
        print(f"error: {args.test} is not a complete, unsharded run", file=sys.stderr)
        return 2
    first = manifest["samples"][0]["source"]
    picked = []
    for kind in KINDS:
        entry = next((s for s in manifest["samples"]
                      if s["source"] == first and s["view"] == kind), None)
        if entry is None:
            print(f"error: {args.test} has no {kind} view of {first}", file=sys.stderr)
            return 2
        picked.append(entry)
    source = next(s for s in manifest["sources"] if s["id"] == first)
    metas = []
    for s in picked:
        with np.load(args.test / s["file"]) as z:
            metas.append(json.loads(str(z["meta"])))
    broken = sorted({d["bone"] for m in metas for d in m.get("deformities", [])})
    out = dict(manifest)
    out["sources"] = [source]
    out["samples"] = [dict(s, index=i, file=f"samples/{i:06d}.npz")
                      for i, s in enumerate(picked)]
    out["shard"] = None
    out["complete"] = True
    for key in ("seconds_last_run", "generated_last_run", "montage"):
        out.pop(key, None)
    out["note"] = (
        "Three samples (PA, oblique, lateral) of the first phantom of the test split of the "
        "shipped model (regkit recon generate --phantoms 10 --views 12 --seed 303): never "
        "trained on; the phantom carries malunions of " + " and ".join(broken or ["no bone"])
        + ". The phantoms themselves are not shipped. Remade by "
        "plugins/recon/scripts/make_demo_hand.py.")
    with atomic_dir(args.out) as stage:
        (stage / "samples").mkdir()
        for i, s in enumerate(picked):
            shutil.copyfile(args.test / s["file"], stage / "samples" / f"{i:06d}.npz")
        (stage / "manifest.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"demo hand: {len(picked)} samples of {first} from {args.test} -> {args.out} "
          f"(malunions: {', '.join(broken) or 'none'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
