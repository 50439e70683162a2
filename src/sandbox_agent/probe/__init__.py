"""The attack probes a hostile payload would run, shipped with the pilot.

``attacks.py`` is a standalone script (standard library only, no import of this
package) that is copied into a sandbox's work directory and run *inside* it with the
sandbox's own interpreter::

    /usr/bin/python3 -I -S attacks.py --json '<config>' [ATTACK...]

Each attack really tries to get through one defence (read the agent's key, reach a
host process, gain a privilege, make a denied system call, write outside the work
directory, reach the host network, use an inherited descriptor) and answers
``blocked``, ``LEAKED`` or ``n/a``. ``attacks.py --table`` prints, for each attack, the
threat and the defence expected to stop it. The adversarial tests
(``tests/adversarial/``) and the agent's start-up self-test run the same file.
"""

from __future__ import annotations

from pathlib import Path

ATTACKS_SCRIPT = Path(__file__).with_name("attacks.py")
