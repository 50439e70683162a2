"""JDL errors: where it went wrong, what was expected, and an excerpt with a caret."""

from __future__ import annotations

from dataclasses import dataclass

# Excerpts longer than this are windowed around the column, so a 1 MB single-line
# JDL does not print a 1 MB error.
_EXCERPT_WIDTH = 72


@dataclass(frozen=True)
class Position:
    """A 1-based line and column (columns count characters, not bytes)."""

    line: int
    col: int


class JDLError(ValueError):
    """A JDL the engine refuses, located precisely.

    ``message`` says what is wrong and, where one exists, the fix; ``expected`` names
    what the parser was looking for.  ``str()`` gives ``source:line:col: message``
    followed by the offending line and a caret under the column.
    """

    def __init__(
        self,
        message: str,
        line: int,
        col: int,
        *,
        text: str = "",
        source: str = "<jdl>",
        expected: str | None = None,
    ) -> None:
        self.message = message
        self.line = line
        self.col = col
        self.source = source
        self.expected = expected
        self.excerpt, self.caret_col = _excerpt(text, line, col)
        super().__init__(self.headline())

    def headline(self) -> str:
        """The one line that names the place and the problem."""
        where = f"{self.source}:{self.line}:{self.col}" if self.line > 0 else self.source
        if self.expected and "expected" not in self.message:
            return f"{where}: {self.message} (expected {self.expected})"
        return f"{where}: {self.message}"

    def with_source(self, source: str, text: str) -> JDLError:
        """The same error, attributed to a named file whose text is known."""
        return JDLError(
            self.message, self.line, self.col, text=text, source=source, expected=self.expected
        )

    def __str__(self) -> str:
        if not self.excerpt:
            return self.headline()
        return f"{self.headline()}\n    {self.excerpt}\n    {' ' * (self.caret_col - 1)}^"


def _excerpt(text: str, line: int, col: int) -> tuple[str, int]:
    """The line ``line`` of ``text``, windowed and made printable, and the caret column."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        return "", col
    raw = lines[line - 1].rstrip("\r")
    start = 0
    if len(raw) > _EXCERPT_WIDTH:
        start = max(0, min(col - 1 - _EXCERPT_WIDTH // 2, len(raw) - _EXCERPT_WIDTH))
        raw = raw[start : start + _EXCERPT_WIDTH]
    # One printable character per source character keeps the caret aligned.
    shown = "".join(c if c.isprintable() else " " for c in raw)
    return shown, max(1, col - start)
