"""Loading policies: the shipped ones, extends and merging, and hostile files refused exactly."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sandbox_agent.policy import PolicyError, load, load_policy
from sandbox_agent.policy.lines import key_lines
from sandbox_agent.policy.load import policy_dirs
from sandbox_agent.policy.model import BUILTIN
from sandbox_agent.policy.schema import FIELDS

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def refused(tmp_path: Path, text: str, name: str = "site") -> str:
    write(tmp_path, name, text)
    with pytest.raises(PolicyError) as info:
        load_policy(name, [tmp_path])
    return str(info.value)


@pytest.mark.parametrize("name", ["base", "default", "strict", "gpu"])
def test_shipped_policies_load(name: str) -> None:
    policy = load_policy(name, [SHIPPED])
    assert set(policy.settings) == set(FIELDS)
    assert policy.files[-1] == SHIPPED / f"{name}.toml"


def test_chain_and_provenance() -> None:
    gpu = load_policy("gpu", [SHIPPED])
    assert [f.name for f in gpu.files] == ["base.toml", "default.toml", "gpu.toml"]
    lines = key_lines((SHIPPED / "gpu.toml").read_text())
    assert gpu["devices.gpu"].origin == f"policies/gpu.toml:{lines['devices.gpu']}"
    assert gpu["namespaces.user"].origin.startswith("policies/base.toml:")
    # an inline table: the line of `memory = { ... }`
    assert gpu["limits.memory.max"].origin == f"policies/gpu.toml:{lines['limits.memory']}"
    assert gpu.value("limits.memory.max") == 64 * 1024**3


def test_append_keeps_what_it_extends_with_each_items_origin() -> None:
    gpu = load_policy("gpu", [SHIPPED])
    userland = gpu["filesystem.host_userland"].value
    assert userland[0].value == "/usr" and userland[0].origin.startswith("policies/base.toml:")
    items = gpu["filesystem.read_only"].value
    assert [i.value for i in items] == ["/usr/lib/x86_64-linux-gnu/nvidia", "/etc/OpenCL"]
    assert all(i.origin.startswith("policies/gpu.toml:") for i in items)


def test_plain_list_replaces(tmp_path: Path) -> None:
    write(tmp_path, "base", '[filesystem]\nread_only = ["/usr", "/lib"]\n')
    write(tmp_path, "site", 'extends = "base"\n[filesystem]\nread_only = ["/opt"]\n')
    assert load_policy("site", [tmp_path]).value("filesystem.read_only") == ("/opt",)


def test_mapping_merges_by_name(tmp_path: Path) -> None:
    write(tmp_path, "base", '[process.environment]\nset = { PATH = "/bin", A = "1" }\n')
    write(tmp_path, "site", 'extends = "base"\n[process.environment]\nset = { A = "2" }\n')
    policy = load_policy("site", [tmp_path])
    assert policy.value("process.environment.set") == {"PATH": "/bin", "A": "2"}


def test_keys_left_out_take_restrictive_builtins(tmp_path: Path) -> None:
    policy = load_policy(str(write(tmp_path, "bare", 'description = "nothing"\n')), [])
    for key in ("namespaces.user", "namespaces.net", "process.no_new_privs", "network.mode"):
        assert policy[key].origin == BUILTIN
    assert policy.value("namespaces.user") == "required"
    assert policy.value("process.capabilities") == ()
    assert policy.value("network.mode") == "none"
    assert policy.value("process.no_new_privs") is True


def test_sizes_and_paths_are_normalized(tmp_path: Path) -> None:
    write(tmp_path, "site", """
        [filesystem]
        read_only = ["/usr//lib/", "/opt/./x"]
        [limits]
        memory = { default = "1.5GB", max = "4GB" }
        """)  # fmt: skip
    policy = load_policy("site", [tmp_path])
    assert policy.value("filesystem.read_only") == ("/usr/lib", "/opt/x")
    assert policy.value("limits.memory.default") == int(1.5 * 1024**3)


# -- hostile files ----------------------------------------------------------------------


def test_unknown_key_with_line_and_suggestion(tmp_path: Path) -> None:
    message = refused(tmp_path, '[filesystem]\nread_only = []\nwriteable = ["/x"]\n')
    assert message == (
        f"{tmp_path}/site.toml:3: unknown key 'filesystem.writeable' "
        "(did you mean 'filesystem.writable'?)"
    )


def test_unknown_table(tmp_path: Path) -> None:
    assert "unknown key 'kernel'" in refused(tmp_path, "[kernel]\nmodules = true\n")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[namespaces]\nuser = "maybe"\n', 'namespaces.user must be one of "required"'),
        ("[process]\nno_new_privs = 1\n", "process.no_new_privs must be true or false"),
        ('[process]\nuid = "root"\n', "process.uid must be a whole number"),
        ("[process]\nuid = 0\n", "process.uid must be at least 1, not 0"),
        ('[filesystem]\nread_only = "/usr"\n', "filesystem.read_only must be a list"),
        ('[filesystem]\nread_only = ["usr"]\n', "'usr' must be an absolute path"),
        ('[filesystem]\nread_only = ["/usr/../etc"]\n', "must not contain '..'"),
        ('[filesystem]\nread_only = { add = ["/x"] }\n', "{ append = [...] }"),
        ('[filesystem]\ntmpfs = [{ path = "/tmp" }]\n', 'items are { path = "/abs"'),
        (
            '[limits]\nmemory = { default = "lots" }\n',
            "limits.memory.default: 'lots' is not a size",
        ),
        ("[limits]\npids = { default = -1 }\n", "limits.pids.default must be a whole number"),
        ('[process]\ncapabilities = ["ALL"]\n', "'ALL' is not a capability name"),
        ('[process.environment]\nallow = ["A B"]\n', "not an environment variable name"),
        ('[process]\nseccomp = "/etc/x.json"\n', "names a profile inside the policy directory"),
        ('[process]\nseccomp = "../x.json"\n', "names a profile inside the policy directory"),
        ('[optional]\nrequirements = ["everything"]\n', "'everything' is not a policy key"),
        ("[filesystem\n", "not valid TOML"),
    ],
)
def test_wrong_values(tmp_path: Path, text: str, fragment: str) -> None:
    message = refused(tmp_path, text)
    assert message.startswith(f"{tmp_path}/site.toml:")
    assert fragment in message


def test_wrong_value_names_its_line(tmp_path: Path) -> None:
    message = refused(tmp_path, '# a comment\n\n[network]\nmode = "internet"\n')
    assert message.startswith(f"{tmp_path}/site.toml:4: network.mode must be one of")


def test_extends_cycle(tmp_path: Path) -> None:
    write(tmp_path, "a", 'extends = "b"\n')
    write(tmp_path, "b", 'extends = "a"\n')
    with pytest.raises(PolicyError, match=r"extends makes a cycle \(a -> b -> a\)"):
        load_policy("a", [tmp_path])


def test_extends_itself(tmp_path: Path) -> None:
    assert "extends makes a cycle" in refused(tmp_path, 'extends = "site"\n')


@pytest.mark.parametrize("target", ["../base", "/etc/base", "sub/base", "base.toml"])
def test_extends_takes_names_only(tmp_path: Path, target: str) -> None:
    message = refused(tmp_path, f'extends = "{target}"\n')
    assert message == (
        f"{tmp_path}/site.toml:1: extends takes a policy name, like \"base\" (no paths, no '..')"
    )


def test_extends_missing(tmp_path: Path) -> None:
    assert "extends 'nowhere', but" in refused(tmp_path, 'extends = "nowhere"\n')


def test_policy_name_lookup(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no policy named 'ghost'"):
        load_policy("ghost", [tmp_path])
    with pytest.raises(PolicyError, match="must be letters, digits"):
        load_policy("a b", [tmp_path])


def test_environment_directory_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_AGENT_POLICIES", str(tmp_path))
    assert policy_dirs()[0] == tmp_path


def test_key_lines_scanner() -> None:
    text = textwrap.dedent("""
        extends = "base"
        [filesystem]
        read_only = [
            "/a",   # not a key: inside the array
            "/b=c",
        ]
        deny = ['/x']
        [[filesystem.tmpfs]]
        path = "/tmp"
        [[filesystem.tmpfs]]
        path = "/var/tmp"
        [limits]
        memory = { default = "1GB", max = "2GB" }
        """).lstrip()  # fmt: skip
    lines = key_lines(text)
    assert lines["extends"] == 1
    assert lines["filesystem.read_only"] == 3
    assert lines["filesystem.deny"] == 7
    assert lines["filesystem.tmpfs[1].path"] == 11
    assert lines["limits.memory"] == 13
    assert "/a" not in "".join(lines)


def test_bind_paths_may_not_hold_separators(tmp_path: Path) -> None:
    message = refused(tmp_path, '[filesystem]\nread_only = ["/a,/etc:/e:rw"]\n')
    assert "may not hold ',' ':' or controls" in message


def test_huge_rlimit_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    assert "must be at most 1048576" in refused(
        tmp_path, "[process.rlimits]\nnofile = 4611686018427387904\n"
    )
    deep = "a = " + "[" * 100_000 + "]" * 100_000 + "\n"
    assert "nested too deeply" in refused(tmp_path, deep)


# -- a site policy outside the shipped directory ------------------------------------------


def test_a_site_policy_anywhere_extends_the_shipped_ones_by_name(tmp_path: Path) -> None:
    """/etc/sandbox-agent/site.toml, alone in its directory, extends "default": the
    chain runs through the installed package's default and base, and the seccomp
    profile base names is read from the package, not from the site's directory."""
    site = write(
        tmp_path / "etc", "site", 'extends = "default"\n[limits.memory]\ndefault = "1 GB"\n'
    )
    policy = load_policy(str(site), policy_dirs())
    assert [p.name for p in policy.files] == ["base.toml", "default.toml", "site.toml"]
    assert policy.files[0].parent.resolve() == load.SHIPPED
    assert policy.seccomp_path() == load.SHIPPED / "seccomp" / "default.json"
    assert policy["process.seccomp"].origin.startswith("policies/base.toml:")
    assert policy.value("limits.memory.default") == 1 << 30


def test_a_site_profile_is_read_beside_the_file_that_names_it(tmp_path: Path) -> None:
    site = write(
        tmp_path / "etc", "site", 'extends = "default"\n[process]\nseccomp = "sec/mine.json"\n'
    )
    policy = load_policy(str(site), policy_dirs())
    assert policy.seccomp_path() == (tmp_path / "etc" / "sec" / "mine.json").resolve()


def test_a_site_default_extends_the_shipped_default(tmp_path: Path) -> None:
    """A site's own default.toml in HOME/policies may extend "default": a file never
    extends itself, so the name goes on to the shipped one."""
    home_policies = tmp_path / "home" / "policies"
    write(home_policies, "default", 'extends = "default"\n[limits.memory]\ndefault = "3 GB"\n')
    policy = load_policy("default", policy_dirs(tmp_path / "home"))
    assert policy.files[-1] == home_policies / "default.toml"
    assert policy.files[-2].resolve() == load.SHIPPED / "default.toml"
    assert policy.value("limits.memory.default") == 3 << 30


def test_a_name_nowhere_says_where_it_looked(tmp_path: Path) -> None:
    site = write(tmp_path / "etc", "site", 'extends = "nosuch"\n')
    with pytest.raises(PolicyError) as info:
        load_policy(str(site), policy_dirs())
    assert str(info.value) == (
        f"{site}:1: extends 'nosuch', but no nosuch.toml is in {tmp_path / 'etc'}, {load.SHIPPED}"
    )


def test_a_symlink_loop_among_the_policy_directories_is_one_line(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    site = write(tmp_path / "etc", "site", 'extends = "default"\n')
    with pytest.raises(PolicyError) as info:
        load_policy(str(site), [loop, load.SHIPPED])
    assert str(info.value).startswith(f"{site}:1: cannot look for 'default': ")


def test_a_policy_file_every_user_may_write_is_refused(tmp_path: Path) -> None:
    site = write(tmp_path / "etc", "site", 'extends = "default"\n')
    site.chmod(0o666)
    with pytest.raises(PolicyError) as info:
        load_policy(str(site), policy_dirs())
    assert str(info.value) == (
        f"{site}: writable by every user; a policy must be the site's alone (chmod o-w)"
    )


def test_a_name_is_never_looked_up_where_every_user_may_write(tmp_path: Path) -> None:
    """A site policy left in a shared directory (sticky, like /tmp): a default.toml
    anyone planted beside it is not what it extends; the shipped one is."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    site = write(shared, "site", 'extends = "default"\n')
    write(shared, "default", '[network]\nmode = "host"\n[namespaces]\nnet = "off"\n')
    policy = load_policy(str(site), policy_dirs())
    assert policy.files[-2].resolve() == load.SHIPPED / "default.toml"
    assert policy.value("network.mode") == "egress"
