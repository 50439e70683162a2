"""``sandbox-agent policy explain|lint|diff``: the installed console script, run as a user
runs it (a subprocess, never an in-process runner), against a private policy directory.

SANDBOX_AGENT_POLICIES points at a copy of the shipped policies in tmp_path, with the
seccomp profile from ``tests/policy/fixtures/seccomp_good.json``, so nothing here
depends on the shipped profile; SANDBOX_AGENT_HOME is a private state directory (its
``certs`` is the agent credential path the policy denies).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from cli_support import ROOT, SCRIPT, assert_no_traceback, cli_env, run_cli

SHIPPED = ROOT / "policies"
PROFILE = ROOT / "tests" / "policy" / "fixtures" / "seccomp_good.json"
PRODUCTION = ROOT / "tests" / "jdl" / "corpus" / "valid" / "production_mc.jdl"
SHIPPED_NAMES = sorted(p.stem for p in SHIPPED.glob("*.toml"))
SHIPPED_TEXT = {name: (SHIPPED / f"{name}.toml").read_text() for name in SHIPPED_NAMES}


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    (directory / "seccomp").mkdir(parents=True)
    for path in SHIPPED.glob("*.toml"):
        shutil.copy(path, directory / path.name)
    shutil.copy(PROFILE, directory / "seccomp" / "default.json")
    return directory


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cli(policies: Path, home: Path):  # type: ignore[no-untyped-def]
    env = cli_env(home, SANDBOX_AGENT_POLICIES=str(policies))

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return run_cli(env, *args)

    return run


def write(directory: Path, name: str, body: str) -> str:
    text = textwrap.dedent(body).lstrip()
    (directory / name).write_text(text)
    return text


def line_of(text: str, needle: str) -> int:
    (line,) = [n for n, row in enumerate(text.splitlines(), 1) if needle in row]
    return line


def rows(stdout: str) -> dict[str, dict]:  # type: ignore[type-arg]
    return {row["key"]: row for row in json.loads(stdout)["rows"]}


# -- policy explain ----------------------------------------------------------------------------


def test_script_is_installed() -> None:
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK)


def test_explain_text(cli, home: Path) -> None:
    result = cli("policy", "explain")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "policy default (base.toml <- default.toml)"
    assert "[namespaces]" in lines and "[limits]" in lines
    assert [str(home / "certs"), "agent:credentials"] in [line.split() for line in lines]
    (memory,) = [line for line in lines if line.startswith("  memory ")]
    assert memory.split()[1] == "2GB"
    assert (
        memory.split()[2] == f"policies/default.toml:{line_of(SHIPPED_TEXT['default'], 'memory =')}"
    )


def test_explain_json(cli, policies: Path, home: Path) -> None:
    result = cli("policy", "explain", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "sandbox-agent/policy-explain"
    assert document["version"] == 1
    assert document["policy"] == "default"
    assert document["job"] is None
    assert document["files"] == [str(policies / "base.toml"), str(policies / "default.toml")]
    deny = rows(result.stdout)["filesystem.deny"]
    assert {"value": str(home / "certs"), "origin": "agent:credentials"} in deny["items"]


def test_explain_another_policy_by_path(cli, policies: Path) -> None:
    result = cli("policy", "explain", "--json", "--policy", policies / "strict.toml")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policy"] == "strict"
    assert rows(result.stdout)["limits.memory"]["max"] == 1024**3


def test_explain_production_jdl_under_strict_is_rejected(cli) -> None:
    result = cli("policy", "explain", PRODUCTION.relative_to(ROOT), "--policy", "strict")
    assert result.returncode == 1
    assert_no_traceback(result)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("rejected: CPUCores 8 is above the site maximum 1")
    assert "limits.cpu_cores.max" in lines[0]


def test_explain_production_jdl_under_default(cli) -> None:
    result = cli("policy", "explain", "--json", PRODUCTION.relative_to(ROOT))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["job"] == str(PRODUCTION.relative_to(ROOT))
    table = rows(result.stdout)
    assert (table["limits.cpu_cores"]["value"], table["limits.cpu_cores"]["origin"]) == (
        8,
        "jdl:CPUCores",
    )
    assert (table["limits.memory"]["value"], table["limits.memory"]["origin"]) == (
        8 * 1024**3,
        "jdl:MemorySize",
    )
    assert table["limits.wall_time"]["value"] == 80000  # the later, duplicate TTL wins


def test_explain_jdl_read_only_bind(cli, tmp_path: Path) -> None:
    jdl = tmp_path / "cvmfs.jdl"
    jdl.write_text('Executable = "/bin/true";\nReadOnlyBinds = {"/cvmfs/alice.cern.ch"};\n')
    result = cli("policy", "explain", "--json", jdl)
    assert result.returncode == 0, result.stderr
    read_only = rows(result.stdout)["filesystem.read_only"]
    assert {"value": "/cvmfs/alice.cern.ch", "origin": "jdl:ReadOnlyBinds"} in read_only["items"]
    text = cli("policy", "explain", jdl)
    assert text.returncode == 0, text.stderr
    shown = [line for line in text.stdout.splitlines() if "/cvmfs/alice.cern.ch" in line]
    assert len(shown) == 1 and shown[0].split()[-1] == "jdl:ReadOnlyBinds"


@pytest.mark.parametrize(
    ("policy", "binds", "reason"),
    [
        ("default", '{"/home/x"}', "ReadOnlyBinds: '/home/x' is not under a root the site allows"),
        ("default", '{"cvmfs/x"}', "ReadOnlyBinds: 'cvmfs/x' must be an absolute path"),
        ("default", '{"/cvmfs/../home"}', "must be an absolute path without '..'"),
        ("strict", '{"/cvmfs/alice.cern.ch"}', "(this policy allows no extra binds)"),
    ],
    ids=["outside the roots", "relative", "dot-dot", "strict allows none"],
)
def test_explain_jdl_read_only_bind_rejected(
    cli, tmp_path: Path, policy: str, binds: str, reason: str
) -> None:
    jdl = tmp_path / "bind.jdl"
    jdl.write_text(f'Executable = "/bin/true";\nReadOnlyBinds = {binds};\n')
    result = cli("policy", "explain", jdl, "--policy", policy)
    assert result.returncode == 1
    assert_no_traceback(result)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("rejected: ReadOnlyBinds")
    assert reason in lines[0]


def test_explain_jdl_bind_cannot_reach_the_agent_credentials(
    cli, policies: Path, tmp_path: Path, home: Path
) -> None:
    write(policies, "open.toml", 'extends = "default"\n[filesystem]\njdl_read_only_roots = ["/"]\n')
    jdl = tmp_path / "steal.jdl"
    jdl.write_text(f'Executable = "/bin/true";\nReadOnlyBinds = {{"{home}"}};\n')
    result = cli("policy", "explain", jdl, "--policy", "open")
    assert result.returncode == 1
    assert_no_traceback(result)
    (line,) = result.stderr.splitlines()
    assert line.startswith("rejected: ReadOnlyBinds: '")
    assert line.endswith(
        f"': reaches {home / 'certs'}, a credential (or the agent's own "
        "state) no job may read; ask for a path that reaches none"
    )


# -- policy lint -------------------------------------------------------------------------------


def test_lint_clean_policies(cli) -> None:
    result = cli("policy", "lint", "base", "default", "strict")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["3 policies: 0 error(s), 0 warning(s)"]


def test_lint_every_policy_by_default(cli) -> None:
    """Without names, every policy of the directories: warnings (the GPU devices) only."""
    result = cli("policy", "lint")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith(f"{len(SHIPPED_NAMES)} policies: 0 error(s), ")
    assert all(": warning: " in line for line in result.stdout.splitlines()[:-1])


def test_lint_bad_policy(cli, policies: Path) -> None:
    text = write(
        policies,
        "bad.toml",
        """
        extends = "base"

        [process]
        capabilities = ["CAP_SYS_ADMIN"]

        [network]
        mode = "host"
        """,
    )
    result = cli("policy", "lint", "bad")
    assert result.returncode == 1
    assert_no_traceback(result)
    base_net = f"policies/base.toml:{line_of(SHIPPED_TEXT['base'], 'net = ')}"
    assert result.stdout.splitlines() == [
        f"policies/bad.toml:{line_of(text, 'capabilities')}: error: process.capabilities grants "
        "CAP_SYS_ADMIN; payloads should keep none [capability]",
        f"policies/bad.toml:{line_of(text, 'mode')}: error: network.mode is host but "
        f"namespaces.net is required ({base_net}): host shares the node's network namespace, a "
        'contradiction the bwrap renderer refuses; set namespaces.net = "off" (or network.mode '
        '= "egress") [network-namespace]',
        f"policies/bad.toml:{line_of(text, 'mode')}: warning: network.mode is host: the payload "
        "shares the node's network: every service listening on the node, its loopback included, "
        "the cloud metadata address 169.254.169.254, and anything the node can reach; "
        'network.mode = "egress" lets jobs reach only what network.allow names [host-network]',
        "1 policy: 2 error(s), 1 warning(s)",
    ]
    by_path = cli("policy", "lint", policies / "bad.toml", "strict")
    assert by_path.returncode == 1
    assert by_path.stdout.splitlines()[-1] == "2 policies: 2 error(s), 1 warning(s)"


def test_lint_json(cli, policies: Path) -> None:
    text = write(policies, "bad.toml", 'extends = "base"\n\n[namespaces]\nuts = "off"\n')
    result = cli("policy", "lint", "--json", "bad", "base")
    assert result.returncode == 0  # a warning only
    report = json.loads(result.stdout)
    assert report == {
        "bad": [
            {
                "severity": "warning",
                "rule": "namespace-off",
                "where": f"policies/bad.toml:{line_of(text, 'uts')}",
                "message": "namespaces.uts is off: the payload shares the host's uts namespace",
            }
        ],
        "base": [],
    }


def test_lint_seccomp_profile_missing(cli, policies: Path) -> None:
    (policies / "seccomp" / "default.json").unlink()
    result = cli("policy", "lint", "base")
    assert result.returncode == 1
    assert_no_traceback(result)
    line = f"policies/base.toml:{line_of(SHIPPED_TEXT['base'], 'seccomp =')}: error: "
    assert result.stdout.startswith(line)
    assert "cannot read the seccomp profile" in result.stdout
    assert "[seccomp-profile]" in result.stdout


def test_lint_malformed_profile_is_a_finding_not_a_traceback(cli, policies: Path) -> None:
    profile = json.loads(PROFILE.read_text())
    profile["architectures"] = None
    (policies / "seccomp" / "default.json").write_text(json.dumps(profile))
    result = cli("policy", "lint", "base")
    assert_no_traceback(result)
    assert result.returncode == 1
    assert "[seccomp-profile]" in result.stdout


# -- policy diff -------------------------------------------------------------------------------


EGRESS = """
    extends = "base"

    [network]
    mode = "egress"
    allow = ["xrootd.example.org:1094", "127.0.0.1:8080"]
    proxy = "http://squid.example.org:3128"
"""


def test_explain_lint_and_diff_an_egress_policy(cli, policies: Path) -> None:
    text = write(policies, "egress.toml", EGRESS)
    at = f"policies/egress.toml:{line_of(text, 'allow')}"
    explained = cli("policy", "explain", "--policy", "egress")
    assert explained.returncode == 0, explained.stderr
    lines = explained.stdout.splitlines()
    network = lines[lines.index("[network]") + 1 : lines.index("[optional]")]
    assert network[0].split() == ["mode", "egress", f"policies/egress.toml:{line_of(text, 'mode')}"]
    assert ["xrootd.example.org:1094", at] in [line.split() for line in network]
    said = " ".join(" ".join(network).split())
    assert (
        "reachable: DNS, through the agent's resolver; over TCP, xrootd.example.org:1094 " in said
    )
    assert "the proxy squid.example.org:3128 (network.proxy)" in said
    assert "closed whatever the lists say: this node's own addresses" in said
    assert "named but never reached: 127.0.0.1:8080 (inside 127.0.0.0/8)" in said
    document = json.loads(cli("policy", "explain", "--json", "--policy", "egress").stdout)
    allow = {r["key"]: r for r in document["rows"]}["network.allow"]
    assert allow["items"][0] == {"value": "xrootd.example.org:1094", "origin": at}

    linted = cli("policy", "lint", "egress")
    assert linted.returncode == 0  # a warning only
    assert linted.stdout.splitlines() == [
        f"{at}: warning: network.allow '127.0.0.1:8080' can never be reached, whatever the lists "
        "say (inside 127.0.0.0/8): remove it [allow-never-reachable]",
        "1 policy: 0 error(s), 1 warning(s)",
    ]

    diffed = cli("policy", "diff", "strict", "egress")
    assert diffed.returncode == 0, diffed.stderr
    assert f"  + may connect to xrootd.example.org:1094  [network.allow, {at}]" in (
        diffed.stdout.splitlines()
    )


def test_diff_default_gpu(cli) -> None:
    result = cli("policy", "diff", "default", "gpu")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("gpu allows, default does not:")
    end = lines.index("default allows, gpu does not:")
    wider = [re.sub(r"  \[.*\]$", "", line) for line in lines[start + 1 : end]]
    assert sorted(wider) == sorted(
        [
            "  + gets nvidia GPUs",
            "  + binds the device /dev/nvidiactl",
            "  + binds the device /dev/nvidia-uvm",
            "  + binds the device /dev/nvidia-uvm-tools",
            "  + binds the device /dev/nvidia0",
            "  + reads the host path /etc/OpenCL",
            "  + limits.memory.max 16GB -> 64GB",
            "  + limits.memory.default 2GB -> 8GB",
        ]
    )
    gpu_line = line_of(SHIPPED_TEXT["gpu"], "gpu =")
    assert f"  + gets nvidia GPUs  [devices.gpu, policies/gpu.toml:{gpu_line}]" in lines
    assert lines[end + 1 :] == ["  (nothing)"]


def test_diff_json(cli) -> None:
    result = cli("policy", "diff", "--json", "gpu", "default")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["a"], document["b"]) == ("gpu", "default")
    assert document["b_allows"] == []
    assert {w["key"] for w in document["a_allows"]} == {
        "devices.gpu",
        "devices.paths",
        "filesystem.read_only",
        "limits.memory.max",
        "limits.memory.default",
    }


def test_diff_same_policy(cli) -> None:
    result = cli("policy", "diff", "strict", "strict")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "strict allows, strict does not:",
        "  (nothing)",
        "strict allows, strict does not:",
        "  (nothing)",
    ]


# -- hostile policy files ----------------------------------------------------------------------

HOSTILE = [
    pytest.param('extends = "base"\n\n[process]\nno_new_privileges = false\n',
                 "no_new_privileges", "unknown key 'process.no_new_privileges'", id="unknown key"),
    pytest.param('extends = "base"\n[filesystem.nowhere]\npath = "/x"\n',
                 "[filesystem.nowhere]", "unknown key 'filesystem.nowhere'", id="unknown table"),
    pytest.param('extends = "base"\n\n[process]\nuid = "root"\n',
                 "uid", "process.uid must be a whole number", id="wrong type"),
    pytest.param('extends = "base"\n\n[namespaces]\nnet = "maybe"\n',
                 "net =", "namespaces.net must be one of", id="wrong choice"),
    pytest.param('extends = "base"\n\n[filesystem]\nread_only = ["usr/lib"]\n',
                 "read_only", "must be an absolute path", id="relative path"),
    pytest.param('extends = "base"\n\n[filesystem]\nread_only = ["/usr/../etc"]\n',
                 "read_only", "must not contain '..'", id="dot-dot path"),
    pytest.param('extends = "base"\n\n[process]\nseccomp = "../../etc/profile.json"\n',
                 "seccomp", "process.seccomp names a profile inside", id="profile outside"),
    pytest.param('description = "escape"\nextends = "../x"\n',
                 "extends", "extends takes a policy name", id="extends ../x"),
    pytest.param('extends = "/etc/passwd"\n',
                 "extends", "extends takes a policy name", id="extends absolute"),
    pytest.param('extends = "nothere"\n',
                 "extends", "extends 'nothere', but", id="extends missing"),
    pytest.param('description = "loop"\nextends = "loop"\n', "extends", "extends makes a cycle",
                 id="extends cycle"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "needle", "problem"), HOSTILE)
@pytest.mark.parametrize("command", ["explain", "lint", "diff"])
def test_hostile_policy(
    cli, policies: Path, command: str, text: str, needle: str, problem: str
) -> None:
    write(policies, "hostile.toml", text)
    # the cycle case: hostile -> loop -> hostile
    write(policies, "loop.toml", 'extends = "hostile"\n')
    args = {
        "explain": ["explain", "--policy", "hostile"],
        "lint": ["lint", "hostile"],
        "diff": ["diff", "default", "hostile"],
    }[command]
    result = cli("policy", *args)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    match = re.search(r"(\S*hostile\.toml|\S*loop\.toml):(\d+): ", lines[0])
    assert match, lines[0]
    if match.group(1).endswith("hostile.toml"):
        assert int(match.group(2)) == line_of(text, needle)
    assert problem in lines[0]


def test_invalid_toml(cli, policies: Path) -> None:
    write(policies, "hostile.toml", 'extends = "base"\n[process\nuid = 5\n')
    result = cli("policy", "lint", "hostile")
    assert result.returncode == 2
    assert_no_traceback(result)
    (line,) = result.stderr.splitlines()
    assert "hostile.toml: not valid TOML" in line
    assert "line 2" in line


def test_unknown_policy_name(cli) -> None:
    result = cli("policy", "explain", "--policy", "nosuch")
    assert result.returncode == 2
    assert_no_traceback(result)
    (line,) = result.stderr.splitlines()
    assert "no policy named 'nosuch'" in line


def test_explain_with_a_runtime_says_how_each_requirement_is_met(cli, policies: Path) -> None:
    result = cli("policy", "explain", "--runtime", "bwrap")
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("[enforced by bwrap]", 1)[1]
    assert "namespaces.user              --unshare-user" in section
    assert "process.seccomp              --seccomp 10" in section


def test_explain_with_a_runtime_that_cannot_enforce_exits_3(cli, policies: Path) -> None:
    result = cli("policy", "explain", "--runtime", "docker", "--json")
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert report["runtime"]["name"] == "docker"
    assert report["runtime"]["refused"].startswith("cannot enforce with docker: filesystem.image")
    assert result.stderr.strip() == report["runtime"]["refused"]


def test_render_shows_what_each_runtime_is_given(cli, policies: Path) -> None:
    shutil.copy(ROOT / "tests" / "runtime" / "policies" / "images.toml", policies)
    result = cli("policy", "render", "samples/hello.jdl", "--runtime", "apptainer",
                 "--policy", "images", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["runtime"] == "apptainer"
    assert plan["agent_files"] == {"confine.py": "confine", "seccomp.bpf": "seccomp"}
    assert "<agent files>:/.sandbox-agent:ro" in plan["argv"]
    text = cli("policy", "render", "samples/hello.jdl", "--runtime", "apptainer", "--policy",
               "images").stdout  # fmt: skip
    assert "<agent files>/seccomp.bpf: the seccomp program compiled from the profile" in text
    bwrap = json.loads(cli("policy", "render", "samples/hello.jdl", "--json").stdout)
    # the default policy's egress adds the pipe bwrap waits on until the network is plumbed
    assert bwrap["agent_files"] == {} and set(bwrap["fds"]) == {"10", "11", "12", "13", "14"}
