#!/usr/bin/env bash
# Retrain hand_v6 (shipped until 2026-12-05; its weights at commit 6c39354) as it was trained:
# hand_v5's weights
# (read from the commit that shipped it, ecf1af6; its own recipe, train_hand_v5.sh, is at that
# commit too) fine-tuned for 5,309 steps of batch 32 on 2,048 radiographs of 128 phantoms
# (16 views each, seed 111, a third with random malunions; the first 96 phantoms are those of
# hand_v5's GPU stage, the phantoms of a seed do not depend on how many are made), peak learning rate 6e-4, cosine to
# the end, bf16 autocast. It ran on a lent NVIDIA H200 (scripts/device_gpu_check.sh, 242 s of
# training, the items cached and augmented on the GPU with --cache-on-device). On 2 CPU cores the
# same run takes about 12 hours (a step of 32 takes ~8 s), and close, not identical, weights
# (the GPU's kernels round differently).
# Then the evaluation on the test split (all variants) and on the validation split, and the demo
# hand remade from the test split.
# Pass a folder (default work/hand_v6). The last step rewrites the tracked demo folder
# regkit_recon/data/demo_hand from the test split (the same bytes when the data reproduce).
# An interrupted run resumes when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/../../.."
bash scripts/setup.sh
work="${1:-work/hand_v6}"
R=.venv/bin/regkit
mkdir -p "$work"
$R recon generate --out "$work/train111" --phantoms 128 --views 16 --seed 111 --workers 2 \
    --montage 0
$R recon generate --out "$work/val" --phantoms 6 --views 12 --seed 202 --workers 2 --montage 0
$R recon generate --out "$work/test" --phantoms 10 --views 12 --seed 303 --workers 2
if [ ! -f "$work/hand_v5.pt" ]; then
    git show ecf1af6:plugins/recon/src/regkit_recon/models/hand_v5.pt > "$work/hand_v5.pt.part"
    mv "$work/hand_v5.pt.part" "$work/hand_v5.pt"
fi
resume() { [ -f "$1/checkpoint.pt" ] && echo --resume || true; }
# the items decoded once and augmented on the GPU where one has room for them (33 GiB; train
# refuses more than 80 % of what is free), else through the data loader
cache=$(.venv/bin/python -c "import torch; print('--cache-on-device' if torch.cuda.is_available()
    and torch.cuda.mem_get_info()[0] > 42 * 2**30 else '')")
$R recon train --data "$work/train111" --out "$work/run" --init "$work/hand_v5.pt" \
    --context 2 --batch 32 --lr 6e-4 --seed 5 --epochs 100000 --max-steps 5309 \
    --checkpoint-s 60 $cache $(resume "$work/run")
$R recon evaluate --model "$work/run/model.pt" --data "$work/test" --out "$work/eval" --all-variants
$R recon evaluate --model "$work/run/model.pt" --data "$work/val" --out "$work/eval_val"
.venv/bin/python plugins/recon/scripts/make_demo_hand.py "$work/test"
echo "model: $work/run/model.pt; evaluation: $work/eval/report.json, $work/eval_val/report.json"
