"""Image files as the agent reads them: kinds from their bytes, digests, the checks that
refuse what another user could change, pins, and `image inspect` / `image pin`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import cli_env, run_cli
from image_support import (
    FS_EXT3,
    PART_DATA,
    busybox_root,
    need_fuse,
    shared_dir,
    sif,
    squashfs,
)

from sandbox_agent.images import ImageRefused, identity, kinds, prepare
from sandbox_agent.images.tree import resolve
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime.imagecheck import inspect


@pytest.fixture
def base() -> Iterator[Path]:
    where = shared_dir()
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def root(base: Path) -> Path:
    return busybox_root(base / "root")


def digest(path: Path, cache: identity.HashCache | None = None) -> str:
    return identity.of_directory(str(path), cache).digest


# -- kinds ----------------------------------------------------------------------------------


def test_kinds_come_from_the_bytes_and_a_sif_names_its_squashfs_offset(
    base: Path, root: Path
) -> None:
    packed = squashfs(root, base / "image.sqfs")
    wrapped = sif(packed, base / "image.sif")
    assert kinds.of_path(str(root)).name == "directory"
    assert kinds.of_path(str(packed)) == kinds.Kind("squashfs", 0, packed.stat().st_size)
    found = kinds.of_path(str(wrapped))
    assert found.name == "sif" and found.offset % 4096 == 0 and found.offset > 0
    assert wrapped.read_bytes()[found.offset : found.offset + found.size] == packed.read_bytes()
    renamed = base / "image.sif.sqfs"  # the name says nothing
    shutil.copy(wrapped, renamed)
    assert kinds.of_path(str(renamed)).name == "sif"


@pytest.mark.parametrize(
    ("build", "said"),
    [
        (lambda p, b: (b / "x.img").write_bytes(b"not an image at all"), "neither a squashfs nor"),
        (lambda p, b: (b / "x.img").write_bytes(b"sqsh" + bytes(200)), "big-endian"),
        (lambda p, b: sif(p, b / "x.img", fs_type=FS_EXT3), "root partition is ext3"),
        (lambda p, b: sif(p, b / "x.img", part_type=PART_DATA), "has no root"),
    ],
)  # fmt: skip
def test_files_that_are_not_usable_images_are_refused_with_the_reason(
    base: Path,
    root: Path,
    build,
    said: str,  # type: ignore[no-untyped-def]
) -> None:
    build(squashfs(root, base / "image.sqfs"), base)
    with pytest.raises(ImageRefused, match=said):
        kinds.of_path(str(base / "x.img"))


def test_a_sif_whose_partition_runs_past_its_end_is_refused(base: Path, root: Path) -> None:
    wrapped = sif(squashfs(root, base / "image.sqfs"), base / "image.sif")
    data = wrapped.read_bytes()
    wrapped.write_bytes(data[: len(data) - 100])
    with pytest.raises(ImageRefused, match="outside the file"):
        kinds.of_path(str(wrapped))


# -- digests ----------------------------------------------------------------------------------


def test_a_directory_digest_changes_with_one_byte_a_mode_or_a_link(root: Path) -> None:
    first = digest(root)
    assert digest(root) == first  # stable
    release = root / "usr" / "lib" / "os-release"
    text = release.read_bytes()
    release.write_bytes(text.replace(b"1.0", b"1.1"))  # same size
    changed = digest(root)
    assert changed != first
    release.write_bytes(text)
    assert digest(root) == first
    (root / "etc" / "hostname").chmod(0o600)
    assert digest(root) != first
    (root / "etc" / "hostname").chmod(0o644)
    (root / "bin" / "cat").unlink()
    (root / "bin" / "cat").symlink_to("/bin/busybox")
    assert digest(root) != first


def test_a_cached_hash_is_read_again_when_a_file_is_rewritten_with_its_old_mtime(
    root: Path, tmp_path: Path
) -> None:
    cache = identity.HashCache(tmp_path / "hashes.json")
    first = digest(root, cache)
    release = root / "usr" / "lib" / "os-release"
    info = release.stat()
    text = release.read_bytes()
    release.write_bytes(text.replace(b"1.0", b"6.6"))
    os.utime(release, ns=(info.st_atime_ns, info.st_mtime_ns))  # the old mtime back
    assert release.stat().st_mtime_ns == info.st_mtime_ns
    assert digest(root, cache) != first  # ctime moved: the content was read again
    cache.save()
    assert (tmp_path / "hashes.json").stat().st_mode & 0o777 == 0o600
    assert identity.HashCache(tmp_path / "hashes.json").hashes == cache.hashes


def test_a_cache_file_others_may_write_is_not_trusted(root: Path, tmp_path: Path) -> None:
    cache = identity.HashCache(tmp_path / "hashes.json")
    digest(root, cache)
    cache.save()
    (tmp_path / "hashes.json").chmod(0o666)
    assert identity.HashCache(tmp_path / "hashes.json").hashes == {}


def test_a_file_image_digest_is_the_sha256_of_its_bytes(base: Path, root: Path) -> None:
    import hashlib

    packed = squashfs(root, base / "image.sqfs")
    descriptor = os.open(packed, os.O_RDONLY)
    try:
        found = identity.of_file(descriptor, str(packed))
    finally:
        os.close(descriptor)
    assert found.digest == "sha256:" + hashlib.sha256(packed.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("where", "mode"),
    [("bin", 0o777), ("usr/lib/os-release", 0o666), ("etc", 0o775), ("tmp", 0o1777)],
)
def test_an_image_with_something_another_user_may_write_is_refused(
    root: Path, where: str, mode: int
) -> None:
    (root / where).chmod(mode)
    with pytest.raises(ImageRefused, match=f"/{where} \\(mode {mode:04o}, owner uid 0\\) could "
                       "be changed by another user"):  # fmt: skip
        digest(root)


def test_an_image_entry_owned_by_another_user_is_refused(root: Path) -> None:
    os.chown(root / "etc" / "hostname", 12345, 0)
    with pytest.raises(ImageRefused, match=r"/etc/hostname \(mode 0644, owner uid 12345"):
        digest(root)


def test_on_a_read_only_filesystem_modes_are_only_recorded(base: Path, root: Path) -> None:
    need_fuse()
    (root / "tmp").chmod(0o1777)
    (root / "etc" / "hostname").chmod(0o664)
    with pytest.raises(ImageRefused):
        digest(root)  # on this writable disk, refused
    packed = squashfs(root, base / "image.sqfs")
    with prepare.opened(str(packed)) as image:  # the same tree, mounted read-only
        assert identity.read_only(image.root)
        lines = identity.manifest(image.root)
    assert "d 1777 - - /tmp" in lines and any(line.startswith("f 0664 ") for line in lines)


def test_a_mounted_image_keeps_its_own_modes_for_other_users(base: Path, root: Path) -> None:
    need_fuse()
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("reading as another user needs root and setpriv")
    (root / "etc" / "secret").write_text("not for jobs\n")
    (root / "etc" / "secret").chmod(0o600)
    packed = squashfs(root, base / "image.sqfs")
    with prepare.opened(str(packed)) as image:
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat"]
        public = subprocess.run([*as_nobody, f"{image.root}/etc/hostname"], capture_output=True,
                                text=True, check=False)  # fmt: skip
        private = subprocess.run([*as_nobody, f"{image.root}/etc/secret"], capture_output=True,
                                 text=True, check=False)  # fmt: skip
    assert public.returncode == 0 and public.stdout == "image\n"  # allow_other
    assert private.returncode != 0 and "Permission denied" in private.stderr


def test_a_mount_whose_squashfuse_died_is_still_unmounted_and_removed(
    base: Path, root: Path
) -> None:
    need_fuse()
    from sandbox_agent.images.mounttable import mounted_at

    packed = squashfs(root, base / "image.sqfs")
    with prepare.opened(str(packed)) as image:
        point = image.root
        daemons = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()
                   and point.encode() in _cmdline(d)]  # fmt: skip
        assert daemons
        for pid in daemons:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in daemons):
            time.sleep(0.05)
        assert mounted_at(point) and not os.path.ismount(point)  # dead: ismount cannot tell
    assert not mounted_at(point)
    assert not os.path.exists(os.path.dirname(point))


def _cmdline(directory: Path) -> bytes:
    try:
        return (directory / "cmdline").read_bytes()
    except OSError:
        return b""


def test_a_fifo_or_a_missing_parent_is_one_line_not_a_hang(base: Path) -> None:
    os.mkfifo(base / "pipe.sif")
    with pytest.raises(ImageRefused, match="a directory, a squashfs file or a SIF file"), \
            prepare.opened(str(base / "pipe.sif")):  # fmt: skip
        pass
    with pytest.raises(ImageRefused, match="No such file"), \
            prepare.opened(str(base / "no" / "such" / "image.sif")):  # fmt: skip
        pass


# -- preparing for a job ----------------------------------------------------------------------


def effective_for(base: Path, image: str, pins: str = "") -> object:
    policies = base / "policies"
    policies.mkdir(exist_ok=True)
    shipped = Path(__file__).resolve().parents[2] / "policies"
    for name in ("base.toml", "default.toml"):
        shutil.copy(shipped / name, policies / name)
    shutil.copytree(shipped / "seccomp", policies / "seccomp", dirs_exist_ok=True)
    (policies / "site.toml").write_text(
        f'extends = "default"\n[filesystem]\nimage = "{image}"\n[images]\npins = {{ {pins} }}\n'
    )
    return compose(load_policy("site", [policies]))


def test_a_pinned_image_with_one_byte_changed_is_refused_naming_both_digests(
    base: Path, root: Path
) -> None:
    need_fuse()
    packed = squashfs(root, base / "image.sqfs")
    with prepare.opened(str(packed)) as image:
        pin = image.found.digest
    effective = effective_for(base, str(packed), f'"{packed}" = "{pin}"')
    with prepare.ready(effective) as ready:  # type: ignore[arg-type]
        assert ready is not None and ready.pinned and ready.kind == "squashfs"
        assert os.path.ismount(ready.root)
        assert (Path(ready.root) / "bin" / "busybox").is_file()
        mounted = ready.root
    assert not os.path.exists(mounted)  # unmounted and removed
    data = bytearray(packed.read_bytes())
    data[-1] ^= 0xFF
    packed.write_bytes(bytes(data))
    with pytest.raises(ImageRefused) as refused, prepare.ready(effective):  # type: ignore[arg-type]
        pass
    said = str(refused.value)
    assert pin in said and "its digest is sha256:" in said and "site.toml" in said


def test_an_unpinned_image_runs_unpinned_and_a_directory_is_its_own_root(
    base: Path, root: Path
) -> None:
    with prepare.ready(effective_for(base, str(root))) as ready:  # type: ignore[arg-type]
        assert ready is not None
        assert (ready.kind, ready.root, ready.pinned) == ("directory", str(root), False)
        assert ready.record()["digest"] == digest(root)


def test_an_image_others_may_replace_is_refused(base: Path, root: Path) -> None:
    root.chmod(0o777)
    with pytest.raises(ImageRefused, match="could be changed by another user"), \
            prepare.opened(str(root)):  # fmt: skip
        pass
    root.chmod(0o755)
    shared = base / "shared"
    shared.mkdir()
    moved = shared / "root"
    root.rename(moved)
    for mode, owner in ((0o777, 0), (0o1777, 12345), (0o755, 12345)):
        shared.chmod(mode)
        os.chown(shared, owner, 0)
        with pytest.raises(ImageRefused, match=r"above the image .* lets another user replace"), \
                prepare.opened(str(moved)):  # fmt: skip
            pass
    shared.chmod(0o1777)  # sticky, owned by root (as /tmp): nobody else may replace it
    os.chown(shared, 0, 0)
    with prepare.opened(str(moved)) as image:
        assert image.kind == "directory"


def test_a_corrupt_squashfs_is_the_images_fault_not_the_nodes(base: Path) -> None:
    need_fuse()
    broken = base / "broken.sqfs"
    broken.write_bytes(b"hsqs" + os.urandom(4092))
    broken.chmod(0o644)
    with pytest.raises(ImageRefused, match="squashfuse did not mount it") as refused, \
            prepare.opened(str(broken)):  # fmt: skip
        pass
    assert not refused.value.node  # squashfuse said the file is bad, not FUSE
    table = Path("/proc/self/mountinfo").read_text()
    assert "sandbox-agent-image-" not in table  # nothing left mounted


def test_the_mount_point_is_a_name_nobody_can_guess(base: Path, root: Path) -> None:
    need_fuse()
    with prepare.opened(str(squashfs(root, base / "image.sqfs"))) as image:
        holder = Path(image.root).parent
        assert len(Path(image.root).name) == 32
        assert holder.stat().st_mode & 0o777 == 0o711


def test_a_read_only_bind_of_a_writable_directory_is_still_checked(
    base: Path, root: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root")
    (root / "etc" / "hostname").chmod(0o666)
    view = base / "view"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(root), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        assert os.statvfs(view).f_flag & os.ST_RDONLY
        assert not identity.read_only(str(view))  # the directory stays writable elsewhere
        with pytest.raises(ImageRefused, match="could be changed by another user"):
            digest(view)
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_require_pin_refuses_an_unpinned_image(base: Path, root: Path) -> None:
    effective = effective_for(base, str(root))
    (base / "policies" / "site.toml").write_text(
        f'extends = "default"\n[filesystem]\nimage = "{root}"\n[images]\nrequire_pin = true\n')
    effective = compose(load_policy("site", [base / "policies"]))
    with pytest.raises(ImageRefused, match=r"images\.require_pin is set and no pin names"), \
            prepare.ready(effective):  # fmt: skip
        pass


def test_without_squashfuse_a_file_image_is_refused_with_the_package_to_install(
    base: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox_agent.images import mount

    packed = squashfs(root, base / "image.sqfs")
    real = shutil.which
    monkeypatch.setattr(mount.shutil, "which", lambda name: None if "squashfuse" in name
                        else real(name))  # fmt: skip
    with pytest.raises(ImageRefused, match=r"squashfuse is not installed \(apt-get install"), \
            prepare.opened(str(packed)):  # fmt: skip
        pass


# -- inspect and pin ----------------------------------------------------------------------------


def test_paths_inside_an_image_resolve_inside_it(root: Path) -> None:
    # /etc/os-release -> /usr/lib/os-release: the image's, never the host's
    assert resolve(str(root), "etc/os-release") == str(root / "usr" / "lib" / "os-release")
    (root / "etc" / "escape").symlink_to("../../../../../../etc/passwd")
    assert resolve(str(root), "etc/escape") is None  # the image has no /etc/passwd
    found = inspect(str(root))
    assert found.os_release == "Busybox Test Image 1.0"
    assert found.architecture == os.uname().machine and found.usable, found.problems


def test_image_inspect_and_pin_on_the_command_line(base: Path, root: Path, tmp_path: Path) -> None:
    need_fuse()
    wrapped = sif(squashfs(root, base / "image.sqfs"), base / "image.sif")
    env = cli_env(tmp_path / "home")
    shown = run_cli(env, "image", "inspect", wrapped, "--json")
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert (found["kind"], found["os_release"], found["usable"]) == (
        "sif",
        "Busybox Test Image 1.0",
        True,
    )
    pinned = run_cli(env, "image", "pin", wrapped)
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout == f'[images.pins]\n"{wrapped}" = "{found["digest"]}"\n'
    # the printed lines are a policy table that loads and pins the image
    policies = base / "policies"
    shipped = Path(__file__).resolve().parents[2] / "policies"
    shutil.copytree(shipped, policies)
    (policies / "site.toml").write_text(f'extends = "default"\n{pinned.stdout}')
    assert compose(load_policy("site", [policies])).mapping("images.pins") == {
        str(wrapped): found["digest"]
    }
    refused = run_cli(env, "image", "inspect", base / "image.sqfs.missing")
    assert refused.returncode == 1 and "No such file" in refused.stdout
    bad = run_cli(env, "image", "pin", "relative/image")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_image_inspect_says_when_a_policys_sandbox_cannot_run_on_the_image(
    base: Path, root: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(Path(__file__).resolve().parents[2] / "policies", home / "policies")
    # the host's /etc/ssl bound read-only: the image's /etc has content, and no ssl in it
    (home / "policies" / "site.toml").write_text(
        'extends = "default"\n[filesystem]\nread_only = ["/etc/ssl"]\n')
    env = cli_env(home)
    fine = run_cli(env, "image", "inspect", root)
    assert fine.returncode == 0 and "usable here:  yes (policy default)" in fine.stdout
    refused = run_cli(env, "image", "inspect", root, "--policy", "site")
    assert refused.returncode == 1
    assert "the site policy cannot run on it: the image " in refused.stdout
    assert "has nothing at /etc/ssl, where a dir is to be mounted" in refused.stdout
    (root / "etc" / "ssl").mkdir()
    assert run_cli(env, "image", "inspect", root, "--policy", "site").returncode == 0
    unknown = run_cli(env, "image", "inspect", root, "--policy", "nope")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1


def test_the_mount_table_names_immutable_filesystems_and_no_other(tmp_path: Path) -> None:
    from sandbox_agent.images.mounttable import holding

    spaced = tmp_path / "with space"
    spaced.mkdir()
    device = os.stat(spaced).st_dev
    here = f"{os.major(device)}:{os.minor(device)}"
    point = str(spaced).replace(" ", "\\040")

    def line(fstype: str, source: str, options: str, dev: str = here, at: str = point) -> bytes:
        return f"36 35 {dev} / {at} ro,relatime shared:1 - {fstype} {source} {options}\n".encode()

    root = b"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
    cases = [
        (line("fuse", "cvmfs2", "ro,user_id=0,group_id=0"), True),  # CVMFS as it mounts itself
        (line("squashfs", "/dev/loop3", "ro"), True),
        (line("fuse.squashfuse", "/dev/fd/9", f"ro,user_id={os.geteuid()},group_id=0"), True),
        (line("fuse", "cvmfs2", "ro,user_id=12345,group_id=0"), False),  # another user's
        (line("ext4", "/dev/sdb1", "ro"), False),  # a read-only mount of a writable kind
        (line("squashfs", "/dev/loop3", "ro", dev="7:99"), False),  # hidden: not this device
    ]
    for mount, immutable in cases:
        assert identity.read_only(str(spaced), root + mount) is immutable, mount
    assert holding(str(spaced), root + cases[0][0]).point == str(spaced).encode()
