"""The bwrap argv for a job on an image, against a fixed host: the image's top level
bound onto bwrap's own root, the host's userland left out, and the wrapper started on
the host's python3 through its loader at a private path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_support import shared_dir

from sandbox_agent.images.hostpython import HostPython
from sandbox_agent.images.prepare import ReadyImage
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import bwrap
from sandbox_agent.runtime.plan import FixedHost, Unenforceable

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
PY = "/.sandbox-agent/python"
CARRIED = HostPython(
    binds=(("/usr/bin/python3.11", f"{PY}/bin/python3"),
           ("/usr/lib/python3.11", f"{PY}/lib/python3.11"),
           ("/usr/lib/ld-linux-x86-64.so.2", f"{PY}/so/ld-linux-x86-64.so.2"),
           ("/usr/lib/libc.so.6", f"{PY}/so/libc.so.6")),
    command=(f"{PY}/so/ld-linux-x86-64.so.2", "--library-path", f"{PY}/so", f"{PY}/bin/python3"),
)  # fmt: skip
HOST = FixedHost({
    "/usr": "dir", "/bin": "symlink:usr/bin", "/usr/bin/python3": "file",
    "/img/bin": "dir", "/img/etc": "dir", "/img/usr": "dir", "/img/lib64": "symlink:usr/lib64",
    "/img/proc": "dir", "/img/dev": "dir", "/img/tmp": "dir", "/img/workdir": "dir",
    "/img/.sandbox-agent": "dir", "/img/README": "file", "/img/fifo": "other",
}, interpreter=CARRIED)  # fmt: skip
READY = ReadyImage(path="/cvmfs/el9.sif", named="/cvmfs/el9.sif", origin="site.toml:3",
                   kind="sif", digest="sha256:" + "ab" * 32, size=1, pinned=True,
                   root="/img")  # fmt: skip


@pytest.fixture
def policies() -> Iterator[Path]:
    base = shared_dir()
    shutil.copytree(SHIPPED, base / "policies")
    yield base / "policies"
    shutil.rmtree(base, ignore_errors=True)


def effective_on(policies: Path, image: str):  # type: ignore[no-untyped-def]
    (policies / "site.toml").write_text(f'extends = "default"\n[filesystem]\nimage = "{image}"\n')
    return compose(load_policy("site", [policies]))


def pairs(argv: tuple[str, ...], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, word in enumerate(argv) if word == flag]


def test_the_image_top_level_is_bound_and_the_host_userland_is_not(policies: Path) -> None:
    plan = bwrap.render(effective_on(policies, "/cvmfs/el9.sif"), ["/bin/sh", "-c", "true"],
                        workdir="/srv/work/7", host=HOST, image=READY)  # fmt: skip
    binds = pairs(plan.argv, "--ro-bind")
    image_binds = [pair for pair in binds if pair[0].startswith("/img/")]
    assert image_binds == [("/img/README", "/README"), ("/img/bin", "/bin"),
                           ("/img/etc", "/etc"), ("/img/usr", "/usr")]  # fmt: skip
    assert ("usr/lib64", "/lib64") in pairs(plan.argv, "--symlink")
    assert ("usr/bin", "/bin") not in pairs(plan.argv, "--symlink")  # the host's layout
    assert ("/usr", "/usr") not in binds
    # the sandbox makes /proc, /dev, /tmp and the work directory itself
    assert not any(target in ("/proc", "/dev", "/tmp", "/workdir", "/.sandbox-agent")
                   for _, target in image_binds)  # fmt: skip
    for source, inside in CARRIED.binds:
        assert (source, inside) in binds
    # the landlock step runs on the carried interpreter, before the image's /bin/sh
    start = plan.argv.index("--") + 1
    assert plan.argv[start : start + 6] == (*CARRIED.command, "-I", "-S")
    assert plan.argv[-3:] == ("/bin/sh", "-c", "true")
    image_req = next(r for r in plan.requirements if r.key == "filesystem.image")
    assert READY.digest in image_req.how and "pinned" in image_req.how


def test_the_wrapper_runs_on_the_carried_interpreter(policies: Path) -> None:
    plan = bwrap.render(effective_on(policies, "/cvmfs/el9.sif"), bwrap.WRAPPER_ARGV,
                        workdir="/srv/work/7", host=HOST, image=READY, wrapper=True)  # fmt: skip
    tail = plan.argv[plan.argv.index("--in-process") :]
    script = tail.index("--") + 1
    assert tail[script:] == (*CARRIED.command, *bwrap.WRAPPER_ARGV[1:])
    assert "/usr/bin/python3" not in plan.argv


def test_bwrap_refuses_oci_images_and_images_not_made_ready(policies: Path) -> None:
    with pytest.raises(Unenforceable, match="cannot pull the OCI image"):
        bwrap.render(effective_on(policies, "docker://alpine:3"), ["/bin/true"],
                     workdir="/srv/work/7", host=HOST)  # fmt: skip
    with pytest.raises(Unenforceable, match="was not made ready"):
        bwrap.render(effective_on(policies, "/cvmfs/el9.sif"), ["/bin/true"],
                     workdir="/srv/work/7", host=HOST)  # fmt: skip


def test_binds_under_the_images_top_level_need_a_place_in_the_image(policies: Path) -> None:
    from sandbox_agent.images import ImageRefused
    from sandbox_agent.jdl import load_job

    host = FixedHost({**HOST.table, "/img/cvmfs": "dir", "/img/opt": "dir",
                      "/img/opt/tools": "dir", "/img/opt/README": "file",
                      "/cvmfs/alice.cern.ch": "dir", "/opt/tools": "dir", "/opt/data": "dir",
                      "/opt/README": "dir"},
                     interpreter=CARRIED)  # fmt: skip
    (policies / "site.toml").write_text(
        'extends = "default"\n[filesystem]\nimage = "/cvmfs/el9.sif"\n'
        'jdl_read_only_roots = ["/cvmfs", "/opt"]\n')
    policy = load_policy("site", [policies])

    def plan(binds: str):  # type: ignore[no-untyped-def]
        job = load_job(f'Executable = "/bin/true"; ReadOnlyBinds = {{ {binds} }};')
        return bwrap.render(compose(policy, job), ["/bin/true"], workdir="/srv/work/7",
                            host=host, image=READY)  # fmt: skip

    # the image's empty /cvmfs (a mount point) is left out: bwrap makes it for the bind
    made = pairs(plan('"/cvmfs/alice.cern.ch"').argv, "--ro-bind")
    assert ("/img/cvmfs", "/cvmfs") not in made
    assert ("/cvmfs/alice.cern.ch", "/cvmfs/alice.cern.ch") in made
    assert ("/img/opt", "/opt") in made
    # /opt has content: a bind needs its mount point there, which /opt/tools is
    assert ("/opt/tools", "/opt/tools") in pairs(plan('"/opt/tools"').argv, "--ro-bind")
    with pytest.raises(ImageRefused, match="has nothing at /opt/data, where a dir is to be "
                       "mounted") as refused:  # fmt: skip
        plan('"/opt/data"')
    assert refused.value.job and not refused.value.node  # the job's own bind
    with pytest.raises(ImageRefused, match="has a file at /opt/README, where a dir is"):
        plan('"/opt/README"')
    assert pairs(plan('"/opt/missing-on-host"').argv, "--ro-bind")  # nothing to bind: no refusal


def test_a_site_tmpfs_under_an_image_directory_needs_its_place_too(policies: Path) -> None:
    from sandbox_agent.images import ImageRefused

    host = FixedHost({**HOST.table, "/img/var": "dir", "/img/var/lib": "dir"},
                     interpreter=CARRIED)  # fmt: skip
    (policies / "site.toml").write_text(
        'extends = "default"\n[filesystem]\nimage = "/cvmfs/el9.sif"\n'
        'tmpfs = { append = [{ path = "/var/tmp", size = "64MB" }] }\n')
    effective = compose(load_policy("site", [policies]))
    with pytest.raises(ImageRefused, match="has nothing at /var/tmp") as refused:
        bwrap.render(effective, ["/bin/true"], workdir="/srv/work/7", host=host, image=READY)
    assert not refused.value.job  # the site's own tmpfs: not the job's fault
    roomy = FixedHost({**host.table, "/img/var/tmp": "dir"}, interpreter=CARRIED)
    plan = bwrap.render(effective, ["/bin/true"], workdir="/srv/work/7", host=roomy, image=READY)
    assert "/var/tmp" in plan.argv


def test_without_a_host_python_an_image_cannot_run_the_wrapper(policies: Path) -> None:
    bare = FixedHost(HOST.table)
    with pytest.raises(Unenforceable, match=r"the wrapper's interpreter: .*no python3"):
        bwrap.render(effective_on(policies, "/cvmfs/el9.sif"), ["/bin/true"],
                     workdir="/srv/work/7", host=bare, image=READY)  # fmt: skip
