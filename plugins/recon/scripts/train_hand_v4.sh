#!/usr/bin/env bash
# Retrain the shipped model regkit_recon/models/hand_v4.pt as it was trained: ground truth of
# format version 3 from procedural phantoms (train / validation / test splits of distinct
# phantoms), a warm restart from hand_v3's weights into the network with 2 context blocks
# (self-attention over the coarsest level; they start as the identity), the evaluation on the
# test split, and the demo hand remade from it.
# hand_v3's weights are read from the commit that shipped it (4200ab2); train_hand_v3.sh at that
# commit remakes them (from hand_v2, itself read from 7e9f7b7).
# About 1.6 h on 2 CPU cores (data 10 min, training 82 min with bfloat16 autocast,
# evaluation 2 min); pass a folder (default work/hand_v4). The last step rewrites the tracked demo
# folder regkit_recon/data/demo_hand from the new test split (the same bytes when the run
# reproduces). An interrupted run resumes when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/../../.."
bash scripts/setup.sh
work="${1:-work/hand_v4}"
R=.venv/bin/regkit
mkdir -p "$work"
$R recon generate --out "$work/train" --phantoms 64 --views 20 --seed 101 --workers 2
$R recon generate --out "$work/val" --phantoms 6 --views 12 --seed 202 --workers 2 --montage 0
$R recon generate --out "$work/test" --phantoms 10 --views 12 --seed 303 --workers 2
if [ ! -f "$work/hand_v3.pt" ]; then
    git show 4200ab2:plugins/recon/src/regkit_recon/models/hand_v3.pt > "$work/hand_v3.pt.part"
    mv "$work/hand_v3.pt.part" "$work/hand_v3.pt"
fi
# hand_v4: hand_v3's weights with 2 new context blocks (a fresh optimiser and cosine schedule,
# peak learning rate 6e-4 after 100 warm-up steps, 9 epochs, seed 3, 64 validation items).
resume=()
[ -f "$work/run/checkpoint.pt" ] && resume=(--resume)
$R recon train --data "$work/train" --val "$work/val" --out "$work/run" \
    --init "$work/hand_v3.pt" --context 2 --lr 6e-4 --epochs 9 --seed 3 ${resume[@]+"${resume[@]}"}
$R recon evaluate --model "$work/run/model.pt" --data "$work/test" --out "$work/eval" --all-variants
.venv/bin/python plugins/recon/scripts/make_demo_hand.py "$work/test"
echo "model: $work/run/model.pt; evaluation: $work/eval/report.json"
