"""What a path someone else named may reach: the one check for every file read on a
user's behalf (submit's staging, `catalogue add`, a broker submit) and every host path a
job asks to have bound (ReadOnlyBinds).

Why it is needed: `submit` runs with the rights of whoever runs it, and on a pilot's
own account that includes reading the pilot's key; the JDL it stages is someone else's
text. So a path is judged by the file it really reaches, never by how it is written:

* a relative name is resolved beneath its base (the JDL's directory): '..' or a symlink
  that leaves it is refused (openat2 RESOLVE_BENEATH; where openat2 is missing, the
  opened file's real path is checked instead); magic links (/proc/PID/fd/N) are never
  followed;
* nothing but a regular file is opened for reading: the path is opened O_PATH and
  fstat'ed first, so a FIFO or a device is never opened at all;
* the file reached (the kernel's name for the opened descriptor, and its inode) is never
  a credential: the agent's own (its authority and tokens) or the user's (grid proxy,
  bearer token, ~/.globus, ~/.ssh, ...), nor a hard link to one of the agent's;
* nor at or under a path on the sandbox's deny list (filesystem.deny), except where the
  file lies in the base directory and that deny entry holds the whole base directory:
  Alice's JDL in /home/alice/job stages its neighbours, and names /home/bob/x in vain;
* nor a file of the kernel's (/proc, /sys, /dev: the submitter's own environment is
  /proc/self/environ);
* and a private file (not readable by others) only from beneath the base, never through
  a hidden ('.') component, and never where the base is (or holds) the submitter's home
  directory: no deny list can name every secret a home keeps (~/.git-credentials,
  ~/.config/rclone, shadow's backups), so what is not public must be the job's own.

A bind is judged the same way, with no exemption, and both ways: a bind above a denied
path would expose it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import pwd
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_agent import resolve
from sandbox_agent.policy.model import Item, within
from sandbox_agent.printable import clipped

CREDENTIALS_ORIGIN = "agent:credentials"  # how compose marks the agent's own paths
# Where a user keeps secrets by convention, relative to their home directory.
USER_SECRETS = (".globus", ".ssh", ".gnupg", ".netrc", ".pgpass", ".aws", ".kube",
                ".docker", ".config/gcloud", ".alien", ".joint-cert")  # fmt: skip
MAX_CREDENTIAL_FILES = 10_000  # a walk of the credential directories stops here
_PATH_FLAGS = os.O_PATH | os.O_CLOEXEC


class PathRefused(ValueError):
    """A path that must not be read or bound: one line naming it, why, and the fix."""


@dataclass(frozen=True)
class Deny:
    """What a user's path may not reach: the sandbox's deny list, and credentials that
    no path reaches whatever its base."""

    paths: tuple[str, ...] = ()
    credentials: tuple[str, ...] = ()
    homes: tuple[str, ...] = ()  # the submitter's home directories
    _inodes: dict[tuple[int, int], str] = field(default_factory=dict, compare=False,
                                                 repr=False)  # fmt: skip

    @classmethod
    def of(cls, items: Iterable[Item], credentials: Iterable[str] = (),
           homes: Iterable[str] = ()) -> Deny:  # fmt: skip
        """From an effective policy's filesystem.deny items (the agent's credentials are
        the items compose marked as such), more ``credentials`` and the ``homes``."""
        paths: list[str] = []
        secret: list[str] = []  # the agent's own first: a refusal names the closest
        for item in items:
            (secret if item.origin == CREDENTIALS_ORIGIN else paths).append(str(item.value))
        return cls(tuple(paths), (*secret, *credentials), tuple(homes))

    def credential_inodes(self) -> dict[tuple[int, int], str]:
        """(device, inode) of every regular file under the credentials: a hard link to
        one of them elsewhere is the same file."""
        if not self._inodes:
            self._inodes.update(_inodes(self.credentials))
            self._inodes.setdefault((-1, -1), "")  # walked, even when nothing was found
        return self._inodes


def user_credentials(environ: Mapping[str, str] | None = None, uid: int | None = None,
                     home: str | None = None) -> list[str]:  # fmt: skip
    """The running user's own secrets by grid and Unix convention: the X.509 proxy and
    the WLCG bearer token (where the variables point, else their default places), and
    the usual directories of keys under the home directory."""
    environ = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    homes = [home] if home is not None else user_homes(environ)
    runtime = environ.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}"
    found = [f"/tmp/x509up_u{uid}", f"/tmp/bt_u{uid}", f"/tmp/krb5cc_{uid}",  # noqa: S108
             runtime]  # fmt: skip
    found += [environ[v] for v in ("X509_USER_PROXY", "X509_USER_KEY", "X509_USER_CERT",
                                   "BEARER_TOKEN_FILE") if environ.get(v)]  # fmt: skip
    kerberos = environ.get("KRB5CCNAME", "")
    if kerberos.removeprefix("FILE:").startswith("/"):
        found.append(kerberos.removeprefix("FILE:"))
    for each in homes:
        if each.startswith("/") and each != "/":
            found += [posixpath.join(each, name) for name in USER_SECRETS]
    return [os.path.abspath(p) for p in found]


@dataclass
class UserFile:
    """A regular file opened for reading on a user's behalf, and where it really is."""

    fd: int
    named: str  # as the user wrote it
    real: str  # the kernel's path of the opened file
    size: int

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_user_file(named: str, *, base: Path | None, deny: Deny, key: str,
                   own_choice: bool = False) -> UserFile:  # fmt: skip
    """``named`` (relative to ``base``, or absolute) opened for reading, if it is a
    regular file that ``deny`` lets it reach; PathRefused, naming ``key`` (the JDL key
    or the command), otherwise. ``own_choice``: the user named it on the command line
    (`catalogue add`), not in a JDL, so a private file of theirs is theirs to give.
    The caller closes it."""
    relative = not named.startswith("/")
    if relative and base is None:
        raise PathRefused(f"{key} {_show(named)}: give an absolute path")
    base_real = os.path.realpath(base) if base is not None else None
    fd = _open_path(named, base, relative, key)
    try:
        info = os.fstat(fd)
        real = _real_path(fd, named, key)
        if relative and base_real is not None and not within(real, base_real):
            raise PathRefused(
                f"{key} {_show(named)}: leaves {base} (through '..' or a symlink, to "
                f"{_show(real)}); name the file by its absolute path"
            )
        if not stat.S_ISREG(info.st_mode):
            raise PathRefused(f"{key} {_show(named)}: {_show(real)} is not a regular file; "
                              "name a file, not a directory, FIFO or device")  # fmt: skip
        judge(real, info, deny, key=key, named=named, base=base_real)
        _check_kernel_file(fd, real, key, named)
        if not own_choice and not _public(real, info):
            _check_private(real, info, base_real, deny.homes, key, named)
        try:
            readable = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise PathRefused(f"{key} {_show(named)}: cannot read it ({exc.strerror})") from None
    finally:
        os.close(fd)
    return UserFile(readable, named, real, info.st_size)


def check_bind(path: str, *, deny: Deny, key: str) -> str:
    """``path`` (absolute, normalized) if a job may have it bound: reached through no
    symlink, and neither at, under nor above anything ``deny`` names; PathRefused
    otherwise."""
    info: os.stat_result | None = None
    if os.path.lexists(path):
        fd = _open_path(path, None, False, key)
        try:
            info = os.fstat(fd)
            real = _real_path(fd, path, key)
        finally:
            os.close(fd)
    else:
        # not on this host (a reviewer's explain, /cvmfs not mounted yet): judged by the
        # path its existing part resolves to; the runtime's bind fails if still missing
        real = os.path.realpath(path)
    if real != path:
        # the runtime would follow the link: judge, and bind, only the real path
        raise PathRefused(f"{key}: '{_show(path)}' goes through a symlink (to "
                          f"{_show(real)}); ask for the real path")  # fmt: skip
    judge(real, info, deny, key=key, named=path, base=None, whole_tree=True)
    return real


def judge(real: str, info: os.stat_result | None, deny: Deny, *, key: str, named: str,
          base: str | None, whole_tree: bool = False) -> None:  # fmt: skip
    """The one verdict on a file or tree at ``real`` (``info`` its fstat, if it exists):
    PathRefused
    naming the entry and the reason, or nothing. ``base``: the real directory a
    relative name was resolved in, whose own deny entries do not apply beneath it.
    ``whole_tree``: a directory to be bound, so nothing denied may lie under it either."""

    def reaches(entry: str) -> bool:
        return any(within(real, e) or (whole_tree and within(e, real))
                   for e in {entry, os.path.realpath(entry)})  # fmt: skip

    shown = f"{key} {_show(named)}" if not whole_tree else f"{key}: '{_show(named)}'"
    other = "name another file" if not whole_tree else "ask for a path that reaches none"
    for secret in deny.credentials:
        if reaches(secret):
            raise PathRefused(f"{shown}: reaches {_show(secret)}, a credential (or the "
                              f"agent's own state) no job may read; {other}")  # fmt: skip
    owner = info and deny.credential_inodes().get((info.st_dev, info.st_ino))
    if owner and info and stat.S_ISREG(info.st_mode):
        raise PathRefused(f"{shown}: is a hard link to {_show(owner)}, a credential (or the "
                          "agent's own state) no job may read; name another file")  # fmt: skip
    for entry in deny.paths:
        if not reaches(entry):
            continue
        if base is not None and within(real, base) and within(base, os.path.realpath(entry)):
            continue  # the user's own directory, which the entry holds whole
        where = ("stage files from the JDL's directory or a place the policy does not deny"
                 if not whole_tree else "ask for a path that reaches nothing denied")
        raise PathRefused(f"{shown}: reaches {_show(entry)}, on the sandbox's deny list "
                          f"(filesystem.deny); {where}")  # fmt: skip


def user_homes(environ: Mapping[str, str] | None = None) -> list[str]:
    """The running user's home directories: $HOME and the password database's."""
    environ = os.environ if environ is None else environ
    found = [environ.get("HOME", "")]
    with contextlib.suppress(KeyError):
        found.append(pwd.getpwuid(os.getuid()).pw_dir)
    return sorted({os.path.realpath(h) for h in found if h.startswith("/") and h != "/"})


KERNEL_TREES = ("/proc", "/sys", "/dev")
# statfs(2) magic numbers of the kernel's own filesystems, wherever they are mounted (a
# build chroot's proc): proc, sysfs, debugfs, tracefs, securityfs, efivarfs, configfs,
# bpf, cgroup, cgroup2, devpts, pstore, fusectl, binfmt_misc, mqueue
KERNEL_FILESYSTEMS = frozenset({0x9FA0, 0x62656572, 0x64626720, 0x74726163, 0x73636673,
                                0xDE5E81E4, 0x62656570, 0xCAFE4A11, 0x27E0EB, 0x63677270,
                                0x1CD1, 0x6165676C, 0x65735543, 0x42494E4D,
                                0x19800202})  # fmt: skip


def _check_kernel_file(fd: int, real: str, key: str, named: str) -> None:
    """The kernel's files are nobody's input (/proc/self/environ is the submitter's
    environment, tokens included): judged by the filesystem the descriptor is on, and
    by the usual places (devtmpfs is a tmpfs to statfs)."""
    tree = next((t for t in KERNEL_TREES if within(real, t)), None)
    if tree is None and _filesystem_type(fd) in KERNEL_FILESYSTEMS:
        tree = "a kernel filesystem"
    if tree is not None:
        raise PathRefused(f"{key} {_show(named)}: is a file of the kernel's ({tree}), not "
                          "a user's; name a regular file")  # fmt: skip


def _filesystem_type(fd: int) -> int | None:
    """statfs(2)'s f_type of the filesystem ``fd`` is on (None when it cannot say)."""
    buffer = ctypes.create_string_buffer(256)  # struct statfs, with room to spare
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.fstatfs(fd, buffer) != 0:
        return None
    return int(struct.unpack_from("=q", buffer.raw, 0)[0]) & 0xFFFFFFFF


def _public(real: str, info: os.stat_result) -> bool:
    """Whether anyone on the node could read the file: readable by others, and every
    directory above it searchable by others."""
    if not info.st_mode & 0o004:
        return False
    parent = os.path.dirname(real)
    while True:
        try:
            if not os.stat(parent).st_mode & 0o001:
                return False
        except OSError:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def _untrusted_base(base: str) -> str | None:
    """Why the directory ``base`` cannot vouch for a private file as the job's own: it
    or a directory above it is writable by others (anyone could have put the file
    there, or swap the directory while it is read: sticky directories above it aside),
    or owned by someone but root and the submitter."""
    uid = os.geteuid()
    path = base
    while True:
        try:
            info = os.stat(path)
        except OSError as exc:
            return f"{path} cannot be examined ({exc.strerror})"
        sticky_above = path != base and info.st_mode & stat.S_ISVTX and info.st_uid == 0
        if info.st_mode & 0o022 and not sticky_above:
            return f"{path} is writable by others"
        if info.st_uid not in (0, uid):
            return f"{path} belongs to uid {info.st_uid}"
        if path == "/":
            return None
        path = os.path.dirname(path)


def _check_private(real: str, info: os.stat_result, base: str | None, homes: Iterable[str],
                   key: str, named: str) -> None:  # fmt: skip
    """A file others may not read is staged only as the job's own: beneath the base,
    through no hidden component, from a base that is not (nor holds) a home directory."""
    shown = (f"{key} {_show(named)}: is not readable by others (mode "
             f"{info.st_mode & 0o777:04o}, or a directory above it closed to them)")
    if base is None or not within(real, base):
        raise PathRefused(f"{shown} and lies outside the JDL's directory; copy it next to "
                          "the JDL, or make it readable by others")  # fmt: skip
    untrusted = _untrusted_base(base)
    if untrusted is not None:
        raise PathRefused(f"{shown} and the JDL's directory cannot vouch for it: "
                          f"{_show(untrusted)}; keep the job in a directory of your "
                          "own")  # fmt: skip
    home = next((h for h in homes if within(h, base)), None)
    if home is not None:
        raise PathRefused(f"{shown} and the JDL's directory {_show(base)} is (or holds) the "
                          f"home directory {_show(home)}; keep the job and its files in a "
                          "directory of their own")  # fmt: skip
    hidden = next((p for p in real[len(base):].split("/") if p.startswith(".")), None)
    if hidden is not None:
        raise PathRefused(f"{shown} and hidden ('{_show(hidden)}'); name a file that is "
                          "not hidden, or make it readable by others")  # fmt: skip


def _open_path(named: str, base: Path | None, relative: bool, key: str) -> int:
    """An O_PATH descriptor: beneath ``base`` for a relative name, never through a
    magic link; the real path is checked by the caller in every case."""
    if "\x00" in named:
        raise PathRefused(f"{key} {_show(named)}: contains a NUL byte")
    dir_fd = -100  # AT_FDCWD: an absolute name ignores it
    try:
        if relative:
            assert base is not None
            dir_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        how = resolve.RESOLVE_NO_MAGICLINKS | (resolve.RESOLVE_BENEATH if relative else 0)
        try:
            return resolve.openat2(dir_fd, named, _PATH_FLAGS, how)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
        return os.open(named, _PATH_FLAGS, dir_fd=dir_fd if relative else None)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise PathRefused(f"{key} {_show(named)}: leaves {base} (through '..' or a "
                              "symlink); name the file by its absolute path") from None  # fmt: skip
        if exc.errno == errno.ELOOP:
            raise PathRefused(f"{key} {_show(named)}: goes through a /proc magic link or a "
                              "symlink loop; name the file itself") from None  # fmt: skip
        where = f" in {base}" if relative else ""
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise PathRefused(f"{key} {_show(named)}: no such file{where}; check the "
                              "path") from None  # fmt: skip
        raise PathRefused(f"{key} {_show(named)}: cannot open it{where} "
                          f"({exc.strerror})") from None  # fmt: skip
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)


def _real_path(fd: int, named: str, key: str) -> str:
    """Where the kernel says the descriptor's file is; PathRefused when it cannot say
    (no /proc) or the file was deleted."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        raise PathRefused(f"{key} {_show(named)}: cannot tell where it leads (/proc: "
                          f"{exc.strerror}); mount /proc") from None  # fmt: skip
    if not real.startswith("/") or real.endswith(" (deleted)"):
        raise PathRefused(f"{key} {_show(named)}: not a file on a mounted filesystem")
    return real


def _inodes(paths: Iterable[str]) -> dict[tuple[int, int], str]:
    """(device, inode) -> path of the regular files at or under ``paths``, each path
    walked in turn (its own bound: a large home must not crowd out the key files)."""
    found: dict[tuple[int, int], str] = {}
    for top in paths:
        pending, seen = [top], 0
        while pending and seen < MAX_CREDENTIAL_FILES:
            path = pending.pop()
            seen += 1
            try:
                info = os.lstat(path)  # a link inside is not followed out of the tree
                if path == top and stat.S_ISLNK(info.st_mode):
                    info = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                found.setdefault((info.st_dev, info.st_ino), path)
            elif stat.S_ISDIR(info.st_mode):
                try:
                    pending += [os.path.join(path, name) for name in os.listdir(path)]
                except OSError:
                    continue
    return found


def _show(text: str) -> str:
    """At most 120 printable characters of a path (it may be hostile)."""
    return clipped(text, 120)


__all__ = ["Deny", "PathRefused", "UserFile", "check_bind", "judge", "open_user_file",
           "user_credentials", "user_homes"]  # fmt: skip
