#!/bin/sh
# Payload for fail.jdl: write a log, then fail on purpose with exit status 3.
echo "fail.sh: job ${ALIEN_PROC_ID:-unknown} started" > fail.log
echo "fail.sh: simulated payload error, exiting with status 3" >> fail.log
echo "fail.sh: simulated payload error, see fail.log" >&2
exit 3
