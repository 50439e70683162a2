"""The attack table: every attack of every mechanism module, in the order they run, and
the loop that runs them. The one guard every attack shares is here: an attack whose
success would change the host (``host_safe`` False) is refused outside a user namespace.
"""

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the package; the sandbox imports plain names (run.py)
    from sandbox_agent.wrapper.probe import (
        attack_common as common,
    )
    from sandbox_agent.wrapper.probe import (
        attack_credentials,
        attack_descriptors,
        attack_filesystem,
        attack_hostinfo,
        attack_ipc,
        attack_network,
        attack_privilege,
        attack_processes,
        attack_syscalls,
    )
    from sandbox_agent.wrapper.probe.attack_common import Config, Result
else:
    import attack_common as common
    import attack_credentials
    import attack_descriptors
    import attack_filesystem
    import attack_hostinfo
    import attack_ipc
    import attack_network
    import attack_privilege
    import attack_processes
    import attack_syscalls

# The order the attacks run in, and the table lists them. Descriptors first: nothing the
# probe opens itself may be mistaken for inherited.
_TABLES = (
    attack_descriptors.ATTACKS,
    attack_credentials.ATTACKS,
    attack_processes.ATTACKS,
    attack_ipc.ATTACKS,
    attack_privilege.ATTACKS,
    attack_syscalls.ATTACKS,
    attack_filesystem.ATTACKS,
    attack_network.ATTACKS,
    attack_hostinfo.ATTACKS,
)
ATTACKS: "dict[str, common.Attack]" = {name: a for table in _TABLES for name, a in table.items()}
if len(ATTACKS) != sum(len(table) for table in _TABLES):  # a name in two modules
    raise RuntimeError("an attack name is used twice: one would hide the other")


def run(names: "list[str]", config: "Config") -> "dict[str, Result]":
    """Run the named attacks (all when none) in the table's order."""
    out = {}
    for name, attack in ATTACKS.items():
        if names and name not in names:
            continue
        if not attack.host_safe and common.ns_inode("user") in (None, common.INIT_USER_NS):
            out[name] = common.na("not run outside a user namespace: it could change the host")
            continue
        started = time.monotonic()
        try:
            out[name] = attack.run(config)
        except Exception as exc:  # a broken probe must never read as "blocked"
            out[name] = common.na(f"probe error: {type(exc).__name__}: {exc}")
        out[name]["ms"] = f"{(time.monotonic() - started) * 1000:.1f}"
    return out


def table() -> "dict[str, dict[str, str]]":
    return {name: {"mechanism": a.mechanism, "threat": a.threat, "defence": a.defence}
            for name, a in ATTACKS.items()}  # fmt: skip
