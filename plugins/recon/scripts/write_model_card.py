"""Write a model's card (markdown) from its training run and its evaluation report.

Usage::

    python plugins/recon/scripts/write_model_card.py --model M.pt --run RUN \
        --report EVAL/report.json --out plugins/recon/src/regkit_recon/models/hand_v10.md \
        --script plugins/recon/scripts/train_hand_v10.sh --history "..." \
        [--data-note "..."] [--machine "..."] [--val-report VAL/report.json]

The card's figures (recipe, steps, time, validation and test tables) are read from the files
named; ``--history`` and ``--data-note`` are free text and must be checked by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from regkit.utils.files import atomic_write_text

TARGETS = {"dice_mean": 0.92, "dice_min": 0.80, "front": 1.0, "back": 1.0, "thickness": 0.7,
           "absolute": 3.0}


def _f(value: Any, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _row(name: str, g: dict[str, Any]) -> str:
    e = g["errors"]

    def err(q: str, region: str, kind: str) -> str:
        return _f(e[q][region][kind]["median"])

    return (f"| {name} | {g['cases']} | {_f(g['dice']['mean'], '.3f')} | "
            f"{_f(g['dice']['min'], '.3f')} ({g['dice']['min_bone']}) | "
            f"{err('front', 'true_mask', 'aligned')} | {err('back', 'true_mask', 'aligned')} | "
            f"{err('thickness', 'true_mask', 'aligned')} | "
            f"{err('front', 'true_mask', 'absolute')} | "
            f"{err('back', 'true_mask', 'absolute')} | {err('front', 'pred_mask', 'aligned')} | "
            f"{_f(g['offset_mm']['abs_median'])} |")


HEADER = ("| group | cases | Dice mean | Dice min (bone) | front aligned | back aligned | "
          "thickness | front absolute | back absolute | front aligned, predicted mask | "
          "abs. offset |")
RULE = "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"


def _validation(vals: list[dict[str, Any]], val_report: Path | None) -> list[str]:
    """The card's validation section: the run's own passes, or an evaluation made after it."""
    if vals:
        return [f"## Validation during this run ({vals[0]['items']} items of the validation set)",
                "| epoch | step | Dice mean | Dice min bone | front (aligned) | back (aligned) | "
                "thickness | offset |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
                *[f"| {v['epoch']} | {v['step']} | {v['dice']:.3f} | {v['dice_min']:.3f} | "
                  f"{v['front_mm']:.2f} | {v['back_mm']:.2f} | {v['thickness_mm']:.2f} | "
                  f"{v['offset_mm']:.2f} |" for v in vals], ""]
    if val_report is None:
        return ["## Validation", "The run was not validated.", ""]
    report = json.loads(val_report.read_text())
    return ["## Validation set (evaluated after the run, which trained without --val)",
            f"`regkit recon evaluate` on the {report['samples']} validation radiographs.", "",
            HEADER, RULE, _row("all", report["overall"]), ""]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--notes", default="", help="a paragraph added under Limitations")
    parser.add_argument("--history", default="",
                        help="a paragraph on the training before this run (e.g. the run whose "
                        "weights --init started from)")
    parser.add_argument("--data-note", required=True,
                        help="what the training folder holds (e.g. '128 phantoms x 16 views, "
                        "seed 111, a third with random malunions')")
    parser.add_argument("--machine", required=True,
                        help="where the run trained (e.g. '2 CPU cores')")
    parser.add_argument("--val-report", type=Path, default=None,
                        help="`regkit recon evaluate` on the validation set, for a run trained "
                        "without --val")
    parser.add_argument("--script", default="plugins/recon/scripts/train_hand_v10.sh",
                        help="the one command that remakes the data, the training and the "
                        "evaluation (named in the card)")
    args = parser.parse_args()
    blob = torch.load(args.model, map_location="cpu", weights_only=True)
    record, config = blob["record"], blob["config"]
    spec = json.loads((args.run / "spec.json").read_text())
    report = json.loads(args.report.read_text())
    vals = [json.loads(line) for line in (args.run / "log.jsonl").read_text().splitlines()
            if '"val"' in line]
    params = sum(v.numel() for v in blob["state"].values() if v.is_floating_point())
    o = report["overall"]
    lines = [
        f"# Model card: {args.model.name}",
        "",
        "The bone network of regkit-recon: from one hand radiograph, each of the 29 bones' mask "
        "and the front and back depth of its first layer along every ray"
        + (", and where each ray leaves the bone for the last time (`--last`)"
           if config.get("last") else "")
        + " (see the plugin README, *The bone network*).",
        "",
        "## Model",
        f"- Architecture: `BoneNet`, U-Net widths {config['widths']}, stem {config['stem']}, "
        f"GroupNorm {config['groups']}, "
        f"{config.get('context', 0)} context (self-attention) blocks at the coarsest level, "
        f"a segmentation head of {config.get('head') or config['stem']} channels at full "
        f"resolution with {config.get('head_blocks', 0)} residual "
        f"block{'' if config.get('head_blocks', 0) == 1 else 's'}, "
        + (f"a full-resolution depth refinement of {config['refine']} channels (`--refine`), "
           if config.get("refine") else "")
        + f"input {config['size']}², {params:,} parameters, "
        f"float16 weights ({args.model.stat().st_size / 2**20:.1f} MB).",
        f"- Bones: {len(config['bones'])} ({', '.join(config['bone_names'])}).",
        "- Offset method: the network's learnt prior (`offset_method: \"network prior\"`).",
        "",
        "## Training",
        f"- Recipe: `{json.dumps(record['recipe'])}`.",
        f"- Data: {spec['items']} training items (the train folder of "
        f"`{args.script}`: {args.data_note}); validation 6 phantoms x 12 views (seed 202); test 10 "
        "phantoms x 12 views (seed 303). The three sets share no phantom.",
        f"- Steps: {record['steps']} of batch {record['recipe']['batch']}; time "
        f"{record['train_seconds'] / 60:.0f} min on {args.machine}, {spec.get('precision')}, "
        f"torch {record.get('torch')}.",
        *([f"- Before this run: {args.history}"] if args.history else []),
        f"- Retrain: `bash {args.script}` (data, training, "
        "evaluation; resumes when interrupted).",
        "",
        *_validation(vals, args.val_report),
        "## Test split",
        f"`regkit recon evaluate --all-variants` on {report['samples']} test radiographs "
        f"({o['cases']} cases with the mirrored and turned variants), degraded, 256². Depth "
        "errors in mm: median over cases of each case's median absolute error, on the true "
        "masks unless said; aligned = after the case's common offset along the central ray.",
        "",
        HEADER,
        RULE,
        _row("all", o),
        *[_row(f"{key[3:]} {name}", g) for key in ("by_view", "by_hand", "by_orientation")
          for name, g in report[key].items()],
        "",
        "Targets of issue 10: Dice mean >= 0.92 and no bone under 0.80; aligned front and back "
        "<= 1.0 mm, thickness <= 0.7 mm; absolute <= 3 mm (aim).",
        "",
        "## Limitations",
        "- Trained and tested on procedural phantoms only (regkit-recon's hand phantom and its "
        "degradation model); real radiographs have not been measured.",
        "- One view fixes the hand's distance from the detector only through the learnt prior: "
        "absolute depths carry that offset error.",
    ]
    if args.notes:
        lines.append(f"- {args.notes}")
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
