"""Composition, to the edges: a request or a slot exactly at a limit, where each value's
origin comes from when the site's default and maximum sit in different files, which
slot attributes count (and which do not), and the typed views the renderers read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandbox_agent.jdl import load_job
from sandbox_agent.jdl.units import GIB, MIB
from sandbox_agent.policy import PolicyRejection, compose, load_policy

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
DEFAULT = load_policy("default", [SHIPPED])


def job(body: str = ""):  # type: ignore[no-untyped-def]
    return load_job('Executable = "/bin/true";\n' + body)


def site(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    """A site policy extending the shipped default, in a file of its own."""
    shutil.copytree(SHIPPED, tmp_path / "policies")
    (tmp_path / "policies" / "site.toml").write_text('extends = "default"\n' + body)
    return load_policy("site", [tmp_path / "policies"])


def default_origin(name: str) -> str:
    return DEFAULT[f"limits.{name}.default"].origin


# --- requests and slots at the limit -------------------------------------------------


def test_a_request_equal_to_what_the_slot_has_is_granted() -> None:
    effective = compose(DEFAULT, job("CPUCores = 4;"), {"CPUCores": 4})
    assert effective.limit("cpu_cores") == 4
    assert effective["limits.cpu_cores"].origin == "jdl:CPUCores"


@pytest.mark.parametrize(
    ("body", "slot", "message"),
    [
        ('MemorySize = "4GB";', {"Memory": 2048},
         "MemorySize 4GB is more than this slot has (Memory = 2GB)"),
        ("TTL = 7200;", {"TTL": 3600}, "TTL 7200 s is more than this slot has (TTL = 3600 s)"),
        ('WorkDirectorySize = "20GB";', {"Disk": 10240},
         "WorkDirectorySize 20GB is more than this slot has (Disk = 10GB)"),
    ],
)  # fmt: skip
def test_a_request_over_the_slot_names_it_in_the_limits_unit(body, slot, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyRejection) as caught:
        compose(DEFAULT, job(body), slot)
    assert str(caught.value) == message


def test_a_request_over_the_maximum_names_it_in_the_limits_unit() -> None:
    with pytest.raises(PolicyRejection) as caught:
        compose(DEFAULT, job("CPUCores = 9;"))
    origin = DEFAULT["limits.cpu_cores.max"].origin
    assert str(caught.value) == (
        f"CPUCores 9 is above the site maximum 8 (limits.cpu_cores.max, {origin}); "
        "ask for at most that"
    )


def test_a_slot_equal_to_the_default_leaves_the_default_its_origin() -> None:
    effective = compose(DEFAULT, job(), {"Memory": 2048})  # 2 GiB: the default
    assert effective.limit("memory") == 2 * GIB
    assert effective["limits.memory"].origin == default_origin("memory")
    smaller = compose(DEFAULT, job(), {"Memory": 2047})
    assert smaller.limit("memory") == 2047 * MIB
    assert smaller["limits.memory"].origin == "slot:Memory"


@pytest.mark.parametrize(
    ("slot", "limit", "value"),
    [
        ({"CPUCores": 0}, "cpu_cores", 0),  # nothing left is an amount too
        ({"Disk": 100}, "workdir_size", 100 * MIB),  # megabytes
        ({"TTL": 600}, "wall_time", 600),  # seconds
        ({"Memory": 1.5}, "memory", int(1.5 * MIB)),
        ({"memory": 100}, "memory", 100 * MIB),  # ClassAd names: any case
        ({"CPUCORES": 1, "Memory": 300}, "memory", 300 * MIB),
    ],
)
def test_slot_attributes_cap_their_own_limit(slot, limit, value) -> None:  # type: ignore[no-untyped-def]
    effective = compose(DEFAULT, job(), slot)
    assert effective.limit(limit) == value
    assert effective[f"limits.{limit}"].origin.startswith("slot:")


@pytest.mark.parametrize("slot", [{"Memory": True}, {"Memory": "1024"}, {"Memory": None},
                                  {"Memroy": 10}, {"CPUCores": 1}])  # fmt: skip
def test_what_is_not_a_number_for_the_attribute_caps_nothing(slot) -> None:  # type: ignore[no-untyped-def]
    # a bool is an int to Python, never an amount; a misspelt name caps nothing
    effective = compose(DEFAULT, job(), slot)
    assert effective.limit("memory") == 2 * GIB
    assert effective["limits.memory"].origin == default_origin("memory")


def test_the_slot_range_ends_just_below_two_to_the_53() -> None:
    assert compose(DEFAULT, job(), {"TTL": 2**53 - 1}).limit("wall_time") == 3600
    with pytest.raises(PolicyRejection, match=r"^slot TTL = -0\.5 is not a usable amount$"):
        compose(DEFAULT, job(), {"TTL": -0.5})  # below zero, however little
    with pytest.raises(PolicyRejection) as caught:
        compose(DEFAULT, job(), {"TTL": 2**53})
    assert str(caught.value) == f"slot TTL = {2**53} is not a usable amount"


def test_without_a_slot_nothing_is_capped_by_one() -> None:
    for slot in (None, {}):
        effective = compose(DEFAULT, job("CPUCores = 8;"), slot)
        assert effective.limit("cpu_cores") == 8


def test_cores_and_wall_time_count_only_when_the_jdl_writes_them() -> None:
    # the spec has defaults for both; only what the JDL wrote is a request
    effective = compose(DEFAULT, job())
    for name in ("cpu_cores", "wall_time"):
        assert effective[f"limits.{name}"].origin == default_origin(name)
    assert effective.limit("cpu_cores") == 1 and effective.limit("wall_time") == 3600


# --- origins when the default and the maximum come from different files --------------


def test_a_maximum_below_the_default_wins_with_its_own_origin(tmp_path: Path) -> None:
    policy = site(tmp_path, '[limits.memory]\nmax = "1GB"\n')
    effective = compose(policy, job())
    assert effective.limit("memory") == GIB
    assert effective["limits.memory"].origin == policy["limits.memory.max"].origin
    assert effective["limits.memory"].origin.endswith("site.toml:3")


def test_a_maximum_equal_to_the_default_leaves_the_default_its_origin(tmp_path: Path) -> None:
    policy = site(tmp_path, '[limits.memory]\nmax = "2GB"\n')
    effective = compose(policy, job())
    assert effective.limit("memory") == 2 * GIB
    assert effective["limits.memory"].origin == policy["limits.memory.default"].origin
    assert effective["limits.memory"].origin.endswith(default_origin("memory").split("/")[-1])


# --- what compose keeps as it was ---------------------------------------------------


def test_without_binds_the_read_only_list_keeps_the_sites_origin() -> None:
    effective = compose(DEFAULT, job())
    assert effective["filesystem.read_only"] == DEFAULT["filesystem.read_only"]
    assert effective["filesystem.image"] == DEFAULT["filesystem.image"]


def test_credentials_join_the_deny_list_and_keep_its_origin() -> None:
    effective = compose(DEFAULT, job(), credentials=["/home/agent/certs", "/home/agent/x"])
    denied = effective["filesystem.deny"]
    assert denied.origin == DEFAULT["filesystem.deny"].origin
    site_denied = DEFAULT["filesystem.deny"].value
    assert denied.value[: len(site_denied)] == site_denied
    added = [(i.value, i.origin) for i in denied.value[-2:]]
    assert added == [("/home/agent/certs", "agent:credentials"),
                     ("/home/agent/x", "agent:credentials")]  # fmt: skip
    assert compose(DEFAULT)["filesystem.deny"] == DEFAULT["filesystem.deny"]


# --- the typed views the renderers read ---------------------------------------------


def test_the_typed_views_give_each_setting_as_its_type() -> None:
    effective = compose(DEFAULT, job())
    assert effective.value("process.environment.set") == {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    assert effective.mapping("process.environment.set") == {
        "PATH": "/usr/local/bin:/usr/bin:/bin"}  # fmt: skip
    assert effective.value("process.uid") == DEFAULT.value("process.uid")
    assert isinstance(effective.value("filesystem.deny"), list | tuple)
    assert effective.word("namespaces.net") == DEFAULT["namespaces.net"].value
    assert effective.flag("process.no_new_privs") is True
    assert effective.number("process.rlimits.nofile") == DEFAULT["process.rlimits.nofile"].value
    assert effective.strings("filesystem.jdl_read_only_roots") == tuple(
        i.value for i in DEFAULT["filesystem.jdl_read_only_roots"].value)  # fmt: skip
    assert effective.tmpfs() == (("/tmp", GIB),)
    assert effective.limit("pids") == 1024
    assert effective.policy is DEFAULT
