"""SAVING under attack, through the real pilot (``sandbox-agent run``), as root and as an
unprivileged pilot (uid 65534 in a delegated cgroup): issue 16's findings 3, 5 and 6.

* 5: a process the payload left renames a forged zip (members ``../x``, ``/etc/x``) over
  the archive, in a loop, while the wrapper saves: the archive kept is the wrapper's own.
* 3: a 300 MB sparse output of a job with ``WorkDirectorySize = "20MB"`` is refused by
  its apparent size; the store holds nothing near it.
* 6: a log over its cap is cut there, and the cut is a problem ``outputs`` shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import ROOT, cli_env, close_scopes, run_cli, unprivileged_or_skip

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")


class Pilot:
    """A home with a queue, and the console script run as root or as uid 65534."""

    def __init__(self, base: Path, as_nobody: bool) -> None:
        self.home = base / "home"
        self.home.mkdir()
        self.prefix: list[str] = []
        self.program: list[str] | None = None
        self.cgroups: list[Path] = []
        extra: dict[str, str] = {}
        if as_nobody:
            nobody = unprivileged_or_skip("saving")
            self.prefix, self.cgroups = nobody.prefix, nobody.cgroups
            self.program, extra = nobody.program, nobody.extra
            os.chown(self.home, 65534, 65534)
        self.env = cli_env(self.home, **extra)

    def cli(self, *args: object, pilot: bool = False) -> subprocess.CompletedProcess[str]:
        program = self.program
        if program is not None and pilot:
            program = self.prefix + program
        return run_cli(self.env, *args, program=program)

    def jdl(self, name: str, text: str, **scripts: str) -> Path:
        directory = self.home.parent / f"jdl-{name}"
        directory.mkdir()
        for file_name, content in scripts.items():
            (directory / file_name).write_text(content)
            (directory / file_name).chmod(0o755)
        path = directory / f"{name}.jdl"
        path.write_text(text)
        return path

    def policy(self, name: str, text: str) -> None:
        shutil.copytree(ROOT / "policies", self.home / "policies", dirs_exist_ok=True)
        (self.home / "policies" / f"{name}.toml").write_text(text)

    def run_one(self, jdl: Path, *args: str) -> dict[str, Any]:
        """Submit ``jdl``, run the pilot until the queue is empty: the job's end."""
        submitted = self.cli("submit", jdl)
        assert submitted.returncode == 0, submitted.stderr
        job = int(submitted.stdout)
        result = self.cli("run", "--json", "--lease", "30", *args, pilot=True)
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        ends = [e for e in events if e.get("event") == "finished" and e.get("job") == job]
        assert ends, result.stdout
        return dict(ends[0])

    def close(self) -> None:
        close_scopes(list(self.cgroups))


@pytest.fixture(params=["agent-as-root", "agent-as-nobody"])
def pilot(request: pytest.FixtureRequest) -> Iterator[Pilot]:
    if os.geteuid() != 0 and request.param == "agent-as-root":
        pytest.skip("needs root")
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-saving-"))
    base.chmod(0o711)
    made = Pilot(base, request.param == "agent-as-nobody")
    try:
        yield made
    finally:
        made.close()
        shutil.rmtree(base, ignore_errors=True)


def kept_archive(pilot: Pilot, job: int, name: str) -> dict[str, bytes] | None:
    """The members of the archive the pilot kept for ``job``, or None when it kept none."""
    target = pilot.home / f"fetched-{job}"
    copied = pilot.cli("outputs", job, "--to", target)
    assert copied.returncode == 0, copied.stderr
    if not (target / name).exists():
        return None
    with zipfile.ZipFile(target / name) as zipped:
        return {info.orig_filename: zipped.read(info) for info in zipped.infolist()}


# -- 5: the archive swap --------------------------------------------------------------------

SWAP = """#!/bin/sh
python3 - <<'END'
import zipfile
with zipfile.ZipFile("forged.zip", "w") as z:
    z.writestr("../x", "FORGED"); z.writestr("/etc/x", "FORGED")
END
setsid sh -c 'while :; do cp forged.zip .t.zip; mv -f .t.zip out.zip; done' </dev/null \
    >/dev/null 2>&1 &
sleep 0.3
echo made
"""


def test_a_leftover_process_cannot_swap_the_archive_during_saving(pilot: Pilot) -> None:
    jdl = pilot.jdl("swap", 'Executable = "swap.sh"; Output = {"out.zip:stdout"};',
                    **{"swap.sh": SWAP})  # fmt: skip
    event = pilot.run_one(jdl)
    assert (event["state"], event["detail"]) == ("DONE", ""), event
    assert kept_archive(pilot, event["job"], "out.zip") == {"stdout": b"made\n"}


# namespaces.pid off: the pilot's preflight refuses such a sandbox (the pidfd_host probe
# leaks), so no job runs there; the wrapper's own refusal to kill(-1) outside a PID
# namespace of its own is tested by running it on the host (tests/wrapper/).


# -- 3: amplification by a sparse file ------------------------------------------------------


def allocated(path: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def test_a_sparse_output_over_the_work_directory_size_is_refused_not_copied(
    pilot: Pilot,
) -> None:
    script = "#!/bin/sh\ntruncate -s 300M big.dat && echo ok\n"
    jdl = pilot.jdl("sparse", 'Executable = "sparse.sh";\n'
                    'WorkDirectorySize = "20MB";\nOutput = {"big.dat", "stdout"};',
                    **{"sparse.sh": script})  # fmt: skip
    event = pilot.run_one(jdl)
    assert event["state"] == "ERROR_SV", event
    assert event["detail"] == (f"an output was refused: big.dat: {300 << 20} bytes is over "
                               "the output caps")  # fmt: skip
    stored = pilot.home / "outputs"
    assert allocated(stored) < 1 << 20
    assert sum(p.stat().st_size for p in stored.rglob("*") if p.is_file()) < 1 << 20
    listed = json.loads(pilot.cli("outputs", event["job"], "--json").stdout)
    assert [f["name"] for f in listed["files"]] == ["stdout"]


# -- 6: a log over its cap ------------------------------------------------------------------


def test_stdout_over_the_log_cap_is_cut_and_the_cut_shown(pilot: Pilot) -> None:
    """The builtin cap (16 MiB): no policy needed."""
    script = "#!/bin/sh\nhead -c 17000000 /dev/zero\n"
    jdl = pilot.jdl("biglog", 'Executable = "biglog.sh";', **{"biglog.sh": script})
    event = pilot.run_one(jdl)
    job = event["job"]
    assert event["state"] == "DONE", event
    problem = ("log stdout: 17000000 bytes; only the first 16777216 were kept "
               "(outputs.max_log is 16777216 bytes)")  # fmt: skip
    assert json.loads(pilot.cli("outputs", job, "--json").stdout)["problems"] == [problem]
    assert f"  not kept: {problem}\n" in pilot.cli("outputs", job).stdout
    assert (pilot.home / "outputs" / str(job) / "0" / "logs" / "stdout").stat().st_size == 1 << 24


def test_a_site_policy_sets_the_log_cap(pilot: Pilot) -> None:
    pilot.policy("smalllog", 'extends = "default"\n[outputs]\nmax_log = "1KB"\n')
    script = "#!/bin/sh\nhead -c 5000 /dev/zero; echo oops >&2\n"
    jdl = pilot.jdl("smalllog", 'Executable = "smalllog.sh";', **{"smalllog.sh": script})
    event = pilot.run_one(jdl, "--policy", "smalllog")
    job = event["job"]
    assert event["state"] == "DONE", event
    problem = ("log stdout: 5000 bytes; only the first 1024 were kept (outputs.max_log is "
               "1024 bytes)")  # fmt: skip
    assert json.loads(pilot.cli("outputs", job, "--json").stdout)["problems"] == [problem]
    assert f"  not kept: {problem}\n" in pilot.cli("outputs", job).stdout
    assert pilot.cli("logs", job, "--stream", "stderr").stdout == "oops\n"
