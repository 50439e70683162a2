#!/usr/bin/env bash
# The demo's Podman part: the busybox image imported into Podman's store (no registry),
# a site policy that runs jobs in it, and one job run by a pilot whose JobWrapper runs in
# Podman, as JAliEn's USE_CONTAINERS=PODMAN asks. Where Podman cannot run a container
# here, it says why and leaves the rest of the demo as it is.
#
#   scripts/demo-podman.sh SANDBOX-AGENT HOME IMAGE-DIR
set -euo pipefail

sa=${1:?usage: demo-podman.sh SANDBOX-AGENT HOME IMAGE-DIR}
home=${2:?}
root=${3:?}
image=localhost/sandbox-agent-demo/busybox:1

if ! command -v podman >/dev/null 2>&1; then
    echo "demo: Podman is not installed here; skipping the Podman job (apt-get install podman)"
    exit 0
fi
if ! podman image inspect "$image" >/dev/null 2>&1; then
    if ! tar -C "$root" -c . | podman import -q - "$image" >/dev/null 2>/tmp/sandbox-agent-demo-podman.err; then
        echo "demo: Podman cannot import an image here ($(tail -1 /tmp/sandbox-agent-demo-podman.err)); skipping the Podman job"
        exit 0
    fi
fi
if ! said=$(podman run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=256:256 "$image" true 2>&1); then
    echo "demo: Podman cannot run a container here (${said##*$'\n'}); skipping the Podman job"
    exit 0
fi
printf 'extends = "default"\n[filesystem]\nimage = "docker://%s"\n' "$image" > "$home/policies/podman.toml"
echo "$ sandbox-agent submit samples/hello.jdl; USE_CONTAINERS=PODMAN sandbox-agent run --policy podman"
job=$("$sa" --home "$home" submit samples/hello.jdl)
USE_CONTAINERS=PODMAN "$sa" --home "$home" run --policy podman
"$sa" --home "$home" logs "$job"
"$sa" --home "$home" audit show "$job" | grep -E '^(runtime|image|network|enforced)'
