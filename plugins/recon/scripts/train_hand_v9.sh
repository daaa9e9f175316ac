#!/usr/bin/env bash
# Retrain the shipped model regkit_recon/models/hand_v9.pt as it was trained: hand_v8 (read from
# the commit that shipped it, 996b0ee; its own recipe, train_hand_v8.sh, is there too) grown the
# last exit (--last: a third depth map per bone, where each ray leaves the bone for the last
# time) and trained whole (--trainable all: the body too, for the first time since hand_v6):
# 1,100 steps of batch 8, peak learning rate 3e-4, cosine to the end, on hand_v6's 2,048
# radiographs (128 phantoms, 16 views each, seed 111, a third with random malunions), another
# seed (10) for the order and the augmentation, bf16 autocast. About 105 minutes on 2 CPU cores.
# Then the evaluation on the test split (all variants, and with TTA) and on the validation split.
# Pass a folder (default work/hand_v9). An interrupted run resumes when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/../../.."
bash scripts/setup.sh
work="${1:-work/hand_v9}"
R=.venv/bin/regkit
mkdir -p "$work"
$R recon generate --out "$work/train111" --phantoms 128 --views 16 --seed 111 --workers 2 \
    --montage 0
$R recon generate --out "$work/val" --phantoms 6 --views 12 --seed 202 --workers 2 --montage 0
$R recon generate --out "$work/test" --phantoms 10 --views 12 --seed 303 --workers 2
if [ ! -f "$work/hand_v8.pt" ]; then
    git show 996b0ee:plugins/recon/src/regkit_recon/models/hand_v8.pt > "$work/hand_v8.pt.part"
    mv "$work/hand_v8.pt.part" "$work/hand_v8.pt"
fi
resume() { [ -f "$1/checkpoint.pt" ] && echo --resume || true; }
$R recon train --data "$work/train111" --out "$work/run" --init "$work/hand_v8.pt" --last \
    --context 2 --head 48 --head-blocks 1 --trainable all --batch 8 --lr 3e-4 --seed 10 \
    --epochs 100 --max-steps 1100 --precision bf16 --checkpoint-s 300 $(resume "$work/run")
$R recon evaluate --model "$work/run/model.pt" --data "$work/test" --out "$work/eval" --all-variants
$R recon evaluate --model "$work/run/model.pt" --data "$work/test" --out "$work/eval_tta" --tta
$R recon evaluate --model "$work/run/model.pt" --data "$work/val" --out "$work/eval_val"
echo "model: $work/run/model.pt; evaluation: $work/eval/report.json, $work/eval_val/report.json"
