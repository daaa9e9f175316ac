#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: the Mesa EGL packages (headless OpenGL on llvmpipe),
# a virtual environment in .venv with torch 2.13.0 (CPU build), regkit and its plugins, editable.
# Re-running is cheap: the install is skipped while pyproject files are unchanged.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The EGL packages: installed where this runs as root (CI, fresh machines). Elsewhere the script says
# what it lacks and asks sudo only when REGKIT_APT=sudo is set; without them the OpenGL tests skip.
if command -v dpkg-query >/dev/null 2>&1; then
    missing=()
    for pkg in libegl1 libegl-mesa0 libgl1-mesa-dri; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt=()
        if [ "$(id -u)" -eq 0 ]; then
            apt=(apt-get)
        elif [ "${REGKIT_APT:-}" = "sudo" ]; then
            apt=(sudo apt-get)
        fi
        if [ "${#apt[@]}" -gt 0 ]; then
            echo "setup: running '${apt[*]} install ${missing[*]}' (headless OpenGL through EGL)"
            "${apt[@]}" update -qq
            DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends \
                "${missing[@]}"
        else
            echo "setup: missing ${missing[*]} (headless OpenGL through EGL); not installing" \
                 "them without root. Run 'sudo apt-get install ${missing[*]}', or set" \
                 "REGKIT_APT=sudo to let this script do it; until then the OpenGL tests skip."
            export REGKIT_GL_MISSING=1
        fi
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
