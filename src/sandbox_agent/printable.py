"""Printable text, once: what a payload wrote (or a wrapper it subverted relayed), made
safe for a terminal before any command prints it.

Everything that could drive a terminal or hide text is shown as a visible escape, so a
reader sees that something was there and what it was:

- C0 controls (ESC, CR, BS, BEL, ...) and DEL as ``\\x1b``; newline and tab are kept in
  ``lines`` mode (logs), escaped in one-line fields (names, details, states);
- C1 controls (U+0080-U+009F, CSI and OSC among them) as ``\\u009b``;
- invalid UTF-8, byte by byte, as ``\\xNN`` (so ``\\x80``-``\\xff`` always means a byte
  that was not UTF-8, and ``\\u0080``-``\\u009f`` a C1 code point);
- format characters: the bidi overrides and isolates (U+202A-U+202E, U+2066-U+2069),
  the bidi marks, zero-width spaces and the like, as ``\\u202e``; only the zero-width
  (non-)joiners, which emoji and Persian or Indic text need, are kept;
- line and paragraph separators (U+2028, U+2029) as ``\\u2028``.

An ESC sequence of any kind (CSI, OSC 0/2 titles, OSC 52 clipboard, DCS, SGR 8
concealing the rest) is inert once its ESC (or C1 introducer) is escaped: what follows
is plain text. Everything else, letters of every script, emoji, spaces, is kept as it
is, and so is the backslash: ``\\x1b`` in the output may be four characters the payload
wrote, never an escape character that reached the terminal.
"""

from __future__ import annotations

import re

# The format characters (general category Cf) of Unicode 15, without U+200C and U+200D;
# tests/test_printable.py checks this list against unicodedata.
_FORMAT = (
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b\u200e\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f"
)
# Controls, separators, format characters, and the surrogates that invalid UTF-8
# decoded with surrogateescape (or an os.fsdecode'd name) becomes.
_OTHERS = "\x7f-\x9f\u2028\u2029\ud800-\udfff" + _FORMAT
_ONE_LINE = re.compile(f"[\x00-\x1f{_OTHERS}]")
_LINES = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHERS}]")  # newline (0x0a) and tab (0x09) kept


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x80:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str | bytes, *, lines: bool = False) -> str:
    """``text`` safe to print on a terminal: one line, or with ``lines`` (a log) its
    newlines and tabs kept. Bytes are read as UTF-8, every invalid byte escaped."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    return (_LINES if lines else _ONE_LINE).sub(_escape, text)


def clipped(text: object, limit: int) -> str:
    """``text`` (anything from elsewhere: a peer, a payload, an exception) as one
    printable line of at most ``limit`` characters, '...' ending a longer one."""
    shown = printable(str(text))
    return shown if len(shown) <= limit else shown[:limit] + "..."
