#!/bin/sh
# The job is good when it wrote its main output and logged the events.
test -s AO2D.root && grep -q "simulated" sim.log
