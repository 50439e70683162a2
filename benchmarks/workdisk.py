"""What a work directory of its own size costs a job: limits/workdisk.py's image
(fallocate, mkfs.ext4, loop mount; unmount and remove after), against the plain
directory a job got before (mkdir, chown; rmdir), in the same run. Root only.

    .venv/bin/python benchmarks/workdisk.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from timing import median_ms

from sandbox_agent.limits import workdisk

SIZES = (("20 MB", 20 << 20), ("1 GB", 1 << 30), ("10 GB (the default policy's)", 10 << 30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    options = parser.parse_args()
    kind, why = workdisk.mechanism()
    if kind != "loop":
        sys.exit(f"benchmarks/workdisk.py: needs root and loop devices ({why})")
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="sandbox-agent-bench-"))
    try:
        workdir = base / "work"

        def plain() -> None:
            workdir.mkdir(mode=0o700)
            os.chown(workdir, 65534, 65534)
            workdir.rmdir()

        baseline = median_ms(plain, options.rounds)
        print(f"plain directory: {baseline:.2f} ms")
        for name, size in SIZES:

            def own(size: int = size) -> None:
                workdir.mkdir(mode=0o700)
                disk = workdisk.make(workdir, size, (65534, 65534))
                problem = disk.release()
                assert problem is None, problem
                workdir.rmdir()

            own()  # warm
            figure = median_ms(own, options.rounds)
            print(f"own filesystem of {name}: {figure:.1f} ms ({figure / baseline:.0f}x; "
                  f"{figure - baseline:.1f} ms on top)")  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
