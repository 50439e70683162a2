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

How much: the job's policy (``Caps.from_policy``): ``outputs.max_file`` per output,
``outputs.max_total`` for all of them and never more than the job's
``limits.workdir_size``, ``outputs.max_log`` for each of stdout and stderr. Sizes are
apparent (a sparse file counts whole) and checked before anything is copied; an output
over a cap is refused, a log over its cap is cut, and both are problems of the job.

An archive is kept only when it is a zip the wrapper could have made for its entry:
every member a relative name without ``..``, NUL, backslash or control character, one
the entry's patterns match, a regular file, not encrypted, read back whole (its header
name, size and CRC as the directory says), no more than MAX_MEMBERS members and
``max_total`` bytes uncompressed. A payload's process could have swapped it before the
wrapper killed it (or in a sandbox whose PID namespace was off), so it is checked here.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox_agent.agent import outputs
from sandbox_agent.jdl import OutputSpec
from sandbox_agent.policy.schema import FIELDS, LIMITS
from sandbox_agent.printable import clipped
from sandbox_agent.queue import State
from sandbox_agent.wrapper.jobwrapper import TOKEN_DIR
from sandbox_agent.wrapper.packaging import MAX_DEPTH, matches  # the wrapper's rules

if TYPE_CHECKING:
    import zipfile

    from sandbox_agent.policy.compose import EffectivePolicy

MANIFEST = "manifest.json"
MAX_LISTED = 100_000  # names a work directory may hold before the listing gives up
MAX_MEMBERS = MAX_LISTED  # an archive holds files of the work directory: no more than that
LOGS = ("stdout", "stderr")
SUCCESS_STATES = frozenset({State.DONE, State.DONE_WARN})


@dataclass(frozen=True)
class Caps:
    """What one job may keep in the store, in apparent bytes (st_size: a sparse file
    counts whole): one output, all its outputs together, each of its two logs."""

    max_file: int
    max_total: int
    max_log: int

    def __post_init__(self) -> None:
        for name in ("max_file", "max_total", "max_log"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"Caps.{name} must be a whole number of bytes, not {value!r}")

    @classmethod
    def from_policy(cls, effective: EffectivePolicy) -> Caps:
        """The job's caps: outputs.max_file, outputs.max_total (never more than its
        limits.workdir_size) and outputs.max_log of its effective policy."""
        outputs = effective.view.outputs
        return cls(max_file=outputs.max_file,
                   max_total=min(outputs.max_total, effective.view.limits.workdir_size.value),
                   max_log=outputs.max_log)  # fmt: skip


# The builtin policy's caps, for a caller without a job's policy.
DEFAULT_CAPS = Caps(max_file=FIELDS["outputs.max_file"].default,
                    max_total=min(FIELDS["outputs.max_total"].default, LIMITS["workdir_size"][1]),
                    max_log=FIELDS["outputs.max_log"].default)  # fmt: skip


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


def _archive_patterns(entries: Sequence[OutputSpec]) -> dict[str, list[str]]:
    """Each archive the entries name, with the patterns its members must match."""
    found: dict[str, list[str]] = {}
    for entry in entries:
        if entry.archive is not None:
            found.setdefault(entry.archive, []).extend(entry.patterns)
    return found


def archive_problem(path: Path, archive: str, patterns: Sequence[str], max_total: int,
                    max_members: int = MAX_MEMBERS) -> str | None:  # fmt: skip
    """Why the zip at ``path`` (the agent's own copy of the job's ``archive``) must not
    be kept, in one line; None when every member is one the wrapper could have written
    for ``patterns``. Declared sizes are summed before anything is inflated; every
    member is then read back, which checks its local header's name, its size and its
    CRC against the central directory."""
    # here, not at the top: only jobs with an archive pay for them, not the pilot's start
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(path) as zipped:
            members = zipped.infolist()
            if len(members) > max_members:
                return f"{archive}: more than {max_members} members; the archive was not kept"
            seen: set[str] = set()
            declared = 0
            for info in members:
                why = member_problem(info, patterns)
                if why is None and info.orig_filename in seen:
                    why = "is in the archive twice"
                if why is not None:
                    shown = repr(info.orig_filename)[1:-1][:200]
                    return f"{archive}: member '{shown}' {why}; the archive was not kept"
                seen.add(info.orig_filename)
                declared += info.file_size
                if declared > max_total:
                    return (f"{archive}: its members hold more than {max_total} bytes "
                            "uncompressed (the output caps); the archive was not kept")  # fmt: skip
            for info in members:
                with zipped.open(info) as member:
                    while member.read(1 << 20):
                        pass
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
            ValueError, RuntimeError, NotImplementedError) as exc:  # fmt: skip
        shown = clipped(exc, 200)
        return f"{archive}: not a zip the wrapper made ({shown}); the archive was not kept"
    return None


def member_problem(info: zipfile.ZipInfo, patterns: Sequence[str]) -> str | None:
    """What is wrong with one member of a job's archive, or None. The name is judged as
    it stands in the file (``orig_filename``: zipfile cuts ``filename`` at a NUL)."""
    name = info.orig_filename
    if "\x00" in name:
        return "holds a NUL (a name cut short for some readers)"
    if "\\" in name:
        return "holds a backslash (a directory separator for some readers)"
    if name.startswith("/"):
        return "is an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "climbs out with '..'"
    if "" in parts or "." in parts:
        return "has an empty or '.' component (a directory entry, or a name made odd)"
    if not name.isprintable():
        return "holds a control character"
    if parts[0] == TOKEN_DIR:
        return "lies in the job token's directory"
    if not any(matches(name, pattern) for pattern in patterns):
        return f"matches none of the entry's patterns ({','.join(patterns)[:200]})"
    if info.flag_bits & 0x1:
        return "is encrypted"
    mode = info.external_attr >> 16
    if not stat.S_ISREG(mode):
        return "is not a regular file (a link or a device for some readers)"
    return None


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
        caps: Caps = DEFAULT_CAPS,
        wrapper_log_size: int = 0,
    ) -> Manifest:
        """Keep the outputs ``entries`` name and the job's logs within ``caps`` (give
        ``Caps.from_policy`` of the job's policy); call only once every process of the
        job is gone. ``wrapper_log_size``: the bytes the wrapper wrote on its stderr, of
        which ``wrapper_log`` is the part the agent kept (a cut is a problem too)."""
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
        kept, refused = outputs.collect(workdir, names, where / "files", max_file=caps.max_file,
                                        max_total=caps.max_total)  # fmt: skip
        archives = _archive_patterns(entries)
        for item in [c for c in kept if c.name in archives]:
            why = archive_problem(item.stored, item.name, archives[item.name], caps.max_total)
            if why is not None:
                item.stored.unlink()
                kept.remove(item)
                refused.append(why)
        manifest.problems += refused
        manifest.refused += refused
        manifest.files = [
            {"name": c.name, "size": c.size, "sha256": c.sha256,
             "stored": str(c.stored.relative_to(where))}
            for c in kept
        ]  # fmt: skip
        logs, cut = outputs.collect(workdir, list(LOGS), where / "logs" / "job",
                                    max_file=caps.max_log, max_total=2 * caps.max_log,
                                    cut=True)  # fmt: skip
        # a log cut at its cap, or not kept (a link, a FIFO): the job's problem, shown by
        # `outputs`; a log the job never made (it never ran) is none
        never_made = {f"{name}: missing" for name in LOGS}
        cap = f" (outputs.max_log is {caps.max_log} bytes)"
        manifest.problems += [f"log {line}" + (cap if line.endswith("were kept") else "")
                              for line in cut if line not in never_made]  # fmt: skip
        for log in logs:
            log.stored.rename(where / "logs" / log.name)
            manifest.logs.append(log.name)
        (where / "logs" / "job").rmdir()
        if wrapper_log:
            (where / "logs" / "wrapper.log").write_bytes(wrapper_log)
            manifest.logs.append("wrapper.log")
        if wrapper_log_size > len(wrapper_log):
            manifest.problems.append(f"log wrapper.log: {wrapper_log_size} bytes; only the "
                                     f"first {len(wrapper_log)} were kept")  # fmt: skip
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
