"""How fast a production JDL is read, against json.loads of the same data in the same run.

Prints the median time per parse of tests/jdl/corpus/valid/production_mc.jdl into a
JobSpec, the median time of json.loads on the spec's JSON form (the baseline: the
cheapest way Python reads the same information), and their ratio.

    .venv/bin/python benchmarks/jdl_parse.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from sandbox_agent.jdl import load_job

ROOT = Path(__file__).resolve().parents[1]
JDL = ROOT / "tests" / "jdl" / "corpus" / "valid" / "production_mc.jdl"


def median_seconds(func: object, rounds: int, inner: int = 50) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            func()  # type: ignore[operator]
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds
    text = JDL.read_text()
    as_json = json.dumps(load_job(text).to_json())
    jdl = median_seconds(lambda: load_job(text), rounds)
    baseline = median_seconds(lambda: json.loads(as_json), rounds)
    print(f"production JDL ({len(text)} chars) -> JobSpec: {jdl * 1e6:8.1f} us per parse")
    print(f"json.loads of the same data (baseline):   {baseline * 1e6:8.1f} us per parse")
    print(f"ratio: {jdl / baseline:.1f}x the baseline")


if __name__ == "__main__":
    main()
