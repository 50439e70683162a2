"""policy.reach: every path a user names is judged by the file it really reaches, on
real files, with the kernel's openat2 and with the fallback for kernels without it."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_agent import resolve
from sandbox_agent.policy.model import Item
from sandbox_agent.policy.reach import (
    Deny,
    PathRefused,
    check_bind,
    open_user_file,
    user_credentials,
)

SECRET = b"-----BEGIN PRIVATE KEY-----\nthe agent's key\n"


@pytest.fixture(params=["openat2", "fallback"])
def opener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with the real openat2, and as on a kernel without it (ENOSYS)."""
    if request.param == "openat2" and not resolve.available():
        pytest.skip("this kernel (or a seccomp filter) has no openat2")
    if request.param == "fallback":
        def missing(*_args: object, **_kwargs: object) -> int:
            raise OSError(errno.ENOSYS, "no openat2")

        monkeypatch.setattr(resolve, "openat2", missing)
    yield request.param


@pytest.fixture
def site() -> Iterator[Path]:
    """A home with the agent's key and CA key, a user's job directory beside it, and a
    denied tree (like /home) holding someone else's file; under a directory others may
    search (pytest's own is closed to them: every file in it would count as private)."""
    tmp_path = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-reach-"))
    tmp_path.chmod(0o755)
    try:
        yield _site(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _site(tmp_path: Path) -> Path:
    certs = tmp_path / "home" / "certs"
    certs.mkdir(parents=True)
    for name in ("jobagent.key", "ca.key"):
        (certs / name).write_bytes(SECRET)
        (certs / name).chmod(0o600)
    job = tmp_path / "users" / "alice" / "job"
    job.mkdir(parents=True)
    (job / "data.txt").write_bytes(b"alice's data\n")
    (job / "sub").mkdir()
    (job / "sub" / "more.txt").write_bytes(b"more\n")
    bob = tmp_path / "users" / "bob"
    bob.mkdir()
    (bob / "private.txt").write_bytes(b"bob's\n")
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "shared.txt").write_bytes(b"shared\n")
    return tmp_path


def deny_of(site: Path) -> Deny:
    """As compose makes it: the policy's deny list, the agent's credentials marked."""
    items = [Item(str(site / "users"), "policy default"),
             Item(str(site / "home" / "certs"), "agent:credentials")]  # fmt: skip
    return Deny.of(items)


def read(site: Path, named: str, base: Path | None = None) -> bytes:
    opened = open_user_file(named, base=base or site / "users" / "alice" / "job",
                            deny=deny_of(site), key="InputFile")  # fmt: skip
    try:
        return os.read(opened.fd, 1 << 16)
    finally:
        opened.close()


def refused(site: Path, named: str, base: Path | None = None) -> str:
    with pytest.raises(PathRefused) as info:
        read(site, named, base)
    message = str(info.value)
    shown = named.replace("\x00", "\\x00")  # messages escape what cannot be printed
    assert message.startswith(f"InputFile {shown}: ") and "\n" not in message
    return message


def test_the_users_own_files_are_read(opener: str, site: Path) -> None:
    assert read(site, "data.txt") == b"alice's data\n"
    assert read(site, "sub/more.txt") == b"more\n"
    assert read(site, "sub/../data.txt") == b"alice's data\n"  # '..' that stays beneath
    # a symlink that stays in the JDL's directory is followed
    (site / "users" / "alice" / "job" / "alias").symlink_to("sub/more.txt")
    assert read(site, "alias") == b"more\n"
    # an absolute path to a place the deny list does not hold
    assert read(site, str(site / "open" / "shared.txt")) == b"shared\n"


def test_the_agents_key_by_its_absolute_path_is_refused(opener: str, site: Path) -> None:
    for name in ("jobagent.key", "ca.key"):
        message = refused(site, str(site / "home" / "certs" / name))
        certs = site / "home" / "certs"
        assert f"reaches {certs}, a credential (or the agent's own state) no job may" in message


def test_a_relative_path_that_leaves_the_jdls_directory_is_refused(opener: str, site: Path) -> None:
    message = refused(site, "../../../home/certs/jobagent.key")
    assert "leaves" in message and "name the file by its absolute path" in message
    # even to a file that is not secret: beneath means beneath
    assert "leaves" in refused(site, "../../../open/shared.txt")


def test_an_innocent_name_that_is_a_symlink_to_the_key_is_refused(opener: str, site: Path) -> None:
    job = site / "users" / "alice" / "job"
    (job / "innocent.txt").symlink_to(site / "home" / "certs" / "jobagent.key")
    assert "leaves" in refused(site, "innocent.txt")
    # a directory component swapped for a symlink, relative or absolute
    (job / "dir").symlink_to(site / "home" / "certs")
    assert "leaves" in refused(site, "dir/jobagent.key")
    assert "no job may read" in refused(site, str(job / "dir" / "jobagent.key"))
    # an absolute path through the symlinked name is judged by what it reaches
    assert "no job may read" in refused(site, str(job / "innocent.txt"))


def test_a_hard_link_to_the_key_is_refused(opener: str, site: Path) -> None:
    job = site / "users" / "alice" / "job"
    os.link(site / "home" / "certs" / "jobagent.key", job / "linked.txt")
    message = refused(site, "linked.txt")
    assert f"is a hard link to {site / 'home' / 'certs' / 'jobagent.key'}" in message


def test_paths_on_the_deny_list_are_refused_outside_the_users_directory(
    opener: str, site: Path
) -> None:
    message = refused(site, str(site / "users" / "bob" / "private.txt"))
    assert f"reaches {site / 'users'}, on the sandbox's deny list (filesystem.deny)" in message
    # the deny entry that holds alice's whole directory does not stop her own files,
    # named absolutely either
    assert read(site, str(site / "users" / "alice" / "job" / "data.txt")) == b"alice's data\n"


def test_magic_links_devices_and_fifos_are_never_opened(opener: str, site: Path) -> None:
    job = site / "users" / "alice" / "job"
    key = os.open(site / "home" / "certs" / "jobagent.key", os.O_RDONLY)
    try:
        message = refused(site, f"/proc/self/fd/{key}")
        assert "magic link" in message or "no job may read" in message
    finally:
        os.close(key)
    assert "not a regular file" in refused(site, "/dev/zero")
    assert "not a regular file" in refused(site, "sub")
    os.mkfifo(job / "pipe")
    opened: list[str] = []
    # a FIFO with no writer would block an open(2) for ever; the O_PATH look never opens it
    worker = threading.Thread(target=lambda: opened.append(refused(site, "pipe")))
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive() and "not a regular file" in opened[0]


def test_the_users_own_credentials_are_refused(opener: str, site: Path, tmp_path: Path) -> None:
    proxy = site / "open" / "x509up_u1000"
    proxy.write_bytes(SECRET)
    found = user_credentials({"X509_USER_PROXY": str(proxy), "HOME": str(site / "open")},
                             uid=1000)  # fmt: skip
    assert str(proxy) in found and f"{site / 'open'}/.globus" in found
    assert "/tmp/x509up_u1000" in found
    deny = Deny.of([], found)
    with pytest.raises(PathRefused, match="no job may read"):
        open_user_file(str(proxy), base=site, deny=deny, key="InputFile")
    (site / "open" / ".globus").mkdir()
    (site / "open" / ".globus" / "userkey.pem").write_bytes(SECRET)
    with pytest.raises(PathRefused, match="no job may read"):
        open_user_file(".globus/userkey.pem", base=site / "open", deny=deny, key="InputFile")


def test_missing_files_and_nul_bytes_are_one_line(opener: str, site: Path) -> None:
    assert "no such file in" in refused(site, "nothing.txt")
    assert "no such file; check the path" in refused(site, "/no/such/file")
    assert "NUL" in refused(site, "a\x00b")


def test_binds_are_judged_both_ways_and_never_through_a_symlink(opener: str, site: Path) -> None:
    deny = deny_of(site)
    assert check_bind(str(site / "open"), deny=deny, key="ReadOnlyBinds") == str(site / "open")
    with pytest.raises(PathRefused, match="no job may read"):
        check_bind(str(site / "home"), deny=deny, key="ReadOnlyBinds")  # above the certs
    with pytest.raises(PathRefused, match="on the sandbox's deny list"):
        check_bind(str(site / "users" / "alice"), deny=deny, key="ReadOnlyBinds")
    (site / "open" / "certs").symlink_to(site / "home" / "certs")
    with pytest.raises(PathRefused, match="goes through a symlink"):
        check_bind(str(site / "open" / "certs"), deny=deny, key="ReadOnlyBinds")
    # a path not on this host is judged by where its existing part leads
    with pytest.raises(PathRefused, match="goes through a symlink"):
        check_bind(str(site / "open" / "certs" / "later"), deny=deny, key="ReadOnlyBinds")
    assert check_bind(str(site / "open" / "later"), deny=deny, key="ReadOnlyBinds") == \
        str(site / "open" / "later")  # fmt: skip


def test_the_kernels_files_are_nobodys_input(opener: str, site: Path) -> None:
    for named in ("/proc/self/environ", "/proc/self/cmdline", "/proc/version"):
        message = refused(site, named)
        assert "is a file of the kernel's (/proc)" in message or "magic link" in message
    assert "(/sys)" in refused(site, "/sys/kernel/uevent_seqnum") or \
        not Path("/sys/kernel/uevent_seqnum").exists()  # fmt: skip


def test_a_private_file_is_staged_only_as_the_jobs_own(opener: str, site: Path) -> None:
    """What no deny list can name (shadow's backups, ~/.git-credentials): a file others
    may not read comes only from beneath the JDL's directory, not through a hidden
    name, and not when that directory is (or holds) the submitter's home."""
    job = site / "users" / "alice" / "job"
    (job / "mine.txt").write_bytes(b"private but the job's own\n")
    (job / "mine.txt").chmod(0o600)
    assert read(site, "mine.txt") == b"private but the job's own\n"
    backup = site / "open" / "shadow-"
    backup.write_bytes(b"root:$6$hash\n")
    backup.chmod(0o640)
    assert "is not readable by others (mode 0640" in refused(site, str(backup))
    # a file readable by all in a directory others cannot enter is private too
    closed = site / "open" / "closed"
    closed.mkdir(mode=0o700)
    (closed / "pypirc").write_bytes(b"password = x\n")
    (closed / "pypirc").chmod(0o644)
    assert "or a directory above it closed to them" in refused(site, str(closed / "pypirc"))
    (job / ".git-credentials").write_bytes(b"https://alice:token@example\n")
    (job / ".git-credentials").chmod(0o600)
    assert "and hidden ('.git-credentials')" in refused(site, ".git-credentials")
    (job / ".config").mkdir()
    (job / ".config" / "public.txt").write_bytes(b"readable by all\n")
    assert read(site, ".config/public.txt") == b"readable by all\n"  # public: fine
    # a JDL kept in the home directory itself stages nothing private from there
    home = site / "users" / "alice"
    deny = Deny(homes=(str(home),))
    (home / "notes.txt").write_bytes(b"alice's notes\n")
    (home / "notes.txt").chmod(0o600)
    with pytest.raises(PathRefused, match=r"is \(or holds\) the home directory"):
        open_user_file("notes.txt", base=home, deny=deny, key="InputFile")
    # the same file from a directory that is nobody's home is the job's own
    elsewhere = Deny(homes=(str(site / "elsewhere"),))
    open_user_file("job/mine.txt", base=home, deny=elsewhere, key="InputFile").close()


def test_a_directory_others_may_write_cannot_vouch_for_a_private_file(
    opener: str, site: Path
) -> None:
    """A JDL saved straight into /tmp (a Kerberos cache beside it), or under a directory
    someone else owns (who could swap it for a symlink while the JDL is read)."""
    shared = site / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "krb5cc_0").write_bytes(b"ticket\n")
    (shared / "krb5cc_0").chmod(0o600)
    message = refused(site, "krb5cc_0", base=shared)
    assert f"cannot vouch for it: {shared} is writable by others" in message
    theirs = site / "theirs"
    (theirs / "job").mkdir(parents=True)
    os.chown(theirs, 4242, 4242)
    (theirs / "job" / "key").write_bytes(b"private\n")
    (theirs / "job" / "key").chmod(0o600)
    assert f"{theirs} belongs to uid 4242" in refused(site, "key", base=theirs / "job")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a procfs needs root")
def test_a_procfs_mounted_elsewhere_is_still_the_kernels(site: Path) -> None:
    job = site / "users" / "alice" / "job"
    (job / "proc").mkdir()
    subprocess.run(["mount", "-t", "proc", "proc", str(job / "proc")], check=True)
    try:
        for named in ("proc/self/environ", "proc/sys/kernel/hostname", "proc/version"):
            assert "is a file of the kernel's (a kernel filesystem)" in refused(site, named)
    finally:
        subprocess.run(["umount", "-l", str(job / "proc")], check=False)
