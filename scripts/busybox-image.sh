#!/usr/bin/env bash
# Build a small image: a root filesystem of busybox-static and its applets, with an
# /etc/os-release of its own. `make demo` runs a job on it; `sandbox-agent image
# inspect DIR` shows what it is. Replaces DIR if it exists.
#
#   scripts/busybox-image.sh DIR
set -euo pipefail

dest=${1:?usage: scripts/busybox-image.sh DIR}
busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! "$busybox" --list >/dev/null 2>&1; then
    echo "busybox-image: no busybox (apt-get install busybox-static)" >&2
    exit 3
fi
# the image has no libraries: a dynamically linked busybox could not start in it
if ldd "$busybox" >/dev/null 2>&1; then
    echo "busybox-image: $busybox is dynamically linked; install busybox-static" >&2
    exit 3
fi
# awk reads all of busybox's help (no SIGPIPE under pipefail), keeping the version
version=$("$busybox" 2>&1 | awk 'NR == 1 {print $2}')

rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/etc" "$dest/tmp"
cp "$busybox" "$dest/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$dest/bin/$applet"
done
printf 'PRETTY_NAME="BusyBox %s (the sandbox-agent demo image)"\nNAME="BusyBox"\nID=busybox\nVERSION_ID=%s\n' \
    "$version" "${version#v}" > "$dest/etc/os-release"
# writable by the owner only: on a writable filesystem an image others may change is
# refused (the sandbox mounts its own /tmp, so the image's need not be shared)
chmod -R u+rwX,go+rX,go-w "$dest"
