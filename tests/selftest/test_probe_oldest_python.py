"""The attack probe on an older python3 than the agent's: Debian 11's 3.9 (an EL9 node's
version), inside the sandbox the agent builds, every attack against the selftest's own
canaries. The probe runs on the node's python3 (images.hostpython.OLDEST and up), so an
attack must find the same on it as on the agent's own Python: the same verdict for every
attack, none LEAKED, and the host seeing nothing of either run.

The sandbox is the real one (bwrap.render, then session.run: namespaces, the seccomp
program, the landlock step, the masks), its root Debian 11's tree as a directory image.
The payload is the probe's runner, started once by the image's /usr/bin/python3 (3.9)
and once by the agent's interpreter carried into the image (the one the selftest and the
JobWrapper use inside an image): the only difference between the two runs. The image is
made ready by hand: debootstrap's tree has what images.prepare refuses on a node (/tmp
1777, device nodes), and its digest is beside the point here.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import ROOT

from sandbox_agent.images import hostpython
from sandbox_agent.images.prepare import ReadyImage
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import bwrap, session
from sandbox_agent.runtime.launch import check_workdir
from sandbox_agent.selftest.probe_in_sandbox import BLOCKED, LEAKED, attack_table
from sandbox_agent.selftest.stage import Stage
from sandbox_agent.wrapper import confine
from sandbox_agent.wrapper.probe import RUNNER, probe_files

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the probes use x86_64 numbers"),
    pytest.mark.skipif(not Path(hostpython.PYTHON).exists(), reason="no system python3"),
]

PYTHON = "/usr/bin/python3"  # the image's own
PROBE = "probe"  # the probe's directory in the work directory, as the selftest names it
CONFIG = "probe-config.json"
# What the probe must find blocked on either interpreter, whatever the host: the
# canaries (credentials, environment, descriptors, shared memory), the host's processes,
# capabilities and the filter, and denied system calls on every ABI.
BLOCKED_HERE = (
    "inherited_fds", "key_file", "cert_dir", "env_self", "env_procs", "host_environ",
    "root_home", "host_fd", "host_mem", "init_environ", "ptrace_host", "vm_read_host",
    "signal_host", "pidfd_host", "sysv_shm", "host_shm", "capabilities", "no_new_privs",
    "raw_socket", "mount_tmpfs", "chown_root", "mknod_char", "unshare_user",
    "unshare_mount", "keyctl", "bpf", "userfaultfd", "io_uring_setup", "open_by_handle_at",
    "chroot", "settimeofday", "sethostname", "int80_x86", "x32", "write_root_fs",
    "write_sysctl", "overwrite_runtime", "write_extra", "tcp_connect", "udp_send",
)  # fmt: skip
# Whose details may differ between two runs: a TCP connection the job's namespace or the
# relay resets, as it is made or just after it.
TIMING = frozenset({"tcp_connect", "egress_denied"})


def old_tree() -> Path:
    from engine_support import old_python_tree

    tree = old_python_tree()
    if isinstance(tree, str):
        pytest.skip(tree)
    return tree


@pytest.fixture
def base() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-oldprobe-"))
    where.chmod(0o711)  # the sandbox's uid (as root) reaches the work directory under it
    yield where
    shutil.rmtree(where, ignore_errors=True)


def in_image(base: Path, tree: Path, argv: list[str], tag: str, *,
             certs: Path | None = None, environ: dict[str, str] | None = None,
             probe: dict[str, Any] | None = None) -> str:  # fmt: skip
    """``argv`` run in the sandbox the default policy composes with ``tree`` as its
    image (``certs``: the agent's credential directory, denied), the probe's files and
    ``probe`` (its configuration) in the work directory; its stdout."""
    policies = base / f"policies-{tag}"
    shutil.copytree(ROOT / "policies", policies)
    (policies / "old.toml").write_text(f'extends = "default"\n[filesystem]\nimage = "{tree}"\n')
    credentials = [str(certs)] if certs is not None else []
    effective = compose(load_policy("old", [policies]), credentials=credentials)
    workdir = base / f"work-{tag}"
    workdir.mkdir()
    workdir.chmod(0o777)
    (workdir / PROBE).mkdir(mode=0o755)
    for source in probe_files():
        shutil.copyfile(source, workdir / PROBE / source.name)
    (workdir / PROBE / CONFIG).write_text(json.dumps(probe or {}))
    for path in (workdir / PROBE).iterdir():
        path.chmod(0o644)
    ready = ReadyImage(str(tree), str(tree), "the test", "directory", "sha256:" + "0" * 64, 0,
                       False, str(tree))  # fmt: skip
    plan = bwrap.render(effective, argv, workdir=check_workdir(workdir, effective),
                        environ={**os.environ, **(environ or {})}, image=ready)  # fmt: skip
    out, err = base / f"{tag}.out", base / f"{tag}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr, open(os.devnull, "rb") as null:
        result = session.run(plan, workdir=workdir, stdin=null, stdout=stdout, stderr=stderr)
    said = err.read_text(errors="replace")
    assert result.outcome.returncode == 0, said
    if confine.abi() > 0:  # the landlock step ran (on the agent's interpreter) and said so
        assert result.landlock is not None and result.landlock.startswith("confined"), said
    return out.read_text()


def probe_run(base: Path, tree: Path, interpreter: list[str], tag: str) -> dict[str, Any]:
    """Every attack of the probe, its runner started by ``interpreter`` in the image,
    against the selftest's canaries (selftest.stage): the answer, and what the host saw
    (its listeners, the decoy)."""
    certs = base / f"home-{tag}" / "certs"
    stage = Stage(certs, hostpython.PYTHON)
    try:
        argv = [*interpreter, "-I", "-S", f"{PROBE}/{RUNNER}", "--config", f"{PROBE}/{CONFIG}"]
        said = in_image(base, tree, argv, tag, certs=certs, environ=stage.environment(),
                        probe=stage.config())  # fmt: skip
        saw = stage.host_saw()
    finally:
        stage.close()
    answer: dict[str, Any] = json.loads(said.strip().splitlines()[-1])
    return {"answer": answer, "host_saw": [line for lines in saw.values() for line in lines]}


def version_in(base: Path, tree: Path, interpreter: list[str], tag: str) -> tuple[int, int]:
    said = in_image(base, tree, [*interpreter, "-I", "-S", "-c", VERSION], tag)
    major, minor = (int(part) for part in said.split())
    return major, minor


VERSION = "import sys; print(*sys.version_info[:2])"


def comparable(detail: str, tag: str) -> str:
    """An attack's detail without what differs between two runs by design: the run's own
    directories and the random names of its canaries, numbers (pids, ports, sizes)."""
    detail = detail.replace(f"-{tag}/", "-RUN/")
    detail = re.sub(r"sandbox-agent-selftest-\w+", "sandbox-agent-selftest-X", detail)
    detail = re.sub(r"0x[0-9a-f]+|[0-9a-f]{8,}", "X", detail)
    return re.sub(r"\d+", "N", detail)


def test_every_attack_finds_on_debian_11s_python_3_9_what_it_finds_on_the_agents(
    base: Path,
) -> None:
    tree = old_tree()
    carried = list(hostpython.find().command)  # the agent's, through the host's loader
    assert version_in(base, tree, [PYTHON], "old-version") == (3, 9)
    assert version_in(base, tree, carried, "own-version") == sys.version_info[:2] > (3, 9)
    old = probe_run(base, tree, [PYTHON], "old")
    own = probe_run(base, tree, carried, "own")
    table = list(attack_table())
    for run in (old, own):
        assert list(run["answer"]) == table  # every attack answered, in the table's order
        assert run["host_saw"] == []
        answers = run["answer"].items()
        assert {n: a["detail"] for n, a in answers if "probe error" in a["detail"]} == {}
        assert {n: a["detail"] for n, a in answers if a["result"] == LEAKED} == {}
        assert {n: a for n, a in answers if n in BLOCKED_HERE and a["result"] != BLOCKED} == {}
    # the same verdict for every attack, and the same account of it (but where a TCP
    # reset comes as the connection is made or just after it: a matter of timing)
    differ = {}
    for name in table:
        pair = (old["answer"][name], own["answer"][name])
        details = [comparable(a["detail"], t) for a, t in zip(pair, ("old", "own"), strict=True)]
        if pair[0]["result"] != pair[1]["result"] or (
            details[0] != details[1] and name not in TIMING
        ):
            differ[name] = pair
    # (udp_send among them: where egress drops the datagram and no echo comes in time,
    # 3.9's socket.timeout, no TimeoutError before 3.10, is told as the agent's Python
    # tells it, "(sent, no echo)")
    assert differ == {}
