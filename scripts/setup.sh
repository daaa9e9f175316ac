#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: the Mesa EGL packages (headless OpenGL on llvmpipe),
# a virtual environment in .venv with torch 2.13.0 (CPU build), regkit and its plugins, editable.
# Re-running is cheap: the install is skipped while pyproject files are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v dpkg-query >/dev/null 2>&1; then
    missing=()
    for pkg in libegl1 libegl-mesa0 libgl1-mesa-dri; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup: installing ${missing[*]} (headless OpenGL through EGL)"
        sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$python" -m venv .venv
fi

pip_opts=(-q --disable-pip-version-check)
# These machines keep the CPU build of torch on disk; use it rather than the CUDA build.
[ -d /opt/wheels ] && pip_opts+=(--find-links /opt/wheels)

stamp=.venv/.regkit-installed
manifests=(pyproject.toml)
for f in plugins/*/pyproject.toml; do [ -f "$f" ] && manifests+=("$f"); done
want="$(cat "${manifests[@]}" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing regkit and its dependencies into .venv"
    .venv/bin/pip install "${pip_opts[@]}" "torch==2.13.0"
    targets=(-e ".[test]")
    for plugin in plugins/*/; do
        [ -f "$plugin/pyproject.toml" ] && targets+=(-e "$plugin")
    done
    .venv/bin/pip install "${pip_opts[@]}" "${targets[@]}"
    echo "$want" > "$stamp"
fi
