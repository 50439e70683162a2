#!/usr/bin/env bash
# Install the Debian/Ubuntu packages sandbox-agent needs, and only those that are missing.
# Safe to run again: when everything is present it installs nothing and says nothing.
#
#   scripts/setup-host.sh            install what is missing
#   scripts/setup-host.sh --python   the same, then print the Python (3.11+) to build with
set -euo pipefail

print_python=false
[ "${1:-}" = "--python" ] && print_python=true

say() { echo "setup-host: $*" >&2; }

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        sudo=(none)
    fi
fi

updated=false
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing packages $*, and this is not a Debian/Ubuntu machine (no apt-get): install them with your package manager"
        exit 3
    fi
    if [ "${sudo[0]:-}" = none ]; then
        say "missing packages $*; run: sudo apt-get install -y $*"
        exit 3
    fi
    say "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    if ! $updated; then
        "${sudo[@]}" apt-get update -q >/dev/null
        updated=true
    fi
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# A Python of 3.11 or later: the one given, else a newer one on PATH, else Debian's
# python3.11 (Ubuntu 22.04 and Debian 11 ship an older python3 by default).
new_enough() { "$1" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
python=${PYTHON:-python3}
if ! new_enough "$python"; then
    for candidate in python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 && new_enough "$candidate"; then
            python=$candidate
            break
        fi
    done
fi
if ! new_enough "$python"; then
    if command -v apt-cache >/dev/null 2>&1 && apt-cache show python3.11 >/dev/null 2>&1; then
        apt_install python3.11 python3.11-venv python3.11-dev
        python=python3.11
    else
        say "sandbox-agent needs Python 3.11 or later; $python is older and no python3.11 package is available: install one and run make again with PYTHON=/path/to/python3.11"
        exit 3
    fi
fi
version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

# bubblewrap: the native sandbox; libseccomp2: seccomp filters are compiled with it;
# libcap-dev and gcc: python-prctl builds against libcap; postgresql: the tests run the
# queue and the broker on a throwaway server of their own as well as on SQLite.
# squashfuse and fuse3: bwrap runs single-file images (squashfs, SIF) from a FUSE mount;
# busybox-static and squashfs-tools: the tests and the demo build small images with them.
# e2fsprogs (mkfs.ext4) and fuse2fs: a job's work directory is an ext4 image of its size,
# loop-mounted as root and mounted with fuse2fs by an unprivileged pilot.
# nftables and iproute2: a job's own network namespace sends every connection to the
# agent's relay (runtime/egressns.py); the egress tests build test hosts with veth pairs.
# qemu-system-x86: tests/vm boots Debian's cgroup v2 kernels (this machine may be v1), on
# x86_64 only; the kernels themselves are fetched by the tests, into
# /var/cache/sandbox-agent-vm.
# podman, runc, catatonit, uidmap and docker.io: the pilot runs the JobWrapper in Podman
# or Docker too (runtime/docker.py), and the tests run jobs in both; debootstrap builds
# the tests' image with python3 without a container registry (tests/engines.py).
wanted=(bubblewrap libseccomp2 libcap-dev gcc postgresql squashfuse busybox-static squashfs-tools
        e2fsprogs fuse2fs nftables iproute2 podman runc catatonit uidmap docker.io debootstrap)
if [ "$(uname -m)" = x86_64 ]; then
    wanted+=(qemu-system-x86)
fi
# fusermount unmounts; fuse3 replaces an installed fuse (2), so only when neither is there
if ! command -v fusermount3 >/dev/null 2>&1 && ! command -v fusermount >/dev/null 2>&1; then
    wanted+=(fuse3)
fi
# The interpreter must be able to make a virtual environment and build C extensions.
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    wanted+=("python${version}-venv")
fi
if ! "$python" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1; then
    wanted+=("python${version}-dev")
fi

missing=()
for pkg in "${wanted[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

bash "$(dirname "$0")/setup-engines.sh"

if $print_python; then
    command -v "$python"
fi
