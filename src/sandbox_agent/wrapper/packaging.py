"""Output packaging for the JobWrapper: the JDL's Output (or OutputErrorE) entries made
into archives in the work directory, and its plain files checked.

An entry is written as the JDL has it: ``logs.zip:stdout,*.log@disk=1`` (an archive and
its patterns), ``hello.txt@disk=1`` or ``*.root`` (plain files); the storage options
after ``@`` are the agent's business. Patterns are paths relative to the work directory
with fnmatch wildcards, matched one path component at a time as a shell glob does
(``*.root`` takes ``a.root`` but not ``QC/b.root``; ``QC/*.root`` takes that).

The agent collects the archives and the plain files itself once the sandbox is gone;
here they are only made and checked, by code that shares the sandbox with the payload
and so never follows a symlink: the work directory is walked without following links,
only regular files are taken, and each is opened one component at a time with
O_NOFOLLOW. Names the wrapper keeps private (the token directory) are never packaged.

Standard library only: the agent copies this file next to jobwrapper.py, and it runs
on the node's python3 from 3.6 on (EL8's): every annotation Python evaluates is a string.
"""

import errno
import os
import stat
import time

# zipfile, fnmatch (re), shutil and contextlib cost tens of milliseconds at every job's
# start on a slow node: they are imported where used, so a job without archives, or
# without wildcards, never pays for them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import zipfile
    from collections.abc import Collection

WILDCARDS = "*?["
MAX_DEPTH = 128  # directory levels searched for outputs, as the agent searches them
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip member can carry


def parse(entry: str) -> "tuple[str | None, list[str]]":
    """``archive.zip:pat,pat@options`` -> (archive or None, patterns)."""
    files = entry.partition("@")[0].strip()
    archive = None
    if ":" in files:
        archive, _, files = files.partition(":")
        archive = archive.strip()
    return archive, [p.strip() for p in files.split(",") if p.strip()]


def matches(path: str, pattern: str) -> bool:
    """Whether the relative ``path`` matches ``pattern``, component by component: a
    wildcard never crosses ``/``."""
    parts, wanted = path.split("/"), pattern.split("/")
    if len(parts) != len(wanted):
        return False
    if not any(c in pattern for c in WILDCARDS):
        return parts == wanted
    import fnmatch

    return all(map(fnmatch.fnmatchcase, parts, wanted))


def regular_files(workdir: str, private: "Collection[str]") -> "list[str]":
    """The regular files under ``workdir`` as sorted relative paths; symlinks are neither
    followed nor listed, and the top-level names in ``private`` are left out. Iterative
    and at most MAX_DEPTH levels down: the payload made the tree, perhaps to exhaust
    the stack of a recursive walk."""
    found = []
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            entries = list(os.scandir(os.path.join(workdir, relative)))
        except OSError:
            continue  # gone, or not ours to read
        for entry in entries:
            if not relative and entry.name in private:
                continue
            path = relative + "/" + entry.name if relative else entry.name
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue  # gone since it was listed
            if stat.S_ISDIR(mode) and path.count("/") < MAX_DEPTH:
                pending.append(path)
            elif stat.S_ISREG(mode):
                found.append(path)
    return sorted(found)


def save(workdir: str, entries: "list[str]", private: "Collection[str]", *,
         no_archives: str = "") -> "tuple[list[str], list[str]]":  # fmt: skip
    """Make the archives ``entries`` name and check their plain files: (errors, warnings).
    A missing literal file or an archive that cannot be written is an error; a
    wildcard, or an archive, that matches nothing is a warning. ``no_archives`` says why
    no archive may be made (another process of the job may still be running): each
    archive entry is then an error with that reason."""
    parsed = [parse(entry) for entry in entries]
    archives = {archive for archive, _ in parsed if archive is not None}
    # never an archive (or its part file) inside another, nor a stale copy of itself
    files = regular_files(workdir, {*private, *archives, *(_part(a) for a in archives)})
    errors: list[str] = []
    warnings: list[str] = []
    written: set[str] = set()
    if archives:
        import zipfile
    for archive, patterns in parsed:
        if archive is None:
            continue
        if "/" in archive or archive in ("", ".", "..") or archive in private:
            errors.append(f"archive {archive}: not a file name in the work directory")
            continue
        members = [f for f in files if any(matches(f, p) for p in patterns)]
        if not members:
            warnings.append(f"archive {archive}: no file matches {','.join(patterns)}")
            continue
        if no_archives:
            errors.append(f"archive {archive}: not made: {no_archives}")
            continue
        try:
            write_archive(workdir, archive, members)
            written.add(archive)
        except (OSError, RuntimeError, ValueError, zipfile.LargeZipFile) as exc:
            errors.append(f"archive {archive}: {_why(exc)}")
    present = set(files) | written
    plain = [pattern for archive, patterns in parsed if archive is None for pattern in patterns]
    for pattern in plain:
        if not any(c in pattern for c in WILDCARDS):
            if pattern not in present:
                errors.append(f"output {pattern} is missing or not a regular file")
        elif not any(matches(f, pattern) for f in present):
            warnings.append(f"no file matches {pattern}")
    return errors, warnings


def write_archive(workdir: str, archive: str, members: "list[str]") -> None:
    """Zip ``members`` (relative paths, in order) into ``workdir/archive``: written to a
    new file beside it, then renamed over the name, so a symlink left there is
    replaced, never written through."""
    import zipfile

    root = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    part = _part(archive)
    try:
        try:  # noqa: SIM105 (no contextlib: see the imports)
            os.unlink(part, dir_fd=root)  # a stale one, or a planted link
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        with os.fdopen(os.open(part, flags, 0o644, dir_fd=root), "wb") as raw, \
                zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zipped:  # fmt: skip
            for member in members:
                _add(zipped, root, member)
        os.replace(part, archive, src_dir_fd=root, dst_dir_fd=root)
    except BaseException:
        try:  # noqa: SIM105
            os.unlink(part, dir_fd=root)
        except OSError:
            pass
        raise
    finally:
        os.close(root)


def _part(archive: str) -> str:
    return f".{archive}.part"


def _add(zipped: "zipfile.ZipFile", root: int, member: str) -> None:
    import zipfile

    try:
        descriptor = open_beneath(root, member)
    except OSError as exc:  # named by the member, not by the component that failed
        raise OSError(exc.errno, exc.strerror, member) from None
    with os.fdopen(descriptor, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):  # swapped since the walk
            raise OSError(errno.EINVAL, "not a regular file", member)
        entry = zipfile.ZipInfo(member, max(_ZIP_EPOCH, time.localtime(info.st_mtime)[:6]))
        entry.compress_type = zipfile.ZIP_DEFLATED
        entry.external_attr = (info.st_mode & 0xFFFF) << 16
        entry.file_size = info.st_size  # lets zipfile pick zip64 for a large member
        with zipped.open(entry, "w") as out:
            while True:  # no walrus: an image's older Python reads this file too
                chunk = source.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)


def open_beneath(root: int, path: str) -> int:
    """A read descriptor for ``path`` under the directory ``root``, opened one component
    at a time with O_NOFOLLOW: a symlink anywhere on the way fails (ELOOP, ENOTDIR)
    instead of leading out of the work directory."""
    parts = path.split("/")
    directory = root
    try:
        for part in parts[:-1]:
            flags = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW
            following = os.open(part, flags, dir_fd=directory)
            if directory != root:
                os.close(directory)
            directory = following
        # O_NONBLOCK: a FIFO put in the file's place must not stall the wrapper
        return os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=directory)
    finally:
        if directory != root:
            os.close(directory)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return where + (exc.strerror or str(exc))
    return str(exc)
