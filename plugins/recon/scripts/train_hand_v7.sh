#!/usr/bin/env bash
# Retrain hand_v7 (shipped until 2026-12-05; its weights at commit 010b423) as it was trained:
# hand_v6's network
# (read from the commit that shipped it, 6c39354; its own recipe, train_hand_v6.sh, is there too)
# given a wider segmentation head (48 channels instead of 16, and one residual block), which
# starts computing exactly what hand_v6 did, and only that head trained (--trainable head: the
# rest keeps hand_v6's weights): 700 steps of batch 8, peak learning rate 1e-3, cosine to the end,
# on 640 radiographs of 40 phantoms (16 views each, seed 111: hand_v6's first 40 training
# phantoms and their first 640 radiographs, a sample depending only on the seed, its index and
# the generation parameters). About 50 minutes on 2 CPU cores.
# Then the evaluation on the test split (all variants, and with TTA) and on the validation split.
# Pass a folder (default work/hand_v7). An interrupted run resumes when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/../../.."
bash scripts/setup.sh
work="${1:-work/hand_v7}"
R=.venv/bin/regkit
mkdir -p "$work"
$R recon generate --out "$work/train111" --phantoms 40 --views 16 --seed 111 --workers 2 \
    --montage 0
$R recon generate --out "$work/val" --phantoms 6 --views 12 --seed 202 --workers 2 --montage 0
$R recon generate --out "$work/test" --phantoms 10 --views 12 --seed 303 --workers 2
if [ ! -f "$work/hand_v6.pt" ]; then
    git show 6c39354:plugins/recon/src/regkit_recon/models/hand_v6.pt > "$work/hand_v6.pt.part"
    mv "$work/hand_v6.pt.part" "$work/hand_v6.pt"
fi
resume() { [ -f "$1/checkpoint.pt" ] && echo --resume || true; }
$R recon train --data "$work/train111" --out "$work/run" --init "$work/hand_v6.pt" \
    --context 2 --head 48 --head-blocks 1 --trainable head --batch 8 --lr 1e-3 --seed 5 \
    --epochs 100 --max-steps 700 --checkpoint-s 300 $(resume "$work/run")
$R recon evaluate --model "$work/run/model.pt" --data "$work/test" --out "$work/eval" --all-variants
$R recon evaluate --model "$work/run/model.pt" --data "$work/test" --out "$work/eval_tta" --tta
$R recon evaluate --model "$work/run/model.pt" --data "$work/val" --out "$work/eval_val"
echo "model: $work/run/model.pt; evaluation: $work/eval/report.json, $work/eval_val/report.json"
