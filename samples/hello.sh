#!/bin/sh
# Payload for hello.jdl: greet, show the grid job id, leave a file behind.
echo "Hello from the grid! This is job ${ALIEN_PROC_ID:-unknown} on $(uname -n)."
echo "hello from job ${ALIEN_PROC_ID:-unknown}" > hello.txt
