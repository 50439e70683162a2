"""What an image costs a job, against the same job on the host's userland.

    .venv/bin/python benchmarks/images.py [--rounds N] [--tree DIR]

Measures `/bin/true` run to completion in the sandbox (the path `sandbox exec` takes,
in-process, default policy), median of N rounds:
  host       filesystem.image = "host": the baseline the ratios are taken against;
  directory  a busybox root (scripts/busybox-image.sh): its manifest stat-walked and
             checked against the warm hash cache, its top level bound;
  squashfs   the same root packed with mksquashfs: hashed (cached), mounted with
             squashfuse for the job and unmounted after it.
And the digest of a bigger directory tree (default /usr/lib/python3.11, thousands of
files), against a bare stat walk of it:
  cold       every file read and hashed;
  cached     stat walk only, hashes from the cache (a pilot's second job, or restart).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import median_ms

from sandbox_agent.images import identity, prepare
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import session
from sandbox_agent.runtime.render import render

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tree", default=f"/usr/lib/python{sys.version_info[0]}."
                        f"{sys.version_info[1]}")  # fmt: skip
    options = parser.parse_args()
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-bench-"))
    try:
        base.chmod(0o711)
        workdir = base / "work"
        workdir.mkdir()
        workdir.chmod(0o777)
        image = base / "images" / "busybox"
        subprocess.run(["bash", str(ROOT / "scripts" / "busybox-image.sh"), str(image)],
                       check=True)  # fmt: skip
        (base / "images").chmod(0o755)
        packed = base / "images" / "busybox.sqfs"
        subprocess.run(["mksquashfs", str(image), str(packed), "-quiet", "-noappend",
                        "-no-progress"], check=True, capture_output=True)  # fmt: skip
        policies = base / "policies"
        shutil.copytree(ROOT / "policies", policies)
        figures = {}
        for name, where in (("host", "host"), ("directory", image), ("squashfs", packed)):
            (policies / "bench.toml").write_text(
                f'extends = "default"\n[filesystem]\nimage = "{where}"\n')
            effective = compose(load_policy("bench", [policies]))

            def job(effective=effective) -> None:  # type: ignore[no-untyped-def]
                with prepare.ready(effective) as ready:
                    plan = render("bwrap", effective, ["/bin/true"], workdir=str(workdir),
                                  environ={}, image=ready)  # fmt: skip
                    result = session.run(plan, effective, workdir=workdir)
                assert result.outcome.returncode == 0, result

            job()  # warm: the seccomp program compiled, the hashes cached
            figures[name] = median_ms(job, options.rounds)
        tree = options.tree
        walk = median_ms(lambda: _stat_walk(tree), 5)
        cold = median_ms(lambda: identity.of_directory(tree, identity.HashCache()), 3)
        cache = identity.HashCache()
        identity.of_directory(tree, cache)
        cached = median_ms(lambda: identity.of_directory(tree, cache), 5)
        found = identity.of_directory(tree, cache)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"/bin/true to completion in the sandbox, median of {options.rounds} rounds, "
          f"uid {os.geteuid()}")  # fmt: skip
    for name, value in figures.items():
        print(f"  {name:<10} {value:8.2f} ms   {value / figures['host']:6.2f}x host")
    print(f"digest of {tree} ({found.entries} entries, {found.size / 2**20:.1f} MiB), "
          f"against a bare stat walk of it ({walk:.1f} ms)")  # fmt: skip
    print(f"  cold       {cold:8.1f} ms   {cold / walk:6.1f}x walk")
    print(f"  cached     {cached:8.1f} ms   {cached / walk:6.1f}x walk")


def _stat_walk(tree: str) -> int:
    count = 0
    for directory, names, files in os.walk(tree):
        for name in names + files:
            os.lstat(os.path.join(directory, name))
            count += 1
    return count


if __name__ == "__main__":
    main()
