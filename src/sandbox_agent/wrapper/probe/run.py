"""Hostile-payload probes. Runs INSIDE the sandbox, as the payload would.

    python3 -I -S DIR/run.py --json CONFIG [ATTACK...]   run attacks, print one JSON object
    python3 -I -S DIR/run.py --config FILE [ATTACK...]   the same, CONFIG read from FILE
    python3 -I -S DIR/run.py --table                     the attack table, as JSON

DIR holds this runner and the attack modules beside it (``attack_*.py``), copied
together into the work directory. Standard library only, and no import of
sandbox_agent: the sandbox's own interpreter runs them, the node's python3 from 3.6 on
(EL8's; images.hostpython.OLDEST): no ``from __future__ import annotations``, every
annotation Python evaluates a string, nothing newer than 3.6 without a guard.

Every attack really tries (opens the file, makes the system call, connects the
socket) and answers ``{"result": "blocked" | "LEAKED" | "n/a", "detail": "...",
"ms": "<milliseconds it took>"}``:

* ``blocked``: the attempt failed; the detail says how (errno, or what was seen).
* ``LEAKED``: the attempt got through; the detail says what it reached.
* ``n/a``: the attack could not be tried here (nothing to attack with, another
  architecture); the detail says why. A probe error is also ``n/a``, never ``blocked``.

CONFIG (JSON, every key optional) says what to look for. Secrets, and the paths that
name them, are hex-encoded, so that the probe's own argv (which bwrap's argv repeats,
both visible in /proc inside) never holds them:

    secrets      hex of texts that must never be seen: key file contents, env values
    env_names    names of variables that must not reach the sandbox (SECRET_TOKEN)
    key_paths    hex of the host paths of the agent's key files; cert_dirs: hex of its
                 certificate directories. A process inside whose argv or environment
                 names one of them is a leak too.
    agent_paths  hex of more host paths that name the agent (its work area, its
                 temporary directory): none may show in a command line or as the
                 source of a mount inside
    host_pid     a process outside the sandbox, same host uid as the sandbox, holding
                 a secret in its environment; host_marker: hex of a word in its argv
    sysv_key     the key of a host SysV shared memory segment holding a secret
    shm_paths    hex of host files in /dev/shm holding a secret
    tcp, udp     [[address, port], ...] where the host listens (TCP, UDP echo)
    abstract     the name of an abstract unix socket the host listens on
    denied       [[address, port], ...] that the agent's relay must refuse (egress mode):
                 one address of each numeric network.deny entry
    canary_fd    a descriptor number the agent held open (must not be inherited)
    write_paths  more host paths to try to create (site-specific, or a test control)
"""

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

# -I (isolated mode) leaves the script's own directory off sys.path, and ignores
# PYTHONPATH: without this line the attack modules beside the runner are not found.
# Appended, not prepended, so that no file here could shadow a standard library module
# (their names all start with attack_, which none does). And no bytecode is written:
# the directory is in the job's work directory, which the probe must leave as it was.
sys.path.append(os.path.dirname(os.path.realpath(__file__)))
sys.dont_write_bytecode = True

# mypy checks these files as the package sandbox_agent.wrapper.probe and cannot follow the line
# above: it reads the package's names (never imported), the interpreter the plain ones.
# Every attack module imports attack_common the same way.
if TYPE_CHECKING:
    from sandbox_agent.wrapper.probe import attack_descriptors, attack_table
else:
    import attack_descriptors
    import attack_table


def main(argv: "list[str]") -> int:
    # Before anything opens a descriptor: what the probe was given.
    attack_descriptors.record_start()
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="{}", help="what to look for (see the docstring)")
    parser.add_argument("--config", help="a file holding that JSON instead")
    parser.add_argument("--table", action="store_true", help="print the attack table")
    parser.add_argument("names", nargs="*", help="attacks to run (default: all)")
    args = parser.parse_args(argv)
    if args.table:
        print(json.dumps(attack_table.table(), indent=1))
        return 0
    unknown = sorted(set(args.names) - set(attack_table.ATTACKS))
    if unknown:
        print(f"run.py: no such attack: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.config:
        with open(args.config, encoding="utf-8") as file:
            config = json.load(file)
    else:
        config = json.loads(args.json)
    print(json.dumps(attack_table.run(args.names, config)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
