#!/usr/bin/env bash
# Retrain the shipped model regkit_recon/models/hand_v1.pt from nothing, as it was trained:
# ground truth from procedural phantoms (train / validation / test splits of distinct phantoms),
# the training run, the evaluation on the test split. About 2 h on 2 CPU cores (data 8 min,
# training 100 min with bfloat16 autocast, evaluation 5 min); pass a folder (default work/hand_v1).
# An interrupted run resumes when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/../../.."
bash scripts/setup.sh
work="${1:-work/hand_v1}"
R=.venv/bin/regkit
mkdir -p "$work"
$R recon generate --out "$work/train" --phantoms 64 --views 20 --seed 101 --workers 2
$R recon generate --out "$work/val" --phantoms 6 --views 12 --seed 202 --workers 2 --montage 0
$R recon generate --out "$work/test" --phantoms 10 --views 12 --seed 303 --workers 2
# hand_v1 was trained for 10 epochs, then resumed to 13 (a warm restart of the learning rate,
# the cosine schedule stretched to 13 epochs from step 1600); both steps resume when interrupted.
resume=()
[ -f "$work/run/checkpoint.pt" ] && resume=(--resume)
$R recon train --data "$work/train" --val "$work/val" --out "$work/run" --epochs 10 --batch 8 \
    --seed 0 --val-limit 48 "${resume[@]}"
$R recon train --data "$work/train" --val "$work/val" --out "$work/run" --epochs 13 --batch 8 \
    --seed 0 --val-limit 48 --resume
$R recon evaluate --model "$work/run/model.pt" --data "$work/test" --out "$work/eval" --all-variants
echo "model: $work/run/model.pt; evaluation: $work/eval/report.json"
