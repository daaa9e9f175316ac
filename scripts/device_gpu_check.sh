#!/usr/bin/env bash
# The checks and measurements that need a GPU, as one script for a lent GPU machine whose Python
# already holds torch (CUDA) and where regkit and regkit-recon are installed (or on PYTHONPATH).
#
#   bash scripts/device_gpu_check.sh OUT [DEADLINE_S] [TRAIN_PHANTOMS]
#
# In order, inside DEADLINE_S seconds (default 530) from the start:
#   1. the machine (GPU, driver, torch) and the headless EGL context regkit's OpenGL renderer gets;
#   2. the tests that need CUDA (renderer, metrics, transforms: CUDA against the CPU) and the OpenGL
#      renderer's tests and its conformance with the torch renderer, on the GPU's EGL driver;
#   3. benchmarks/test_bench_recon_net.py on CUDA (inference, and a training step at batch 8 and
#      32, bf16 and fp32) -> OUT/bench_recon_net.json;
#   4. benchmarks/gpu_render_timing.py (DRR, batch and depth maps of every renderer, a DRR's
#      gradient on CUDA) -> OUT/render_timing.json;
#   5. alongside step 2 (3 and 4 wait for it: they want the cores), a training set made on the
#      CPU cores (TRAIN_PHANTOMS phantoms, default 96, x VIEWS views, seed DATA_SEED);
#   6. a 100-step probe of `regkit recon train` on CUDA, the items cached and augmented on the
#      GPU (its speed sets the run's length), then a fine-tuning run of the shipped model (its
#      network as it is, context blocks and segmentation head, grown the last exit unless
#      LAST=0 and a full-resolution depth refinement of REFINE channels (default 16; 0: none),
#      its depth targets kept at the outlines unless OUTLINE=0, a loss term on each pixel's
#      thickness of weight THICKNESS (default 0.2, hand_v10's; 0: none), every weight trained) that fits
#      the time left, its cosine schedule complete -> OUT/model.pt, OUT/log.jsonl,
#      OUT/curves.png, OUT/spec.json.
# Evaluate the model elsewhere (`regkit recon evaluate`), on splits it was not trained on.
# SKIP (environment, comma-separated) leaves out steps measured before, so that the training run
# gets their time: "cuda" (the CUDA tests of step 2), "gl" (its OpenGL tests), "netbench"
# (step 3), "timing" (step 4). LAST=0 trains without the last exit. SECONDS_PER_STEP skips the probe of step 6 and sizes the run from
# that rate (0.046 s on an H200). LR (default 6e-4) and DATA_SEED (default 113) set the
# fine-tuning's peak learning rate and the training phantoms (a seed's phantoms do not depend on
# how many are made: seed 111 made hand_v5's and hand_v6's, 112 a discarded run's). VIEWS
# (default 16) sets the views per phantom: a phantom costs about 30 views' time, so more views
# per phantom make more samples in the same time.
#
# How it was run on a lent H200 (its Python has torch 2.11 but not cma, nibabel, moderngl,
# glcontext or pydicom): here, wheels of this tree and of those (cp312, manylinux) into .whl/,
# the glvnd EGL packages into .gl/ (both in .git/info/exclude):
#   .venv/bin/pip wheel -q --no-deps --no-build-isolation -w .whl . plugins/recon
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       cma==4.5.0 nibabel==5.4.2 moderngl==5.13.0 glcontext==3.1.0 pydicom
#   (cd .gl && apt-get download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
# then, carrying .whl and .gl:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=/tmp/site; for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig;
#   PYTHONUNBUFFERED=1 bash scripts/device_gpu_check.sh $OUT 530 96 2>&1 | tee $OUT/device.log
set -u -o pipefail
out=${1:?usage: device_gpu_check.sh OUT [DEADLINE_S] [TRAIN_PHANTOMS]}
deadline=${2:-530}
phantoms=${3:-96}
py=${PYTHON:-python3}
work=${WORK:-/tmp/regkit_gpu}
skip=",${SKIP// /},"
lr=${LR:-6e-4}
data_seed=${DATA_SEED:-113}
views=${VIEWS:-16}
train="$work/train_s${data_seed}_p${phantoms}_v${views}"  # other data: another folder
rm -rf "$work/probe" "$work/run"  # a rerun on a warm machine starts its runs afresh
mkdir -p "$out" "$work"
cores=$(nproc)
gen_workers=$(( cores > 4 ? cores - 3 : 1 ))
load_workers=$(( cores > 2 ? cores - 1 : 1 ))
R() { "$py" -c 'import sys; from regkit.cli.main import main; sys.exit(main())' "$@"; }
stamp() { echo; echo "== [${SECONDS} s] $*"; }
egl_vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$egl_vendor" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$egl_vendor"

stamp "machine: $cores cores"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '(no CUDA device)')"

stamp "training data in the background: $phantoms phantoms x $views views (seed $data_seed), $gen_workers workers"
(
    start=$SECONDS
    R recon generate --out "$train" --phantoms "$phantoms" --views "$views" --seed "$data_seed" \
        --workers "$gen_workers" --montage 0 > "$work/generate.log" 2>&1
    echo "generate: exit $? after $((SECONDS - start)) s" >> "$work/generate.log"
) &
gen=$!

stamp "EGL context of the OpenGL renderer"
"$py" -c "from regkit.render.gl.context import context_info; print(context_info())"

if [[ $skip != *,cuda,* ]]; then
    stamp "tests that need CUDA"
    timeout 150 "$py" -m pytest -q -p no:cacheprovider -rs tests plugins/recon/tests -k cuda 2>&1 \
        | tail -15
fi
if [[ $skip != *,gl,* ]]; then
    stamp "OpenGL renderer tests and renderer conformance on this GPU's EGL"
    timeout 120 "$py" -m pytest -q -p no:cacheprovider -rs tests/render/test_gl_backend.py \
        tests/render/test_conformance.py plugins/recon/tests/net/test_runtime.py 2>&1 | tail -15
fi

stamp "waiting for the training data (the timings below want the cores to themselves)"
wait "$gen"
tail -3 "$work/generate.log"
if ! grep -q "^generate: exit 0 " "$work/generate.log"; then
    echo "no training data: the training run is skipped"; exit 1
fi

if [[ $skip != *,netbench,* ]]; then
    stamp "benchmarks on CUDA: inference and training steps"
    # this copy of the tree is the machine's own: the file then holds the CUDA cases alone
    rm -f benchmarks/results/bench_recon_net.json
    timeout 150 "$py" -m pytest -q -p no:cacheprovider benchmarks/test_bench_recon_net.py \
        --benchmark-only -k cuda --benchmark-columns=median,min,max,rounds 2>&1 | tail -14
    [ -f benchmarks/results/bench_recon_net.json ] && cp benchmarks/results/bench_recon_net.json "$out/"
fi
if [[ $skip != *,timing,* ]]; then
    stamp "renderers' speed: torch on the CPU and on CUDA, OpenGL on this EGL driver"
    timeout 120 "$py" benchmarks/gpu_render_timing.py "$out/render_timing.json" 2>&1 | tail -6
fi

model=$("$py" -c "from regkit_recon.net.predict import DEFAULT_MODEL; print(DEFAULT_MODEL)")
# the items decoded once and augmented on the GPU (--cache-on-device: 1,536 items took 25 GiB,
# about 36 GiB with the last exit's targets):
# through the loader the H200 trained at 40 items/s, a tenth of what one step allows
# the run's network is the shipped model's (context blocks, segmentation head), all of it trained,
# grown the last exit (LAST=1, the default: exact depths read the radius' dorsal tilt 1.6 deg off
# from the first entry to the last exit, 9.4 deg from the first layer; heads-only CPU training
# learnt too little of it, benchmarks/README.md); LAST=0 keeps the model's own outputs; the
# depth refinement (REFINE), the targets kept at the outlines (OUTLINE) and the thickness term
# (THICKNESS) are stops 44-45's levers for the thickness too great at each bone's rim (plugin
# README, *Where the shapes err*)
shape=$("$py" -c "from regkit_recon.net.model import load_model
c = load_model('$model').net.config
last = ' --last' if c.last or '${LAST:-1}' == '1' else ''
refine = c.refine or int('${REFINE:-16}')
grow = (f' --refine {refine}' if refine else '') + (
    ' --outline-targets' if '${OUTLINE:-1}' == '1' else '') + (
    f' --thickness-weight {float("${THICKNESS:-0.2}")}')
print(f'--context {c.context} --head {c.head} --head-blocks {c.head_blocks}{last}{grow}')")
# shellcheck disable=SC2206
common=(--data "$train" --init "$model" $shape --batch 32 --lr "$lr" --seed 5
        --epochs 100000 --loader-workers "$load_workers" --checkpoint-s 60 --cache-on-device)
# Each loader process makes whole batches, so the first batches arrive together: the rate is
# measured after several rounds of them (a probe over steps 10-30 once read 10x the real rate).
if [ -n "${SECONDS_PER_STEP:-}" ]; then
    if ! "$py" -c "import sys; sys.exit(0 if float('$SECONDS_PER_STEP') > 0 else 1)" 2>/dev/null
    then
        echo "SECONDS_PER_STEP must be a positive number, got '$SECONDS_PER_STEP'"; exit 1
    fi
    sps=$SECONDS_PER_STEP
    echo "seconds per step (batch 32, given): $sps"
else
    stamp "probe: 100 training steps on CUDA, the items cached on the GPU"
    if ! R recon train "${common[@]}" --out "$work/probe" --max-steps 100 2>&1 | tail -2; then
        echo "the probe failed: the training run is skipped"; exit 1
    fi
    sps=$("$py" -c "
import json, sys
rows = [json.loads(l) for l in open('$work/probe/log.jsonl') if '\"train\"' in l]
t = {r['step']: r['seconds'] for r in rows}
print((t[100] - t[40]) / 60)")
    echo "seconds per step (batch 32): $sps"
    cp "$work/probe/log.jsonl" "$out/probe_log.jsonl"
fi
steps=$("$py" -c "print(int(($deadline - $SECONDS - 60) / $sps))")  # 60 s: start-up and the cache
if ! [[ $steps =~ ^[0-9]+$ ]]; then
    echo "no rate from the probe: the training run is skipped"; exit 1
fi
if [ "$steps" -lt 100 ]; then
    echo "only $steps steps fit: the training run is skipped"; exit 0
fi
stamp "fine-tuning run: $steps steps of 32 on CUDA"
timeout -s INT -k 20 $((deadline - SECONDS)) \
    "$py" -c 'import sys; from regkit.cli.main import main; sys.exit(main())' \
    recon train "${common[@]}" --out "$work/run" --max-steps "$steps" 2>&1 | tr '\r' '\n' \
    | awk 'NR % 50 == 0 || /validation|regkit|interrupted|rror/'
for f in model.pt log.jsonl curves.png spec.json; do cp "$work/run/$f" "$out/" 2>/dev/null; done
stamp "done"
