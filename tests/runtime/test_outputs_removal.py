"""Removing a work directory as an unprivileged agent (uid 65534), the payload having run
as that same uid: a real tree it made, with directories it left unreadable (000) or
unwritable (500), deep, and links planted to files and directories outside that the
removal must neither follow nor change. Root needs no permission to remove, so these
run the removal itself as 65534 (setpriv, the system python, the src the tests import);
the helper that makes a directory 0700 is also held as root, in this process."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_agent.runtime import workdir as removal
from sandbox_agent.runtime.workdir import remove_workdir

NOBODY = 65534
SRC = str(Path(removal.__file__).resolve().parents[2])  # the src the tests import (a copy's)
PYTHON = "/usr/bin/python3"  # the venv's may live where 65534 cannot read it
SECRET = b"the agent's own file, outside the work directory\n"

# What the payload (uid 65534) leaves: run as 65534 in the directory given, it makes
# `outside` (what must survive as it is) and `work` (what must go).
BUILD = textwrap.dedent("""
    import os, sys
    os.chdir(sys.argv[1])
    secret = sys.argv[2].encode()
    os.makedirs("outside/vdir/inner")
    for name in ("outside/victim.txt", "outside/vdir/inner/f", "outside/hard.txt"):
        with open(name, "wb") as f:
            f.write(secret)
    os.makedirs("work/locked/sub/subsub")
    os.makedirs("work/readonly/sub")
    os.makedirs("work/.removing-1/x")  # the name the removal's first move would take
    for name in ("work/a.txt", "work/locked/f", "work/locked/sub/g", "work/locked/sub/subsub/h",
                 "work/readonly/f", "work/readonly/sub/g"):
        with open(name, "wb") as f:
            f.write(b"payload")
    deep = "work/deep"
    for i in range(60):  # deeper than the walk goes in one step, each level unwritable
        deep += f"/d{i}"
    os.makedirs(deep)
    with open(deep + "/bottom", "wb") as f:
        f.write(b"payload")
    links = {"work/to-file": "../outside/victim.txt", "work/to-dir": "../outside/vdir",
             "work/locked/sub/to-dir": "../../../outside/vdir",
             "work/locked/to-inner": os.path.abspath("outside/vdir/inner"),
             "work/deep/d0/to-file": os.path.abspath("outside/victim.txt"),
             "work/dangling": "../nowhere", "work/self": "self"}
    for name, target in links.items():
        os.symlink(target, name)
    os.link("outside/hard.txt", "work/locked/sub/hard")  # the same file, inside too
    # the modes last, deepest first: each is what the payload left
    for path, mode in [("outside/vdir/inner/f", 0o400), ("outside/vdir/inner", 0o500),
                       ("outside/vdir", 0o500), ("outside/victim.txt", 0o400),
                       ("outside/hard.txt", 0o400)]:
        os.chmod(path, mode)
    levels = [deep[:i] for i in range(len(deep)) if deep[i] == "/"][2:] + [deep]
    for level in reversed(levels):
        os.chmod(level, 0o500)
    os.chmod("work/deep", 0)
    for path, mode in [("work/locked/sub/subsub", 0), ("work/locked/sub", 0o500),
                       ("work/locked", 0), ("work/readonly/sub", 0o500),
                       ("work/readonly", 0o500), ("work/.removing-1", 0), ("work", 0o500)]:
        os.chmod(path, mode)
""")

REMOVE = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from sandbox_agent.runtime.workdir import remove_workdir
    assert os.geteuid() != 0 and os.getuid() != 0
    print(json.dumps({"why": remove_workdir(Path(sys.argv[1]))}))
""")


def as_nobody(script: str, *args: object, uid: int = NOBODY) -> subprocess.CompletedProcess[str]:
    as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", PYTHON]
    return subprocess.run([*as_uid, "-c", script, *map(str, args)], capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
                          check=False)  # fmt: skip


def _why_not_nobody() -> str | None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return "switching to uid 65534 needs root and setpriv"
    if not Path(PYTHON).exists():
        return "no system python3 to run the removal as uid 65534"
    probe = as_nobody("import sandbox_agent.runtime.workdir")
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"uid 65534 cannot import the agent from {SRC}: {last}"
    return None


@pytest.fixture(scope="module")
def nobody() -> None:
    why = _why_not_nobody()
    if why:
        pytest.skip(why)


@pytest.fixture
def shared(nobody: None) -> Iterator[Path]:
    """A directory of our own that 65534 can reach (tmp_path's parents are private to
    root) and write: its tree is the payload's."""
    base = Path(tempfile.mkdtemp(prefix="sandbox-agent-removal.", dir="/tmp"))
    try:
        base.chmod(0o711)
        mine = base / "nobody"
        mine.mkdir(mode=0o755)
        os.chown(mine, NOBODY, NOBODY)
        yield mine
    finally:
        shutil.rmtree(base)  # as root: the modes the payload left stop nothing


def snapshot(top: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry under ``top`` (links not followed): mode, owner, links, content."""
    seen = {}
    for path in [top, *sorted(top.rglob("*"))]:
        info = path.lstat()
        body = ""
        if stat.S_ISREG(info.st_mode):
            body = path.read_bytes().decode()
        elif stat.S_ISLNK(info.st_mode):
            body = os.readlink(path)
        seen[str(path.relative_to(top))] = (stat.S_IMODE(info.st_mode), info.st_uid,
                                            info.st_nlink, body)  # fmt: skip
    return seen


def build(where: Path) -> None:
    made = as_nobody(BUILD, where, SECRET.decode())
    assert made.returncode == 0, made.stderr
    work = where / "work"
    assert (work.stat().st_uid, stat.S_IMODE(work.stat().st_mode)) == (NOBODY, 0o500)
    assert stat.S_IMODE((work / "locked").stat().st_mode) == 0


def remove(workdir: Path, uid: int = NOBODY) -> str | None:
    ran = as_nobody(REMOVE, workdir, uid=uid)
    assert ran.returncode == 0, ran.stderr
    why: str | None = json.loads(ran.stdout)["why"]
    return why


def test_the_payloads_tree_goes_and_nothing_outside_it_is_changed(shared: Path) -> None:
    build(shared)
    before = snapshot(shared / "outside")
    assert before["hard.txt"][2] == 2  # the link inside the tree is the same file
    assert remove(shared / "work") is None
    assert not (shared / "work").exists() and not (shared / "work").is_symlink()
    after = snapshot(shared / "outside")
    # nothing outside followed: the same modes (0500 / 0400, never made 0700), the same
    # contents; only the hard link inside is gone
    before["hard.txt"] = (*before["hard.txt"][:2], 1, before["hard.txt"][3])
    assert after == before
    assert sorted(os.listdir(shared)) == ["outside"]


@pytest.mark.parametrize("uid", [NOBODY, 1])
def test_a_work_directory_the_payload_left_unreadable_is_removed(shared: Path, uid: int) -> None:
    # the top itself 000 (and below it a 000 directory holding a 000 directory); as
    # nobody and as a system uid: any uid but root's opens the modes up
    os.chown(shared, uid, uid)
    work = shared / "work"
    script = textwrap.dedent("""
        import os, sys
        os.chdir(sys.argv[1])
        os.makedirs("work/a/b/c")
        for p in ("work/a/b/c", "work/a/b", "work/a", "work"):
            os.chmod(p, 0)
    """)
    made = as_nobody(script, shared, uid=uid)
    assert made.returncode == 0, made.stderr
    assert (work.stat().st_uid, stat.S_IMODE(work.stat().st_mode)) == (uid, 0)
    assert remove(work, uid) is None
    assert not work.exists()


@pytest.mark.parametrize("depth", [1, 2, 3, 200])
def test_a_chain_of_unwritable_directories_is_removed_at_any_depth(
    shared: Path, depth: int
) -> None:
    # each level 0500: every one must be made writable, before it is emptied and before
    # it is moved up (a directory moved to another parent has its ".." rewritten)
    script = textwrap.dedent("""
        import os, sys
        os.chdir(sys.argv[1])
        path = "work"
        levels = [path]
        for i in range(int(sys.argv[2])):
            path += f"/{i}"
            levels.append(path)
        os.makedirs(path)
        with open(path + "/f", "wb") as f:
            f.write(b"x")
        for level in reversed(levels):
            os.chmod(level, 0o500)
    """)
    made = as_nobody(script, shared, depth)
    assert made.returncode == 0, made.stderr
    assert remove(shared / "work") is None
    assert os.listdir(shared) == []


def test_what_cannot_be_removed_is_named_and_what_is_left_is_private(shared: Path) -> None:
    # A directory of another owner (root's) inside the tree: 65534 may neither change
    # it nor move it up. The removal says which and stops; what it already opened up
    # is the agent's alone (0700), nothing more.
    work = shared / "work"
    made = as_nobody("import os, sys; os.makedirs(sys.argv[1] + '/readonly')", work)
    assert made.returncode == 0, made.stderr
    (work / "readonly" / "roots").mkdir(mode=0o755)  # made by root, so root's
    os.chmod(work / "readonly", 0o500)
    os.chmod(work, 0o500)
    assert remove(work) == "roots: Permission denied"
    assert os.listdir(work) == ["readonly"]
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    assert stat.S_IMODE((work / "readonly").stat().st_mode) == 0o700
    assert os.listdir(work / "readonly") == ["roots"]
    assert stat.S_IMODE((work / "readonly" / "roots").stat().st_mode) == 0o755


def test_a_work_directory_that_cannot_be_opened_or_unlinked_is_named(shared: Path) -> None:
    missing = shared / "never-made"
    assert remove(missing) == f"{missing}: No such file or directory"
    (shared / "link").symlink_to(shared)  # the work directory itself a link: not followed
    assert remove(shared / "link") == f"{shared / 'link'}: Not a directory"
    assert (shared / "link").is_symlink()
    # emptied, but its parent is root's: the last rmdir is refused and says so
    parent = shared / "roots"
    parent.mkdir(mode=0o755)
    (parent / "work").mkdir()
    os.chown(parent / "work", NOBODY, NOBODY)
    made = as_nobody("import os, sys; os.makedirs(sys.argv[1] + '/a/b'); os.chmod(sys.argv[1], 0)",
                     parent / "work")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert remove(parent / "work") == f"{parent / 'work'}: Permission denied"
    assert os.listdir(parent / "work") == []


# --- the helper that opens a directory up, held in this process (as root) -----------


def test_making_a_directory_0700_never_follows_a_link_nor_changes_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o500)
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "file").chmod(0o400)
    (tmp_path / "outside").mkdir(mode=0o500)
    (tmp_path / "work").mkdir(mode=0o500)
    (tmp_path / "work" / "to-dir").symlink_to(tmp_path / "outside")
    (tmp_path / "work" / "to-file").symlink_to(tmp_path / "file")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    work_fd = os.open(tmp_path / "work", os.O_RDONLY | os.O_DIRECTORY)
    before = set(os.listdir("/proc/self/fd"))
    try:
        removal._chmod_dir(fd, "dir")
        removal._chmod_dir(fd, "file")  # not a directory: left as it is
        removal._chmod_dir(fd, "missing")
        removal._chmod_dir(work_fd, "to-dir")
        removal._chmod_dir(work_fd, "to-file")
        removal._chmod_dir(work_fd, ".")
        assert set(os.listdir("/proc/self/fd")) == before  # each descriptor closed
    finally:
        os.close(fd)
        os.close(work_fd)
    modes = {n: stat.S_IMODE((tmp_path / n).stat().st_mode)
             for n in ("dir", "file", "outside", "work")}  # fmt: skip
    assert modes == {"dir": 0o700, "file": 0o400, "outside": 0o500, "work": 0o700}


def test_the_names_the_removal_moves_directories_to_may_already_be_taken(tmp_path: Path) -> None:
    # Directories below the top are moved up as .removing-<n>: a payload that left those
    # names (a directory with something in it, a file, a dangling link) must not make
    # the move fail, nor have anything moved onto them.
    work = tmp_path / "work"
    (work / ".removing-1" / "x" / "y").mkdir(parents=True)
    (work / ".removing-2").write_bytes(b"payload")
    (work / ".removing-3").symlink_to("nowhere")
    (work / ".removing-4").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").mkdir()
    (work / "a" / "b" / "c").mkdir(parents=True)
    (work / "d" / "e").mkdir(parents=True)
    assert remove_workdir(work) is None
    assert not work.exists() and os.listdir(tmp_path) == ["outside"]
    assert os.listdir(tmp_path / "outside") == []


def test_the_removal_leaves_no_descriptor_open(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for i in range(5):
        (work / f"d{i}" / "e" / "f").mkdir(parents=True)
        (work / f"d{i}" / "file").write_bytes(b"x")
    before = set(os.listdir("/proc/self/fd"))
    assert remove_workdir(work) is None and not work.exists()
    assert remove_workdir(work) == f"{work}: No such file or directory"
    assert set(os.listdir("/proc/self/fd")) == before


def test_a_dangling_link_is_a_name_taken_too(tmp_path: Path) -> None:
    # Links named as the moves will be, dangling (as a link, the name is taken; what it
    # points at is not looked at), among directories that each make one move. Which is
    # met first is the directory's order: it is read here as the removal will read it,
    # to be sure some link is still there when a move wants its name.
    work = tmp_path / "work"
    work.mkdir()
    count = 20
    for i in range(count):
        (work / f"d{i}" / "sub").mkdir(parents=True)
        (work / f".removing-{i + 1}").symlink_to(f"nowhere-{i}")
    order = os.listdir(work)
    dirs = [n for n in order if n.startswith("d")]
    assert any(order.index(f".removing-{k}") > order.index(dirs[k - 1])
               for k in range(1, count + 1))  # fmt: skip
    assert remove_workdir(work) is None
    assert not work.exists()
