#!/bin/sh
# Build, once, a Debian 13 "trixie" worker node with HTCondor as a directory tree, for
# tests/deploy/test_htcondor_job.py: the pilot submitted with deploy/htcondor/pilot.sub
# to a personal HTCondor pool of one node, run as a real HTCondor job by the real
# starter. The test uses the tree where it exists; building it (debootstrap, then
# HTCondor, Python and a compiler from the tree's own apt) takes minutes and needs
# deb.debian.org and PyPI, which a test run must not wait for.
#
#   scripts/htcondor-tree.sh            as root; safe to run again
#
# Where: $SANDBOX_AGENT_IMAGE_CACHE/trixie-htcondor (/var/cache/sandbox-agent-images by
# default). A fresh tree is built beside it and renamed into place only when whole. An
# existing tree is provisioned again (configuration, pool account, wheelhouse), which is
# what a change of the pilot's dependencies in pyproject.toml needs.
#
# Nothing of this machine is changed but the cache: the tree's apt and pip run in a
# mount and PID namespace of their own with the tree as their root (pivot_root), with
# /proc, /sys, /dev and a /tmp and /run of their own mounted there and nowhere else; the
# namespace, and every mount in it, ends with the command.
#
# What the tree holds:
# - htcondor (23.9 in trixie), bubblewrap, python3 (3.13) and python3-venv, libseccomp2,
#   nftables, iproute2, e2fsprogs, fuse3, fuse2fs, procps; gcc, libcap-dev and
#   python3-dev to compile python-prctl;
# - /opt/wheelhouse: wheels of the pilot's dependencies (pyproject.toml's), built with
#   the tree's python3, python-prctl compiled, and requirements.txt, the list they were
#   built for; the test installs the pilot's wheel from there with --no-index, in a
#   namespace without a network, as docs/deploying.md's wheelhouse install does;
# - /etc/condor/config.d/50-sandbox-agent-pool.config: one node that is the pool's
#   collector, negotiator, schedd and startd, on 127.0.0.1, partitionable slots, and
#   no cgroups (see there why);
# - the pool account alipilot01, which submits the pilot and which HTCondor runs it as;
# - /etc/hosts naming the node wn.sandbox-agent.test (the test gives it that hostname
#   in a UTS namespace): HTCondor looks its own name up and would wait a minute per
#   daemon for a resolver it cannot reach;
# - empty /opt/sandbox-agent, /etc/sandbox-agent and HTCondor's spool, log and execute
#   directories, where the test mounts each run's venv, site policy and pool state;
# - /etc/sandbox-agent-htcondor-tree, written last: the provisioning's version.
set -eu

VERSION=1  # tests/deploy/test_htcondor_job.py's TREE_VERSION: raise both together
SUITE=trixie
CACHE=${SANDBOX_AGENT_IMAGE_CACHE:-/var/cache/sandbox-agent-images}
TREE=$CACHE/$SUITE-htcondor
MIRROR=${SANDBOX_AGENT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${SANDBOX_AGENT_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
PACKAGES="htcondor bubblewrap python3 python3-venv libseccomp2 nftables iproute2 e2fsprogs
fuse3 fuse2fs procps ca-certificates gcc libcap-dev python3-dev"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
me=htcondor-tree

say() { printf '%s: %s\n' "$me" "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    say "run as root: debootstrap, and the namespaces the tree's apt runs in"
    exit 3
fi
for tool in debootstrap unshare pivot_root python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        say "$tool is missing (apt-get install debootstrap util-linux python3)"
        exit 3
    fi
done

# inside DIR COMMAND...: COMMAND as root in the tree DIR, with this machine's network
# (apt and pip need it) and resolver, in a mount and PID namespace of its own: all its
# mounts and processes end with it (--kill-child: also when this script is killed).
inside() {
    dir=$1
    shift
    ca=
    [ ! -f /etc/ssl/certs/ca-certificates.crt ] || ca=/etc/ssl/certs/ca-certificates.crt
    unshare --mount --pid --fork --kill-child --propagation private sh -c '
        set -e
        r=$1 ca=$2
        shift 2
        mount --bind "$r" "$r"
        mount -t proc proc "$r/proc"
        mount --rbind /sys "$r/sys"
        mount --rbind /dev "$r/dev"
        mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
        mount -t tmpfs -o mode=0755 tmpfs "$r/run"
        if [ -f /etc/resolv.conf ]; then
            [ -f "$r/etc/resolv.conf" ] && [ ! -L "$r/etc/resolv.conf" ] ||
                { rm -f "$r/etc/resolv.conf"; : >"$r/etc/resolv.conf"; }
            mount --bind /etc/resolv.conf "$r/etc/resolv.conf"
        fi
        # the certificates this machine trusts, for pip in the tree only (a proxy of
        # the site may sign what PyPI serves here)
        if [ -n "$ca" ]; then
            : >"$r/run/host-ca.crt"
            mount --bind "$ca" "$r/run/host-ca.crt"
        fi
        cd "$r"
        pivot_root . .
        umount -l .
        cd /
        exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
            DEBIAN_FRONTEND=noninteractive ${ca:+PIP_CERT=/run/host-ca.crt} \
            ${PIP_INDEX_URL:+PIP_INDEX_URL=$PIP_INDEX_URL} "$@"
    ' sh "$dir" "$ca" "$@"
}

# the pool's configuration: one node, loopback only
pool_config() {
    cat <<'EOF'
# sandbox-agent's test pool (scripts/htcondor-tree.sh): one node that is the whole pool,
# on loopback only, for tests/deploy/test_htcondor_job.py.
CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
use ROLE : CentralManager
use ROLE : Submit
use ROLE : Execute
DAEMON_LIST = MASTER, COLLECTOR, NEGOTIATOR, SCHEDD, STARTD
CONDOR_DEVELOPERS = NONE
CONDOR_DEVELOPERS_COLLECTOR = NONE
# One partitionable slot: each job gets a dynamic slot of what it asked for, and the
# machine ad the starter writes for it is that dynamic slot's, as on a site's nodes.
use FEATURE : PartitionableSlot
START = TRUE
SUSPEND = FALSE
PREEMPT = FALSE
KILL = FALSE
# A test waits on the pool: match and report every few seconds.
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_MIN_INTERVAL = 1
NEGOTIATOR_CYCLE_DELAY = 1
SCHEDD_INTERVAL = 2
UPDATE_INTERVAL = 2
# No cgroups. The starter would make the job's cgroups at the top of the machine's
# hierarchies (cgroup v1: /sys/fs/cgroup/<controller>/htcondor/...; v2: beside its own
# cgroup), and the test must leave the machine's cgroups alone. On cgroup v1 HTCondor
# also needs memory, freezer and a joint cpu,cpuacct hierarchy writable, and runs the
# job without cgroups where it finds none (a machine that mounts cpu and cpuacct apart).
BASE_CGROUP =
EOF
}

provision() {
    dir=$1
    say "provisioning $dir"
    printf '127.0.0.1\twn.sandbox-agent.test wn localhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
        >"$dir/etc/hosts"
    pool_config >"$dir/etc/condor/config.d/50-sandbox-agent-pool.config"
    mkdir -p "$dir/opt/sandbox-agent" "$dir/etc/sandbox-agent" "$dir/opt/wheelhouse"
    # the pool account; HTCondor's state directories (the test mounts each run's own)
    inside "$dir" sh -c 'id -u alipilot01 >/dev/null 2>&1 ||
        useradd --system --create-home --shell /usr/sbin/nologin alipilot01
        install -d -o condor -g condor /var/spool/condor /var/log/condor /var/lib/condor/execute'
    # the wheelhouse, built again when the dependencies are not those it was built for
    wanted=$(python3 -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
        "$ROOT/pyproject.toml")
    if [ "$(cat "$dir/opt/wheelhouse/requirements.txt" 2>/dev/null)" != "$wanted" ]; then
        say "building the wheelhouse: $(echo "$wanted" | tr '\n' ' ')"
        rm -rf "$dir/opt/wheelhouse.new"
        mkdir -p "$dir/opt/wheelhouse.new"
        printf '%s\n' "$wanted" >"$dir/opt/wheelhouse.new/requirements.txt"
        inside "$dir" sh -c 'python3 -m venv /tmp/pip &&
            /tmp/pip/bin/pip wheel --quiet --disable-pip-version-check \
                --wheel-dir /opt/wheelhouse.new -r /opt/wheelhouse.new/requirements.txt'
        rm -rf "$dir/opt/wheelhouse"
        mv "$dir/opt/wheelhouse.new" "$dir/opt/wheelhouse"
        chmod -R go+rX "$dir/opt/wheelhouse"
    fi
    echo "version $VERSION" >"$dir/etc/sandbox-agent-htcondor-tree"
}

mkdir -p "$CACHE"
if [ -x "$TREE/usr/sbin/condor_master" ]; then
    provision "$TREE"
    say "$TREE is ready"
    exit 0
fi

work=$(mktemp -d "$CACHE/.$SUITE-htcondor.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "debootstrap $SUITE into $work/root"
debootstrap --variant=minbase "$SUITE" "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -n 5 "$work/debootstrap.log" >&2
    say "debootstrap of $SUITE from $MIRROR failed"
    exit 1
}
cat >"$work/root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
say "installing: $(echo $PACKAGES)"
# shellcheck disable=SC2086 # the package list is words
inside "$work/root" sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends "$@" &&
    apt-get clean' sh $PACKAGES >"$work/apt.log" 2>&1 || {
    tail -n 5 "$work/apt.log" >&2
    say "installing the packages in the $SUITE tree failed"
    exit 1
}
provision "$work/root"
mv "$work/root" "$TREE"  # whole or not at all
say "$TREE is ready"
