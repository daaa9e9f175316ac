#!/usr/bin/env bash
# Set up (if needed), then run the whole check: ruff, mypy and the test suite, on the CPU.
# The OpenGL tests run on Mesa's llvmpipe; REGKIT_REQUIRE_GL makes them fail rather than skip if no
# EGL context can be made.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export REGKIT_REQUIRE_GL="${REGKIT_REQUIRE_GL:-1}"
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
