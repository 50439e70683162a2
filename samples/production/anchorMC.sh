#!/bin/sh
# A stand-in for a Monte Carlo steering script: reads its inputs, writes ROOT-like
# files, a log and QC results into the work directory.
set -e
echo "run $ALIEN_JDL_LPMRUNNUMBER of $ALIEN_JDL_LPMPRODUCTIONTAG, arguments: $*"
test -r generator.ini && test -r config.json
echo "generator: $(head -n 1 generator.ini)" > sim.log
head -c 4096 /dev/urandom > AO2D.root
head -c 1024 /dev/urandom > hits.root
mkdir -p QC
head -c 512 /dev/urandom > QC/tracks.root
echo "simulated $2 events" >> sim.log
echo "done"
