"""``sandbox-agent certs``: the installed console script, run as a user runs it.

Every test starts the real entry point in a subprocess (never an in-process runner), so
the exit codes, the split between stdout and stderr, the file modes and the absence of
tracebacks are what a shell sees.  The committed TEST fixtures are in certs-test/ (see
its README for what each must give); keys are copied to a private directory, mode 0600,
before use, since git keeps no file modes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cli_support import ROOT, assert_no_traceback, cli_env, run_cli
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CERTS = ROOT / "certs-test"
CA = CERTS / "ca.pem"

INIT_FILES = {
    "ca.pem",
    "ca.key",
    "signing.pem",
    "signing.key",
    "jobagent.pem",
    "jobagent.key",
    "broker.pem",
    "broker.key",
}


@pytest.fixture
def cli(tmp_path: Path):
    """Run the console script with a private state directory; return the result."""
    env = cli_env(tmp_path / "home")

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return run_cli(env, *args)

    return run


@pytest.fixture
def authority(cli, tmp_path: Path) -> Path:
    """A fresh authority made by ``certs init``."""
    directory = tmp_path / "authority"
    result = cli("certs", "init", "--dir", directory)
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture
def job7(cli, authority: Path, tmp_path: Path) -> Path:
    """A job-7 token issued by ``authority`` into its own directory; returns that directory."""
    out = tmp_path / "out"
    result = cli(
        "certs", "issue", "--role", "job", "--job-id", 7, "--user", "jdoe",
        "--dir", authority, "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """A usage error: exit ``code``, one line on stderr, nothing on stdout; return the line."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert_no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sandbox-agent: "), lines[0]
    assert result.stdout == ""
    return lines[0]


def verdict(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The JSON line ``certs verify --json`` prints."""
    assert_no_traceback(result)
    report = json.loads(result.stdout)
    assert isinstance(report, dict)
    return report


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def private_key_copy(name: str, directory: Path, key_mode: int = 0o600) -> Path:
    """Copy certs-test/NAME into a 0700 directory with ``key_mode`` (git keeps no modes)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)
    target = directory / name
    shutil.copyfile(CERTS / name, target)
    target.chmod(key_mode)
    return target


def sha256_fingerprint(pem_file: Path) -> str:
    cert = x509.load_pem_x509_certificates(pem_file.read_bytes())[0]
    der = cert.public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def serial_of(pem_file: Path) -> int:
    return x509.load_pem_x509_certificates(pem_file.read_bytes())[0].serial_number


# -- certs init -----------------------------------------------------------------------


def test_init_makes_the_authority_and_tokens_privately(cli, tmp_path: Path) -> None:
    directory = tmp_path / "authority"
    result = cli("certs", "init", "--dir", directory)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in directory.iterdir()} == INIT_FILES
    assert mode(directory) == 0o700
    for key in directory.glob("*.key"):
        assert mode(key) == 0o600, key
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    # The tokens it made verify against the CA it made, with their keys.
    for role in ("jobagent", "broker"):
        check = cli(
            "certs", "verify", directory / f"{role}.pem", "--dir", directory,
            "--role", role, "--key", directory / f"{role}.key",
        )  # fmt: skip
        assert check.returncode == 0, check.stderr


def test_init_twice_makes_nothing_new(cli, authority: Path) -> None:
    before = {name: (authority / name).read_bytes() for name in INIT_FILES}
    again = cli("certs", "init", "--dir", authority)
    assert again.returncode == 0, again.stderr
    assert "made: nothing" in again.stdout
    after = {name: (authority / name).read_bytes() for name in INIT_FILES}
    assert after["ca.pem"] == before["ca.pem"]
    assert after["jobagent.pem"] == before["jobagent.pem"]
    assert after == before
    as_json = cli("certs", "init", "--dir", authority, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["made"] == []


def test_init_reissues_only_a_token_whose_key_is_gone(cli, authority: Path) -> None:
    before = {name: (authority / name).read_bytes() for name in INIT_FILES}
    (authority / "jobagent.key").unlink()
    result = cli("certs", "init", "--dir", authority, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["made"] == ["jobagent"]
    after = {name: (authority / name).read_bytes() for name in INIT_FILES}
    for name in INIT_FILES - {"jobagent.pem", "jobagent.key"}:
        assert after[name] == before[name], name
    assert after["jobagent.pem"] != before["jobagent.pem"]
    assert mode(authority / "jobagent.key") == 0o600
    check = cli(
        "certs", "verify", authority / "jobagent.pem", "--dir", authority,
        "--role", "jobagent", "--key", authority / "jobagent.key",
    )  # fmt: skip
    assert check.returncode == 0, check.stderr


def test_init_json_lists_what_was_made(cli, tmp_path: Path) -> None:
    directory = tmp_path / "authority"
    result = cli("certs", "init", "--dir", directory, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(report["made"]) == ["authority", "broker", "jobagent"]
    assert set(report["files"]) == INIT_FILES
    assert report["ca"] == sha256_fingerprint(directory / "ca.pem")


def test_init_without_dir_uses_home_certs(cli, tmp_path: Path) -> None:
    home = tmp_path / "elsewhere"
    result = cli("--home", home, "certs", "init")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (home / "certs").iterdir()} == INIT_FILES
    assert mode(home / "certs") == 0o700
    # Not the SANDBOX_AGENT_HOME of the environment.
    assert not (tmp_path / "home" / "certs").exists()


def test_init_refuses_a_directory_open_to_others(cli, tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(0o755)
    result = cli("certs", "init", "--dir", directory)
    line = assert_one_line_error(result)
    assert "chmod 700" in line
    assert list(directory.iterdir()) == []  # no key was written there
    assert mode(directory) == 0o755


# -- certs issue ----------------------------------------------------------------------


def test_issue_job_token(cli, authority: Path, job7: Path) -> None:
    cert, key = job7 / "job-7.pem", job7 / "job-7.key"
    assert cert.is_file()
    assert mode(key) == 0o600
    ok = cli(
        "certs", "verify", cert, "--dir", authority, "--role", "job", "--job-id", 7,
        "--key", key,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "job 7" in ok.stdout
    shown = cli("certs", "show", cert, "--dir", authority, "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert (report["role"], report["job_id"], report["user"]) == ("job", 7, "jdoe")


def test_issued_job_token_is_wrong_for_another_job(cli, authority: Path, job7: Path) -> None:
    cert = job7 / "job-7.pem"
    result = cli("certs", "verify", cert, "--dir", authority, "--role", "job", "--job-id", 8)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(": wrong-job: this token is for job 7, not job 8")


def test_issued_job_token_is_wrong_for_another_role(cli, authority: Path, job7: Path) -> None:
    result = cli("certs", "verify", job7 / "job-7.pem", "--dir", authority, "--role", "jobagent")
    assert result.returncode == 1
    assert ": wrong-role: " in result.stderr
    as_json = cli(
        "certs", "verify", job7 / "job-7.pem", "--dir", authority, "--role", "jobagent",
        "--json",
    )  # fmt: skip
    assert as_json.returncode == 1
    assert verdict(as_json)["code"] == "wrong-role"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--role", "job", "--user", "jdoe"], "--job-id"),
        (["--role", "job", "--job-id", "7"], "--user"),
        (["--role", "jobagent", "--job-id", "7"], "--job-id"),
        (["--role", "jobagent", "--ttl", "999999"], "2 days"),
        (["--role", "broker", "--ttl", "0"], "out of range"),
        (["--role", "wizard"], "jobagent, job, broker"),
        (["--role", "jobagent", "--key-type", "dsa"], "ec or rsa"),
        (["--role", "job", "--job-id", "0", "--user", "jdoe"], "job id"),
        (["--role", "job", "--job-id", "7", "--user", "j doe"], "user"),
        (["--role", "jobagent", "--dns", "example.org"], "broker"),
        (["--role", "broker", "--ip", "not-an-address"], "not-an-address"),
        (["--role", "user"], "a user token needs --user"),
        (["--role", "admin"], "an admin token needs --user"),
        (["--role", "admin", "--job-id", "7"], "needs --user"),
        (["--role", "user", "--user", "alice", "--job-id", "7"], "--job-id is for job tokens"),
        (["--role", "admin", "--user", "ops", "--job-id", "7"], "--job-id is for job tokens"),
        (["--role", "jobagent", "--user", "alice"], "--user are not for jobagent tokens"),
        (["--role", "broker", "--user", "ops"], "--user are not for broker tokens"),
        (["--role", "user", "--user", "a b"], "user 'a b' must be 1-64"),
        (["--role", "admin", "--user", "x" * 65], "must be 1-64"),
        (["--role", "admin", "--user", "ops", "--ttl", "86401"], "an admin token lives at most 24"),
        (["--role", "user", "--user", "alice", "--ttl", str(31 * 86400)], "at most 30 days"),
        (["--role", "user", "--user", "alice", "--dns", "example.org"], "only broker tokens"),
        (["--role", "admin", "--user", "ops", "--ip", "127.0.0.1"], "only broker tokens"),
    ],
)  # fmt: skip
def test_issue_refuses_bad_options(
    cli, authority: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "out"
    result = cli("certs", "issue", *args, "--dir", authority, "--out", out)
    line = assert_one_line_error(result)
    assert needle in line
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("role", "user", "subject", "lifetime"),
    [
        ("user", "alice", "CN=alice,CN=Users", 86400),
        ("admin", "ops", "CN=ops,CN=Admins", 3600),
    ],
)
def test_issue_person_token(
    cli, authority: Path, tmp_path: Path, role: str, user: str, subject: str, lifetime: int
) -> None:
    out = tmp_path / "out"
    result = cli("certs", "issue", "--role", role, "--user", user, "--dir", authority, "--out", out)
    assert result.returncode == 0, result.stderr
    cert, key = out / f"{role}-{user}.pem", out / f"{role}-{user}.key"
    assert {p.name for p in out.iterdir()} == {cert.name, key.name}
    assert mode(key) == 0o600
    ok = cli("certs", "verify", cert, "--dir", authority, "--role", role, "--key", key)
    assert ok.returncode == 0, ok.stderr
    assert f"valid {role} {user} token" in ok.stdout
    shown = cli("certs", "show", cert, "--dir", authority, "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert (report["role"], report["user"], report["job_id"]) == (role, user, None)
    assert report["subject"] == subject
    assert report["chain"].startswith("valid: ")
    span = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    seconds = (span.not_valid_after_utc - span.not_valid_before_utc).total_seconds()
    assert seconds == lifetime + 300  # the role's default, plus 5 minutes of skew
    text = cli("certs", "show", cert, "--dir", authority)
    assert show_rows(text.stdout)["scope"] == f"user {user}"
    other = "admin" if role == "user" else "user"
    wrong = cli("certs", "verify", cert, "--dir", authority, "--role", other, "--json")
    assert wrong.returncode == 1
    assert verdict(wrong)["code"] == "wrong-role"


def test_issue_person_token_with_a_name(cli, authority: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli(
        "certs", "issue", "--role", "admin", "--user", "ops", "--name", "me",
        "--dir", authority, "--out", out, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["certificate"] == str(out / "me.pem")
    assert json.loads(result.stdout)["user"] == "ops"


def test_issue_too_long_ttl_names_the_maximum(cli, authority: Path, tmp_path: Path) -> None:
    result = cli(
        "certs", "issue", "--role", "jobagent", "--ttl", 999999,
        "--dir", authority, "--out", tmp_path / "out",
    )  # fmt: skip
    line = assert_one_line_error(result)
    assert "jobagent token lives at most 2 days" in line


def test_issue_huge_ttl_is_a_usage_error(cli, authority: Path, tmp_path: Path) -> None:
    result = cli(
        "certs", "issue", "--role", "jobagent", "--ttl", 10**20,
        "--dir", authority, "--out", tmp_path / "out",
    )  # fmt: skip
    assert_one_line_error(result)


def test_issue_refuses_to_overwrite_a_key(cli, authority: Path, job7: Path) -> None:
    before = (job7 / "job-7.key").read_bytes(), (job7 / "job-7.pem").read_bytes()
    result = cli(
        "certs", "issue", "--role", "job", "--job-id", 7, "--user", "jdoe",
        "--dir", authority, "--out", job7,
    )  # fmt: skip
    line = assert_one_line_error(result)
    assert "job-7.key" in line
    assert ((job7 / "job-7.key").read_bytes(), (job7 / "job-7.pem").read_bytes()) == before


def test_issue_without_authority_is_a_usage_error(cli, tmp_path: Path) -> None:
    result = cli(
        "certs", "issue", "--role", "jobagent", "--dir", tmp_path / "none",
        "--out", tmp_path / "out",
    )  # fmt: skip
    line = assert_one_line_error(result)
    assert "certs init" in line


def test_issue_rsa_key(cli, authority: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli(
        "certs", "issue", "--role", "jobagent", "--key-type", "rsa",
        "--dir", authority, "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = cli("certs", "show", out / "jobagent.pem", "--dir", authority, "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["key"].startswith("RSA ")
    assert int(report["key"].split()[1]) >= 2048
    assert report["chain"].startswith("valid:")
    key = serialization.load_pem_private_key((out / "jobagent.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert mode(out / "jobagent.key") == 0o600


def test_issue_default_key_is_ec(cli, authority: Path, job7: Path) -> None:
    shown = cli("certs", "show", job7 / "job-7.pem", "--dir", authority, "--json")
    assert json.loads(shown.stdout)["key"] == "EC secp256r1"


def test_issue_json_names_both_files(cli, authority: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("certs", "issue", "--role", "broker", "--dir", authority, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["certificate"] == str(out / "broker.pem")
    assert str(out / "broker.key") in report.values()


# -- certs verify against the committed fixtures ----------------------------------------


def test_verify_valid_fixture(cli) -> None:
    result = cli("certs", "verify", CERTS / "jobagent.pem", "--ca", CA)
    assert result.returncode == 0, result.stderr
    assert "valid jobagent token" in result.stdout
    assert sha256_fingerprint(CERTS / "jobagent.pem") in result.stdout
    as_json = cli("certs", "verify", CERTS / "jobagent.pem", "--ca", CA, "--json")
    assert as_json.returncode == 0
    report = verdict(as_json)
    assert (report["valid"], report["code"]) == (True, "ok")


@pytest.mark.parametrize(
    ("name", "args", "code"),
    [
        ("expired-jobagent", [], "expired"),
        ("not-yet-valid-jobagent", [], "not-yet-valid"),
        ("unknown-ca-jobagent", [], "unknown-issuer"),
        ("job-8", ["--role", "job", "--job-id", "7"], "wrong-job"),
        ("job-8", ["--job-id", "7"], "wrong-job"),
        ("job-7-resubmission-1", ["--job-id", "7", "--resubmission", "0"], "wrong-job"),
        ("jobagent", ["--role", "job"], "wrong-role"),
        ("jobagent", ["--job-id", "7"], "wrong-role"),
        ("broker", ["--role", "jobagent"], "wrong-role"),
        ("signing", [], "wrong-role"),
        ("revoked-jobagent", ["--crl", str(CERTS / "crl.pem")], "revoked"),
        ("admin-ops", ["--role", "user"], "wrong-role"),
        ("user-alice", ["--role", "admin"], "wrong-role"),
        ("jobagent", ["--role", "user"], "wrong-role"),
        ("user-bob", ["--role", "jobagent"], "wrong-role"),
        ("user-alice", ["--job-id", "7"], "wrong-role"),
    ],
)
def test_verify_invalid_fixture(cli, name: str, args: list[str], code: str) -> None:
    file = CERTS / f"{name}.pem"
    text = cli("certs", "verify", file, "--ca", CA, *args)
    assert text.returncode == 1
    assert text.stdout == ""
    lines = text.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{file}: {code}: ")
    as_json = cli("certs", "verify", file, "--ca", CA, *args, "--json")
    assert as_json.returncode == 1
    report = verdict(as_json)
    assert (report["valid"], report["code"], report["file"]) == (False, code, str(file))


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("job-7", ["--role", "job", "--job-id", "7", "--resubmission", "0"]),
        ("job-7-resubmission-1", ["--role", "job", "--job-id", "7", "--resubmission", "1"]),
        ("broker", ["--role", "broker"]),
        ("revoked-jobagent", ["--role", "jobagent"]),  # revoked only with --crl
        ("user-alice", ["--role", "user"]),
        ("user-bob", ["--role", "user"]),
        ("admin-ops", ["--role", "admin"]),
    ],
)
def test_verify_valid_fixtures(cli, name: str, args: list[str]) -> None:
    result = cli("certs", "verify", CERTS / f"{name}.pem", "--ca", CA, *args, "--json")
    assert result.returncode == 0, result.stdout
    assert verdict(result)["code"] == "ok"


def test_verify_other_tokens_pass_the_crl(cli) -> None:
    crl = CERTS / "crl.pem"
    result = cli("certs", "verify", CERTS / "jobagent.pem", "--ca", CA, "--crl", crl)
    assert result.returncode == 0, result.stderr


def test_verify_key_mismatch(cli, tmp_path: Path) -> None:
    key = private_key_copy("mismatch.key", tmp_path / "keys")
    result = cli("certs", "verify", CERTS / "mismatch.pem", "--ca", CA, "--key", key, "--json")
    assert result.returncode == 1
    assert verdict(result)["code"] == "key-mismatch"
    # The certificate alone is fine: it is the pair that is wrong.
    alone = cli("certs", "verify", CERTS / "mismatch.pem", "--ca", CA)
    assert alone.returncode == 0, alone.stderr


def test_verify_with_the_right_key(cli, tmp_path: Path) -> None:
    key = private_key_copy("jobagent.key", tmp_path / "keys")
    result = cli("certs", "verify", CERTS / "jobagent.pem", "--ca", CA, "--key", key)
    assert result.returncode == 0, result.stderr


def test_verify_refuses_a_key_readable_by_others(cli, tmp_path: Path) -> None:
    key = private_key_copy("jobagent.key", tmp_path / "keys", key_mode=0o644)
    result = cli("certs", "verify", CERTS / "jobagent.pem", "--ca", CA, "--key", key)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert ": insecure-key-file: " in lines[0]
    assert f"chmod 600 {key}" in lines[0]
    as_json = cli("certs", "verify", CERTS / "jobagent.pem", "--ca", CA, "--key", key, "--json")
    report = verdict(as_json)
    assert report["code"] == "insecure-key-file"
    assert "chmod 600" in str(report["message"])
    assert "PRIVATE KEY" not in as_json.stdout + result.stderr


@pytest.mark.parametrize("problem", ["missing", "junk"])
def test_verify_unreadable_key_is_exit_2(cli, tmp_path: Path, problem: str) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    key = keys / "jobagent.key"
    if problem == "junk":
        key.write_bytes(b"this is not a key\n")
        key.chmod(0o600)
    result = cli("certs", "verify", CERTS / "jobagent.pem", "--ca", CA, "--key", key)
    assert_one_line_error(result)


def junk_file(tmp_path: Path) -> Path:
    path = tmp_path / "junk.pem"
    path.write_bytes(b"hello, this is not a certificate\n\x00\xff\xfe")
    return path


def broken_pem(tmp_path: Path) -> Path:
    path = tmp_path / "broken.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return path


def empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.pem"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(junk_file, id="junk"),
        pytest.param(broken_pem, id="broken-pem"),
        pytest.param(empty_file, id="empty"),
        pytest.param(lambda tmp: Path("/etc/hostname"), id="etc-hostname"),
        pytest.param(lambda tmp: CERTS / "jobagent.key", id="a-key-file"),
        pytest.param(lambda tmp: tmp, id="a-directory"),
        pytest.param(lambda tmp: tmp / "missing.pem", id="missing"),
    ],
)
@pytest.mark.parametrize("command", ["verify", "show", "revoke"])
def test_unreadable_token_file_is_a_usage_error(
    cli, authority: Path, tmp_path: Path, make, command: str
) -> None:
    file = make(tmp_path)
    if file == Path("/etc/hostname") and not file.is_file():
        pytest.skip("no /etc/hostname here")
    args = ["--dir", authority] if command == "revoke" else ["--ca", CA]
    result = cli("certs", command, file, *args)
    line = assert_one_line_error(result)
    assert str(file) in line
    assert "PRIVATE KEY" not in line
    if command == "revoke":
        assert not (authority / "crl.pem").exists()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--ca", "{junk}"], id="junk-ca"),
        pytest.param(["--ca", "{tmp}/missing-ca.pem"], id="missing-ca"),
        pytest.param(["--ca", str(CA), "--crl", "{junk}"], id="junk-crl"),
        pytest.param(["--ca", str(CA), "--crl", str(CA)], id="certificate-as-crl"),
        pytest.param(["--ca", str(CA), "--crl", "{tmp}/missing-crl.pem"], id="missing-crl"),
        pytest.param(["--dir", "{tmp}/no-authority"], id="no-authority"),
        pytest.param(["--ca", str(CA), "--role", "wizard"], id="unknown-role"),
    ],
)
def test_verify_bad_trust_options_are_usage_errors(cli, tmp_path: Path, args: list[str]) -> None:
    junk = junk_file(tmp_path)
    filled = [a.format(junk=junk, tmp=tmp_path) for a in args]
    result = cli("certs", "verify", CERTS / "jobagent.pem", *filled)
    assert_one_line_error(result)


def test_verify_missing_file_with_json_still_exits_2(cli, tmp_path: Path) -> None:
    result = cli("certs", "verify", tmp_path / "nope.pem", "--ca", CA, "--json")
    assert_one_line_error(result)


# -- certs show -----------------------------------------------------------------------


def show_rows(stdout: str) -> dict[str, str]:
    rows = {}
    for line in stdout.splitlines():
        label, _, value = line.partition(" ")
        rows[label] = value.strip()
    return rows


@pytest.mark.parametrize(
    ("name", "role", "scope"),
    [
        ("jobagent", "jobagent", "-"),
        ("broker", "broker", "-"),
        ("job-7", "job", "job 7 resubmission 0 user testuser"),
        ("job-7-resubmission-1", "job", "job 7 resubmission 1 user testuser"),
        ("user-alice", "user", "user alice"),
        ("admin-ops", "admin", "user ops"),
    ],
)
def test_show_fixture(cli, name: str, role: str, scope: str) -> None:
    file = CERTS / f"{name}.pem"
    result = cli("certs", "show", file, "--ca", CA)
    assert result.returncode == 0, result.stderr
    rows = show_rows(result.stdout)
    assert rows["role"] == role
    assert rows["scope"] == scope
    assert rows["fingerprint"] == sha256_fingerprint(file)
    assert rows["serial"] == f"{serial_of(file):x}"
    assert rows["chain"].startswith("valid: ")
    assert "TEST root CA" in rows["chain"]
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_show_json(cli) -> None:
    file = CERTS / "job-7.pem"
    result = cli("certs", "show", file, "--ca", CA, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["fingerprint"] == sha256_fingerprint(file)
    assert (report["role"], report["job_id"], report["resubmission"]) == ("job", 7, 0)
    assert report["user"] == "testuser"
    assert report["chain"].startswith("valid: ")
    assert "PRIVATE KEY" not in result.stdout


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("expired-jobagent", "expired"),
        ("not-yet-valid-jobagent", "not-yet-valid"),
        ("unknown-ca-jobagent", "unknown-issuer"),
        ("signing", "wrong-role"),
    ],
)
def test_show_invalid_token_is_informational(cli, name: str, code: str) -> None:
    file = CERTS / f"{name}.pem"
    result = cli("certs", "show", file, "--ca", CA)
    assert result.returncode == 0, result.stderr
    rows = show_rows(result.stdout)
    assert rows["chain"].startswith(f"NOT VALID ({code})")
    assert rows["fingerprint"] == sha256_fingerprint(file)
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_show_honours_a_crl(cli) -> None:
    file = CERTS / "revoked-jobagent.pem"
    result = cli("certs", "show", file, "--ca", CA, "--crl", CERTS / "crl.pem")
    assert result.returncode == 0, result.stderr
    assert show_rows(result.stdout)["chain"].startswith("NOT VALID (revoked)")


def test_show_issued_token_never_prints_the_key(cli, authority: Path, job7: Path) -> None:
    result = cli("certs", "show", job7 / "job-7.pem", "--dir", authority)
    assert result.returncode == 0, result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    key_body = (job7 / "job-7.key").read_text().splitlines()[1]
    assert key_body not in result.stdout


# -- certs revoke ---------------------------------------------------------------------


def crl_serials(directory: Path) -> set[int]:
    crl = x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())
    return {entry.serial_number for entry in crl}


def test_revoke_then_verify_with_the_authority_dir(cli, authority: Path, job7: Path) -> None:
    cert = job7 / "job-7.pem"
    result = cli("certs", "revoke", cert, "--dir", authority)
    assert result.returncode == 0, result.stderr
    assert crl_serials(authority) == {serial_of(cert)}
    check = cli("certs", "verify", cert, "--dir", authority)
    assert check.returncode == 1
    assert f"{cert}: revoked: " in check.stderr
    as_json = cli("certs", "verify", cert, "--dir", authority, "--json")
    assert verdict(as_json)["code"] == "revoked"
    # Other tokens of the same authority are untouched.
    other = cli("certs", "verify", authority / "jobagent.pem", "--dir", authority)
    assert other.returncode == 0, other.stderr
    shown = cli("certs", "show", cert, "--dir", authority)
    assert shown.returncode == 0
    assert show_rows(shown.stdout)["chain"].startswith("NOT VALID (revoked)")


def test_revoking_a_second_token_keeps_the_first(
    cli, authority: Path, job7: Path, tmp_path: Path
) -> None:
    first = job7 / "job-7.pem"
    out = tmp_path / "out8"
    issued = cli(
        "certs", "issue", "--role", "job", "--job-id", 8, "--user", "jdoe",
        "--dir", authority, "--out", out,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    second = out / "job-8.pem"
    assert cli("certs", "revoke", first, "--dir", authority).returncode == 0
    assert cli("certs", "revoke", second, "--dir", authority).returncode == 0
    assert crl_serials(authority) == {serial_of(first), serial_of(second)}
    for cert in (first, second):
        check = cli("certs", "verify", cert, "--dir", authority, "--json")
        assert check.returncode == 1
        assert verdict(check)["code"] == "revoked"


def test_revoke_without_authority_is_a_usage_error(cli, tmp_path: Path) -> None:
    result = cli("certs", "revoke", CERTS / "jobagent.pem", "--dir", tmp_path / "none")
    assert_one_line_error(result)


def test_init_replaces_a_revoked_token(cli, authority: Path) -> None:
    revoked = cli("certs", "revoke", authority / "jobagent.pem", "--dir", authority)
    assert revoked.returncode == 0, revoked.stderr
    again = cli("certs", "init", "--dir", authority, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["made"] == ["jobagent"]
    check = cli("certs", "verify", authority / "jobagent.pem", "--dir", authority)
    assert check.returncode == 0, check.stderr


def test_revoking_a_renewed_token_revokes_its_whole_line(cli, authority: Path) -> None:
    """The node's file holds a renewal after the first write-back; a thief who copied
    it and the key renewed it too. Revoking the node's file must end the thief's as
    well: the line's first token (the origin) joins the list."""
    from sandbox_agent.tokens import (
        RenewalPolicy,
        TokenAuthority,
        TokenRevoked,
        TokenVerifier,
        files,
    )

    loaded = TokenAuthority.load(authority)
    first = files.load_token(authority / "jobagent.pem", authority / "jobagent.key")
    node = loaded.renew_jobagent_token(first.certificate, first.chain, policy=RenewalPolicy())
    thief = loaded.renew_jobagent_token(node.certificate, first.chain, policy=RenewalPolicy())
    on_node = authority / "node.pem"
    on_node.write_bytes(node.certificate.public_bytes(serialization.Encoding.PEM))
    result = cli("certs", "revoke", on_node, "--dir", authority)
    assert result.returncode == 0, result.stderr
    assert crl_serials(authority) == {node.certificate.serial_number,
                                      first.certificate.serial_number}  # fmt: skip
    crl = files.load_crl(authority / "crl.pem")
    with pytest.raises(TokenRevoked, match=f"renews serial {first.certificate.serial_number:x}"):
        TokenVerifier([loaded.root], crl=crl).verify(thief.certificate, first.chain)
