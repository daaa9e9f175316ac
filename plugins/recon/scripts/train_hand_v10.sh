#!/usr/bin/env bash
# Retrain the shipped model regkit_recon/models/hand_v10.pt as it was trained: hand_v9 (read from
# the commit that shipped it last, e6f5dc5; its own recipe, train_hand_v9.sh, is there too) grown
# a full-resolution depth refinement of 16 channels (--refine 16, zero at the start), its depth
# head and the refinement alone trained (--trainable depth: the masks stay hand_v9's), the depth
# targets kept where an augmented pixel straddles an outline (--outline-targets), and a loss term
# on each pixel's thickness, front minus back (--thickness-weight 0.2): 900 steps of batch 8,
# peak learning rate 5e-4, cosine to the end, on hand_v6's 2,048 radiographs (128 phantoms, 16
# views each, seed 111, a third with random malunions), seed 12 for the order and the
# augmentation, bf16 autocast. About 80 minutes on 2 CPU cores.
# Then the evaluation on the test split (all variants, and with TTA) and on the validation split.
# Pass a folder (default work/hand_v10). An interrupted run resumes when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/../../.."
bash scripts/setup.sh
work="${1:-work/hand_v10}"
R=.venv/bin/regkit
mkdir -p "$work"
$R recon generate --out "$work/train111" --phantoms 128 --views 16 --seed 111 --workers 2 \
    --montage 0
$R recon generate --out "$work/val" --phantoms 6 --views 12 --seed 202 --workers 2 --montage 0
$R recon generate --out "$work/test" --phantoms 10 --views 12 --seed 303 --workers 2
if [ ! -f "$work/hand_v9.pt" ]; then
    git show e6f5dc5:plugins/recon/src/regkit_recon/models/hand_v9.pt > "$work/hand_v9.pt.part"
    mv "$work/hand_v9.pt.part" "$work/hand_v9.pt"
fi
resume() { [ -f "$1/checkpoint.pt" ] && echo --resume || true; }
$R recon train --data "$work/train111" --out "$work/run" --init "$work/hand_v9.pt" --last \
    --context 2 --head 48 --head-blocks 1 --refine 16 --trainable depth --outline-targets \
    --thickness-weight 0.2 --batch 8 --lr 5e-4 --seed 12 --epochs 100 --max-steps 900 \
    --precision bf16 --checkpoint-s 300 $(resume "$work/run")
$R recon evaluate --model "$work/run/model.pt" --data "$work/test" --out "$work/eval" --all-variants
$R recon evaluate --model "$work/run/model.pt" --data "$work/test" --out "$work/eval_tta" --tta
$R recon evaluate --model "$work/run/model.pt" --data "$work/val" --out "$work/eval_val"
echo "model: $work/run/model.pt; evaluation: $work/eval/report.json, $work/eval_val/report.json"
