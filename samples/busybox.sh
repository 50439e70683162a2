#!/bin/sh
# Payload for busybox.jdl: show which userland the job runs on.
cat /etc/os-release
echo
echo "shell: $(readlink /bin/sh)"
if test -e /usr/bin/python3; then echo the host python3 is here; else echo no python3 on this image; fi
