"""What the whole pilot costs a job, against the bare sandbox, and the agent's memory.

    .venv/bin/python benchmarks/pilot.py [--jobs N]

Submits N jobs of `/bin/true` to a fresh embedded queue and times `sandbox-agent run`
over them in a steady loop, from the first match to the last report: per job, the
match, the job token (key, CSR, signature), the sandbox with the JobWrapper, the
handoff, the payload, the outputs and logs kept, the states reported. The baseline
is a plain `bwrap ... /bin/true` loop in the same run. The agent's peak RSS is read
from /proc (VmHWM) while it runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from timing import jobs_span, median_ms

from sandbox_agent.queue import Store

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "sandbox-agent"
BARE_BWRAP = ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev",
              "/dev", "--", "/bin/true"]  # fmt: skip


def peak_rss(pid: int, seen: list[int], done: threading.Event) -> None:
    """The process's VmHWM (peak resident set), sampled until it ends."""
    while not done.wait(0.05):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    seen.append(int(line.split()[1]) * 1024)
        except OSError:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    jobs = parser.parse_args().jobs
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o711)
        home = base / "home"
        home.mkdir()
        with Store(home / "queue") as store:
            for _ in range(jobs):
                store.submit('Executable = "/bin/true";\n', owner="bench")
        env = {**os.environ, "SANDBOX_AGENT_HOME": str(home)}
        process = subprocess.Popen([str(SCRIPT), "run", "--json", "--max-jobs", str(jobs)],
                                   env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
        seen: list[int] = []
        done = threading.Event()
        sampler = threading.Thread(target=peak_rss, args=(process.pid, seen, done))
        sampler.start()
        assert process.stdout is not None
        first, last, states = jobs_span(process.stdout)
        process.wait()
        done.set()
        sampler.join()
        bare = median_ms(lambda: subprocess.run(BARE_BWRAP, check=True), 30)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if states != {"DONE": jobs}:
        raise SystemExit(f"not every job ended DONE: {states}")
    # the first job's time (from its match) is inside the span; N-1 intervals follow it
    per_job = (last - first) * 1000 / jobs
    print(f"{jobs} jobs of /bin/true through `sandbox-agent run`, uid {os.geteuid()}")
    print(f"  pilot       {per_job:8.2f} ms per job")
    print(f"  bare bwrap  {bare:8.2f} ms per run (median of 30)")
    print(f"  overhead    {per_job - bare:8.2f} ms per job on top of the bare sandbox "
          f"({per_job / bare:.1f}x)")  # fmt: skip
    print(f"  agent peak RSS {max(seen) / (1 << 20):.1f} MB")


if __name__ == "__main__":
    main()
