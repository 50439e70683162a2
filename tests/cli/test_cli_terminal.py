"""`status`'s resource-use line from a broker's answer: text from afar, printed as one
printable line, never a traceback. (The commands end to end, through the real pilot and
a real pseudo-terminal: tests/adversarial/test_adv_terminal.py.)"""

from __future__ import annotations

from sandbox_agent.cli.queue import _usage_text


def test_a_usage_line_from_afar_is_printable_and_skips_what_is_not_a_number() -> None:
    shown = _usage_text({
        "wall_seconds": "\x1b]0;title\x07", "cpu_seconds": 1.5, "processes_peak": "\x1b[2J",
        "memory_peak_bytes": True, "oom_kills": 2, "kill_reason": "wall time\x1b[8m\u202e",
    })  # fmt: skip
    assert shown == ("wall 0.00 s, cpu 1.50 s, 2 OOM kill(s), killed by the agent: wall "
                     "time\\x1b[8m\\u202e")  # fmt: skip
    # the agent's own numbers are shown as before
    shown = _usage_text({"wall_seconds": 0.061, "cpu_seconds": 0.03,
                         "memory_peak_bytes": 5955584, "processes_peak": 3})  # fmt: skip
    assert shown == "wall 0.06 s, cpu 0.03 s, memory peak 5.7 MB, up to 3 processes"


def test_a_header_imitated_with_unseen_characters_is_escaped_too() -> None:
    """A joiner or a combining mark inside '==>', or blanks or fillers before it, draw
    nothing a reader sees: every '==>' a payload wrote is shown with its '=' escaped."""
    from sandbox_agent.cli.results import _shown

    forged = ["==> stderr <==", "=\u200d=> stderr <==", "=\u034f=> stderr <==",
              "  ==> stderr <==", "\u200b==> stderr <=="]  # fmt: skip
    shown = _shown("stdout", ("\n".join([*forged, "a ==> b"]) + "\n").encode(), True)
    lines = shown.decode().splitlines()
    assert lines[0] == "==> stdout <=="  # our header, the only line that begins with it
    assert not any("==>" in line for line in lines[1:])
    assert all("\\x3d" in line for line in lines[1:6])
    assert lines[6] == "a \\x3d=> b"  # anywhere in a line: nothing before it can hide it
