"""What the sandbox costs a job at start and end, against bare process starts.

    .venv/bin/python benchmarks/sandbox_start.py [--rounds N]

Measures `/bin/true` run to completion, median of N rounds, as root or not:
  bare     subprocess.run(["/bin/true"]): the baseline the ratios are taken against;
  bwrap    bare bwrap with the same namespaces and a read-only bind of /, no policy;
  session  the whole path `sandbox exec` takes, in-process, with the default policy and
           no network (loopback only): seccomp compiled and loaded, the job's cgroup
           made, limited and removed, the landlock step, the monitor, teardown;
  egress   the same with the default policy as shipped (network.mode = "egress"): the
           rules made, the job's namespace plumbed (ip, nft), the relay started and
           stopped (root, or an unprivileged agent with a user namespace);
  compile  compiling the seccomp profile alone (part of session).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from timing import median_ms

from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import session
from sandbox_agent.runtime.render import render
from sandbox_agent.seccomp.compile import compile_profile

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o711)
        workdir = base / "work"
        workdir.mkdir(mode=0o777)
        workdir.chmod(0o777)
        policies = base / "policies"
        shutil.copytree(ROOT / "policies", policies)
        (policies / "offline.toml").write_text(
            'extends = "default"\n[network]\nmode = "none"\nallow = []\n'
        )
        plans = {}
        for name in ("offline", "default"):
            effective = compose(load_policy(name, [policies]))
            plans[name] = render("bwrap", effective, ["/bin/true"], workdir=str(workdir),
                                 environ={})  # fmt: skip
        bare_bwrap = ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc",
                      "--dev", "/dev", "--", "/bin/true"]  # fmt: skip

        def whole(name: str) -> None:
            result = session.run(plans[name], workdir=workdir)
            assert result.outcome.returncode == 0, result

        figures = {
            "bare": median_ms(lambda: subprocess.run(["/bin/true"], check=True), rounds),
            "bwrap": median_ms(lambda: subprocess.run(bare_bwrap, check=True), rounds),
            "session": median_ms(lambda: whole("offline"), rounds),
            "egress": median_ms(lambda: whole("default"), rounds),
            "compile": median_ms(
                lambda: compile_profile(ROOT / "policies" / "seccomp" / "default.json"), rounds
            ),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"/bin/true to completion, median of {rounds} rounds, uid {os.geteuid()}")
    for name, value in figures.items():
        print(f"  {name:<8} {value:8.2f} ms   {value / figures['bare']:6.1f}x bare")


if __name__ == "__main__":
    main()
