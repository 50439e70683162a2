"""What network.allow, network.deny and network.proxy may be written as: an entry whose
meaning is unclear, or a proxy that would open more than one host, is refused when the
policy loads, naming the file and line and how to write it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_agent.policy import PolicyError, load_policy
from sandbox_agent.policy.destinations import split
from sandbox_agent.policy.model import Policy

ROOT = Path(__file__).resolve().parents[2]


def load(tmp_path: Path, network: str) -> Policy:
    (tmp_path / "site.toml").write_text(f'description = "x"\n[network]\n{network}\n')
    return load_policy("site", [tmp_path])


def test_a_network_with_bits_past_its_prefix_says_which_it_means() -> None:
    with pytest.raises(ValueError, match=r"10\.1\.2\.3/8: has bits set past its prefix; "
                       r"write 10\.0\.0\.0/8, or the address alone"):  # fmt: skip
        split("10.1.2.3/8")
    assert split("10.0.0.0/8")[2] is not None


@pytest.mark.parametrize("proxy", ["http://10.0.0.0/8:3128", "http://[::ffff:0.0.0.0/96]:80",
                                   "http://squid.example.org", "squid.example.org:3128",
                                   "https://squid.example.org:3128"])  # fmt: skip
def test_a_proxy_is_one_host_and_a_port(tmp_path: Path, proxy: str) -> None:
    # the relay lets the proxy through whatever network.allow says: never a network
    with pytest.raises(
        PolicyError, match=r'site\.toml:3: network\.proxy must be "http://HOST:PORT"'
    ):
        load(tmp_path, f'proxy = "{proxy}"')


@pytest.mark.parametrize("proxy", ["http://squid.example.org:3128", "http://10.1.0.3:3128/",
                                   "http://[2001:db8::3]:3128"])  # fmt: skip
def test_a_proxy_that_names_one_host_loads(tmp_path: Path, proxy: str) -> None:
    assert load(tmp_path, f'proxy = "{proxy}"')["network.proxy"].value == proxy


def test_an_entry_that_cannot_be_read_names_its_place(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"site\.toml:3: network\.deny: 10\.1\.2\.3/8: has bits"):
        load(tmp_path, 'deny = ["10.1.2.3/8"]')
