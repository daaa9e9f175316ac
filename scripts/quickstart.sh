#!/usr/bin/env bash
# Set up (if needed), then run the demo on the CT crop the repo ships; results go to the folder given
# (default: quickstart-output).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-quickstart-output}"
.venv/bin/python examples/quickstart.py --out "$out"
.venv/bin/python examples/reconstruct_hand.py --out "$out/reconstruction"
