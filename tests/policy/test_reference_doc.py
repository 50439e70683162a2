"""docs/policy-reference.md documents every key of the schema, and no key that is not."""

from __future__ import annotations

import re
from pathlib import Path

from sandbox_agent.policy.schema import FIELDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy-reference.md"


def test_every_key_is_documented_and_no_other() -> None:
    text = DOC.read_text()
    rows = set(re.findall(r"^\| `([a-z_.]+)` \|", text, re.MULTILINE))
    assert rows == set(FIELDS)


def test_every_lint_rule_is_documented() -> None:
    source = (Path(__file__).resolve().parents[2] / "src/sandbox_agent/policy/lint.py").read_text()
    rules = set(re.findall(r'Finding\(\s*"(?:error|warning)",\s*"([a-z-]+)"', source))
    rules |= set(re.findall(r'Finding\(severity, "([a-z-]+)"', source))
    text = DOC.read_text()
    assert rules and all(f"`{rule}`" in text for rule in rules), rules
