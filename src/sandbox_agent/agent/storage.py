"""The embedded default's output storage: what a job left, chosen by its JDL, read out of
its work directory safely (agent/outputs.py) and kept under HOME/outputs with a
manifest of names, sizes and SHA-256 digests.

    HOME/outputs/<job id>/<resubmission>/manifest.json
                                        files/0000 ...   the outputs, in manifest order
                                        logs/stdout, logs/stderr, logs/wrapper.log

Which files: the JDL's Output entries when the job is DONE (or DONE_WARN), its
OutputErrorE entries when it ended in an error the payload caused. An archive entry
names the zip the wrapper made; a plain entry's patterns are matched against the work
directory's regular files, listed without following any link and never below the
job token's directory.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sandbox_agent.agent import outputs
from sandbox_agent.jdl import OutputSpec
from sandbox_agent.wrapper.jobwrapper import TOKEN_DIR
from sandbox_agent.wrapper.packaging import MAX_DEPTH, matches  # the wrapper's rules

MANIFEST = "manifest.json"
MAX_FILE = 1 << 30  # one output
MAX_TOTAL = 4 << 30  # all of a job's outputs
MAX_LOG = 16 << 20  # each of stdout and stderr
MAX_LISTED = 100_000  # names a work directory may hold before the listing gives up
LOGS = ("stdout", "stderr")
SUCCESS_STATES = frozenset({"DONE", "DONE_WARN"})


class StorageError(ValueError):
    """A stored job that cannot be read or exported: one line with the fix."""


@dataclass
class Manifest:
    job_id: int
    resubmission: int
    state: str
    files: list[dict[str, object]] = field(default_factory=list)  # name, size, sha256, stored
    problems: list[str] = field(default_factory=list)  # outputs not kept, and why
    # those of the problems the agent refused (a link, a cap, a tree too big to search),
    # as against outputs the job never made: a refusal turns DONE into ERROR_SV
    refused: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    usage: dict[str, object] = field(default_factory=dict)  # wall time, cgroup counters


class TooManyFiles(ValueError):
    """A work directory past MAX_LISTED names: the listing cannot be trusted whole."""


def list_files(workdir: Path) -> list[str]:
    """The regular files under ``workdir``, relative, found without following links or
    leaving its filesystem; the token's directory is never entered. Iterative (a tree a
    thousand levels deep must not exhaust the stack); TooManyFiles past MAX_LISTED
    names or MAX_DEPTH levels. Call it once every process of the job is gone."""
    found: list[str] = []
    device = os.lstat(workdir).st_dev
    pending = [""]  # directories to read, relative to the work directory
    seen = 0
    while pending:
        relative = pending.pop()
        if relative.count("/") >= MAX_DEPTH:
            raise TooManyFiles(f"the work directory is deeper than {MAX_DEPTH} levels; "
                               "outputs were not looked for")  # fmt: skip
        try:
            entries = list(os.scandir(workdir / relative if relative else workdir))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > MAX_LISTED:
                raise TooManyFiles(f"the work directory holds more than {MAX_LISTED} "
                                   "names; outputs were not looked for")  # fmt: skip
            name = f"{relative}/{entry.name}" if relative else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                if info.st_dev == device and name != TOKEN_DIR:
                    pending.append(name)
            elif stat.S_ISREG(info.st_mode):
                found.append(name)
    return sorted(found)


def chosen(entries: Sequence[OutputSpec], present: Iterable[str]) -> tuple[list[str], list[str]]:
    """The names to collect for ``entries`` given the files ``present``, and one line per
    entry that found nothing."""
    files = list(present)
    names: list[str] = []
    missing: list[str] = []
    for entry in entries:
        if entry.archive is not None:
            if entry.archive in files:
                names.append(entry.archive)
            else:
                missing.append(f"{entry.archive}: the archive was not made")
            continue
        for pattern in entry.patterns:
            matched = [f for f in files if matches(f, pattern)]
            names += matched
            if not matched:
                missing.append(f"{pattern}: no such output")
    return list(dict.fromkeys(names)), missing


class Storage:
    """Outputs and logs of the embedded default's jobs, under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def attempt(self, job_id: int, resubmission: int) -> Path:
        return self.directory / str(job_id) / str(resubmission)

    def save(
        self,
        job_id: int,
        resubmission: int,
        state: str,
        workdir: Path,
        entries: Sequence[OutputSpec],
        wrapper_log: bytes = b"",
        usage: dict[str, object] | None = None,
    ) -> Manifest:
        """Keep the outputs ``entries`` name and the job's logs; call only once every
        process of the job is gone."""
        where = self.attempt(job_id, resubmission)
        if where.exists():  # a previous save of this attempt was cut short: start over
            shutil.rmtree(where)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (where / "logs").mkdir(mode=0o700, parents=True)
        manifest = Manifest(job_id, resubmission, state, usage=dict(usage or {}))
        try:
            names, manifest.problems = chosen(entries, list_files(workdir) if entries else [])
        except TooManyFiles as exc:
            names, manifest.problems, manifest.refused = [], [str(exc)], [str(exc)]
        kept, refused = outputs.collect(workdir, names, where / "files", max_file=MAX_FILE,
                                        max_total=MAX_TOTAL)  # fmt: skip
        manifest.problems += refused
        manifest.refused += refused
        manifest.files = [
            {"name": c.name, "size": c.size, "sha256": c.sha256,
             "stored": str(c.stored.relative_to(where))}
            for c in kept
        ]  # fmt: skip
        logs, _ = outputs.collect(workdir, list(LOGS), where / "logs" / "job", max_file=MAX_LOG,
                                  max_total=2 * MAX_LOG)  # fmt: skip
        for log in logs:
            log.stored.rename(where / "logs" / log.name)
            manifest.logs.append(log.name)
        (where / "logs" / "job").rmdir()
        if wrapper_log:
            (where / "logs" / "wrapper.log").write_bytes(wrapper_log)
            manifest.logs.append("wrapper.log")
        (where / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        return manifest

    def record_state(self, job_id: int, resubmission: int, state: str) -> None:
        """The attempt's final state, when the agent changed it after saving."""
        path = self.attempt(job_id, resubmission) / MANIFEST
        manifest = json.loads(path.read_text())
        manifest["state"] = state
        path.write_text(json.dumps(manifest, indent=2) + "\n")

    def latest(self, job_id: int) -> Path:
        """The last attempt of ``job_id`` that stored anything."""
        base = self.directory / str(job_id)
        attempts = sorted((int(p.name) for p in base.glob("*") if p.name.isdigit()), reverse=True)
        for number in attempts:
            if (base / str(number) / MANIFEST).exists():
                return base / str(number)
        raise StorageError(f"job {job_id} has no stored outputs or logs yet "
                           f"(see: sandbox-agent status {job_id})")  # fmt: skip

    def manifest(self, job_id: int) -> Manifest:
        where = self.latest(job_id)
        try:
            return Manifest(**json.loads((where / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise StorageError(f"{where / MANIFEST}: unreadable ({exc}); the job's outputs "
                               "are damaged: resubmit it") from None  # fmt: skip

    def export(self, job_id: int, target: Path) -> Manifest:
        """Copy the outputs of ``job_id`` under their names into ``target`` (made if
        missing); never over an existing file, never outside ``target``."""
        manifest = self.manifest(job_id)
        where = self.latest(job_id)
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        copies = []
        for item in manifest.files:  # every name checked before anything is copied
            name = str(item["name"])
            destination = (root / name).resolve()
            if not destination.is_relative_to(root) or name.startswith("/"):
                raise StorageError(f"{name}: leaves {target}; the manifest is not ours")
            if destination.exists() or destination.is_symlink():
                raise StorageError(f"{destination}: exists already; give an empty --to "
                                   "directory")  # fmt: skip
            copies.append((where / str(item["stored"]), destination))
        for source, destination in copies:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
        return manifest

    def log(self, job_id: int, name: str) -> bytes | None:
        manifest = self.manifest(job_id)
        if name not in manifest.logs:
            return None
        path = self.latest(job_id) / "logs" / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StorageError(f"{path}: {exc.strerror}; the job's logs are damaged") from None
