#!/usr/bin/env bash
# Make Podman run containers on this machine, as root, where it needs telling: only what
# the machine lacks is written, and each change is said. Safe to run again.
#
# - Podman's `--userns auto` (each job's container its own range of host uids) takes the
#   ranges from the user `containers` in /etc/subuid and /etc/subgid.
# - Without systemd as pid 1, Podman must make cgroups itself and log events to a file.
# - crun refuses a hybrid cgroup layout (cgroup v1 with /sys/fs/cgroup/unified); runc works.
# - A hard open-files limit under Podman's default ulimits: the defaults must fit it.
#
# Docker needs nothing written: the tests start `dockerd` themselves when none runs.
set -euo pipefail

say() { echo "setup-engines: $*" >&2; }

command -v podman >/dev/null 2>&1 || exit 0
[ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && exec sudo -n bash "$0" "$@"; } || {
    say "not root: Podman's set-up for this machine is left as it is"; exit 0; }

range=containers:2147483647:2147483648
for file in /etc/subuid /etc/subgid; do
    if ! grep -q '^containers:' "$file" 2>/dev/null; then
        echo "$range" >> "$file"
        say "added $range to $file (Podman's --userns auto)"
    fi
done

lines=()
# Podman's built-in ulimits (nofile 1048576) are above what a root without
# CAP_SYS_RESOURCE may set: a plain `podman run` fails. The pilot gives its own; a
# baseline `podman run` needs these.
hard_nofile=$(ulimit -Hn)
if [ "$hard_nofile" != unlimited ] && [ "$hard_nofile" -lt 1048576 ]; then
    hard_nproc=$(ulimit -Hu)
    [ "$hard_nproc" != unlimited ] && [ "$hard_nproc" -lt 32768 ] || hard_nproc=32768
    lines+=('[containers]' "default_ulimits = [\"nofile=$hard_nofile:$hard_nofile\", \"nproc=$hard_nproc:$hard_nproc\"]")
fi
engine=()
if [ ! -d /run/systemd/system ]; then
    engine+=('cgroup_manager = "cgroupfs"' 'events_logger = "file"')
fi
if [ -d /sys/fs/cgroup/unified ] && [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] && command -v runc >/dev/null 2>&1; then
    engine+=('runtime = "runc"')
fi
[ ${#engine[@]} -eq 0 ] || lines+=('[engine]' "${engine[@]}")
conf=/etc/containers/containers.conf.d/50-sandbox-agent.conf
if [ ${#lines[@]} -gt 0 ]; then
    wanted=$(printf '%s\n' "# written by sandbox-agent's scripts/setup-engines.sh for this machine" "${lines[@]}")
    if [ "$(cat "$conf" 2>/dev/null)" != "$wanted" ]; then
        mkdir -p "$(dirname "$conf")"
        printf '%s\n' "$wanted" > "$conf"
        say "wrote $conf (a low open-files limit, no systemd, or a hybrid cgroup layout)"
    fi
fi
