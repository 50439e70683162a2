"""What the pilot costs a job when its JobWrapper runs in Podman or Docker, against the
engine's own bare run of the same image, in the same run.

    .venv/bin/python benchmarks/engines.py [--jobs N] [--engines podman,docker]

For each engine that answers here (as root): N jobs of `/bin/true` submitted to a
fresh embedded queue and `sandbox-agent run --runtime ENGINE` timed over them in a
steady loop, from the first match to the last report (per job: the match, the job
token, the container named and started, found, its limits read back, its network
plumbed for egress as the shipped default asks, the JobWrapper's files and the
handoff written, the payload, the outputs kept, the container removed). The baseline
is `ENGINE run --rm --network none IMAGE true` on the same busybox image (imported
without a registry, as the tests do: tests/engine_support.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import jobs_span, median_ms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from engine_support import BUSYBOX, _load, accepted, answers, ensure_docker  # noqa: E402

from sandbox_agent.queue import Store  # noqa: E402

SCRIPT = Path(sys.executable).parent / "sandbox-agent"


def pilot_per_job(engine: str, jobs: int) -> float:
    """Milliseconds per job through the pilot on ``engine``."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o711)
        home = base / "home"
        shutil.copytree(ROOT / "policies", home / "policies")
        accepts = accepted(engine)
        (home / "policies" / "eng.toml").write_text(
            f'extends = "default"\n[filesystem]\nimage = "docker://{BUSYBOX}"\n{accepts}'
        )
        with Store(home / "queue") as store:
            for _ in range(jobs):
                store.submit('Executable = "/bin/true";\n', owner="bench")
        env = {**os.environ, "SANDBOX_AGENT_HOME": str(home)}
        process = subprocess.Popen([str(SCRIPT), "run", "--json", "--runtime", engine,
                                    "--policy", "eng", "--max-jobs", str(jobs)], env=env,
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert process.stdout is not None
        first, last, states = jobs_span(process.stdout)
        process.wait()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if states != {"DONE": jobs}:
        raise SystemExit(f"{engine}: not every job ended DONE: {states}")
    return (last - first) * 1000 / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--engines", default="podman,docker")
    args = parser.parse_args()
    print(f"{args.jobs} jobs of /bin/true through `sandbox-agent run --runtime ENGINE` "
          f"(the shipped default: egress), uid {os.geteuid()}")  # fmt: skip
    ensure_docker()
    for engine in args.engines.split(","):
        why = answers(engine) or _load(engine, BUSYBOX)
        if why is not None:
            print(f"  {engine}: skipped ({why})")
            continue
        bare = median_ms(lambda e=engine: subprocess.run(  # type: ignore[misc]
            [e, "run", "--rm", "--network", "none", BUSYBOX, "true"], check=True,
            capture_output=True), 10)  # fmt: skip
        per_job = pilot_per_job(engine, args.jobs)
        print(f"  {engine:7} pilot {per_job:8.1f} ms per job; bare `{engine} run --rm "
              f"IMAGE true` {bare:7.1f} ms (median of 10); {per_job / bare:.2f}x, "
              f"{per_job - bare:.0f} ms on top")  # fmt: skip


if __name__ == "__main__":
    main()
