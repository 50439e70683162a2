"""Run the attack probes as a job's payload, in the sandbox the pilot would build for a
job, with canaries planted where the pilot's secrets are (stage.py).

The probe goes the whole way a job goes: the policy composed with a job that runs it
(the pilot's credentials on the deny list), a work directory made as the pilot makes
one, the JobWrapper handed the job over its stdin in bwrap, the landlock step, the
payload's environment built from the agent's (canary variables included) by the
policy's allowlist. What the probe prints is the job's stdout; what reached the host
(a listener, the decoy) is a leak too, whatever the probe thought.

What the policy grants a job is no leak: under network.mode = "host" the job shares the
node's network, so the network rows that got through, and what the host's listeners
received, are reported as granted, naming the setting and where the policy set it. In
egress mode the agent's relay has its say too: its tally must show each destination
the probe was given to try (one address of each network.deny entry) refused by the
policy, and no connection let through; anything else is a leak the host found.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sandbox_agent.images import hostpython
from sandbox_agent.jdl import load_job
from sandbox_agent.limits import workdisk
from sandbox_agent.policy import compose, destinations
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.policy.gate import Answer, Verdict
from sandbox_agent.policy.model import Policy
from sandbox_agent.printable import clipped
from sandbox_agent.runtime.egress import Tally
from sandbox_agent.runtime.jobrun import handoff_fields, run_job
from sandbox_agent.runtime.launch import SANDBOX_HOST_UID, check_workdir
from sandbox_agent.runtime.plan import HostView, RealHost, environment
from sandbox_agent.runtime.workdir import remove_workdir
from sandbox_agent.selftest.stage import Stage, hexed
from sandbox_agent.wrapper import confine
from sandbox_agent.wrapper.probe import RUNNER, probe_files

PYTHON = "/usr/bin/python3"  # the sandbox's interpreter (the host's /usr, bound read-only)
PROBE = "probe"  # where the probe's files go in the work directory
CONFIG = "probe-config.json"
ANSWER_CAP = 1 << 20  # bytes of the job's stdout read for the probe's answer
PROBE_DISK = 64 << 20  # the probe's work directory: ample, and cheap to allocate
BLOCKED, LEAKED, NOT_APPLICABLE = "blocked", "LEAKED", "n/a"  # the probe's three words
GRANTED = "granted"  # the selftest's own: got through, as the policy grants (never the probe's)
DENIAL_ATTACK = "egress_denied"
DENIAL_ENTRIES = 8  # numeric network.deny entries tried, at most (the relay lists 20 refusals)
DENIAL_PORT = 80  # the port tried for an entry that names none


class SelftestError(Exception):
    """The probe could not be run here (one line: why, and what to do)."""


@dataclass(frozen=True)
class Row:
    attack: str
    mechanism: str
    threat: str
    defence: str
    result: str  # blocked, LEAKED, n/a, or granted (got through as the policy grants)
    detail: str
    ms: float


@dataclass
class Outcome:
    policy: str
    rows: list[Row]
    host_saw: list[str] = field(default_factory=list)  # leaks the host saw itself
    seconds: float = 0.0
    # what the host saw that the policy grants (the listeners, under network.mode = "host")
    host_saw_granted: list[str] = field(default_factory=list)
    relay: str | None = None  # egress mode: what the agent's relay refused of the probe's

    @property
    def leaked(self) -> list[str]:
        """Every leak, one line each: the probe's and the host's."""
        found = [f"{r.attack}: {r.detail}" for r in self.rows if r.result == LEAKED]
        return found + self.host_saw

    @property
    def granted(self) -> list[str]:
        """What got through as the policy grants, one line each: no leak."""
        found = [f"{r.attack}: {r.detail}" for r in self.rows if r.result == GRANTED]
        return found + self.host_saw_granted

    def as_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "leaked": self.leaked, "seconds": round(self.seconds, 3),
                "host_saw": self.host_saw, "granted": self.granted,
                "host_saw_granted": self.host_saw_granted, "relay": self.relay,
                "attacks": [{"attack": r.attack, "mechanism": r.mechanism, "threat": r.threat,
                             "defence": r.defence, "result": r.result, "detail": r.detail,
                             "ms": r.ms} for r in self.rows]}  # fmt: skip


def attack_table() -> dict[str, dict[str, str]]:
    """Every attack the probe knows, with its mechanism, threat and expected defence (the
    probe's own table, read by running its runner here, outside any sandbox)."""
    runner = next(p for p in probe_files() if p.name == RUNNER)
    listed = subprocess.run([sys.executable, "-I", "-S", str(runner), "--table"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    table: dict[str, dict[str, str]] = json.loads(listed.stdout)
    return table


PREFLIGHT = frozenset({"credentials", "processes", "descriptors", "network"})


def preflight_attacks() -> list[str]:
    """The canary part of the probe a pilot runs before it takes work: its credentials,
    its processes, its descriptors, the host's network."""
    return [name for name, row in attack_table().items() if row["mechanism"] in PREFLIGHT]


def run_probe(policy: Policy, *, certs: Path, credentials: list[str], work_area: Path,
              home_tag: str, attacks: list[str] | None = None,
              key_paths: list[str] | None = None, runtime: str = "bwrap",
              binary: str | None = None, host: HostView | None = None) -> Outcome:  # fmt: skip
    """The probe's ``attacks`` (every one when None) as a job's payload in the sandbox
    ``policy`` composes; canaries planted in ``certs`` (the pilot's own credential
    directory) while it runs; ``key_paths``: the pilot's real key files elsewhere (a
    broker's --cert and --key), which the probe tries to open too. SelftestError when
    it cannot be run, or its answer is not whole. ``runtime``: the pilot's (bwrap,
    podman or docker; ``binary``, where it was found). ``host``: what is known of this
    host (its python3)."""
    if not Path(PYTHON).exists():  # the decoy runs on it outside too: the real one
        raise SelftestError(f"{PYTHON} is not here: the probe runs on the sandbox's own "
                            "python3; install python3")  # fmt: skip
    table = attack_table()
    unknown = sorted(set(attacks or ()) - set(table))
    if unknown:
        raise SelftestError(f"no such attack: {', '.join(unknown)}; `selftest --list` "
                            "lists them")  # fmt: skip
    started = time.monotonic()
    interpreter = _interpreter(policy, host or RealHost())
    arguments = [*interpreter[1:], "-I", "-S", f"{PROBE}/{RUNNER}", "--config",
                 f"{PROBE}/{CONFIG}", *(attacks or ())]  # fmt: skip
    disk_size = min(PROBE_DISK, int(policy["limits.workdir_size.max"].value))
    spec = load_job(f'Executable = "{interpreter[0]}";\nArguments = "{" ".join(arguments)}";'
                    f'\nTTL = 60;\nWorkDirectorySize = "{max(1, disk_size >> 20)}MB";\n',
                    source="the selftest's job")  # fmt: skip
    effective = compose(policy, spec, credentials=credentials)
    targets, left_out = denial_targets(effective)
    workdir = work_area / f"selftest-{secrets.token_hex(4)}"
    disk: workdisk.WorkDisk | None = None
    stage: Stage | None = None
    try:
        # made as the pilot makes a job's: its own filesystem where the pilot's would be
        owner = (SANDBOX_HOST_UID, SANDBOX_HOST_UID) if os.geteuid() == 0 else None
        disk = workdisk.prepare(workdir, effective, owner)
        stage = Stage(certs, PYTHON)
        config = stage.config()
        config["key_paths"] += [hexed(path) for path in key_paths or ()]
        config["denied"] = [list(target) for target in targets]
        _copy_probe(workdir, config)
        check_workdir(workdir, effective)
        host_env = {**os.environ, **stage.environment()}
        env = dict(environment(effective, host_env))
        token = {"certificate": "selftest: no job token\n", "chain": [], "key": ""}
        fields = handoff_fields(spec, 0, 0, token, env, effective, user="selftest",
                                site="selftest")  # fmt: skip
        name = f"job-{home_tag}-0-0-{secrets.token_hex(4)}"  # job 0: never a real job
        result = run_job(effective, fields, workdir, environ=host_env, name=name,
                         held=workdisk.held(disk), runtime=runtime, binary=binary)  # fmt: skip
        landlock = next((a for a in result.answers if a.key == "process.landlock"), None)
        answer = _answer(workdir / "stdout")
        if answer is None:
            said = result.wrapper_log.decode(errors="replace").strip().splitlines()
            raise SelftestError(f"the probe gave no answer (the job ended {result.state}: "
                                f"{result.detail}{'; ' + said[-1] if said else ''})")  # fmt: skip
        saw = stage.host_saw()
    finally:
        if stage is not None:
            stage.close()
        if disk is not None:
            disk.release()
        if workdir.exists():
            remove_workdir(workdir)
    abi = confine.abi()
    asked = attacks or list(table)
    rows = _rows(answer, table, asked, lambda defence: defence_here(defence, landlock, abi))
    note = None
    if effective.view.network.mode == "egress":  # the agent's side: the relay's tally
        tally = result.session.egress if result.session is not None else None
        note, relay_leaks = relay_view(targets, tally, DENIAL_ATTACK in asked, left_out)
        rows = [replace(r, detail=f"{r.detail}; {note}") if r.attack == DENIAL_ATTACK and note
                else r for r in rows]  # fmt: skip
        saw["network"] = saw.get("network", []) + relay_leaks
    rows, host_saw, host_granted = judged(rows, saw, grants(effective, result.answers))
    return Outcome(policy.name, rows, host_saw, time.monotonic() - started, host_granted,
                   note or None)  # fmt: skip


# What a requirement the site marked optional lets through when the runtime cannot hold
# it: the attack that then finds it (Docker cannot mask the node's /proc files).
OPTIONAL_GRANTS = {"filesystem.proc": "host_wide_proc"}


def grants(effective: EffectivePolicy, answers: Sequence[Answer] = ()) -> dict[str, str]:
    """The probe's mechanisms (or single attacks) whose findings this policy grants a
    job, each with the setting that grants it and where the policy set it.
    network.mode = "host" shares the node's network: its loopback, its addresses, its
    abstract unix sockets. A requirement the site marked optional, which the runtime
    that ran did not hold (``answers``, the gate's), grants what it would have kept."""
    out = {}
    mode = effective["network.mode"]
    if mode.value == "host":
        out["network"] = f'network.mode = "host" ({mode.origin})'
    optional = effective["optional.requirements"].origin
    for answer in answers:
        attack = OPTIONAL_GRANTS.get(answer.key)
        if attack is not None and answer.verdict is Verdict.OPTIONAL:
            out[attack] = f"{answer.key} optional ({optional}): {answer.how}"
    return out


def judged(rows: list[Row], saw: dict[str, list[str]],
           granted: dict[str, str]) -> tuple[list[Row], list[str], list[str]]:  # fmt: skip
    """The rows, the host's leaks and what the host saw that the policy grants: a
    LEAKED row, or a sighting, of a mechanism in ``granted`` (grants) is granted, its
    detail led by what grants it; every other sighting is a leak."""
    out = []
    for row in rows:
        why = granted.get(row.attack) or granted.get(row.mechanism)
        if why is not None and row.result == LEAKED:
            row = replace(row, result=GRANTED, detail=f"granted by {why}: {row.detail}")
        out.append(row)
    leaks: list[str] = []
    allowed: list[str] = []
    for mechanism, lines in saw.items():
        why = granted.get(mechanism)
        if why is None:
            leaks += lines
        else:
            allowed += [f"{line}: granted by {why}" for line in lines]
    return out, leaks, allowed


def denial_targets(effective: EffectivePolicy) -> tuple[list[tuple[str, int]], list[str]]:
    """Where egress_denied connects, in egress mode only (none in the others: it never
    aims at an outside address the policy lets it reach): one IPv4 address of each of
    the first DENIAL_ENTRIES numeric network.deny entries, what the site listed (the
    entry's own if it is one, else the first after the network's), on the entry's port
    or DENIAL_PORT. Also the entries left out: names (resolved by the agent when a job
    starts), IPv6 (egress drops it before the relay), those past the first. Not the
    metadata address: were the relay broken, the probe would reach the real one (the
    relay's rules and tests/agent/test_pilot_network.py hold that it is closed)."""
    if effective.view.network.mode != "egress":
        return [], []
    targets: list[tuple[str, int]] = []
    left_out: list[str] = []
    taken = 0
    for entry in effective.view.network.deny:
        try:
            _, port, network = destinations.split(entry)
        except ValueError:  # loading checked it: never here
            network = None
        if network is None or network.version != 4 or taken >= DENIAL_ENTRIES:
            left_out.append(entry)
            continue
        taken += 1
        first = network.network_address
        address = first if network.num_addresses == 1 else first + 1
        if (target := (str(address), port or DENIAL_PORT)) not in targets:
            targets.append(target)
    return targets, left_out


# How the relay says it refused by the policy (runtime/egress.py: Rules.refusal, and its
# check of the node's own addresses at each connect); any other reason is a connect of
# its own that failed: it tried to reach the destination. tests/selftest holds these
# to what Rules.refusal says.
_POLICY_REFUSALS = ("never reachable from a job", "is this node's own address",
                    "not in network.allow")  # fmt: skip


def refused_by_policy(why: str) -> bool:
    return why.endswith(_POLICY_REFUSALS) or why.startswith("denied by network.deny ")


def relay_view(targets: list[tuple[str, int]], tally: Tally | None, asked: bool,
               left_out: Sequence[str] = ()) -> tuple[str, list[str]]:  # fmt: skip
    """The agent's side of the network attacks in egress mode, from its relay's tally
    (``tally``; None when no relay ran): a note for the egress_denied row, and the
    leaks the host found. Each of ``targets`` must have been refused by the policy
    (``asked``: egress_denied ran), and no connection let through: the probe tries
    none the relay may let through."""
    if tally is None:
        return ("the agent's relay did not run (egress is not met here: the job's network "
                "namespace has its loopback only)", [])  # fmt: skip
    leaks = []
    if tally.allowed:
        leaks.append(f"the agent's relay let {tally.allowed} connection(s) through; the "
                     "probe tries none it may let through")  # fmt: skip
    if not asked or not targets:  # nothing was aimed at: nothing to hold the relay to
        return "", leaks
    said: dict[str, str] = {}
    for line in tally.refusals:
        where, _, reason = line.partition(": ")
        said.setdefault(where, reason)
    refused = []
    for address, port in targets:
        where = f"{address}:{port}"
        why = said.get(where)
        if why is not None and refused_by_policy(why):
            refused.append(f"{where} ({why})")
        elif why is not None:
            leaks.append(f"the agent's relay tried to reach {where}, which the policy "
                         f"closes ({why})")  # fmt: skip
        else:
            leaks.append(f"the agent's relay recorded no refusal of {where}")
    note = f"the agent's relay refused {len(refused)} of {len(targets)}"
    note += f": {', '.join(refused)}" if refused else ""
    if left_out:
        note += f" (network.deny entries not tried: {', '.join(left_out)})"
    return note, leaks


# The landlock ABI a defence of the probe's table needs, by what it names.
_LANDLOCK_NEEDS = (("ABI 6", 6), ("no TCP", 4))


def defence_here(defence: str, landlock: Answer | None, abi: int) -> str:
    """The probe's expected defence (its table's, the same on every host) as this host
    holds it: each landlock part is kept only where the gate's answer for the plan that
    ran enforces landlock (``landlock``; None where the policy turns it off) and the
    kernel's ABI (``abi``) has what the part names; otherwise it says why not."""
    parts = []
    for part in defence.split("; "):
        if "landlock" not in part:
            parts.append(part)
        elif landlock is None:
            parts.append("(landlock: off in this policy)")
        elif landlock.verdict is not Verdict.ENFORCED:
            parts.append(f"(landlock: not here, {landlock.how})")
        else:
            need = max((n for words, n in _LANDLOCK_NEEDS if words in part), default=1)
            parts.append(part if abi >= need else
                         f"({part}: not here, this kernel's landlock ABI is {abi})")  # fmt: skip
    return "; ".join(parts)


def _interpreter(policy: Policy, host: HostView) -> list[str]:
    """How the probe's payload starts Python: the host's, from the host's userland, or
    inside an image the one the wrapper runs on (an image may have none of its own).
    SelftestError, in hostpython.too_old's line, for a host's python3 older than
    OLDEST: the probe and the JobWrapper run on it in place, no find() refused it."""
    if policy["filesystem.image"].value == "host":
        version = host.python_version(PYTHON)
        old = hostpython.too_old(version, PYTHON) if version is not None else None
        if old is not None:
            raise SelftestError(old)
        return [PYTHON]
    try:
        return list(hostpython.find().command)
    except hostpython.NoHostPython as error:
        raise SelftestError(str(error)) from None


def _rows(answer: dict[str, Any], table: dict[str, dict[str, str]], asked: list[str],
          here: Callable[[str], str] = str) -> list[Row]:  # fmt: skip
    """The probe's answer as rows, in the table's order: every attack asked, each with
    one of the three results, or SelftestError (the payload's stdout is the probe's,
    so an answer missing an attack proves nothing about it)."""
    missing = [name for name in asked if name not in answer]
    extra = [name for name in answer if name not in asked]
    if missing or extra:
        extra = [clipped(n, 40) for n in extra]
        raise SelftestError(f"the probe's answer does not match what was asked (missing: "
                            f"{', '.join(missing[:5]) or 'none'}; not asked: "
                            f"{', '.join(extra[:5]) or 'none'})")  # fmt: skip
    rows = []
    for name in [n for n in table if n in answer]:
        got = answer[name]
        if not isinstance(got, dict) or got.get("result") not in (BLOCKED, LEAKED, NOT_APPLICABLE):
            raise SelftestError(f"the probe's answer for {name} is not blocked, LEAKED or n/a")
        try:
            ms = float(got.get("ms", 0.0))
        except (TypeError, ValueError):
            ms = 0.0
        row = table[name]
        defence = here(row["defence"])
        rows.append(Row(name, row["mechanism"], row["threat"], defence, got["result"],
                        str(got.get("detail", "")), ms))  # fmt: skip
    return rows


def _copy_probe(workdir: Path, config: dict[str, Any]) -> None:
    """The probe's files side by side in the work directory, and its configuration
    (secrets and their paths hex-encoded: the payload reads it, as it reads anything
    of its work directory)."""
    probe = workdir / PROBE
    probe.mkdir(mode=0o755)
    for source in probe_files():
        shutil.copyfile(source, probe / source.name)
    (probe / CONFIG).write_text(json.dumps(config))


def _answer(stdout: Path) -> dict[str, Any] | None:
    """The probe's JSON answer: the last line of the job's stdout (its last MiB read)."""
    try:
        with open(stdout, "rb") as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - ANSWER_CAP))
            lines = file.read(ANSWER_CAP).decode(errors="replace").strip().splitlines()
        answer = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError, RecursionError):
        return None
    return answer if isinstance(answer, dict) else None
