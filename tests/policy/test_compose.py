"""Composition: policy x JDL x slot -> effective values with their provenance."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_agent.jdl import load_job
from sandbox_agent.jdl.units import GIB, MIB
from sandbox_agent.policy import PolicyRejection, compose, load, load_policy
from sandbox_agent.policy.schema import FIELDS

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
DEFAULT = load_policy("default", [SHIPPED])
STRICT = load_policy("strict", [SHIPPED])


def job(body: str):  # type: ignore[no-untyped-def]
    return load_job('Executable = "/bin/true";\n' + body)


def origin_of(key: str) -> str:
    return DEFAULT[key].origin


# policy x JDL x slot -> (limit, value, origin)
TABLE = [
    ("no request: site default", DEFAULT, "", None,
     "memory", 2 * GIB, origin_of("limits.memory.default")),
    ("JDL request within the max", DEFAULT, 'MemorySize = "8GB";', None,
     "memory", 8 * GIB, "jdl:MemorySize"),
    ("JDL request at the max", DEFAULT, 'MemorySize = "16GB";', None,
     "memory", 16 * GIB, "jdl:MemorySize"),
    ("cores requested", DEFAULT, "CPUCores = 4;", None,
     "cpu_cores", 4, "jdl:CPUCores"),
    ("TTL becomes the wall time", DEFAULT, "TTL = 7200;", None,
     "wall_time", 7200, "jdl:TTL"),
    ("disk request", DEFAULT, 'WorkDirectorySize = {"6000MB"};', None,
     "workdir_size", 6000 * MIB, "jdl:WorkDirectorySize"),
    ("slot smaller than the site default", DEFAULT, "", {"Memory": 1024},
     "memory", 1024 * MIB, "slot:Memory"),
    ("slot larger than the default: default stays", DEFAULT, "", {"Memory": 65536},
     "memory", 2 * GIB, origin_of("limits.memory.default")),
    ("pids never from a JDL", DEFAULT, "CPUCores = 2;", None,
     "pids", 1024, origin_of("limits.pids.default")),
    ("strict default", STRICT, "", None,
     "memory", GIB, STRICT["limits.memory.default"].origin),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "body", "slot", "limit", "value", "origin"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_composition_table(policy, body, slot, limit, value, origin) -> None:  # type: ignore[no-untyped-def]
    effective = compose(policy, job(body), slot)
    assert effective.limit(limit) == value
    assert effective[f"limits.{limit}"].origin == origin


def test_without_a_job_every_limit_is_the_default() -> None:
    effective = compose(DEFAULT)
    for name in ("cpu_cores", "memory", "swap", "pids", "wall_time", "workdir_size"):
        assert effective.limit(name) == DEFAULT.value(f"limits.{name}.default")


@pytest.mark.parametrize(
    ("policy", "body", "message"),
    [
        (DEFAULT, 'MemorySize = "32GB";',
         "MemorySize 32GB is above the site maximum 16GB (limits.memory.max, "
         f"{DEFAULT['limits.memory.max'].origin}); ask for at most that"),
        (STRICT, "CPUCores = 8;", "CPUCores 8 is above the site maximum 1"),
        (DEFAULT, "TTL = 200000;", "TTL 200000 s is above the site maximum 172800 s"),
        (DEFAULT, 'WorkDirectorySize = "200GB";', "WorkDirectorySize 200GB is above"),
    ],
)  # fmt: skip
def test_requests_above_a_maximum_reject_the_job(policy, body, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyRejection) as info:
        compose(policy, job(body))
    assert str(info.value).startswith(message)


def test_request_above_the_slot_is_rejected_naming_the_slot() -> None:
    with pytest.raises(PolicyRejection) as info:
        compose(DEFAULT, job("CPUCores = 8;"), {"CPUCores": 4})
    assert str(info.value) == "CPUCores 8 is more than this slot has (CPUCores = 4)"


def test_jdl_read_only_binds_under_allowed_roots() -> None:
    effective = compose(DEFAULT, job('ReadOnlyBinds = { "/cvmfs/alice.cern.ch" };'))
    items = effective["filesystem.read_only"].value
    assert items[-1].value == "/cvmfs/alice.cern.ch"
    assert items[-1].origin == "jdl:ReadOnlyBinds"
    assert len(items) == 1  # base binds its userland through host_userland, not here


@pytest.mark.parametrize(
    ("binds", "fragment"),
    [
        ('"/home/user"', "is not under a root the site allows (/cvmfs)"),
        ('"/cvmfsX/a"', "is not under a root the site allows"),
        ('"/cvmfs/../etc"', "must be an absolute path without '..'"),
        ('"cvmfs/a"', "must be an absolute path"),
        ("42", "must list paths as strings"),
    ],
)
def test_jdl_binds_that_are_refused(binds: str, fragment: str) -> None:
    with pytest.raises(PolicyRejection) as info:
        compose(DEFAULT, job(f"ReadOnlyBinds = {{ {binds} }};"))
    assert fragment in str(info.value)


def test_strict_allows_no_jdl_binds() -> None:
    with pytest.raises(PolicyRejection, match="none \\(this policy allows no extra binds\\)"):
        compose(STRICT, job('ReadOnlyBinds = "/cvmfs/alice.cern.ch";'))


def test_agent_credentials_join_the_deny_list_and_cannot_be_bound() -> None:
    effective = compose(DEFAULT, credentials=["/cvmfs/agent/certs"])
    denied = effective["filesystem.deny"].value
    assert denied[-1].value == "/cvmfs/agent/certs" and denied[-1].origin == "agent:credentials"
    refused = "reaches /cvmfs/agent/certs, a credential"
    with pytest.raises(PolicyRejection, match=refused):
        compose(DEFAULT, job('ReadOnlyBinds = "/cvmfs/agent";'), credentials=["/cvmfs/agent/certs"])


def test_a_jdl_cannot_widen_anything_else() -> None:
    hostile = job(
        'Capabilities = { "CAP_SYS_ADMIN" }; Writable = "/"; Network = "host";\n'
        'JDLVariables = { "LD_PRELOAD" }; LD_PRELOAD = "/tmp/x.so"; Seccomp = "none";\n'
        'namespaces = "off"; MemorySize = "4GB";'
    )
    plain = compose(DEFAULT)
    effective = compose(DEFAULT, hostile)
    for key in FIELDS:
        if key.startswith("limits."):
            continue
        assert effective[key] == plain[key], key


def test_jdl_bind_through_a_symlink_is_refused(tmp_path: Path) -> None:
    # A repository under an allowed root may hold links anywhere (CVMFS does): the
    # runtime would follow them, so only real paths may be asked for.
    root = tmp_path / "cvmfs"
    (root / "vo").mkdir(parents=True)
    (root / "vo" / "sw").symlink_to("/")
    (root / "vo" / "real").mkdir()
    for name in ("base.toml", "default.toml"):
        (tmp_path / name).write_text((SHIPPED / name).read_text())
    (tmp_path / "site.toml").write_text(
        f'extends = "default"\n[filesystem]\njdl_read_only_roots = ["{root}"]\n'
    )
    site = load_policy("site", [tmp_path])
    with pytest.raises(PolicyRejection, match="goes through a symlink"):
        compose(site, job(f'ReadOnlyBinds = {{ "{root}/vo/sw/etc/ssh" }};'))
    ok = compose(site, job(f'ReadOnlyBinds = {{ "{root}/vo/real" }};'))
    assert ok["filesystem.read_only"].value[-1].value == f"{root}/vo/real"


@pytest.mark.parametrize("path", ["/cvmfs/x,/etc/grid-security:/g:rw", "/cvmfs/a:b"])
def test_jdl_bind_with_a_separator_is_refused(path: str) -> None:
    # Apptainer splits --bind on ',' and ':': a path holding them would add binds
    with pytest.raises(PolicyRejection, match="may not hold"):
        compose(DEFAULT, job(f'ReadOnlyBinds = {{ "{path}" }};'))


def test_relative_credentials_are_made_absolute() -> None:
    effective = compose(DEFAULT, credentials=["home/certs"])
    assert effective["filesystem.deny"].value[-1].value.startswith("/")


@pytest.mark.parametrize("value", [-5, 1e300])
def test_absurd_slot_values_reject_instead_of_crashing(value: float) -> None:
    with pytest.raises(PolicyRejection, match="is not a usable amount"):
        compose(DEFAULT, job(""), {"Memory": value})


def test_a_jdl_cannot_touch_the_network(tmp_path: Path) -> None:
    """Under an egress policy, a JDL naming a mode, destinations or a proxy in every way a
    JDL can changes none of the network keys; its memory request, read alongside, does."""
    for name in ("base.toml", "default.toml"):
        (tmp_path / name).write_text((SHIPPED / name).read_text())
    (tmp_path / "site.toml").write_text(
        'extends = "default"\n[network]\nmode = "egress"\n'
        'allow = ["xrootd.example.org:1094"]\ndeny = ["10.1.99.0/24"]\n'
        'proxy = "http://squid.example.org:3128"\n'
    )
    site = load_policy("site", [tmp_path])
    hostile = job(
        'Network = "host"; NetworkMode = "host"; Mode = "host"; Egress = "none";\n'
        'NetworkAllow = { "0.0.0.0/0", "169.254.169.254" }; Allow = { "0.0.0.0/0" };\n'
        'NetworkDeny = {}; Deny = {}; Proxy = "http://evil.example.org:80";\n'
        'NetworkProxy = "http://evil.example.org:80"; http_proxy = "http://evil.example.org:80";\n'
        'JDLVariables = { "http_proxy", "Network" }; MemorySize = "4GB";'
    )
    # the JDL holds them all, for compose to see
    assert {"Network", "NetworkAllow", "Proxy", "http_proxy"} <= {k for k, _ in hostile.extra}
    plain = compose(site)
    effective = compose(site, hostile)
    assert effective.limit("memory") == 4 * GIB  # the JDL was read
    for key in (k for k in FIELDS if k.startswith("network.")):
        assert effective[key] == plain[key], key
    assert effective.view.network == plain.view.network
    assert effective.view.network.mode == "egress"
    assert effective.view.network.allow == ("xrootd.example.org:1094",)
    assert effective.view.network.proxy == "http://squid.example.org:3128"


def per_core_policy(tmp_path: Path, switch: str = "true"):  # type: ignore[no-untyped-def]
    (tmp_path / "site.toml").write_text(
        'extends = "default"\n[limits]\n'
        'memory = { default = "2GB", max = "4GB", enforcement = "kernel" }\n'
        f"memory_per_core = {switch}\n"
    )
    return load_policy("site", [tmp_path, load.SHIPPED])


def test_memory_per_core_scales_the_default_and_the_maximum(tmp_path: Path) -> None:
    """CPUCores = 8 with 2 GB per core gets 16 GB, not 2 GB in all; a MemorySize asked
    is the job's whole, held to 4 GB per core; a slot caps as before."""
    policy = per_core_policy(tmp_path)
    eight = compose(policy, job('CPUCores = "8";'))
    assert eight["limits.memory"].value == 16 * GIB
    assert "x 8 cores (memory_per_core, " in eight["limits.memory"].origin
    assert compose(policy, job(""))["limits.memory"].value == 2 * GIB
    asked = compose(policy, job('CPUCores = "8"; MemorySize = "24GB";'))
    assert (asked["limits.memory"].value, asked["limits.memory"].origin) == (
        24 * GIB,
        "jdl:MemorySize",
    )
    with pytest.raises(PolicyRejection, match="above the site maximum 32"):
        compose(policy, job('CPUCores = "8"; MemorySize = "40GB";'))
    slot = compose(policy, job('CPUCores = "8";'), {"Memory": 10 * 1024, "CPUCores": 8})
    assert slot["limits.memory"].value == 10 * GIB
    off = per_core_policy(tmp_path, "false")
    assert compose(off, job('CPUCores = "8";'))["limits.memory"].value == 2 * GIB
