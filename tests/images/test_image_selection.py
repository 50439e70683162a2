"""Which image a job gets: its JDL's Image (only under the site's roots), its Platform
(through the site's map), else the site default; and the policy keys that say so."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_support import shared_dir

from sandbox_agent.jdl import load_job
from sandbox_agent.policy import PolicyError, PolicyRejection, compose, load_policy
from sandbox_agent.policy.diff import diff
from sandbox_agent.policy.lint import lint

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def site() -> Iterator[Path]:
    """A policy directory with the shipped policies, and an image tree beside it:
    images/el9 and images/el7 (directories) under the allowed root images/."""
    base = shared_dir()
    shutil.copytree(SHIPPED, base / "policies")
    for name in ("el9", "el7"):
        (base / "images" / name / "bin").mkdir(parents=True)
    (base / "elsewhere" / "rootfs").mkdir(parents=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def policy(site: Path, body: str):  # type: ignore[no-untyped-def]
    (site / "policies" / "site.toml").write_text(f'extends = "default"\n{body}')
    return load_policy("site", [site / "policies"])


def images_policy(site: Path):  # type: ignore[no-untyped-def]
    return policy(site, f'[filesystem]\nimage = "{site}/images/el9"\n[images]\n'
                        f'roots = ["{site}/images"]\n'
                        f'platforms = {{ "el7-x86_64" = "{site}/images/el7" }}\n')  # fmt: skip


def image_of(site: Path, jdl: str) -> tuple[str, str]:
    effective = compose(images_policy(site), load_job('Executable = "/bin/true";\n' + jdl))
    setting = effective["filesystem.image"]
    return str(setting.value), setting.origin


def test_the_jdl_image_comes_first_then_the_platform_then_the_site_default(site: Path) -> None:
    path, origin = image_of(site, f'Image = "{site}/images/el7"; Platform = "el9";')
    assert (path, origin) == (f"{site}/images/el7", "jdl:Image")
    path, origin = image_of(site, 'Platform = "EL7-x86_64";')  # names match without case
    assert path == f"{site}/images/el7"
    assert origin.startswith("jdl:Platform el7-x86_64 (") and "site.toml:" in origin
    path, origin = image_of(site, "")
    assert (path, origin) == (f"{site}/images/el9", "policies/site.toml:3")


@pytest.mark.parametrize(
    ("jdl", "said"),
    [
        ('Image = "{site}/elsewhere/rootfs";', "is not under an image root this site allows"),
        ('Image = "{site}/images/../elsewhere/rootfs";', "without '..'"),
        ('Image = "images/el7";', "must be an absolute path"),
        ('Image = "{site}/images/link";', "leads through a symlink to .*elsewhere/rootfs"),
        ('Image = "{site}/images/missing";', "does not exist on this node"),
        ('Image = "{site}/images";', "is the image root .* itself"),
        ('Image = "{site}/images/";', "is the image root .* itself"),
        ('Image = {{"a", "b"}};', "Image must be a string"),
        ('Platform = "sl6";', r"no image for 'sl6' \(it offers: el7-x86_64\)"),
    ],
)  # fmt: skip
def test_a_jdl_cannot_name_an_image_outside_the_roots(site: Path, jdl: str, said: str) -> None:
    (site / "images" / "link").symlink_to(site / "elsewhere" / "rootfs")
    with pytest.raises(PolicyRejection, match=said):
        image_of(site, jdl.format(site=site))


def test_a_site_without_roots_lets_no_job_name_its_image(site: Path) -> None:
    job = load_job(f'Executable = "/bin/true"; Image = "{site}/images/el7";')
    with pytest.raises(PolicyRejection, match="lets no job name its image"):
        compose(load_policy("default", [site / "policies"]), job)


def test_a_jdl_image_may_not_reach_the_agents_credentials(site: Path) -> None:
    job = load_job(f'Executable = "/bin/true"; Image = "{site}/images/el7";')
    with pytest.raises(PolicyRejection, match="no job may read"):
        compose(images_policy(site), job, credentials=[str(site / "images" / "el7" / "bin")])
    # a credential path reached through a symlink is compared resolved, as the image is
    (site / "certs-link").symlink_to(site / "images" / "el7" / "bin")
    with pytest.raises(PolicyRejection, match="no job may read"):
        compose(images_policy(site), job, credentials=[str(site / "certs-link")])


def test_image_paths_in_a_policy_may_hold_a_tag_colon(site: Path) -> None:
    tagged = "/cvmfs/unpacked.cern.ch/registry.hub.docker.com/library/centos:centos7"
    loaded = policy(site, f'[filesystem]\nimage = "{tagged}"\n[images]\n'
                          f'platforms = {{ el7 = "{tagged}" }}\n'
                          f'pins = {{ "{tagged}" = "sha256:{"0" * 64}" }}\n')  # fmt: skip
    assert loaded["filesystem.image"].value == tagged
    with pytest.raises(PolicyError, match="may not hold ','"):
        policy(site, '[filesystem]\nimage = "/cvmfs/a,b"\n')


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ('[images]\npins = { "/cvmfs/x.sif" = "md5:abc" }', '"sha256:" and 64 hex digits'),
        ('[images]\npins = { "relative.sif" = "sha256:' + "0" * 64 + '" }', "absolute path"),
        ('[images]\nplatforms = { "el 7" = "/cvmfs/el7" }', "not a platform name"),
        ('[images]\nplatforms = { el7 = "/cvmfs/../el7" }', "must not contain '..'"),
        ('[images]\nroots = "/cvmfs"', "images.roots must be a list"),
    ],
)  # fmt: skip
def test_bad_image_keys_name_the_file_and_line(site: Path, body: str, said: str) -> None:
    with pytest.raises(PolicyError, match=said) as refused:
        policy(site, body)
    assert "site.toml:" in str(refused.value)


def test_lint_refuses_image_paths_that_reach_a_denied_path(site: Path) -> None:
    found = lint(policy(site, '[images]\nroots = ["/"]\nplatforms = { el7 = "/root/el7" }\n'))
    said = [f.message for f in found if f.rule == "bind-reaches-deny"]
    assert any(m.startswith("images.roots '/'") for m in said)
    assert any(m.startswith("images.platforms.el7 '/root/el7'") for m in said)


def test_diff_reports_new_roots_remapped_platforms_and_dropped_pins(site: Path) -> None:
    pin = "sha256:" + "a" * 64
    before = compose(policy(site, f'[images]\npins = {{ "/cvmfs/el7" = "{pin}" }}\n'
                                  'platforms = { el7 = "/cvmfs/el7" }\n'))  # fmt: skip
    after = compose(policy(site, '[images]\nroots = ["/cvmfs"]\n'
                                 'platforms = { el7 = "/cvmfs/other" }\n'))  # fmt: skip
    wider, _narrower = diff(before, after)
    said = {w.message for w in wider}
    assert "lets a JDL name images under /cvmfs" in said
    assert "runs platform el7 on /cvmfs/other" in said
    assert "image /cvmfs/el7: no longer pins it" in said
    assert not diff(before, before)[0]


def test_a_jdl_file_image_is_not_matched_on_a_node_without_fuse(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox_agent.images import mount

    (site / "images" / "el8.sif").write_bytes(b"SIF")
    job = load_job(f'Executable = "/bin/true"; Image = "{site}/images/el8.sif";')
    real = shutil.which
    monkeypatch.setattr(mount.shutil, "which", lambda name: None if "squashfuse" in name
                        else real(name))  # fmt: skip
    with pytest.raises(PolicyRejection, match=r"single-file image, which this node cannot "
                       r"mount \(squashfuse is not installed"):  # fmt: skip
        compose(images_policy(site), job)
