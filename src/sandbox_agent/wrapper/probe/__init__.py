"""The attack probes a hostile payload would run, shipped with the pilot.

The probe is a set of standalone modules (standard library only, no import of this
package), copied side by side into one directory of a sandbox's work directory and
run *inside* the sandbox with the sandbox's own interpreter::

    /usr/bin/python3 -I -S DIR/run.py --json '<config>' [ATTACK...]

``run.py`` is the runner; ``attack_table.py`` lists every attack, in the order they
run; ``attack_common.py`` holds what the attacks share; and each ``attack_<mechanism>.py``
holds the attacks on one defence, as the adversarial tests are organised: credentials
(read the agent's key), processes (reach a host process), ipc (host shared memory),
privilege (gain one), syscalls (make a denied system call), filesystem (write outside
the work directory), network (reach the host network), descriptors (use an inherited
one), hostinfo (what the sandbox shows of the node and of the agent's paths). Each
attack answers ``blocked``, ``LEAKED`` or ``n/a``. ``run.py --table``
prints, for each attack, the threat and the defence expected to stop it. The
adversarial tests (``tests/adversarial/``) and the agent's start-up self-test ship the
same files.
"""

from pathlib import Path

PROBE_DIR = Path(__file__).parent
RUNNER = "run.py"  # run from the directory the files were copied to


def probe_files() -> "list[Path]":
    """Every file of the probe, to copy into one directory (this ``__init__.py`` is the
    package's, no part of the probe)."""
    return sorted(p for p in PROBE_DIR.glob("*.py") if p.name != "__init__.py")
