"""The two ways an output is opened beneath the work directory, each held on its own:
openat2 (RESOLVE_BENEATH | NO_SYMLINKS | NO_XDEV) and, where a kernel before 5.6 (or a
seccomp filter) has none, the walk component by component with O_NOFOLLOW. Real
files, real links, a real FIFO and socket, a real mount in a user namespace, and a real
seccomp filter that takes openat2 away, as an old kernel would."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_agent.agent import outputs
from sandbox_agent.agent.outputs import OutputRefused, collect, has_openat2, open_output

SECRET = b"-----BEGIN PRIVATE KEY----- agent key\n"
OPENERS = [pytest.param(True, id="openat2"), pytest.param(False, id="by-components")]
LEAVES = "reached through a symlink or leaves the work directory"
SRC = str(Path(outputs.__file__).resolve().parents[2])  # the src the tests import


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "key.pem").write_bytes(SECRET)
    workdir = tmp_path / "work"
    (workdir / "sub").mkdir(parents=True)
    (workdir / "result.txt").write_bytes(b"fine\n")
    (workdir / "sub" / "deep.txt").write_bytes(b"deep\n")
    return workdir


@pytest.fixture
def root_fd(work: Path) -> Iterator[int]:
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _kernel_has_openat2() -> bool:
    # asked of the kernel directly, not through has_openat2, which is under test here
    root = os.open("/", os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.close(outputs._openat2(root, ".", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        return exc.errno not in (errno.ENOSYS, errno.EPERM)
    finally:
        os.close(root)
    return True


KERNEL_HAS_OPENAT2 = _kernel_has_openat2()


def needs(use_openat2: bool) -> None:
    if use_openat2 and not KERNEL_HAS_OPENAT2:
        pytest.skip("this kernel has no openat2")


def refusal(fd: int, name: str, use_openat2: bool) -> str:
    with pytest.raises(OutputRefused) as caught:
        os.close(open_output(fd, name, use_openat2=use_openat2))
    return str(caught.value)


def collect_into(work: Path, names: list[str], use_openat2: bool | None, store: str = "store"):  # type: ignore[no-untyped-def]
    return collect(work, names, work.parent / store, max_file=1 << 20, max_total=4 << 20,
                   use_openat2=use_openat2)  # fmt: skip


OUTSIDE = ["../agent/key.pem", "sub/../../agent/key.pem", "./../agent/key.pem",
           "sub/../../work/../agent/key.pem"]  # fmt: skip


@pytest.mark.parametrize("use_openat2", OPENERS)
@pytest.mark.parametrize("name", OUTSIDE)
def test_dot_dot_never_reads_outside_the_work_directory(
    work: Path, root_fd: int, use_openat2: bool, name: str
) -> None:
    needs(use_openat2)
    assert refusal(root_fd, name, use_openat2) == f"{name}: {LEAVES}"
    got, problems = collect_into(work, [name, "result.txt"], use_openat2)
    assert [c.name for c in got] == ["result.txt"] and problems == [f"{name}: {LEAVES}"]
    assert all(SECRET not in c.stored.read_bytes() for c in got)


@pytest.mark.parametrize("use_openat2", OPENERS)
def test_a_directory_symlink_inside_the_work_directory_is_not_followed(
    work: Path, root_fd: int, use_openat2: bool
) -> None:
    # beneath the work directory all along: only "no symlinks at all" refuses it
    needs(use_openat2)
    (work / "alias").symlink_to("sub")
    assert refusal(root_fd, "alias/deep.txt", use_openat2) == f"alias/deep.txt: {LEAVES}"
    (work / "last").symlink_to("result.txt")  # and a last component that is a link
    assert refusal(root_fd, "last", use_openat2) == f"last: {LEAVES}"


@pytest.mark.parametrize("use_openat2", OPENERS)
def test_a_file_used_as_a_directory_is_refused(work: Path, root_fd: int, use_openat2: bool) -> None:
    needs(use_openat2)
    assert refusal(root_fd, "result.txt/x", use_openat2) == f"result.txt/x: {LEAVES}"


@pytest.mark.parametrize("use_openat2", OPENERS)
def test_nested_outputs_are_read_from_where_they_are(work: Path, use_openat2: bool) -> None:
    needs(use_openat2)
    got, problems = collect_into(work, ["sub/deep.txt", "./sub//deep.txt"], use_openat2)
    assert problems == [] and [c.stored.read_bytes() for c in got] == [b"deep\n"] * 2


@pytest.mark.parametrize("use_openat2", OPENERS)
@pytest.mark.parametrize("name", ["", ".", "./", "sub", "sub/"])
def test_no_name_or_a_directory_is_not_an_output(
    work: Path, root_fd: int, use_openat2: bool, name: str
) -> None:
    needs(use_openat2)
    # openat2 opens "" as nothing and "." as the directory itself; the walk, left with
    # no component to open, refuses the name as leaving
    expected = {"": "missing"} if use_openat2 else {"": LEAVES, ".": LEAVES, "./": LEAVES}
    why = expected.get(name, "not a regular file")
    assert refusal(root_fd, name, use_openat2) == f"{name}: {why}"


@pytest.mark.parametrize("use_openat2", OPENERS)
def test_a_name_that_is_not_utf8_is_refused_showing_its_bytes(
    work: Path, use_openat2: bool
) -> None:
    needs(use_openat2)
    name = os.fsdecode(b"out\xff.txt")  # a payload's name of other bytes
    (work / name).write_bytes(b"x")
    got, problems = collect_into(work, [name, "result.txt"], use_openat2)
    assert [c.name for c in got] == ["result.txt"]
    assert problems == ["out\\xff.txt: the name is not UTF-8; give outputs UTF-8 names"]


def test_what_was_collected_cannot_be_changed_afterwards(work: Path) -> None:
    (item,), _ = collect_into(work, ["result.txt"], False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.sha256 = "sha256:forged"  # type: ignore[misc]


def test_the_store_is_made_private_with_its_parents_and_never_reused(work: Path) -> None:
    store = work.parent / "jobs" / "7" / "outputs"  # the parents are made too
    collect(work, ["result.txt"], store, max_file=100, max_total=100, use_openat2=False)
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    with pytest.raises(FileExistsError):  # a store already there is not written into,
        # not even with nothing to add (the O_EXCL of each stored file is a second guard)
        collect(work, [], store, max_file=100, max_total=100, use_openat2=False)


@pytest.mark.parametrize("use_openat2", OPENERS)
def test_one_output_that_cannot_be_opened_loses_no_other(work: Path, use_openat2: bool) -> None:
    # Errors other than missing / a link / leaving: a name too long, a socket (ENXIO).
    # Each is one problem line; the outputs around it are still collected.
    needs(use_openat2)
    long_name = "n" * 300
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(work / "sock"))
        got, problems = collect_into(work, ["result.txt", long_name, "sock", "sub/deep.txt"],
                                     use_openat2)  # fmt: skip
    assert [c.name for c in got] == ["result.txt", "sub/deep.txt"]
    assert problems == [f"{long_name}: cannot open ({os.strerror(errno.ENAMETOOLONG)})",
                        f"sock: cannot open ({os.strerror(errno.ENXIO)})"]  # fmt: skip


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("use_openat2", OPENERS)
def test_no_descriptor_is_left_open_whatever_the_outcome(work: Path, use_openat2: bool) -> None:
    needs(use_openat2)
    (work / "big").write_bytes(b"x" * 3000)
    (work / "sub" / "more").mkdir()
    (work / "sub" / "more" / "f").write_bytes(b"f")
    (work / "alias").symlink_to("sub")
    os.link(work / "result.txt", work / "linked")
    os.mkfifo(work / "fifo")
    names = ["result.txt", "sub/more/f", "sub/more/missing", "alias/deep.txt", "linked",
             "fifo", "sub", "big", "../agent/key.pem", "n" * 300, "sub/more/f/x"]  # fmt: skip
    before = open_fds()
    for round_ in range(3):
        collect(work, names, work.parent / f"store{round_}", max_file=1000, max_total=1 << 20,
                use_openat2=use_openat2)  # fmt: skip
        has_openat2()
    assert open_fds() == before


@pytest.mark.parametrize("use_openat2", OPENERS)
def test_the_descriptor_handed_back_is_close_on_exec_and_blocking(
    work: Path, root_fd: int, use_openat2: bool
) -> None:
    needs(use_openat2)
    fd = open_output(root_fd, "sub/deep.txt", use_openat2=use_openat2)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.get_blocking(fd)
        assert os.read(fd, 100) == b"deep\n"
    finally:
        os.close(fd)


def test_the_descriptor_asking_for_openat2_is_close_on_exec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # has_openat2 opens "/" through openat2 itself, a raw syscall: no O_CLOEXEC is added
    # for it as os.open adds one (PEP 446), so it must be in the flags it passes. However
    # briefly open, a descriptor without it leaks into a process another thread forks.
    # The flag is read from the kernel as each descriptor is closed.
    needs(True)
    real_close = os.close
    seen: list[int] = []

    def closing(fd: int) -> None:
        seen.append(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        real_close(fd)

    monkeypatch.setattr(os, "close", closing)
    assert has_openat2() is True
    monkeypatch.undo()
    assert seen == [fcntl.FD_CLOEXEC] * 2  # the openat2 one, then the "/" it was under


@pytest.mark.parametrize("use_openat2", OPENERS)
def test_a_fifo_is_refused_without_waiting_for_a_writer(
    work: Path, root_fd: int, use_openat2: bool
) -> None:
    # An open for reading that waits for a writer would stop the agent: the open must
    # not block. If it does, a helper opens the write end after two seconds so the test
    # fails instead of hanging, and says so.
    needs(use_openat2)
    fifo = work / "fifo"
    os.mkfifo(fifo)
    done, rescued = threading.Event(), threading.Event()

    def rescue() -> None:
        if done.wait(2):
            return
        try:  # succeeds only while a reader is blocked in its open
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            rescued.set()
        except OSError:
            pass

    helper = threading.Thread(target=rescue, daemon=True)
    helper.start()
    try:
        message = refusal(root_fd, "fifo", use_openat2)
    finally:
        done.set()
        helper.join(10)
    assert not rescued.is_set(), "opening the FIFO waited for a writer"
    assert message == "fifo: not a regular file"


def test_collect_uses_openat2_where_the_kernel_has_it(work: Path) -> None:
    # The two openers differ on a '..' that stays beneath: openat2 resolves it, the walk
    # refuses every '..'. So what collect does with it shows which opener it chose.
    needs(True)
    assert has_openat2() is True
    name = "sub/../result.txt"
    assert [c.name for c in collect_into(work, [name], True, "a")[0]] == [name]
    assert collect_into(work, [name], False, "b")[1] == [f"{name}: {LEAVES}"]
    got, problems = collect_into(work, [name], None, "c")
    assert problems == [] and [c.stored.read_bytes() for c in got] == [b"fine\n"]
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(open_output(fd, name))  # the default is openat2 too
    finally:
        os.close(fd)


# --- an old kernel: openat2 taken away by a real seccomp filter ---------------------

WITHOUT_OPENAT2 = textwrap.dedent("""
    import errno, json, sys
    import pyseccomp as sc
    from pathlib import Path
    from sandbox_agent.agent.outputs import collect, has_openat2
    work, answer = Path(sys.argv[1]), getattr(errno, sys.argv[2])
    f = sc.SyscallFilter(sc.ALLOW)
    f.add_rule(sc.ERRNO(answer), "openat2")
    f.load()
    got, problems = collect(work, ["../agent/key.pem", "sub/../result.txt", "sub/deep.txt"],
                            work.parent / "store", max_file=1000, max_total=1000)
    print(json.dumps({"has_openat2": has_openat2(), "got": [c.name for c in got],
                      "problems": problems}))
""")


@pytest.mark.parametrize(("answer", "has"), [("ENOSYS", False), ("EPERM", False),
                                             ("EACCES", True)])  # fmt: skip
def test_where_openat2_is_missing_collect_walks_the_components(
    work: Path, answer: str, has: bool
) -> None:
    # ENOSYS is what a kernel before 5.6 says, EPERM what a seccomp profile like Docker's
    # says: no openat2. Any other error means openat2 exists and refused this one call.
    import json

    ran = subprocess.run([sys.executable, "-c", WITHOUT_OPENAT2, str(work), answer],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=SRC))  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    assert seen["has_openat2"] is has
    if not has:  # the walk: every '..' refused, the plain output collected
        assert seen["got"] == ["sub/deep.txt"]
        assert seen["problems"] == [f"../agent/key.pem: {LEAVES}", f"sub/../result.txt: {LEAVES}"]
    assert SECRET not in b"".join(p.read_bytes() for p in (work.parent / "store").iterdir())


# --- another filesystem mounted inside the work directory ---------------------------

IN_A_MOUNT = textwrap.dedent("""
    import json, os, subprocess, sys
    from sandbox_agent.agent.outputs import OutputRefused, open_output
    work, NAMES = sys.argv[1], sys.argv[2:]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", work + "/mnt"], check=True)
    with open(work + "/mnt/inside.txt", "w") as f:
        f.write("on another filesystem")
    os.mkdir(work + "/mnt/dir")
    with open(work + "/mnt/dir/deeper.txt", "w") as f:
        f.write("deeper")
    # the last component a mount point: a file of the tmpfs bound over a plain file
    subprocess.run(["mount", "--bind", work + "/mnt/inside.txt", work + "/bound.txt"],
                   check=True)
    # and out of the tmpfs back onto the work directory's own filesystem: the device at
    # the end is the work directory's, only the walk shows the crossing
    os.mkdir(work + "/mnt/back")
    subprocess.run(["mount", "--bind", work + "/sub", work + "/mnt/back"], check=True)
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    seen = {}
    before = sorted(os.listdir("/proc/self/fd"))
    for opener in (True, False):
        for name in NAMES:
            try:
                os.close(open_output(fd, name, use_openat2=opener))
                seen[f"{opener} {name}"] = "opened"
            except OutputRefused as exc:
                seen[f"{opener} {name}"] = str(exc)
    seen["descriptors left"] = sorted(set(os.listdir("/proc/self/fd")) - set(before))
    print(json.dumps(seen))
""")
MOUNTED = ("mnt/inside.txt", "mnt/dir/deeper.txt", "bound.txt", "mnt/back/deep.txt")


def test_an_output_on_another_filesystem_is_refused(work: Path) -> None:
    # A payload cannot mount, but the work area may hold a mount point the site made
    # (or a runtime left): outputs never cross it. A user namespace lets an
    # unprivileged test mount a tmpfs there.
    needs(True)
    (work / "mnt").mkdir()
    (work / "bound.txt").write_bytes(b"the file under the mount")
    command = ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c",
               IN_A_MOUNT, str(work), *MOUNTED]  # fmt: skip
    try:
        ran = subprocess.run(command, capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, PYTHONPATH=SRC))  # fmt: skip
    except FileNotFoundError:
        pytest.skip("unshare (util-linux) is not installed")
    if ran.returncode != 0 and ("unshare" in ran.stderr or "mount" in ran.stderr):
        pytest.skip(f"no user namespace or mount here: {ran.stderr.strip()[:200]}")
    assert ran.returncode == 0, ran.stderr
    import json

    seen = json.loads(ran.stdout)
    assert seen.pop("descriptors left") == []  # a refusal at the mount closes what it opened
    assert seen == {f"{opener} {name}": f"{name}: {LEAVES}"
                    for opener in (True, False)
                    for name in MOUNTED}  # fmt: skip


@pytest.mark.parametrize("use_openat2", OPENERS)
def test_an_output_deep_in_the_tree_is_one_output(work: Path, use_openat2: bool) -> None:
    needs(use_openat2)
    deep = work.joinpath(*(f"d{i}" for i in range(40)))
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"deep down")
    name = "/".join(f"d{i}" for i in range(40)) + "/f"
    got, problems = collect_into(work, [name], use_openat2)
    assert problems == [] and got[0].stored.read_bytes() == b"deep down"
