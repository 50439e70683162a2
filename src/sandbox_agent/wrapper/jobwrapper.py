"""The JobWrapper: runs one job inside the sandbox, told only by the handoff frame.

    python3 -I -S jobwrapper.py --status-fd N < handoff-frame

It reads ONE handoff frame on stdin (nothing else from the agent, ever), writes the job
token to 0600 files in a private directory of the work directory and exports only
their paths (JALIEN_TOKEN_CERT, JALIEN_TOKEN_KEY, as JAliEn payloads expect), builds the
payload's environment (the handoff's, HOME and TMPDIR, ALIEN_PROC_ID, ALIEN_JDL_<name>
for the JDLVariables), checks the inputs are there, runs the executable with its
arguments (an argv, never a shell) in its own session with stdout and stderr to files,
runs the validation command, and reports each state on the status descriptor, which
the payload does not inherit. Final states, as JAliEn names them: DONE, ERROR_E (the
payload failed), ERROR_V (the validation failed), ERROR_IB (an input or the
executable is missing).

Standard library only, and the sibling module handoff.py found next to this file: the
agent copies both into the sandbox, where start-up time counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import IO, Any

if __package__:  # imported from the installed package (tests, the agent)
    from sandbox_agent import handoff
else:  # run as a file inside the sandbox: handoff.py lies next to it (-I drops the dir)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import handoff  # type: ignore[import-not-found,no-redef]

TOKEN_DIR = ".jalien-token"  # noqa: S105 (a directory name) in the work directory, 0700
EXIT_BAD_HANDOFF = 3


class Reporter:
    """Status frames to the agent, on a descriptor the payload does not inherit."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def state(self, state: str, detail: str = "", exit_code: int | None = None) -> None:
        fields: dict[str, Any] = {"state": state}
        if detail:
            fields["detail"] = detail[:4000]
        if exit_code is not None:
            fields["exit_code"] = exit_code
        handoff.write_frame(self.stream, "status", fields)


def write_token(workdir: str, token: dict[str, Any]) -> dict[str, str]:
    """The job token's files, 0600 in a 0700 directory; the variables naming them."""
    directory = os.path.join(workdir, TOKEN_DIR)
    os.mkdir(directory, 0o700)
    paths = {}
    for name, text in (("cert.pem", token["certificate"] + "".join(token["chain"])),
                       ("key.pem", token["key"])):  # fmt: skip
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        paths[name] = path
    return {"JALIEN_TOKEN_CERT": paths["cert.pem"], "JALIEN_TOKEN_KEY": paths["key.pem"]}


def environment(frame: dict[str, Any], workdir: str, token: dict[str, str]) -> dict[str, str]:
    env = dict(frame["environment"])
    env.update(HOME=workdir, TMPDIR=workdir, ALIEN_PROC_ID=str(frame["job_id"]))
    for name, value in frame["spec"]["variables"].items():
        env[f"ALIEN_JDL_{name.upper()}"] = value
    env.update(token)
    return env


def run_job(frame: dict[str, Any], workdir: str, report: Reporter) -> int:
    """Run the job the frame describes; report its states; return its exit code."""
    spec = frame["spec"]
    missing = [
        name for name in spec["input_files"] if not os.path.exists(os.path.join(workdir, name))
    ]
    argv = [spec["executable"], *spec["arguments"]]
    if missing:
        report.state("ERROR_IB", "input files missing: " + ", ".join(missing))
        return 1
    env = environment(frame, workdir, write_token(workdir, frame["token"]))
    report.state("STARTED")
    with open(os.path.join(workdir, "stdout"), "wb") as out, \
            open(os.path.join(workdir, "stderr"), "wb") as err:  # fmt: skip
        try:
            payload = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=err, start_new_session=True)  # fmt: skip
        except OSError as exc:
            report.state("ERROR_IB", f"cannot run {spec['executable']}: {exc.strerror}")
            return 127
        report.state("RUNNING")
        code = payload.wait()
    if code != 0:
        report.state("ERROR_E", f"the executable exited with {code}", exit_code=code)
        return code
    validation = spec.get("validation")
    if validation:
        report.state("SAVING", "validating")
        checked = subprocess.run(validation, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                 capture_output=True, check=False)  # fmt: skip
        if checked.returncode != 0:
            report.state("ERROR_V", f"the validation exited with {checked.returncode}",
                          exit_code=code)  # fmt: skip
            return code
    report.state("DONE", exit_code=code)
    return code


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--status-fd" or not argv[1].isdigit():
        print("sandbox-agent wrapper: usage: jobwrapper.py --status-fd N < handoff",
              file=sys.stderr)  # fmt: skip
        return EXIT_BAD_HANDOFF
    status_fd = int(argv[1])
    os.set_inheritable(status_fd, False)  # never reaches the payload
    with os.fdopen(status_fd, "wb") as status:
        try:
            frame = handoff.read_frame(sys.stdin.buffer, "handoff")
        except handoff.FrameError as exc:
            print(f"sandbox-agent wrapper: {exc}", file=sys.stderr)
            return EXIT_BAD_HANDOFF
        return run_job(frame, os.getcwd(), Reporter(status))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
