"""What the benchmarks share: the median of repeated runs."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable


def median_ms(func: Callable[[], object], rounds: int) -> float:
    """The median wall time of ``func`` over ``rounds`` runs, in milliseconds."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def jobs_span(events: Iterable[str]) -> tuple[float, float, dict[str, int]]:
    """From a pilot's ``run --json`` lines, as they come: when the first job was
    matched, when the last one finished (perf_counter), and how many ended in each
    state."""
    times: dict[str, float] = {}
    states: dict[str, int] = {}
    for line in events:
        event = json.loads(line)
        if event["event"] == "matched" and "first" not in times:
            times["first"] = time.perf_counter()
        if event["event"] == "finished":
            times["last"] = time.perf_counter()
            states[event["state"]] = states.get(event["state"], 0) + 1
    return times.get("first", 0.0), times.get("last", 0.0), states
