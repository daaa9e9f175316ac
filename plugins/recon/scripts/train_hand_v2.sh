#!/usr/bin/env bash
# Retrain the shipped model regkit_recon/models/hand_v2.pt from nothing, as it was trained:
# ground truth from procedural phantoms (train / validation / test splits of distinct phantoms),
# the first run (hand_v1), a warm restart from it (hand_v2), the evaluation on the test split.
# About 12 h on 2 CPU cores (data 8 min, hand_v1 about 10.4 h and the warm restart 1.2 h of wall
# time with bfloat16 autocast, evaluation 2 min); pass a folder (default work/hand_v2).
# An interrupted run resumes when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/../../.."
bash scripts/setup.sh
work="${1:-work/hand_v2}"
R=.venv/bin/regkit
mkdir -p "$work"
$R recon generate --out "$work/train" --phantoms 64 --views 20 --seed 101 --workers 2
$R recon generate --out "$work/val" --phantoms 6 --views 12 --seed 202 --workers 2 --montage 0
$R recon generate --out "$work/test" --phantoms 10 --views 12 --seed 303 --workers 2
# hand_v1's history, replayed step for step (each step resumes when interrupted): 10 epochs; a
# resume to 13 (a warm restart, the cosine schedule stretched to 13 epochs from step 1600); a
# resume to 20 epochs that a session's end cut at step 2240 (--stop-at replays that cut without
# changing the schedule); a resume to 40 epochs from there (its later interruptions resumed from
# their checkpoints, which replays the same steps), stopped and shipped at the end of epoch 39
# (step 6240, the learning rate under 1 % of its peak), for the session's time.
resume=()
[ -f "$work/run/checkpoint.pt" ] && resume=(--resume)
common=(--data "$work/train" --val "$work/val" --out "$work/run" --batch 8 --seed 0 --val-limit 48)
$R recon train "${common[@]}" --epochs 10 "${resume[@]}"
$R recon train "${common[@]}" --epochs 13 --resume
$R recon train "${common[@]}" --epochs 20 --resume --stop-at 2240
$R recon train "${common[@]}" --epochs 40 --resume --stop-at 6240
# hand_v2: a warm restart from hand_v1's weights (a fresh optimiser and cosine schedule, peak
# learning rate 6e-4 after 100 warm-up steps, 6 epochs, seed 1, 64 validation items).
resume=()
[ -f "$work/run2/checkpoint.pt" ] && resume=(--resume)
$R recon train --data "$work/train" --val "$work/val" --out "$work/run2" \
    --init "$work/run/model.pt" --lr 6e-4 --epochs 6 --seed 1 "${resume[@]}"
$R recon evaluate --model "$work/run2/model.pt" --data "$work/test" --out "$work/eval" --all-variants
echo "model: $work/run2/model.pt; evaluation: $work/eval/report.json"
