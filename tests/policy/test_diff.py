"""diff: pairs of policies that differ in exactly one capability, and the diff names that
one widening, in the right direction, and nothing else.

B is always a small file extending A (a copy of a shipped policy in tmp_path, with the
profile from ``fixtures/seccomp_good.json``), so the two differ in the one key B sets.
"""

from __future__ import annotations

import copy
import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sandbox_agent.policy import EffectivePolicy, compose, load_policy
from sandbox_agent.policy.diff import Widening, diff

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
FIXTURES = Path(__file__).parent / "fixtures"
GOOD: dict[str, Any] = json.loads((FIXTURES / "seccomp_good.json").read_text())
BASE_DENY = load_policy("base", [SHIPPED]).value("filesystem.deny")


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    directory = tmp_path / "pol"
    (directory / "seccomp").mkdir(parents=True)
    for path in SHIPPED.glob("*.toml"):
        shutil.copy(path, directory / path.name)
    (directory / "seccomp" / "default.json").write_text(json.dumps(GOOD))
    return directory


def effective(directory: Path, name: str) -> EffectivePolicy:
    return compose(load_policy(name, [directory]), credentials=["/srv/agent/certs"])


def write_b(directory: Path, parent: str, body: str) -> str:
    text = f'extends = "{parent}"\n' + textwrap.dedent(body)
    (directory / "b.toml").write_text(text)
    return text


def pairs(found: list[Widening]) -> list[tuple[str, str]]:
    return sorted((w.key, w.message) for w in found)


def line_of(text: str, needle: str) -> int:
    (line,) = [n for n, row in enumerate(text.splitlines(), 1) if needle in row]
    return line


# parent, B's body (extends parent), the one widening B has: (key, message)
ONE_WIDENING = [
    ("new read-only path", "default", """
     [filesystem]
     read_only = { append = ["/opt/sw"] }
     """, ("filesystem.read_only", "reads the host path /opt/sw")),
    ("read-only path above the userland's", "default", """
     [filesystem]
     read_only = { append = ["/etc"] }
     """, ("filesystem.read_only", "reads the host path /etc")),
    ("new host userland path", "default", """
     [filesystem]
     host_userland = { append = ["/opt/sw"] }
     """, ("filesystem.host_userland", "reads the host path /opt/sw")),
    ("new writable path", "default", """
     [filesystem]
     writable = ["/scratch"]
     """, ("filesystem.writable", "writes the host path /scratch")),
    ("namespace required -> optional", "default", """
     [namespaces]
     net = "optional"
     """, ("namespaces.net", "may run without its own net namespace (required -> optional)")),
    ("namespace required -> off", "default", """
     [namespaces]
     user = "off"
     """, ("namespaces.user", "shares the host's user namespace (required -> off)")),
    ("namespace optional -> off", "default", """
     [namespaces]
     cgroup = "off"
     """, ("namespaces.cgroup", "shares the host's cgroup namespace (optional -> off)")),
    ("landlock required -> optional", "strict", """
     [process]
     landlock = "optional"
     """, ("process.landlock", "landlock required -> optional")),
    ("capability", "default", """
     [process]
     capabilities = ["CAP_NET_RAW"]
     """, ("process.capabilities", "keeps the capability CAP_NET_RAW")),
    ("no_new_privs off", "default", """
     [process]
     no_new_privs = false
     """, ("process.no_new_privs", "lets setuid binaries and file capabilities work")),
    ("new_session off", "default", """
     [process]
     new_session = false
     """, ("process.new_session", "keeps a controlling terminal")),
    ("die_with_parent off", "default", """
     [process]
     die_with_parent = false
     """, ("process.die_with_parent", "outlives the agent")),
    ("host network", "default", """
     [network]
     mode = "host"
     """, ("network.mode", "reaches the host's network")),
    ("environment variable passed", "default", """
     [process.environment]
     allow = { append = ["X509_USER_PROXY"] }
     """, ("process.environment.allow", "passes the agent's variable X509_USER_PROXY")),
    ("environment variable set", "default", """
     [process.environment]
     set = { OMP_NUM_THREADS = "8" }
     """, ("process.environment.set", "sets OMP_NUM_THREADS=8")),
    ("higher rlimit", "default", """
     [process.rlimits]
     nofile = 8192
     """, ("process.rlimits.nofile", "process.rlimits.nofile 4096 -> 8192")),
    ("higher size rlimit", "default", """
     [process.rlimits]
     stack = "16MB"
     """, ("process.rlimits.stack", "process.rlimits.stack 8MB -> 16MB")),
    ("core dumps", "default", """
     [process.rlimits]
     core = 1048576
     """, ("process.rlimits.core", "process.rlimits.core 0 -> 1048576")),
    ("higher limit max", "default", """
     [limits]
     memory = { max = "32GB" }
     """, ("limits.memory.max", "limits.memory.max 16GB -> 32GB")),
    ("higher limit default", "default", """
     [limits]
     memory = { default = "4GB" }
     """, ("limits.memory.default", "limits.memory.default 2GB -> 4GB")),
    ("higher wall time max", "default", """
     [limits.wall_time]
     max = 259200
     """, ("limits.wall_time.max", "limits.wall_time.max 172800 s -> 259200 s")),
    ("enforcement kernel -> monitored", "default", """
     [limits]
     memory = { enforcement = "monitored" }
     """, ("limits.memory.enforcement", "memory only monitored, no longer kernel-enforced")),
    ("tmpfs bigger", "default", """
     [filesystem]
     tmpfs = [{ path = "/tmp", size = "2GB" }]
     """, ("filesystem.tmpfs", "tmpfs /tmp 1GB -> 2GB")),
    ("tmpfs added", "default", """
     [filesystem]
     tmpfs = { append = [{ path = "/var/tmp", size = "64MB" }] }
     """, ("filesystem.tmpfs", "tmpfs /var/tmp none -> 64MB")),
    ("deny entry removed", "default", f"""
     [filesystem]
     deny = {json.dumps([p for p in BASE_DENY if p != "/boot"])}
     """, ("filesystem.deny", "no longer keeps binds away from /boot")),
    ("optional requirement added", "default", """
     [optional]
     requirements = { append = ["namespaces.net"] }
     """, ("optional.requirements", "tolerates unenforced namespaces.net")),
    ("jdl root added", "default", """
     [filesystem]
     jdl_read_only_roots = { append = ["/opt/experiment"] }
     """, ("filesystem.jdl_read_only_roots", "lets a JDL bind paths under /opt/experiment")),
    ("jdl roots where there were none", "strict", """
     [filesystem]
     jdl_read_only_roots = ["/cvmfs"]
     """, ("filesystem.jdl_read_only_roots", "lets a JDL bind paths under /cvmfs")),
    ("device path", "default", """
     [devices]
     paths = ["/dev/fuse"]
     """, ("devices.paths", "binds the device /dev/fuse")),
    ("gpu", "default", """
     [devices]
     gpu = "nvidia"
     """, ("devices.gpu", "gets nvidia GPUs")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("parent", "body", "widening"),
    [case[1:] for case in ONE_WIDENING],
    ids=[case[0] for case in ONE_WIDENING],
)
def test_one_widening(pdir: Path, parent: str, body: str, widening: tuple[str, str]) -> None:
    write_b(pdir, parent, body)
    b_allows, a_allows = diff(effective(pdir, parent), effective(pdir, "b"))
    assert pairs(b_allows) == [widening]
    assert a_allows == []
    # and the other way round, the same finding on the other side
    b_allows, a_allows = diff(effective(pdir, "b"), effective(pdir, parent))
    assert b_allows == []
    assert pairs(a_allows) == [widening]


def test_widening_origin_is_the_line_of_b(pdir: Path) -> None:
    text = write_b(
        pdir,
        "default",
        """
        [filesystem]
        writable = ["/scratch"]

        [process]
        capabilities = ["CAP_NET_RAW"]
        """,
    )
    (b_allows, _) = diff(effective(pdir, "default"), effective(pdir, "b"))
    assert {(w.key, w.origin) for w in b_allows} == {
        ("filesystem.writable", f"pol/b.toml:{line_of(text, 'writable')}"),
        ("process.capabilities", f"pol/b.toml:{line_of(text, 'capabilities')}"),
    }
    (writable,) = [w for w in b_allows if w.key == "filesystem.writable"]
    where = f"pol/b.toml:{line_of(text, 'writable')}"
    assert writable.format() == f"writes the host path /scratch  [filesystem.writable, {where}]"


def test_read_only_path_under_an_existing_bind_is_no_widening(pdir: Path) -> None:
    (pdir / "a.toml").write_text(
        'extends = "default"\n[filesystem]\nread_only = ["/opt/sw", "/data"]\n'
    )
    write_b(
        pdir,
        "a",
        """
        [filesystem]
        read_only = { append = ["/opt/sw/lib", "/data/calib/2024"] }
        host_userland = { append = ["/usr/share/doc", "/etc/ssl/certs/ca-certificates.crt"] }
        """,
    )
    assert diff(effective(pdir, "a"), effective(pdir, "b")) == ([], [])
    # the paths themselves are in B, so the check did look at them
    assert "/opt/sw/lib" in effective(pdir, "b").value("filesystem.read_only")  # type: ignore[operator]


def test_read_only_path_under_the_host_userland_is_no_widening(pdir: Path) -> None:
    write_b(pdir, "default", '[filesystem]\nread_only = { append = ["/usr/share/doc"] }\n')
    assert diff(effective(pdir, "default"), effective(pdir, "b")) == ([], [])


def test_deny_entry_replaced_by_its_parent_narrows(pdir: Path) -> None:
    """B denies /etc where A denied /etc/ssh: B allows nothing more, A allows /etc."""
    deny = [p for p in BASE_DENY if p != "/etc/ssh"] + ["/etc"]
    write_b(pdir, "default", f"[filesystem]\ndeny = {json.dumps(deny)}\n")
    b_allows, a_allows = diff(effective(pdir, "default"), effective(pdir, "b"))
    assert b_allows == []
    assert pairs(a_allows) == [("filesystem.deny", "no longer keeps binds away from /etc")]


def test_environment_value_changed_shows_each_side(pdir: Path) -> None:
    write_b(pdir, "default", '[process.environment]\nset = { PATH = "/opt/bin:/usr/bin" }\n')
    b_allows, a_allows = diff(effective(pdir, "default"), effective(pdir, "b"))
    assert pairs(b_allows) == [("process.environment.set", "sets PATH=/opt/bin:/usr/bin")]
    assert pairs(a_allows) == [
        ("process.environment.set", "sets PATH=/usr/local/bin:/usr/bin:/bin")
    ]


@pytest.mark.parametrize(
    ("key", "allowed"), [("proc", "private"), ("dev", "minimal")], ids=["proc", "dev"]
)
def test_proc_and_dev_mounted(pdir: Path, key: str, allowed: str) -> None:
    """B turns /proc (or /dev) off: A is the one that mounts it."""
    write_b(pdir, "default", f'[filesystem]\n{key} = "off"\n')
    b_allows, a_allows = diff(effective(pdir, "default"), effective(pdir, "b"))
    assert b_allows == []
    assert pairs(a_allows) == [(f"filesystem.{key}", f"mounts {key} ({allowed})")]


def test_narrowing_only_is_reported_on_a_side(pdir: Path) -> None:
    """Everything lower in B: B allows nothing A does not."""
    write_b(
        pdir,
        "default",
        """
        [process.rlimits]
        nofile = 64

        [limits]
        memory = { default = "1GB", max = "1GB" }
        """,
    )
    b_allows, a_allows = diff(effective(pdir, "default"), effective(pdir, "b"))
    assert b_allows == []
    assert pairs(a_allows) == [
        ("limits.memory.default", "limits.memory.default 1GB -> 2GB"),
        ("limits.memory.max", "limits.memory.max 1GB -> 16GB"),
        ("process.rlimits.nofile", "process.rlimits.nofile 64 -> 4096"),
    ]


@pytest.mark.parametrize("name", ["base", "default", "strict", "gpu"])
def test_diff_with_itself_is_empty(pdir: Path, name: str) -> None:
    assert diff(effective(pdir, name), effective(pdir, name)) == ([], [])


def test_same_keys_through_another_file_are_no_widening(pdir: Path) -> None:
    """B restates A's values in its own file: different origins, the same capabilities."""
    write_b(
        pdir,
        "default",
        """
        [namespaces]
        net = "required"

        [filesystem]
        host_userland = { append = ["/usr"] }
        tmpfs = [{ path = "/tmp", size = "1GB" }]
        """,
    )
    assert diff(effective(pdir, "default"), effective(pdir, "b")) == ([], [])


def test_default_to_gpu(pdir: Path) -> None:
    gpu = (SHIPPED / "gpu.toml").read_text()
    b_allows, a_allows = diff(effective(pdir, "default"), effective(pdir, "gpu"))
    assert a_allows == []
    assert pairs(b_allows) == sorted(
        [
            ("devices.gpu", "gets nvidia GPUs"),
            ("devices.paths", "binds the device /dev/nvidiactl"),
            ("devices.paths", "binds the device /dev/nvidia-uvm"),
            ("devices.paths", "binds the device /dev/nvidia-uvm-tools"),
            ("devices.paths", "binds the device /dev/nvidia0"),
            # /usr/lib/x86_64-linux-gnu/nvidia is under /usr, readable already
            ("filesystem.read_only", "reads the host path /etc/OpenCL"),
            ("limits.memory.max", "limits.memory.max 16GB -> 64GB"),
            ("limits.memory.default", "limits.memory.default 2GB -> 8GB"),
        ]
    )
    origins = {w.message: w.origin for w in b_allows}
    assert origins["reads the host path /etc/OpenCL"] == f"pol/gpu.toml:{line_of(gpu, 'read_only')}"


def test_strict_to_default(pdir: Path) -> None:
    """Default widens strict: more limits, CVMFS binds on request, variables passed."""
    b_allows, a_allows = diff(effective(pdir, "strict"), effective(pdir, "default"))
    assert a_allows == []
    keys = {w.key for w in b_allows}
    assert {
        "filesystem.jdl_read_only_roots",
        "process.environment.allow",
        "optional.requirements",
        "filesystem.tmpfs",
        "limits.memory.max",
    } <= keys
    assert "namespaces.net" not in keys and "process.capabilities" not in keys


# -- seccomp -----------------------------------------------------------------------------------


def write_profile_pair(directory: Path, *extra: dict[str, Any]) -> str:
    """B extends default and names seccomp/b.json, the good profile plus ``extra``."""
    data = copy.deepcopy(GOOD)
    data["syscalls"] += list(extra)
    (directory / "seccomp" / "b.json").write_text(json.dumps(data))
    return write_b(directory, "default", '[process]\nseccomp = "seccomp/b.json"\n')


def test_seccomp_profile_allowing_mount(pdir: Path) -> None:
    text = write_profile_pair(pdir, {"names": ["mount"], "action": "SCMP_ACT_ALLOW"})
    b_allows, a_allows = diff(effective(pdir, "default"), effective(pdir, "b"))
    assert a_allows == []
    assert b_allows, "B allows mount"
    assert {(w.key, w.message, w.origin) for w in b_allows} == {
        (
            "process.seccomp",
            "system call no longer denied: mount",
            f"pol/b.toml:{line_of(text, 'seccomp')}",
        )
    }
    # the reverse direction
    b_allows, a_allows = diff(effective(pdir, "b"), effective(pdir, "default"))
    assert b_allows == []
    assert {w.message for w in a_allows} == {"system call no longer denied: mount"}


def test_seccomp_profile_allowing_mount_is_one_widening(pdir: Path) -> None:
    write_profile_pair(pdir, {"names": ["mount"], "action": "SCMP_ACT_ALLOW"})
    b_allows, _ = diff(effective(pdir, "default"), effective(pdir, "b"))
    assert pairs(b_allows) == [("process.seccomp", "system call no longer denied: mount")]


def test_seccomp_profile_allowing_an_ordinary_call(pdir: Path) -> None:
    write_profile_pair(pdir, {"names": ["fchownat"], "action": "SCMP_ACT_ALLOW"})
    b_allows, a_allows = diff(effective(pdir, "default"), effective(pdir, "b"))
    assert pairs(b_allows) == [("process.seccomp", "system call no longer denied: fchownat")]
    assert a_allows == []


def test_seccomp_same_profile_under_another_name_is_no_widening(pdir: Path) -> None:
    write_profile_pair(pdir)
    assert diff(effective(pdir, "default"), effective(pdir, "b")) == ([], [])


def test_seccomp_profile_that_cannot_be_read(pdir: Path) -> None:
    text = write_b(pdir, "default", '[process]\nseccomp = "seccomp/absent.json"\n')
    b_allows, a_allows = diff(effective(pdir, "default"), effective(pdir, "b"))
    (widening,) = b_allows
    assert widening.key == "process.seccomp"
    assert widening.message.startswith("cannot compare profiles: ")
    assert "absent.json: cannot read the seccomp profile" in widening.message
    assert widening.origin == f"pol/b.toml:{line_of(text, 'seccomp')}"
    assert len(a_allows) == 1 and a_allows[0].message.startswith("cannot compare profiles")


def test_seccomp_profiles_in_two_directories(tmp_path: Path, pdir: Path) -> None:
    """A policy directory elsewhere with the same file names but a wider profile."""
    other = tmp_path / "other"
    shutil.copytree(pdir, other)
    wider = copy.deepcopy(GOOD)
    wider["syscalls"].append({"names": ["fchownat"], "action": "SCMP_ACT_ALLOW"})
    (other / "seccomp" / "default.json").write_text(json.dumps(wider))
    b_allows, a_allows = diff(effective(pdir, "default"), effective(other, "default"))
    assert pairs(b_allows) == [("process.seccomp", "system call no longer denied: fchownat")]
    assert a_allows == []


# -- the network -------------------------------------------------------------------------------
# A is egress on base (which has no network); B extends A and changes one thing.

EGRESS_A = """\
extends = "base"

[network]
mode = "egress"
allow = ["xrootd.example.org:1094", "10.1.0.0/16:443"]
deny = ["10.1.99.0/24"]
"""

NETWORK_WIDENING = [
    ("allow entry added", """
     [network]
     allow = { append = ["192.0.2.0/24"] }
     """, [("network.allow", "may connect to 192.0.2.0/24")]),
    ("allow entry on another port of a name", """
     [network]
     allow = { append = ["xrootd.example.org:1095"] }
     """, [("network.allow", "may connect to xrootd.example.org:1095")]),
    ("allow entry on every port of an allowed network", """
     [network]
     allow = { append = ["10.1.2.0/24"] }
     """, [("network.allow", "may connect to 10.1.2.0/24")]),
    ("deny entry dropped", """
     [network]
     deny = []
     """, [("network.deny", "no longer keeps 10.1.99.0/24 closed")]),
    ("deny entry narrowed", """
     [network]
     deny = ["10.1.99.0/25"]
     """, [("network.deny", "no longer keeps 10.1.99.0/24 closed")]),
    ("proxy given", """
     [network]
     proxy = "http://squid.example.org:3128"
     """, [("network.proxy", "gives the job the proxy http://squid.example.org:3128, reachable "
            "whatever network.allow says")]),
    ("egress -> host", """
     [namespaces]
     net = "off"
     [network]
     mode = "host"
     """, [("namespaces.net", "shares the host's net namespace (required -> off)"),
           ("network.mode", "reaches the host's network")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "widenings"),
    [case[1:] for case in NETWORK_WIDENING],
    ids=[case[0] for case in NETWORK_WIDENING],
)
def test_network_widening(pdir: Path, body: str, widenings: list[tuple[str, str]]) -> None:
    (pdir / "a.toml").write_text(EGRESS_A)
    write_b(pdir, "a", body)
    b_allows, a_allows = diff(effective(pdir, "a"), effective(pdir, "b"))
    assert pairs(b_allows) == sorted(widenings)
    assert a_allows == []
    b_allows, a_allows = diff(effective(pdir, "b"), effective(pdir, "a"))
    assert (b_allows, pairs(a_allows)) == ([], sorted(widenings))


@pytest.mark.parametrize(
    "allow",
    ["10.1.2.0/24:443", "10.1.2.3:443", "XROOTD.example.org:1094", "127.0.0.1", "[2001:db8::1]:80"],
    ids=["network inside", "address inside", "same name", "never reachable", "IPv6"],
)  # fmt: skip
def test_network_allow_entries_that_reach_nothing_new(pdir: Path, allow: str) -> None:
    (pdir / "a.toml").write_text(EGRESS_A)
    write_b(pdir, "a", f'[network]\nallow = {{ append = ["{allow}"] }}\n')
    assert diff(effective(pdir, "a"), effective(pdir, "b")) == ([], [])
    assert allow in effective(pdir, "b").view.network.allow  # B does name it


def test_network_widening_origin_is_the_entry_line(pdir: Path) -> None:
    (pdir / "a.toml").write_text(EGRESS_A)
    text = write_b(pdir, "a", '\n[network]\nallow = { append = ["192.0.2.7:22"] }\n')
    (widening,) = diff(effective(pdir, "a"), effective(pdir, "b"))[0]
    assert widening.format() == (
        f"may connect to 192.0.2.7:22  [network.allow, pol/b.toml:{line_of(text, 'allow')}]"
    )


def test_none_to_egress_names_the_mode_and_every_destination(pdir: Path) -> None:
    (pdir / "a.toml").write_text(EGRESS_A)
    b_allows, a_allows = diff(effective(pdir, "base"), effective(pdir, "a"))
    assert a_allows == []
    assert pairs(b_allows) == [
        ("network.allow", "may connect to 10.1.0.0/16:443"),
        ("network.allow", "may connect to xrootd.example.org:1094"),
        ("network.mode", "connects out through the agent's relay (none -> egress): DNS, and "
         "what network.allow names"),
    ]  # fmt: skip


def test_none_to_egress_with_nothing_allowed_is_dns(pdir: Path) -> None:
    write_b(pdir, "base", '[network]\nmode = "egress"\n')
    b_allows, _ = diff(effective(pdir, "base"), effective(pdir, "b"))
    assert [w.key for w in b_allows] == ["network.mode"]


def test_lists_and_proxy_without_egress_widen_nothing(pdir: Path) -> None:
    """B names destinations and a proxy in mode none: it reaches nothing A does not."""
    write_b(pdir, "base", """
        [network]
        allow = ["0.0.0.0/0"]
        proxy = "http://squid.example.org:3128"
    """)  # fmt: skip
    assert diff(effective(pdir, "base"), effective(pdir, "b")) == ([], [])


def test_from_host_egress_reaches_nothing_new(pdir: Path) -> None:
    (pdir / "a.toml").write_text(
        'extends = "base"\n[namespaces]\nnet = "off"\n[network]\nmode = "host"\n'
    )
    write_b(pdir, "a", '[namespaces]\nnet = "required"\n' + EGRESS_A.split("\n", 1)[1])
    b_allows, a_allows = diff(effective(pdir, "a"), effective(pdir, "b"))
    assert b_allows == []
    assert ("network.mode", "reaches the host's network") in pairs(a_allows)


def test_memory_per_core_is_a_widening(pdir: Path) -> None:
    """Turning it on multiplies every job's memory by its cores: 16 GB and 8 cores at
    most in default become 128 GB for an 8-core job."""
    write_b(pdir, "default", "[limits]\nmemory_per_core = true\n")
    wider, narrower = diff(effective(pdir, "default"), effective(pdir, "b"))
    (found,) = [w for w in wider if w.key == "limits.memory_per_core"]
    assert "a job of 8 cores may have 128" in found.message, found.message
    assert found.origin.endswith("b.toml:3")
    assert not [w for w in narrower if w.key == "limits.memory_per_core"]
