#!/usr/bin/env bash
# Set up (if needed), then run the whole check: ruff, mypy and the test suite, on the CPU.
# The OpenGL tests run on Mesa's llvmpipe; REGKIT_REQUIRE_GL makes them fail rather than skip if no
# EGL context can be made (the default, except where set-up left the EGL packages uninstalled).
# Set-up installs those system packages only as root (CI) or with REGKIT_APT=sudo; see setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
if [ -n "${REGKIT_GL_MISSING:-}" ]; then
    export REGKIT_REQUIRE_GL="${REGKIT_REQUIRE_GL:-0}"
else
    export REGKIT_REQUIRE_GL="${REGKIT_REQUIRE_GL:-1}"
fi
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
