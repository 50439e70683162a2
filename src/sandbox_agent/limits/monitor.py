"""The agent's monitor: it measures what no kernel mechanism holds and kills on excess.

Wall time and the work directory's size are always the monitor's; memory and the
process count are too when no cgroup holds them (the site allowed that fallback). The
kill goes through the job's cgroup when there is one, so nothing escapes it; without
one, through the process tree under the runtime process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from sandbox_agent.limits.cgroups import JobCgroup, Usage
from sandbox_agent.limits.diskuse import deleted_but_open, directory_size

# Reasons a job was killed: code -> words (the code goes into records, the words to people)
KILL_REASONS = {
    "wall_time": "ran past its wall time",
    "workdir_size": "its work directory grew past its size limit",
    "memory": "used more memory than its limit",
    "pids": "ran more processes than its limit",
    "stopped": "the agent was told to stop",
    "killed": "a user or an operator killed it at the queue",
}


class StopRequest:
    """Stop the job from outside the monitor (another thread, a signal handler): SIGTERM
    to the job's processes, ``grace`` seconds to finish, then the kill. The monitor
    selects on this request's pipe beside the job's pidfd, so it acts at once."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.reason: str | None = None  # a KILL_REASONS code, once requested
        self.grace = 0.0

    def request(self, reason: str, grace: float) -> None:
        if self.reason is None:  # the first reason stands
            self.reason, self.grace = reason, grace
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"x")

    def fileno(self) -> int:
        return self._read

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(frozen=True)
class Outcome:
    returncode: int
    reason: str | None  # a KILL_REASONS code when the agent or the kernel killed the job
    detail: str
    wall_seconds: float
    usage: Usage | None
    # the highest values the monitor saw while the job ran (work directory bytes,
    # processes): the cgroup counts memory and CPU itself, not these
    peaks: dict[str, int] = field(default_factory=dict)


class Monitor:
    def __init__(
        self,
        process: subprocess.Popen[bytes],
        limits: Mapping[str, int],
        *,
        workdir: Path,
        cgroup: JobCgroup | None,
        interval: float = 1.0,
        stop: StopRequest | None = None,
    ) -> None:
        self.process = process
        self.stop = stop
        # The runtime's own processes (bwrap and the sandbox's pid 1): a graceful stop
        # spares them, since their death would kill the job without its grace.
        self.runtime_pids = {process.pid}
        # Where the job's processes hang from: the runtime's, and a container's first
        # process, which its engine started outside the runtime's tree (session.run)
        self.roots = {process.pid}
        self.peaks: dict[str, int] = {}
        self.memory_seen = 0  # the most memory.current read while the job ran
        self.limits = dict(limits)  # monitored limit -> its value
        self.workdir = workdir
        self.cgroup = cgroup
        self.interval = interval
        self.started = time.monotonic()
        try:
            self._pidfd: int | None = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # Linux before 5.3, or the process is gone
            self._pidfd = None

    def run(self) -> Outcome:
        """Wait for the job, checking its limits every ``interval`` seconds."""
        reason = None
        while True:
            elapsed = time.monotonic() - self.started
            wait = self.interval
            if "wall_time" in self.limits:
                wait = max(0.0, min(wait, self.limits["wall_time"] - elapsed))
            if self._exited(wait):
                break
            if self.stop is not None and self.stop.reason is not None:
                reason = self.stop.reason
                self.terminate(self.stop.grace)
                break
            reason = self.excess(time.monotonic() - self.started)
            if reason:
                self.kill()
                self.process.wait()
                break
            self._peak("processes", len(self.cgroup.pids()) if self.cgroup else len(self.tree()))
            if self.cgroup is not None and (now := self.cgroup.memory_now()) is not None:
                self.memory_seen = max(self.memory_seen, now)  # where the kernel keeps no peak
        if reason is None and "workdir_size" in self.limits and \
                self.workdir_over(self.limits["workdir_size"], unmeasurable=False):  # fmt: skip
            # one last look once it ended: a job that filled its work directory and
            # exited before the first look must not pass as within its size (one it
            # left unreadable is not called over now: nothing of it runs to hide data)
            reason = "workdir_size"
        wall = time.monotonic() - self.started
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        usage = self.cgroup.usage() if self.cgroup else None
        if usage and usage.memory_peak_bytes is None and self.memory_seen:
            usage = dataclasses.replace(usage, memory_peak_bytes=self.memory_seen,
                                        memory_peak_sampled=True)  # fmt: skip
        detail = self.describe(reason)
        if reason is None and usage and usage.oom_kills and self.cgroup is not None:
            reason = "memory"  # the kernel killed at the cgroup's limit: say what it ended
            detail = f"{self.describe(reason)}; {self.cgroup.memory_kill}"
        return Outcome(self.process.returncode, reason, detail, wall, usage, dict(self.peaks))

    def _exited(self, timeout: float) -> bool:
        """Whether the job's process ended within ``timeout``. A pidfd wakes us the moment
        it does; Popen.wait(timeout) would poll with sleeps of up to 50 ms."""
        watched: list[int] = [self.stop.fileno()] if self.stop is not None else []
        if self._pidfd is not None:
            readable, _, _ = select.select([self._pidfd, *watched], [], [], timeout)
            if self._pidfd not in readable:
                return False
            self.process.wait()
            return True
        if watched:  # no pidfd: poll in short steps, so a stop is seen soon
            deadline = time.monotonic() + timeout
            while self.process.poll() is None:
                readable, _, _ = select.select(watched, [], [], min(0.05, timeout))
                if readable or time.monotonic() >= deadline:
                    return False
            return True
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def terminate(self, grace: float) -> None:
        """SIGTERM to every process of the job but the runtime's own, up to ``grace``
        seconds for them to finish, then the kill."""
        pids = self.cgroup.pids() if self.cgroup else {p.pid for p in self.tree()}
        for pid in pids - self.runtime_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        stop, self.stop = self.stop, None  # the request is served: only the pidfd now
        if not self._exited(grace):
            self.kill()
            self.process.wait()
        self.stop = stop

    def excess(self, elapsed: float) -> str | None:
        """The first monitored limit the job is over, if any."""
        limits = self.limits
        if "wall_time" in limits and elapsed >= limits["wall_time"]:
            return "wall_time"
        if "workdir_size" in limits and self.workdir_over(limits["workdir_size"]):
            return "workdir_size"
        if "memory" in limits or "pids" in limits:
            tree = self.tree()
            if "pids" in limits and _tasks(tree) > limits["pids"]:
                return "pids"
            if "memory" in limits and _rss(tree) > limits["memory"]:
                return "memory"
        return None

    def workdir_over(self, limit: int, *, unmeasurable: bool = True) -> bool:
        """Whether the work directory holds more than ``limit`` bytes, counting files the
        job removed but keeps open; one that cannot be measured fully is ``unmeasurable``
        (over, while the job runs)."""
        size = directory_size(self.workdir)
        if size is None:
            return unmeasurable
        if size <= limit:  # deleted files can only add: look at them when it matters less
            pids = self.cgroup.pids() if self.cgroup else {p.pid for p in self.tree()}
            size += deleted_but_open(pids, os.stat(self.workdir).st_dev)
        self._peak("workdir_bytes", size)
        return size > limit

    def _peak(self, name: str, value: int) -> None:
        self.peaks[name] = max(value, self.peaks.get(name, 0))

    def tree(self) -> list[psutil.Process]:
        """The job's processes: the runtime first (its status then shows a kill), then
        everything under each root."""
        out: list[psutil.Process] = []
        for pid in sorted(self.roots, key=lambda pid: pid != self.process.pid):
            try:
                root = psutil.Process(pid)
                out += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        return out

    def kill(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill()
        for process in self.tree():  # the root first: its status then shows the kill
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)

    def describe(self, reason: str | None) -> str:
        if reason is None:
            return f"exited with {self.process.returncode}"
        limit = self.limits.get(reason)
        shown = f" ({limit})" if limit is not None else ""
        return f"killed: {KILL_REASONS[reason]}{shown}"


def _tasks(tree: list[psutil.Process]) -> int:
    """Processes and their threads: what pids.max counts."""
    total = 0
    for process in tree:
        with contextlib.suppress(psutil.Error):
            total += process.num_threads()
    return total


def _rss(tree: list[psutil.Process]) -> int:
    total = 0
    for process in tree:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total
