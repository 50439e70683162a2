"""Terminal injection (issue 16, finding 4): what a payload wrote reaches a person's
terminal through `logs`, `outputs`, `status`, `audit show` and the pilot's own
progress lines. A hostile payload writes ESC sequences of every kind (a forged
`==> stderr <==` header, the window title (OSC 0), the clipboard (OSC 52), SGR 8 to
conceal what follows, clearing the screen, moving the cursor), C1 controls, bidi
overrides and invalid UTF-8 on stdout and stderr, and names its outputs with them.

Everything runs through the real console script and the real pilot (bwrap, seccomp,
cgroups), as root and as an unprivileged agent in a delegated cgroup; the commands
print to a real pseudo-terminal, and through a pipe. What must hold:

- no ESC, no C1 control, no bidi control, no other C0 control but newline and tab
  reaches the terminal, and what reaches it is valid UTF-8;
- what was there is shown as a visible escape (\\x1b, \\u202e, \\xff);
- a payload's line that imitates a header cannot pass for one;
- `logs --raw --stream S` gives the stream's exact bytes, on a terminal or a pipe.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_support import ROOT, SCRIPT, cli_env, close_scopes, run_cli, unprivileged_or_skip

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

HOSTILE = (
    b"\x1b]0;PWNED title\x07"  # OSC 0: the window title
    b"\x1b]52;c;ZXZpbCBjbGlwYm9hcmQ=\x07"  # OSC 52: the clipboard
    b"\x1b[2J\x1b[H\x1b[5A"  # clear the screen, cursor home, cursor up
    b"\x1bP+q544e\x1b\\"  # DCS (a terminfo query: the terminal answers on its input)
    b"\xc2\x9b31m\xc2\x9d2;c1 title\xc2\x9c"  # C1 CSI and OSC, as UTF-8 code points
    b"\x9b31m"  # a C1 CSI as a bare byte: invalid UTF-8, live on an 8-bit terminal
    b"\xe2\x80\xae(reversed)\xe2\x80\xac \xe2\x81\xa6isolate\xe2\x81\xa9"  # RLO/PDF, LRI/PDI
    b" \xff\xfe bad bytes\r overwritten\x08\x7f\n"
)
STDOUT = b"all good\n==> stderr <==\nno errors at all\n" + HOSTILE + b"\x1b[8m"  # no final \n
STDERR = b"\x1b[8m" + b"Error: real failure\n" + HOSTILE
KEPT = b"kept\x1b]0;NAME title\x07\xe2\x80\xae\xc2\x9b.txt"  # a (UTF-8) name the payload chose
LINKED = b"linked\x1b]52;c;ZXZpbA==\x07\xe2\x80\xae.txt"  # a hard link: refused, named


def octal(data: bytes) -> str:
    """``data`` for printf's format, every byte an octal escape: exact, and nothing a
    shell or the JDL reads differently."""
    return "".join(f"\\{byte:03o}" for byte in data)


PAYLOAD = f"""#!/bin/sh
printf '{octal(STDOUT)}'
printf '{octal(STDERR)}' >&2
printf kept > "$(printf '{octal(KEPT)}')"
printf linked > plain
ln plain "$(printf '{octal(LINKED)}')"
exit 0
"""


@dataclass
class Ran:
    """A home where the hostile job ran, and how to run the CLI against it."""

    env: dict[str, str]
    program: list[str] | None
    job: int
    run_shown: bytes  # the pilot's text output, on a terminal

    def terminal(self, *args: object) -> bytes:
        code, shown = on_terminal(self.command(*args), self.env)
        assert code == 0, shown
        return shown

    def pipe(self, *args: object) -> bytes:
        result = subprocess.run(self.command(*args), env=self.env, cwd=ROOT,
                                capture_output=True, timeout=120, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert b"Traceback" not in result.stderr
        return result.stdout + result.stderr

    def command(self, *args: object) -> list[str]:
        return (self.program or [str(SCRIPT)]) + [str(a) for a in args]


def on_terminal(command: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run ``command`` with stdout and stderr on a new pseudo-terminal; return its exit
    status and every byte it wrote to the terminal. The terminal's output processing
    is off (no newline to CR LF), so the bytes are the program's own."""
    master, slave = pty.openpty()
    attributes = termios.tcgetattr(slave)
    attributes[1] &= ~termios.OPOST
    termios.tcsetattr(slave, termios.TCSANOW, attributes)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                               env=env, cwd=ROOT, start_new_session=True)  # fmt: skip
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        code = process.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert b"Traceback" not in shown, shown
    return code, bytes(shown)


def assert_safe(shown: bytes) -> str:
    """What a terminal would act on is absent; returns the text shown."""
    assert b"\x1b" not in shown, shown
    text = shown.decode("utf-8")  # strict: no invalid byte reached the terminal
    acting = sorted({f"U+{ord(c):04X}" for c in text
                     if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F
                     or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069})  # fmt: skip
    assert acting == [], acting
    return text


def assert_hostile_shown_escaped(text: str) -> None:
    """What the payload sent is visible, each thing as an escape a reader can look up."""
    for seen in ("\\x1b]0;PWNED title\\x07", "\\x1b]52;c;ZXZpbCBjbGlwYm9hcmQ=\\x07",
                 "\\x1b[2J\\x1b[H\\x1b[5A", "\\u009b31m", "\\x9b31m",
                 "\\u202e(reversed)\\u202c \\u2066isolate\\u2069",
                 "\\xff\\xfe bad bytes\\x0d overwritten\\x08\\x7f"):  # fmt: skip
        assert seen in text, (seen, text)


@pytest.fixture(scope="module", params=["agent-as-root", "agent-as-nobody"])
def ran(request: pytest.FixtureRequest) -> Iterator[Ran]:
    """The hostile job, run by the real pilot (its progress lines on a terminal)."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-terminal-"))
    base.chmod(0o711)
    home = base / "home"
    jdl_dir = base / "jdl"
    jdl_dir.mkdir()
    (jdl_dir / "hostile.sh").write_text(PAYLOAD)
    (jdl_dir / "hostile.sh").chmod(0o755)
    (jdl_dir / "hostile.jdl").write_text('Executable = "hostile.sh"; Output = {"*.txt"};\n')
    cleanup: list[Path] = []
    try:
        if request.param == "agent-as-root":
            env, program, prefix = cli_env(home), None, []
        else:
            nobody = unprivileged_or_skip("terminal")
            prefix, cleanup, program = nobody.prefix, nobody.cgroups, nobody.program
            home.mkdir()
            os.chown(home, 65534, 65534)
            env = cli_env(home, **nobody.extra)
        submitted = run_cli(env, "submit", jdl_dir / "hostile.jdl",
                            program=prefix + (program or [str(SCRIPT)]))  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        code, run_shown = on_terminal(prefix + (program or [str(SCRIPT)]) + ["run"], env)
        assert code == 0, run_shown
        yield Ran(env, program, int(submitted.stdout), run_shown)
    finally:
        close_scopes(list(cleanup))
        shutil.rmtree(base, ignore_errors=True)


def test_logs_on_a_terminal_show_every_sequence_escaped_and_no_forged_header(ran: Ran) -> None:
    text = assert_safe(ran.terminal("logs", ran.job))
    assert_hostile_shown_escaped(text)
    lines = text.splitlines()
    # only the real headers begin with '==>'; the payload's copy of one is told apart
    assert [line for line in lines if line.startswith("==>")][:2] == [
        "==> stdout <==", "==> stderr <=="]
    assert "\\x3d=> stderr <==" in lines
    # stdout ended without a newline: the real header still starts a line of its own,
    # and the SGR 8 meant to conceal stderr is shown, not obeyed
    stderr_at = lines.index("==> stderr <==")
    assert lines[stderr_at - 1].endswith("\\x1b[8m")
    assert lines[stderr_at + 1] == "\\x1b[8mError: real failure"


def test_logs_through_a_pipe_are_printable_too(ran: Ran) -> None:
    """A pipe often ends on a terminal too (`logs 7 | less -R`, `logs 7 > f; cat f`)."""
    shown = ran.pipe("logs", ran.job, "--stream", "stderr")
    text = assert_safe(shown)
    assert text.startswith("\\x1b[8mError: real failure\n")
    assert_hostile_shown_escaped(text)
    assert_hostile_shown_escaped(assert_safe(ran.pipe("logs", ran.job)))


def test_raw_gives_the_exact_bytes_on_a_terminal_and_through_a_pipe(ran: Ran) -> None:
    for name, written in (("stdout", STDOUT), ("stderr", STDERR)):
        assert ran.terminal("logs", ran.job, "--stream", name, "--raw") == written
        assert ran.pipe("logs", ran.job, "--stream", name, "--raw") == written


def test_raw_is_one_stream_so_no_header_is_ever_mixed_with_raw_bytes(ran: Ran) -> None:
    result = run_cli(ran.env, "logs", ran.job, "--raw", program=ran.program)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("sandbox-agent: --raw writes the exact bytes of one stream: add "
                             "--stream stdout, --stream stderr or --stream wrapper.log\n")


def test_names_details_and_progress_lines_are_printable_on_a_terminal(ran: Ran) -> None:
    """One-line fields: output names (kept or refused), the job's detail in `status`,
    `audit show` and the pilot's own line; and in --json. U+202E is shown as \\u202e, never as
    '\\x202e', which a reader takes for a space (\\x20) and '2e'."""
    kept = "kept\\x1b]0;NAME title\\x07\\u202e\\u009b.txt"
    linked = "linked\\x1b]52;c;ZXZpbA==\\x07\\u202e.txt"
    run_text = assert_safe(ran.run_shown)
    assert f"job {ran.job}: ERROR_SV exit 0 in " in run_text
    assert f"(an output was refused: {linked}: has 2 hard links" in run_text
    outputs = assert_safe(ran.terminal("outputs", ran.job))
    assert outputs.splitlines()[1].endswith(f"  {kept}")
    assert f"  not kept: {linked}: has 2 hard links" in outputs
    status = assert_safe(ran.terminal("status", ran.job))
    assert f"ERROR_SV   exit 0  an output was refused: {linked}: has 2 hard links" in status
    audit = assert_safe(ran.terminal("audit", "show", ran.job))
    assert f"output {kept}: 4 bytes" in audit
    assert f"(an output was refused: {linked}: has 2 hard links" in audit
    # --json carries them as they are, JSON-escaped and ASCII only
    for args in (("outputs", ran.job, "--json"), ("status", ran.job, "--json"),
                 ("audit", "show", ran.job, "--json")):  # fmt: skip
        shown = ran.terminal(*args)
        assert shown.isascii(), args
        assert_safe(shown)
        assert b"\\u001b]" in shown and b"\\u0007\\u202e" in shown, args  # a name, escaped


def test_an_error_naming_a_payloads_file_is_one_printable_line(ran: Ran) -> None:
    """`outputs --to DIR` twice: the second refuses to copy over the first, naming the
    file the payload named."""
    with tempfile.TemporaryDirectory(dir="/tmp") as target:
        os.chmod(target, 0o777)
        assert run_cli(ran.env, "outputs", ran.job, "--to", target,
                       program=ran.program).returncode == 0  # fmt: skip
        code, shown = on_terminal(ran.command("outputs", ran.job, "--to", target), ran.env)
        assert code == 1
        text = assert_safe(shown)
        assert text.startswith(f"sandbox-agent: {target}/")
        assert text.endswith(": exists already; give an empty --to directory\n")
        assert len(text.splitlines()) == 1
