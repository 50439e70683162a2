"""Printable text (``sandbox_agent.printable``): the one place that makes what a payload
wrote safe for a terminal. The commands that print it are tested end to end, through the
real pilot and a real pseudo-terminal, in tests/adversarial/test_adv_terminal.py."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from sandbox_agent.printable import printable

# Unicode categories that drive a terminal or hide text: controls, format characters
# (bidi overrides, isolates and marks, zero-width spaces), line and paragraph separators,
# and surrogates (what invalid UTF-8 becomes).
UNSAFE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")
KEPT_FORMAT = ("\u200c", "\u200d")  # zero-width (non-)joiner: emoji, Persian, Indic scripts


def test_every_control_format_and_separator_character_is_escaped() -> None:
    """Checked against this Python's Unicode database, so a character the hand-written
    list in printable.py missed shows up here."""
    unsafe = [chr(code) for code in range(sys.maxunicode + 1)
              if unicodedata.category(chr(code)) in UNSAFE_CATEGORIES]  # fmt: skip
    missed = [f"U+{ord(c):04X}" for c in unsafe
              if c not in KEPT_FORMAT and printable(f"a{c}b") == f"a{c}b"]  # fmt: skip
    assert missed == []


def test_what_is_escaped_is_shown_as_a_visible_escape() -> None:
    assert printable("\x1b]0;title\x07") == "\\x1b]0;title\\x07"
    assert printable("\x1b]52;c;ZXZpbA==\x1b\\") == "\\x1b]52;c;ZXZpbA==\\x1b\\"
    assert printable("\x1b[8mhidden\x1b[0m") == "\\x1b[8mhidden\\x1b[0m"
    assert printable("a\rb\bc\x7f\x00") == "a\\x0db\\x08c\\x7f\\x00"
    assert printable("\u009b2J\u009d0;t\u0085") == "\\u009b2J\\u009d0;t\\u0085"
    assert printable("\u202eevil\u202c \u2066x\u2069 \u200f\u061c") == (
        "\\u202eevil\\u202c \\u2066x\\u2069 \\u200f\\u061c"
    )
    assert printable("one\u2028two\u2029") == "one\\u2028two\\u2029"
    assert printable("tag\U000e0041") == "tag\\U000e0041"


def test_invalid_utf8_is_escaped_byte_by_byte_and_c1_is_told_apart() -> None:
    # 0x9b alone is a C1 CSI to an 8-bit terminal; as UTF-8 it is invalid
    assert printable(b"\x9b2J \xff\xfe \xc3") == "\\x9b2J \\xff\\xfe \\xc3"
    assert printable("\u009b".encode()) == "\\u009b"  # the code point, validly encoded
    assert printable(b"caf\xc3\xa9") == "café"
    # an os.fsdecode'd name carries its invalid bytes as surrogates
    assert printable("bad\udcff.txt") == "bad\\xff.txt"


@pytest.mark.parametrize("text", [
    "plain ASCII, punctuation: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "café, Straße, Ελληνικά, русский, עברית, العربية, 中文, 日本語, 한국어",
    "emoji 👩‍💻 and flags 🇨🇭, non-breaking\u00a0space, می‌خواهم",
    "a backslash \\x1b is four characters, kept",
])
def test_ordinary_text_is_kept_as_it_is(text: str) -> None:
    assert printable(text) == text
    assert printable(text, lines=True) == text
    assert printable(text.encode()) == text


def test_logs_keep_newlines_and_tabs_and_one_line_fields_do_not() -> None:
    assert printable("a\tb\nc\n", lines=True) == "a\tb\nc\n"
    assert printable("a\tb\nc\n") == "a\\x09b\\x0ac\\x0a"
    # a carriage return, a vertical tab, a form feed or NEL would break or overwrite a
    # line on a terminal: escaped in logs too
    assert printable("ok\rFAKE\x0bx\x0cy\u0085z", lines=True) == (
        "ok\\x0dFAKE\\x0bx\\x0cy\\u0085z"
    )


def test_the_output_holds_no_character_a_terminal_would_act_on() -> None:
    everything = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    for shown in (printable(everything), printable(bytes(range(256))),
                  printable(everything, lines=True)):  # fmt: skip
        left = {unicodedata.category(c) for c in shown if c not in "\n\t" + "".join(KEPT_FORMAT)}
        assert not left & set(UNSAFE_CATEGORIES)
