"""explain: the effective policy as rows a reviewer reads (text) or a program reads (JSON),
every key once, every value with its origin, list items each with their own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from sandbox_agent import hostfacts
from sandbox_agent.jdl import load_job
from sandbox_agent.jdl.units import GIB, MIB
from sandbox_agent.policy import EffectivePolicy, compose, load_policy
from sandbox_agent.policy.destinations import ALWAYS_DENIED
from sandbox_agent.policy.explain import SECTIONS, explain_json, explain_text, network_reach, rows
from sandbox_agent.policy.schema import FIELDS, LIMITS, LIST_KINDS, Kind

FOUND = hostfacts.facts()  # this host, as `policy explain` reads it

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
FIXTURES = Path(__file__).parent / "fixtures"
BASE_TEXT = (SHIPPED / "base.toml").read_text()
DEFAULT_TEXT = (SHIPPED / "default.toml").read_text()
GPU_TEXT = (SHIPPED / "gpu.toml").read_text()
STRICT_TEXT = (SHIPPED / "strict.toml").read_text()
CREDENTIALS = ["/srv/agent/certs", "/srv/agent/tokens/"]

# Every schema key but the policy's own description; a limit as one row limits.<name>.
ROW_KEYS = {k for k in FIELDS if k != "description" and not k.startswith("limits.")} | {
    f"limits.{name}" for name in LIMITS
}


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    directory = tmp_path / "pol"
    (directory / "seccomp").mkdir(parents=True)
    for path in SHIPPED.glob("*.toml"):
        shutil.copy(path, directory / path.name)
    shutil.copy(FIXTURES / "seccomp_good.json", directory / "seccomp" / "default.json")
    return directory


def line_of(text: str, needle: str) -> int:
    (line,) = [n for n, row in enumerate(text.splitlines(), 1) if needle in row]
    return line


def origin(name: str, text: str, needle: str) -> str:
    return f"pol/{name}.toml:{line_of(text, needle)}"


def job(body: str):  # type: ignore[no-untyped-def]
    return load_job('Executable = "/bin/true";\nTTL = 3600;\n' + body)


def effective(
    directory: Path, name: str = "default", body: str | None = None, **kwargs: Any
) -> EffectivePolicy:
    spec = job(body) if body is not None else None
    return compose(load_policy(name, [directory]), spec, **kwargs)


def by_key(explained: EffectivePolicy) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in rows(explained)}


# -- the JSON form -----------------------------------------------------------------------------


def test_json_envelope(pdir: Path) -> None:
    document = explain_json(effective(pdir, "gpu"), "job.jdl", FOUND)
    assert set(document) == {"schema", "version", "policy", "files", "job", "rows", "host"}
    assert document["schema"] == "sandbox-agent/policy-explain"
    assert document["version"] == 1
    assert document["policy"] == "gpu"
    assert document["files"] == [str(pdir / f"{n}.toml") for n in ("base", "default", "gpu")]
    assert document["job"] == "job.jdl"
    assert explain_json(effective(pdir), None, FOUND)["job"] is None
    assert json.loads(json.dumps(document)) == document  # plain JSON all the way down


@pytest.mark.parametrize("name", ["base", "default", "strict", "gpu"])
def test_every_key_appears_once(pdir: Path, name: str) -> None:
    keys = [row["key"] for row in rows(effective(pdir, name))]
    assert len(keys) == len(set(keys))
    assert set(keys) == ROW_KEYS


def test_rows_follow_the_sections(pdir: Path) -> None:
    got = rows(effective(pdir))
    order = [section for section, _ in SECTIONS]
    assert order == ["namespaces", "filesystem", "images", "devices", "process", "limits",
                     "outputs", "disk", "network", "optional"]  # fmt: skip
    seen = [row["section"] for row in got]
    assert sorted(seen, key=order.index) == seen
    for row in got:
        assert row["key"].startswith(row["section"] + ".")
        assert {"section", "key", "value", "shown", "origin", "optional"} <= set(row)


def test_limit_rows_carry_enforcement_and_max(pdir: Path) -> None:
    table = by_key(effective(pdir))
    memory = table["limits.memory"]
    assert memory["value"] == 2 * GIB
    assert memory["shown"] == "2GB"
    assert memory["max"] == 16 * GIB
    assert memory["enforcement"] == "kernel"
    assert memory["origin"] == origin("default", DEFAULT_TEXT, "memory =")
    wall = table["limits.wall_time"]
    assert (wall["value"], wall["max"], wall["enforcement"]) == (3600, 172800, "monitored")
    assert wall["shown"] == "3600 s"
    swap = table["limits.swap"]
    assert (swap["value"], swap["max"]) == (0, 0)
    assert swap["origin"] == origin("base", BASE_TEXT, "swap =")
    for name in LIMITS:
        assert {"enforcement", "max"} <= set(table[f"limits.{name}"])
    for key, row in table.items():
        if not key.startswith("limits."):
            assert "enforcement" not in row and "max" not in row


def test_scalar_origins_are_file_lines(pdir: Path) -> None:
    table = by_key(effective(pdir, "gpu"))
    assert table["namespaces.cgroup"]["origin"] == origin("base", BASE_TEXT, "cgroup =")
    assert table["devices.gpu"]["origin"] == origin("gpu", GPU_TEXT, "gpu =")
    assert table["process.rlimits.nofile"]["origin"] == origin("default", DEFAULT_TEXT, "nofile")
    assert table["process.rlimits.nofile"]["value"] == 4096
    assert table["network.mode"]["origin"] == origin("default", DEFAULT_TEXT, "mode =")
    assert table["network.allow"]["origin"] == origin("default", DEFAULT_TEXT, "allow =")


def test_builtin_origin_for_keys_no_file_sets(pdir: Path) -> None:
    (pdir / "bare.toml").write_text('description = "nothing else"\n')
    table = by_key(effective(pdir, "bare"))
    assert table["namespaces.user"]["origin"] == "builtin"
    assert table["namespaces.user"]["value"] == "required"
    assert table["limits.memory"]["origin"] == "builtin"
    assert table["filesystem.deny"]["value"] == []
    assert table["filesystem.deny"]["shown"] == "(none)"


def test_every_list_row_has_items(pdir: Path) -> None:
    lists = {k for k, f in FIELDS.items() if f.kind in LIST_KINDS or f.kind is Kind.MAPPING}
    table = by_key(effective(pdir))
    assert all(isinstance(table[key].get("items"), list) for key in lists)


def test_list_items_carry_their_own_origins(pdir: Path) -> None:
    table = by_key(effective(pdir, "gpu"))
    read_only = table["filesystem.read_only"]
    gpu_line = origin("gpu", GPU_TEXT, "read_only")
    assert read_only["items"] == [
        {"value": "/usr/lib/x86_64-linux-gnu/nvidia", "origin": gpu_line},
        {"value": "/etc/OpenCL", "origin": gpu_line},
    ]
    assert read_only["value"] == ["/usr/lib/x86_64-linux-gnu/nvidia", "/etc/OpenCL"]
    userland = table["filesystem.host_userland"]
    assert {i["origin"] for i in userland["items"]} == {origin("base", BASE_TEXT, "host_userland")}
    assert "/usr" in userland["value"]
    tmpfs = table["filesystem.tmpfs"]
    assert tmpfs["items"] == [
        {"value": ["/tmp", GIB], "origin": origin("default", DEFAULT_TEXT, "tmpfs")}
    ]
    assert tmpfs["shown"] == "/tmp (1GB)"
    environment = table["process.environment.set"]
    assert environment["items"] == [
        {"value": ["PATH", "/usr/local/bin:/usr/bin:/bin"],
         "origin": origin("base", BASE_TEXT, "set =")}
    ]  # fmt: skip


def test_appended_items_keep_the_parent_origin(pdir: Path) -> None:
    (pdir / "site.toml").write_text(
        'extends = "default"\n\n[filesystem]\ndeny = { append = ["/srv/private"] }\n'
    )
    items = by_key(effective(pdir, "site"))["filesystem.deny"]["items"]
    assert items[0] == {"value": "/root", "origin": origin("base", BASE_TEXT, "deny = [")}
    assert items[-1] == {"value": "/srv/private", "origin": "pol/site.toml:4"}


# -- origins from the job, the slot and the agent ----------------------------------------------


def test_jdl_requests_show_jdl_origins(pdir: Path) -> None:
    body = 'MemorySize = "8GB";\nCPUCores = 4;\nWorkDirectorySize = {"6000MB"};\nTTL = 7200;\n'
    table = by_key(effective(pdir, "default", body))
    assert (table["limits.memory"]["value"], table["limits.memory"]["origin"]) == (
        8 * GIB,
        "jdl:MemorySize",
    )
    assert table["limits.memory"]["max"] == 16 * GIB
    assert (table["limits.cpu_cores"]["value"], table["limits.cpu_cores"]["origin"]) == (
        4,
        "jdl:CPUCores",
    )
    assert table["limits.workdir_size"]["origin"] == "jdl:WorkDirectorySize"
    assert table["limits.workdir_size"]["value"] == 6000 * MIB
    assert (table["limits.wall_time"]["value"], table["limits.wall_time"]["origin"]) == (
        7200,
        "jdl:TTL",
    )
    # pids is not a JDL request: the site's default
    assert table["limits.pids"]["origin"] == origin("default", DEFAULT_TEXT, "pids =")


def test_jdl_read_only_binds_show_their_origin(pdir: Path) -> None:
    table = by_key(effective(pdir, "default", 'ReadOnlyBinds = {"/cvmfs/alice.cern.ch"};\n'))
    read_only = table["filesystem.read_only"]
    assert read_only["items"] == [{"value": "/cvmfs/alice.cern.ch", "origin": "jdl:ReadOnlyBinds"}]
    assert read_only["origin"] == "jdl:ReadOnlyBinds"


def test_slot_caps_show_the_slot(pdir: Path) -> None:
    table = by_key(effective(pdir, "default", "", slot={"Memory": 1024}))
    assert (table["limits.memory"]["value"], table["limits.memory"]["origin"]) == (
        1024 * MIB,
        "slot:Memory",
    )


def test_agent_credentials_are_denied_items(pdir: Path) -> None:
    table = by_key(effective(pdir, credentials=CREDENTIALS))
    deny = table["filesystem.deny"]
    base_deny = origin("base", BASE_TEXT, "deny = [")
    assert deny["items"][-2:] == [
        {"value": "/srv/agent/certs", "origin": "agent:credentials"},
        {"value": "/srv/agent/tokens", "origin": "agent:credentials"},
    ]
    assert {i["origin"] for i in deny["items"][:-2]} == {base_deny}
    assert deny["origin"] == base_deny
    assert "/srv/agent/certs" in deny["value"]


def test_optional_flags(pdir: Path) -> None:
    table = by_key(effective(pdir))
    assert {key for key, row in table.items() if row["optional"]} == {
        "process.landlock",
        "namespaces.cgroup",
        "limits.workdir_size",
    }
    # strict names nothing optional; the cgroup namespace it inherits at level "optional"
    # is optional all the same (the gate's rule)
    strict = {row["key"] for row in rows(effective(pdir, "strict")) if row["optional"]}
    assert strict == {"namespaces.cgroup"}


def test_optional_limit(pdir: Path) -> None:
    (pdir / "site.toml").write_text(
        'extends = "default"\n\n[optional]\nrequirements = { append = ["limits.swap"] }\n'
    )
    assert by_key(effective(pdir, "site"))["limits.swap"]["optional"] is True


def test_wall_time_without_ttl_is_the_site_default(pdir: Path) -> None:
    spec = load_job('Executable = "/bin/true";\n')
    table = by_key(compose(load_policy("strict", [pdir]), spec))
    assert table["limits.wall_time"]["origin"] == origin("strict", STRICT_TEXT, "wall_time =")
    assert table["limits.wall_time"]["value"] == 1800


# -- the text form -----------------------------------------------------------------------------


def test_text_header_and_sections(pdir: Path) -> None:
    text = explain_text(effective(pdir, "gpu"), None, FOUND).splitlines()
    assert text[0] == "policy gpu (base.toml <- default.toml <- gpu.toml)"
    headers = [line for line in text if line.startswith("[")]
    assert headers[:-1] == [f"[{section}]" for section, _ in SECTIONS]
    assert headers[-1].startswith("[this host]")
    with_job = explain_text(effective(pdir, "default"), "jobs/x.jdl", FOUND).splitlines()
    assert with_job[0] == "policy default (base.toml <- default.toml), job jobs/x.jdl"


def test_text_has_a_line_for_every_key(pdir: Path) -> None:
    text = explain_text(effective(pdir), None, FOUND).split("\n[this host]")[0]
    lines = text.splitlines()
    named = {line.split()[0] for line in lines if line.startswith("  ") and line[2] != " "}
    assert named == {key.split(".", 1)[1] for key in ROW_KEYS}


def test_text_list_items_each_on_a_line_with_origin(pdir: Path) -> None:
    explained = effective(pdir, "gpu", credentials=CREDENTIALS)
    lines = explain_text(explained, None, FOUND).splitlines()
    item_lines = [line.split() for line in lines if line.startswith("      ")]
    for key in ("filesystem.deny", "filesystem.host_userland", "filesystem.read_only",
                "devices.paths"):  # fmt: skip
        for item in explained[key].value:
            assert [item.value, item.origin] in item_lines, f"{key}: {item}"
    assert ["/srv/agent/certs", "agent:credentials"] in item_lines
    assert ["/dev/nvidia0", origin("gpu", GPU_TEXT, "paths")] in item_lines
    # the key's own line carries the setting's origin (network has a deny of its own)
    filesystem = lines[lines.index("[filesystem]") : lines.index("[images]")]
    (deny,) = [line for line in filesystem if line.startswith("  deny ")]
    assert deny.split() == ["deny", origin("base", BASE_TEXT, "deny = [")]


def test_text_limits_and_flags(pdir: Path) -> None:
    explained = effective(pdir, "default", 'MemorySize = "8GB";\n')
    lines = explain_text(explained, None, FOUND).splitlines()
    (memory,) = [line for line in lines if line.startswith("  memory ")]
    assert memory.split() == ["memory", "8GB", "jdl:MemorySize", "(kernel,", "max", "16GB)"]
    (wall,) = [line for line in lines if line.startswith("  wall_time ")]
    assert wall.endswith("(monitored, max 172800 s)")
    (landlock,) = [line for line in lines if line.startswith("  landlock ")]
    assert landlock.split() == [
        "landlock",
        "required",
        origin("base", BASE_TEXT, "landlock ="),
        "(optional)",
    ]
    (tmpfs,) = [line for line in lines if line.startswith("  tmpfs ")]
    assert tmpfs.split() == ["tmpfs", "/tmp", "(1GB)", origin("default", DEFAULT_TEXT, "tmpfs")]
    (writable,) = [line for line in lines if line.startswith("  writable ")]
    assert writable.split()[1] == "(none)"


def test_text_single_item_shows_its_own_origin(pdir: Path) -> None:
    (pdir / "site.toml").write_text('extends = "base"\n\n[filesystem]\ndeny = []\n')
    explained = effective(pdir, "site", credentials=["/srv/agent/certs"])
    lines = explain_text(explained, None, FOUND).splitlines()
    shown = [line for line in lines if "/srv/agent/certs" in line]
    assert len(shown) == 1
    assert "agent:credentials" in shown[0]


# -- the network -------------------------------------------------------------------------------

EGRESS_SITE = """\
extends = "base"

[network]
mode = "egress"
allow = ["xrootd.example.org:1094", "10.1.0.0/16"]
deny = ["10.1.99.0/24"]
proxy = "http://squid.example.org:3128"
"""


def egress_site(pdir: Path, text: str = EGRESS_SITE) -> EffectivePolicy:
    (pdir / "site.toml").write_text(text)
    return effective(pdir, "site")


def site_at(needle: str, text: str = EGRESS_SITE) -> str:
    return origin("site", text, needle)


def network_lines(explained: EffectivePolicy) -> list[str]:
    """The text form's [network] section, up to the next one."""
    lines = explain_text(explained, None, FOUND).splitlines()
    return lines[lines.index("[network]") + 1 : lines.index("[optional]") - 1]


def test_network_rows_carry_their_origins(pdir: Path) -> None:
    table = by_key(egress_site(pdir))
    assert (table["network.mode"]["value"], table["network.mode"]["origin"]) == (
        "egress", site_at("mode =")
    )  # fmt: skip
    assert table["network.allow"]["items"] == [
        {"value": "xrootd.example.org:1094", "origin": site_at("allow =")},
        {"value": "10.1.0.0/16", "origin": site_at("allow =")},
    ]
    assert table["network.allow"]["shown"] == "xrootd.example.org:1094, 10.1.0.0/16"
    assert table["network.deny"]["items"] == [
        {"value": "10.1.99.0/24", "origin": site_at("deny =")}
    ]
    proxy = table["network.proxy"]
    assert (proxy["value"], proxy["shown"], proxy["origin"]) == (
        "http://squid.example.org:3128", "http://squid.example.org:3128", site_at("proxy =")
    )  # fmt: skip
    assert all(table[k]["section"] == "network" for k in FIELDS if k.startswith("network."))


def test_network_rows_of_a_policy_that_sets_none(pdir: Path) -> None:
    table = by_key(effective(pdir, "base"))
    for key in ("network.allow", "network.deny"):
        assert (table[key]["value"], table[key]["items"]) == ([], [])
        assert (table[key]["shown"], table[key]["origin"]) == ("(none)", "builtin")
    assert (table["network.proxy"]["value"], table["network.proxy"]["shown"]) == ("", "(none)")
    assert table["network.proxy"]["origin"] == "builtin"


def test_appended_allow_entries_keep_each_origin(pdir: Path) -> None:
    (pdir / "parent.toml").write_text(EGRESS_SITE)
    child = 'extends = "parent"\n\n[network]\nallow = { append = ["192.0.2.7:443"] }\n'
    (pdir / "site.toml").write_text(child)
    items = by_key(effective(pdir, "site"))["network.allow"]["items"]
    assert items == [
        {"value": "xrootd.example.org:1094", "origin": origin("parent", EGRESS_SITE, "allow =")},
        {"value": "10.1.0.0/16", "origin": origin("parent", EGRESS_SITE, "allow =")},
        {"value": "192.0.2.7:443", "origin": "pol/site.toml:4"},
    ]
    lines = explain_text(effective(pdir, "site"), None, FOUND).splitlines()
    assert ["192.0.2.7:443", "pol/site.toml:4"] in [line.split() for line in lines]


def test_egress_says_what_is_reachable_and_what_is_closed(pdir: Path) -> None:
    said = network_reach(egress_site(pdir))
    assert said[0].startswith("egress: the job has a network namespace of its own")
    (reachable,) = [s for s in said if s.startswith("reachable: ")]
    assert reachable == (
        "reachable: DNS, through the agent's resolver; over TCP, xrootd.example.org:1094, "
        "10.1.0.0/16 (network.allow) except 10.1.99.0/24 (network.deny); names are resolved by "
        "the agent when each job starts; the proxy squid.example.org:3128 (network.proxy), "
        "whatever network.allow says"
    )
    assert (
        "the job gets network.proxy as http_proxy, https_proxy, HTTP_PROXY and HTTPS_PROXY" in said
    )
    (closed,) = [s for s in said if s.startswith("closed whatever the lists say: ")]
    assert "this node's own addresses, its loopback among them" in closed
    for network in ALWAYS_DENIED:
        assert str(network) in closed, network
    assert "169.254.169.254" in closed
    assert not any(s.startswith("named but never reached") for s in said)


def test_egress_names_entries_it_can_never_reach(pdir: Path) -> None:
    text = EGRESS_SITE.replace(
        '"10.1.0.0/16"', '"10.1.0.0/16", "169.254.169.254:80", "[2001:db8::1]:443"'
    )
    text = text.replace("squid.example.org", "127.0.0.1")
    said = network_reach(egress_site(pdir, text))
    (reachable,) = [s for s in said if s.startswith("reachable: ")]
    assert "169.254.169.254" not in reachable and "2001:db8" not in reachable
    assert "proxy" not in reachable
    assert said[-1] == (
        "named but never reached: 169.254.169.254:80 (inside 169.254.0.0/16), [2001:db8::1]:443 "
        "(IPv6, which egress mode does not carry), the proxy 127.0.0.1:3128 (inside 127.0.0.0/8)"
    )


def test_egress_with_nothing_allowed_reaches_dns_only(pdir: Path) -> None:
    said = network_reach(egress_site(pdir, 'extends = "base"\n[network]\nmode = "egress"\n'))
    assert said[1] == (
        "reachable: DNS, through the agent's resolver; nothing else, since network.allow opens "
        "nothing"
    )


def test_host_names_the_exposure(pdir: Path) -> None:
    (pdir / "site.toml").write_text(
        'extends = "base"\n[namespaces]\nnet = "off"\n[network]\nmode = "host"\n'
        'allow = ["10.0.0.0/8"]\n'
    )
    said = network_reach(effective(pdir, "site"))
    assert said[0] == (
        "host: the payload shares the node's network: every service listening on the node, its "
        "loopback included; the cloud metadata address 169.254.169.254; anything the node can "
        "reach"
    )
    assert said[1] == "network.allow: no effect, only egress mode reads it"
    assert not any(s.startswith(("reachable", "closed")) for s in said)


def test_none_reaches_nothing(pdir: Path) -> None:
    assert network_reach(effective(pdir, "base")) == [
        "none: the job has a network namespace of its own with its loopback only; it reaches "
        "nothing outside the sandbox"
    ]
    (pdir / "site.toml").write_text(
        'extends = "base"\n[network]\nproxy = "http://squid.example.org:3128"\n'
    )
    assert network_reach(effective(pdir, "site"))[1] == (
        "the job gets network.proxy as http_proxy, https_proxy, HTTP_PROXY and HTTPS_PROXY, but "
        "cannot reach it"
    )


def test_text_says_the_reach_under_the_network_rows(pdir: Path) -> None:
    explained = egress_site(pdir)
    lines = network_lines(explained)
    keys = [line.split()[0] for line in lines if line.startswith("  ") and line[2] != " "]
    assert keys == ["mode", "allow", "deny", "proxy"]
    (proxy,) = [line for line in lines if line.startswith("  proxy ")]
    notes = lines[lines.index(proxy) + 1 :]
    assert notes and all(line.startswith("    ") and len(line) <= 100 for line in notes)
    # each sentence wrapped, none lost: joined back, the words are the same
    assert " ".join(" ".join(notes).split()) == " ".join(" ".join(network_reach(explained)).split())
    # the section's key lines are still the ones the whole table names
    text = explain_text(explained, None, FOUND).split("\n[this host]")[0]
    named = {row.split()[0] for row in text.splitlines() if row.startswith("  ") and row[2] != " "}
    assert named == {key.split(".", 1)[1] for key in ROW_KEYS}


def test_json_has_the_network_rows_and_no_other_field(pdir: Path) -> None:
    document = explain_json(egress_site(pdir), None, FOUND)
    assert set(document) == {"schema", "version", "policy", "files", "job", "rows", "host"}
    network = {r["key"]: r for r in document["rows"] if r["section"] == "network"}
    assert set(network) == {"network.mode", "network.allow", "network.deny", "network.proxy"}
    assert network["network.allow"]["value"] == ["xrootd.example.org:1094", "10.1.0.0/16"]
    allowed = {"section", "key", "value", "shown", "origin", "optional", "items"}
    assert all(set(row) <= allowed for row in network.values())  # as the published schema says
