#!/usr/bin/env bash
# Install the Debian/Ubuntu packages sandbox-agent needs, and only those that are missing.
# Safe to run again: when everything is present it installs nothing and says nothing.
set -euo pipefail

python=${PYTHON:-python3}

# bubblewrap: the native sandbox; libseccomp2: seccomp filters are compiled with it;
# libcap-dev and gcc: python-prctl builds against libcap.
wanted=(bubblewrap libseccomp2 libcap-dev gcc)

# The interpreter must be able to make a virtual environment and build C extensions.
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    wanted+=(python3-venv)
fi
if ! "$python" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1; then
    wanted+=(python3-dev)
fi

missing=()
for pkg in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-host: missing packages ${missing[*]}, and this is not a Debian/Ubuntu machine (no apt-get): install them with your package manager" >&2
    exit 3
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        echo "setup-host: missing packages ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
        exit 3
    fi
fi
echo "setup-host: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q >/dev/null
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
