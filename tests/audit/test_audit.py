"""The signed audit record of a job, made by a real pilot run in the real sandbox: what
it holds, that it verifies, and that a changed byte, another CA or a damaged file fails."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import assert_no_traceback, cli_env, run_cli, shell_script
from cryptography import x509

from sandbox_agent.agent.audit import redact
from sandbox_agent.tokens import fingerprint

CERTS_TEST = Path(__file__).resolve().parents[2] / "certs-test"
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


@contextlib.contextmanager
def one_job(
    jdl: str | None = None, script: str | None = None
) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """A fresh home whose pilot ran job 1 (``jdl``'s text, or samples/hello.jdl) once:
    the home and what `run --once --json` printed; removed after. ``script``: a shell
    script beside the JDL, job.sh, which it runs (its Executable line comes first)."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-audit-"))
    try:
        base.chmod(0o711)  # the sandbox's uid (as root) reaches the work area under it
        env = cli_env(base / "home")
        path = Path("samples/hello.jdl")
        if jdl is not None:
            path = base / "job.jdl"
            path.write_text(jdl if script is None else shell_script(base, "job.sh", script) + jdl)
        assert run_cli(env, "submit", path).returncode == 0
        done = run_cli(env, "run", "--once", "--json")
        assert_no_traceback(done)
        assert done.returncode == 0, done.stderr
        yield base / "home", done
    finally:
        shutil.rmtree(base)


@pytest.fixture(scope="module")
def ran() -> Iterator[Path]:
    """A home whose pilot ran job 1 (samples/hello.jdl) to DONE."""
    with one_job() as (home, _done):
        yield home


def audit(home: Path, *args: object) -> tuple[int, str, str]:
    done = run_cli(cli_env(home), "audit", *args)
    assert_no_traceback(done)
    return done.returncode, done.stdout, done.stderr


def test_the_record_says_what_was_enforced_and_what_came_out(ran: Path) -> None:
    code, out, err = audit(ran, "show", "1", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["schema"] == "sandbox-agent/audit-record" and record["version"] == 1
    assert (record["job"]["id"], record["job"]["state"], record["job"]["exit_code"]) == \
        (1, "DONE", 0)  # fmt: skip
    agent = x509.load_pem_x509_certificate((ran / "certs" / "jobagent.pem").read_bytes())
    assert record["agent"]["token_fingerprint"] == fingerprint(agent)
    assert record["job_token_fingerprint"].startswith("sha256:")
    assert record["job_token_fingerprint"] != record["agent"]["token_fingerprint"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", record["seccomp_sha256"])
    assert record["landlock"].startswith("confined: landlock ABI")
    assert record["states"] == ["STARTED", "RUNNING", "SAVING", "DONE"]
    assert [h["state"] for h in record["history"]] == [
        "ASSIGNED", "STARTED", "RUNNING", "SAVING", "DONE"]  # fmt: skip
    times = [h["time"] for h in record["history"][1:]]
    assert times == sorted(times) and all(isinstance(t, float) for t in times)
    assert {"memory", "pids"} <= set(record["enforcement"]["kernel"])
    # the gate's answer for each requirement, once the job ran: bwrap made the cgroup
    # namespace it was asked for if possible, and nothing required was left unmet
    answers = {r["key"]: r for r in record["enforcement"]["requirements"]}
    assert answers["namespaces.cgroup"]["verdict"] == "enforced"
    assert answers["process.landlock"]["by"] == "wrapper"
    assert {r["verdict"] for r in answers.values()} <= {"enforced", "not met, optional"}
    assert {k for k, r in answers.items() if r["verdict"] != "enforced"} == set(
        record["enforcement"]["unenforced"])
    # every setting of the effective policy, each with where it came from
    settings = {row["key"]: row for row in record["policy"]["settings"]}
    assert re.fullmatch(r"policies/base.toml:[0-9]+", settings["namespaces.pid"]["origin"])
    # the outputs as kept, their digests those of the files on disk
    kept = ran / "outputs" / "1" / "0"
    manifest = json.loads((kept / "manifest.json").read_text())
    stored = {f["name"]: f["stored"] for f in manifest["files"]}
    for output in record["outputs"]:
        data = (kept / stored[output["name"]]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == output["sha256"]
        assert len(data) == output["size"]
    assert {o["name"] for o in record["outputs"]} >= {"hello.txt"}
    assert record["teardown"]["workdir"] == "removed"
    assert record["teardown"]["emptied"] is True and record["teardown"]["survivors"] == []
    # the argv names the variables the payload got, never their values
    argv = record["runtime"]["argv"]
    assert argv[0].endswith("bwrap") and "--seccomp" in argv
    given = [word for word in argv if word.startswith("--env=")]
    assert "--env=PATH=<redacted>" in given and "--env=HOME=<redacted>" in given
    assert all(word.endswith("=<redacted>") for word in given)
    assert "/usr/local/bin:/usr/bin:/bin" not in json.dumps(argv)


def test_redaction_covers_both_ways_a_variable_reaches_the_sandbox() -> None:
    argv = ["bwrap", "--setenv", "TOKEN", "s3cret", "--", "confine.py", "--env=KEY=a=b", "--"]
    assert redact(argv) == ["bwrap", "--setenv", "TOKEN", "<redacted>", "--", "confine.py",
                            "--env=KEY=<redacted>", "--"]  # fmt: skip


def test_the_record_holds_no_key(ran: Path) -> None:
    text = (ran / "outputs" / "1" / "0" / "audit.json").read_text()
    assert "PRIVATE KEY" not in text
    key = (ran / "certs" / "jobagent.key").read_text()
    assert key.splitlines()[1] not in text


def test_a_record_verifies_against_its_ca(ran: Path) -> None:
    record = ran / "outputs" / "1" / "0" / "audit.json"
    code, out, err = audit(ran, "verify", record)
    assert code == 0, err
    assert out.startswith(f"{record}: valid: job 1.0 DONE, signed by ")


def test_a_record_with_one_byte_changed_fails(ran: Path, tmp_path: Path) -> None:
    signed = json.loads((ran / "outputs" / "1" / "0" / "audit.json").read_text())
    signed["record"]["job"]["exit_code"] = 1  # as if the job had failed
    tampered = tmp_path / "audit.json"
    tampered.write_text(json.dumps(signed))
    code, _out, err = audit(ran, "verify", tampered)
    assert code == 1
    assert "NOT valid: the signature does not match the record" in err
    assert len(err.strip().splitlines()) == 1


def test_a_record_from_another_ca_fails(ran: Path) -> None:
    record = ran / "outputs" / "1" / "0" / "audit.json"
    code, _out, err = audit(ran, "verify", record, "--ca", CERTS_TEST / "ca.pem")
    assert code == 1
    assert "NOT valid: the signer is not trusted" in err


def test_a_file_that_is_no_record_is_one_line_and_exit_2(ran: Path, tmp_path: Path) -> None:
    for text in ("not json", '{"record": 1}', "[]"):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        code, _out, err = audit(ran, "verify", bad)
        assert code == 2 and len(err.strip().splitlines()) == 1


def test_show_prints_the_record_for_a_person(ran: Path) -> None:
    code, out, err = audit(ran, "show", "1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("job 1.0 of ") and "DONE exit 0" in lines[0]
    assert "(valid)" in lines[1]
    assert any(line.startswith("output hello.txt: ") for line in lines)
    assert lines[-1].startswith("teardown: 0 process(es) left")
    code, _out, err = audit(ran, "show", "99")
    assert code == 2 and "job 99: no audit record" in err


def test_an_output_named_like_the_record_cannot_take_its_place() -> None:
    with one_job('Output = {"audit.json"};\n', "echo forged > audit.json") as (home, _done):
        code, out, err = audit(home, "show", "1", "--json")
        assert code == 0, err
        outputs = {o["name"]: o["sha256"] for o in json.loads(out)["outputs"]}
        assert outputs["audit.json"] == "sha256:" + hashlib.sha256(b"forged\n").hexdigest()


def test_an_output_name_that_is_not_utf8_is_refused_not_a_crash() -> None:
    """A payload's file name of other bytes matching an Output pattern: the job ends
    ERROR_SV with the reason, the pilot goes on, and the record is signed all the same."""
    odd = "echo x > \"$(printf 'bad\\377.txt')\""  # printf makes the byte \377
    with one_job('Output = {"*.txt"};\n', odd) as (home, ran):
        finished = next(e for e in map(json.loads, ran.stdout.splitlines())
                        if e["event"] == "finished")  # fmt: skip
        assert finished["state"] == "ERROR_SV"
        assert "bad\\xff.txt: the name is not UTF-8" in finished["detail"]
        code, out, err = audit(home, "show", "1", "--json")
        assert code == 0, err
        assert json.loads(out)["job"]["state"] == "ERROR_SV"


def forged(ran: Path, tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    signed = json.loads((ran / "outputs" / "1" / "0" / "audit.json").read_text())
    change(signed)
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(signed))
    return path


def test_a_signing_time_without_a_time_zone_is_refused(ran: Path, tmp_path: Path) -> None:
    def naive(signed: dict[str, Any]) -> None:
        signed["record"]["signed_at"] = "2026-11-25T12:00:00"

    code, _out, err = audit(ran, "verify", forged(ran, tmp_path, naive))
    assert code == 1 and "signed_at has no time zone" in err


def test_a_record_signed_by_a_job_token_is_not_trusted(tmp_path: Path) -> None:
    """Only a jobagent token signs records: a job token (the payload holds one) cannot."""
    from sandbox_agent.audit import record as records
    from sandbox_agent.tokens import files
    from sandbox_agent.tokens.keys import load_private_key

    (tmp_path / "k").mkdir(mode=0o700)
    shutil.copyfile(CERTS_TEST / "job-7.key", tmp_path / "k" / "job-7.key")
    (tmp_path / "k" / "job-7.key").chmod(0o600)
    certificate, *chain = files.load_certificates(CERTS_TEST / "job-7.pem")
    record = {"schema": records.SCHEMA, "version": records.VERSION,
              "signed_at": records.now(), "job": {"id": 7, "resubmission": 0}}  # fmt: skip
    signed = records.sign(record, load_private_key(tmp_path / "k" / "job-7.key"), certificate,
                          tuple(chain))  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(signed))
    code, _out, err = audit(tmp_path, "verify", tmp_path / "r.json", "--ca", CERTS_TEST / "ca.pem")
    assert code == 1 and "the signer is not trusted" in err and "job" in err


def test_a_fifo_is_refused_without_waiting(ran: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _out, err = audit(ran, "verify", fifo)
    assert code == 2 and "not a regular file" in err


def test_a_valid_record_moved_over_another_attempt_is_not_shown_as_that_attempts(
    ran: Path,
) -> None:
    moved = ran / "outputs" / "1" / "5"
    moved.mkdir()
    try:
        shutil.copyfile(ran / "outputs" / "1" / "0" / "audit.json", moved / "audit.json")
        code, _out, err = audit(ran, "show", "1")
        assert code == 1 and "the record found is about job 1.0, not job 1.5" in err
    finally:
        shutil.rmtree(moved)


def test_a_record_lists_at_most_a_thousand_outputs_and_counts_the_rest() -> None:
    """The payload chooses how many outputs it makes: a record must stay under the
    broker's cap, and still pin the whole list (the manifest beside it has it)."""
    from sandbox_agent.agent.audit import LISTED, _listed
    from sandbox_agent.audit.record import canonical

    items = [{"name": f"f{i}", "size": 1, "sha256": "x"} for i in range(LISTED + 500)]
    listed = _listed("outputs", items)
    assert listed["outputs"] == items[:LISTED] and listed["outputs_count"] == LISTED + 500
    assert listed["outputs_sha256"] == hashlib.sha256(canonical({"items": items})).hexdigest()
    assert _listed("outputs", items[:3]) == {"outputs": items[:3]}
