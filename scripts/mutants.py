"""Mutation testing of the security-critical modules: do the tests hold the defences?

Each mutant is one small change to one module (a comparison turned round, a check
deleted, a flag dropped); the tests that exercise that module must fail on it. A mutant
they pass on (a survivor) is a defence no test holds.

The working tree is never touched: the tree is copied (the files git knows, committed or
not, so new tests count) into a temporary directory per worker, and pytest runs there
with the copy's src first on sys.path. The package's editable install only appends
/work/main/src after site-packages, so PYTHONPATH wins; a canary mutant (an import that
raises) proves it before any count is trusted.

    .venv/bin/python scripts/mutants.py                      # every module below
    .venv/bin/python scripts/mutants.py --module handoff --sample 40 --list-survivors

Score = (killed + timed out) / (mutants - equivalent). An equivalent mutant changes no
behaviour (it is named in EQUIVALENT below with the reason); a mutant that makes the
tests hang is killed by the per-mutant timeout and counted apart from the failures.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module (under src/) -> the test files that exercise it (globs, so new tests join). In
# this order: the tests that fail fast come first, so that with -x a mutant that would
# hang a slower test (a writer thread blocked on a full pipe) is usually killed before.
MODULES: dict[str, list[str]] = {
    "sandbox_agent/tokens/verify.py": ["tests/tokens/test_*.py"],
    "sandbox_agent/wrapper/handoff.py": ["tests/wrapper/test_handoff_*.py",
                                         "tests/wrapper/test_handoff.py"],
    "sandbox_agent/agent/outputs.py": ["tests/agent/test_outputs_*.py",
                                       "tests/agent/test_outputs.py"],
    "sandbox_agent/runtime/workdir.py": ["tests/runtime/test_outputs_removal.py"],
    "sandbox_agent/policy/compose.py": ["tests/policy/test_compose_*.py",
                                        "tests/policy/test_compose.py",
                                        "tests/images/test_image_selection.py"],
}  # fmt: skip

# Mutants that cannot change behaviour: (module, original line, mutated line) -> why.
# Lines are compared stripped, so the entries survive code moving up or down.
_VERIFY = "sandbox_agent/tokens/verify.py"
_UNREACHED_CA_CHECK = (
    "the issuing CAs' own validity check never fires: cryptography's verifier has already "
    "refused any CA (the anchor included) outside its window at an instant within the "
    "skew of now, so this check and its message are defence in depth no input reaches"
)
_CHAIN_HAS_AN_ISSUER = (
    "a verified chain always holds the token and at least one CA (a CA certificate is "
    "refused as a token before), so len(chain) > 1 always and the else branch is dead"
)
_HANDOFF, _OUTPUTS = "sandbox_agent/handoff.py", "sandbox_agent/agent/outputs.py"
_REMOVAL = "sandbox_agent/runtime/workdir.py"
_COMPOSE = "sandbox_agent/policy/compose.py"
_NOT_LIST = "only 'list' is compared: any other shape word means a map"
_INDENT = "the C encoder's indent level, ignored when no indent is set"
_CHECKED_FIRST = (
    "skipkeys and allow_nan: encode has checked every key (text) and every value (no "
    "float) before it dumps, so no key is skipped and no NaN is there to allow"
)
_SAME_FLAGS = "the added bit is another RESOLVE_ flag of the same mask: the same set"
_NO_SYMLINKS = (
    "RESOLVE_NO_SYMLINKS already refuses every link, magic links included, so dropping "
    "RESOLVE_NO_MAGICLINKS changes nothing while NO_SYMLINKS stays (the tests hold that one)"
)
_RDONLY = "O_RDONLY is 0: dropping it from an | changes no bit"
_CHUNK_SIZE = "the copy's chunk size: fewer or more reads, the same bytes"
_FD_ZERO = "descriptor 0 is the agent's stdin, always open, so openat2 never returns it"
_STRERROR = "open_output words its refusal from the errno; this text is never shown"
_PEP_446 = (
    "os.open makes every descriptor non-inheritable itself (PEP 446 adds O_CLOEXEC); the "
    "flag matters only where a descriptor comes from the raw openat2 syscall (held there)"
)
_ROOT_CHMOD = (
    "differs only as root (geteuid is never -1), where each chmod is needless but leaves "
    "nothing changed: a directory of the tree then removed, made 0700 through a descriptor "
    "that follows no link (the 65534 tests hold every chmod for any other uid)"
)
_FRESH_NAME = (
    "the counter only has to give each move up a name not used before, and each is checked "
    "free first: any start, any step but 0 (killed), does"
)
EQUIVALENT: dict[tuple[str, str, str], str] = {
    (_VERIFY, "for issuer in chain[1:]:", "for issuer in chain[2:]:"): _UNREACHED_CA_CHECK,
    (_VERIFY, "for issuer in chain[1:]:", "for issuer in chain[0:]:"):
        "the token itself was checked just before, against the same clock",
    (_VERIFY, "self._check_validity(issuer, now, f\"issuing CA '{_common_name(issuer)}'\")",
     "pass"): _UNREACHED_CA_CHECK,
    (_VERIFY, "return str(names[-1].value) if names else cert.subject.rfc4514_string()",
     "pass"): "_common_name only names a CA in that unreached message",
    (_VERIFY, "return str(names[-1].value) if names else cert.subject.rfc4514_string()",
     "return str(names[-0].value) if names else cert.subject.rfc4514_string()"):
        "_common_name only names a CA in that unreached message",
    (_VERIFY, "issuer = chain[1] if len(chain) > 1 else chain[0]",
     "issuer = chain[1] if len(chain) >= 1 else chain[0]"): _CHAIN_HAS_AN_ISSUER,
    (_VERIFY, "issuer = chain[1] if len(chain) > 1 else chain[0]",
     "issuer = chain[1] if len(chain) > 0 else chain[0]"): _CHAIN_HAS_AN_ISSUER,
    (_VERIFY, "issuer = chain[1] if len(chain) > 1 else chain[0]",
     "issuer = chain[1] if len(chain) > 1 else chain[1]"): _CHAIN_HAS_AN_ISSUER,
    (_VERIFY, "issuer = chain[1] if len(chain) > 1 else chain[0]",
     "issuer = chain[1] if len(chain) > 1 else chain[-1]"): _CHAIN_HAS_AN_ISSUER,
    (_VERIFY, "return False", "pass"): "_is_ca: None is as false as False to its one caller",
    # handoff.py
    (_HANDOFF, 'STR_MAP = ("map", str)', "STR_MAP = ('', str)"): _NOT_LIST,
    (_HANDOFF, 'INT_MAP = ("map", int)', "INT_MAP = ('', int)"): _NOT_LIST,
    (_HANDOFF, '_WHITESPACE = " \\t\\n\\r"  # what JSON allows around a value',
     "_WHITESPACE = ''  # what JSON allows around a value"):
        "without it a frame with whitespace around it falls back to the json package, "
        "which reads it the same (only slower); our own frames are compact",
    (_HANDOFF, "raise", "pass"):
        "strict_loads: a RecursionError not re-raised goes on to json.loads, which "
        "recurses as deep and raises it again",
    (_HANDOFF, 'raise TypeError(f"{type(value).__name__} is not JSON")', "pass"):
        "_unencodable is unreachable: encode checks every value's type and every key "
        "before it dumps",
    (_HANDOFF, 'return json.dumps(message, ensure_ascii=False, allow_nan=False, '
     'separators=(",", ":"))', 'return json.dumps(message, ensure_ascii=False, '
     'allow_nan=True, separators=(",", ":"))'): _CHECKED_FIRST,
    (_HANDOFF, "False, False, False)  # fmt: skip", "False, True, False)  # fmt: skip"):
        _CHECKED_FIRST,
    (_HANDOFF, "False, False, False)  # fmt: skip", "False, False, True)  # fmt: skip"):
        _CHECKED_FIRST,
    (_HANDOFF, 'return "".join(encode(message, 0))', 'return "".join(encode(message, 1))'):
        _INDENT,
    (_HANDOFF, 'return "".join(encode(message, 0))', 'return "".join(encode(message, -1))'):
        _INDENT,
    # agent/outputs.py
    (_OUTPUTS, "_RESOLVE_NO_MAGICLINKS = 0x02", "_RESOLVE_NO_MAGICLINKS = 3"): _SAME_FLAGS,
    (_OUTPUTS, "_RESOLVE_NO_MAGICLINKS = 0x02", "_RESOLVE_NO_MAGICLINKS = 1"): _NO_SYMLINKS,
    (_OUTPUTS, "_RESOLVE_NO_MAGICLINKS = 0x02", "_RESOLVE_NO_MAGICLINKS = 0"): _NO_SYMLINKS,
    (_OUTPUTS, "_RESOLVE_NO_SYMLINKS = 0x04", "_RESOLVE_NO_SYMLINKS = 5"): _SAME_FLAGS,
    (_OUTPUTS, "_RESOLVE_BENEATH = 0x08", "_RESOLVE_BENEATH = 9"): _SAME_FLAGS,
    (_OUTPUTS, "_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS | "
     "_RESOLVE_NO_XDEV", "_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | "
     "_RESOLVE_NO_XDEV"): _NO_SYMLINKS,
    (_OUTPUTS, "_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | "
     "os.O_NOCTTY", "_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY"):
        _RDONLY,
    (_OUTPUTS, "_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | "
     "os.O_NOCTTY", "_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC"):
        "O_NOCTTY matters only when a terminal device is opened, and an output that is a "
        "device is refused; a payload cannot make device nodes (nodev, no CAP_MKNOD)",
    (_OUTPUTS, "_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC",
     "_DIR_FLAGS = os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC"): _RDONLY,
    (_REMOVAL, "_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC",
     "_DIR_FLAGS = os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC"): _RDONLY,
    (_OUTPUTS, "_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC",
     "_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC"):
        "a component that is not a directory fails the next open relative to it with "
        "ENOTDIR all the same",
    (_OUTPUTS, "_CHUNK = 1 << 20", "_CHUNK = 2 << 20"): _CHUNK_SIZE,
    (_OUTPUTS, "_CHUNK = 1 << 20", "_CHUNK = 1 << 21"): _CHUNK_SIZE,
    (_OUTPUTS, "_CHUNK = 1 << 20", "_CHUNK = 1 << 19"): _CHUNK_SIZE,
    (_OUTPUTS, "_CHUNK = 1 << 20", "_CHUNK = 1 << 0"): _CHUNK_SIZE,
    (_OUTPUTS, "if fd < 0:", "if fd <= 0:"): _FD_ZERO,
    (_OUTPUTS, "if fd < 0:", "if fd < 1:"): _FD_ZERO,
    (_OUTPUTS, 'raise OSError(errno.EXDEV, "leaves the work directory", name)',
     "raise OSError(errno.EXDEV, '', name)"): _STRERROR,
    (_OUTPUTS, 'raise OSError(errno.EXDEV, "crosses a mount point", name)',
     "raise OSError(errno.EXDEV, '', name)"): _STRERROR,
    (_OUTPUTS, 'os.close(_openat2(root, ".", _DIR_FLAGS))',
     "os.close(_openat2(root, '', _DIR_FLAGS))"):
        "has_openat2 asks only whether the call exists: ENOENT for '' says so as well",
    (_OUTPUTS, "return None", "pass"): "a function that ends returns None all the same",
    (_OUTPUTS, "while written < cap:", "while written <= cap:"):
        "at the cap the read asks for 0 bytes, gets b'' and the loop breaks all the same",
    (_OUTPUTS, "out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | "
     "os.O_CLOEXEC,", "out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | "
     "os.O_CLOEXEC,"):
        "O_CREAT|O_EXCL already refuses any name that is there, a link included, and never "
        "follows one (the test with a name planted in the store holds O_EXCL)",
    (_OUTPUTS, "out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | "
     "os.O_CLOEXEC,", "out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | "
     "os.O_NOFOLLOW,"): _PEP_446,
    (_REMOVAL, "flags = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC",
     "flags = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY"): _PEP_446,
    (_REMOVAL, "fix_modes = os.geteuid() != 0  # root needs no permission to remove",
     "fix_modes = os.geteuid() != -1  # root needs no permission to remove"): _ROOT_CHMOD,
    (_REMOVAL, "if fix_modes:", "if True:"): _ROOT_CHMOD,
    (_REMOVAL, "if fix_modes:  # first: a top the payload left 000 could not even be opened",
     "if True:"): _ROOT_CHMOD,
    (_REMOVAL, 'if fix_modes:  # moving a directory writes its ".."', "if True:"): _ROOT_CHMOD,
    (_REMOVAL, "hoisted = 0", "hoisted = 1"): _FRESH_NAME,
    (_REMOVAL, "hoisted = 0", "hoisted = -1"): _FRESH_NAME,
    (_REMOVAL, "hoisted += 1", "hoisted -= 1"): _FRESH_NAME,
    (_REMOVAL, "hoisted += 1", "hoisted += 2"): _FRESH_NAME,
    (_REMOVAL, "if _is_directory(child, inner):  # up to the top: the depth stays 2", "if True:"):
        "a file (or link) below the top moved up as if a directory is unlinked there in the "
        "next round: removed all the same, and rename moves a link itself, never its target",
    # policy/compose.py
    (_COMPOSE, "return None", "pass"): "a function that ends returns None all the same",
}  # fmt: skip

PYTEST = ["-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--timeout=0"]


# --- the mutants ---------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    module: str  # as in MODULES
    index: int  # of the node in walk order: the same node in a fresh parse
    operator: str
    line: int
    original: str  # the source line
    mutated: str  # the same line with the change spliced in
    make: Callable[[ast.AST], ast.AST]  # the node -> its replacement


COMPARE_SWAPS = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
                 ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In,
                 ast.Is: ast.IsNot, ast.IsNot: ast.Is}  # fmt: skip
ARITHMETIC_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add}


def _walk(tree: ast.AST) -> list[tuple[ast.AST, ast.AST | None]]:
    """Every node with its parent, in a fixed order (the same for a copy of the tree)."""
    out: list[tuple[ast.AST, ast.AST | None]] = [(tree, None)]
    for node, _parent in out:  # grows while it is read: breadth first
        out.extend((child, node) for child in ast.iter_child_nodes(node))
    return out


def _skipped(tree: ast.AST) -> set[int]:
    """Nodes no mutant should touch: docstrings and annotations (never evaluated here:
    every module has `from __future__ import annotations`), type aliases and what only
    mypy reads (`TYPE_CHECKING`), `__future__` imports."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if _type_only(node):
            ids.update(id(n) for n in ast.walk(node))
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        value = first.value if isinstance(first, ast.Expr) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):  # a docstring
            ids.update(id(n) for n in ast.walk(value))
        annotations: list[ast.AST | None] = []
        if isinstance(node, ast.arg | ast.AnnAssign):
            annotations.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations.append(node.returns)
        if isinstance(node, ast.JoinedStr | ast.ImportFrom):
            annotations.append(node)  # f-string pieces are text, not values
        for sub in filter(None, annotations):
            ids.update(id(n) for n in ast.walk(sub))
    return ids


def _type_only(node: ast.AST) -> bool:
    if isinstance(node, ast.If) and isinstance(node.test, ast.Name):
        return node.test.id == "TYPE_CHECKING"
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id == "TYPE_CHECKING"
    return isinstance(node, ast.AnnAssign) and ast.unparse(node.annotation) == "TypeAlias"


def _with(node: ast.AST, **changes: object) -> ast.AST:
    new = copy.copy(node)
    for name, value in changes.items():
        setattr(new, name, value)
    return new


def _bitor_operands(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _bitor_operands(node.left) + _bitor_operands(node.right)
    return [node]  # type: ignore[list-item]


def _join_bitor(operands: list[ast.expr]) -> ast.expr:
    joined = operands[0]
    for operand in operands[1:]:
        joined = ast.BinOp(joined, ast.BitOr(), operand)
    return joined


def _changes(node: ast.AST, parent: ast.AST | None) -> Iterator[tuple[str, Callable[..., ast.AST]]]:
    """(operator name, node -> replacement) for each mutant of this one node."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAPS:
                swapped = COMPARE_SWAPS[type(op)]

                def compare(n: ast.Compare, i: int = i, swapped: type = swapped) -> ast.AST:
                    return _with(n, ops=[*n.ops[:i], swapped(), *n.ops[i + 1:]])

                yield f"{type(op).__name__} -> {swapped.__name__}", compare
    elif isinstance(node, ast.BoolOp):
        swap: type[ast.boolop] = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield f"{type(node.op).__name__} -> {swap.__name__}", lambda n: _with(n, op=swap())
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "not removed", lambda n: n.operand
    elif isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in ARITHMETIC_SWAPS:
        other = ARITHMETIC_SWAPS[type(node.op)]
        yield f"{type(node.op).__name__} -> {other.__name__}", lambda n: _with(n, op=other())
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        # a flag chain, once, at its top: each flag dropped in turn
        if not (isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.BitOr)):
            operands = _bitor_operands(node)
            for i, dropped in enumerate(operands):
                def drop(n: ast.AST, i: int = i) -> ast.AST:
                    kept = _bitor_operands(n)
                    return _join_bitor(kept[:i] + kept[i + 1:])

                yield f"| drops {ast.unparse(dropped)}", drop
    elif isinstance(node, ast.Constant):
        yield from _constant_changes(node.value)
    elif isinstance(node, ast.Raise | ast.Return) or (
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
    ):
        yield f"{type(node).__name__.lower()} deleted", lambda n: _with(ast.Pass(), **_at(n))
    elif isinstance(node, ast.If):
        for forced in (True, False):
            yield f"if forced {forced}", lambda n, f=forced: _with(n, test=ast.Constant(f))


def _constant_changes(value: object) -> Iterator[tuple[str, Callable[..., ast.AST]]]:
    if isinstance(value, bool):
        yield f"{value} -> {not value}", lambda n: _with(n, value=not value)
    elif isinstance(value, int):
        for new in dict.fromkeys((value + 1, value - 1, 0)):
            if new != value:
                yield f"{value} -> {new}", lambda n, new=new: _with(n, value=new)
    elif isinstance(value, str | bytes) and value:
        yield "string emptied", lambda n: _with(n, value=value[:0])


def _at(node: ast.AST) -> dict[str, object]:
    names = ("lineno", "col_offset", "end_lineno", "end_col_offset")
    return {name: getattr(node, name) for name in names if hasattr(node, name)}


def _spliced(lines: list[str], node: ast.AST, replacement: ast.AST) -> str:
    """The node's first source line with the replacement's text in the node's place."""
    raw = lines[node.lineno - 1].encode()  # type: ignore[attr-defined]
    start = node.col_offset  # type: ignore[attr-defined]  # (offsets count UTF-8 bytes)
    head = raw[:start].decode()
    if isinstance(replacement, ast.If):  # only the condition changed: show the header
        return f"{head}if {ast.unparse(replacement.test)}:"
    if node.end_lineno != node.lineno:  # type: ignore[attr-defined]
        return head + ast.unparse(replacement).splitlines()[0]
    return head + ast.unparse(replacement) + raw[node.end_col_offset:].decode()  # type: ignore[attr-defined]


def mutants_of(module: str, source: str) -> list[Mutant]:
    tree = ast.parse(source)
    skipped = _skipped(tree)
    lines = source.splitlines()
    found = []
    for index, (node, parent) in enumerate(_walk(tree)):
        if id(node) in skipped or not hasattr(node, "lineno"):
            continue
        for operator, make in _changes(node, parent):
            mutated = _spliced(lines, node, make(copy.deepcopy(node)))
            line = node.lineno
            found.append(Mutant(module, index, operator, line, lines[line - 1], mutated, make))
    return found


def mutated_source(source: str, mutant: Mutant) -> str:
    """The module with this one mutant applied, from a fresh parse of the original."""
    tree = ast.parse(source)
    node, parent = _walk(tree)[mutant.index]
    replacement = mutant.make(node)
    assert parent is not None
    for field, value in ast.iter_fields(parent):
        if value is node:
            setattr(parent, field, replacement)
        elif isinstance(value, list) and any(item is node for item in value):
            value[[id(item) for item in value].index(id(node))] = replacement
    return ast.unparse(ast.fix_missing_locations(tree))


# --- running the tests in copies -------------------------------------------------------


def make_copy(into: Path) -> Path:
    """The files git knows (tracked, or new and not ignored), as they are now. Readable
    by every uid (directories 0755, files a+r; the parent is made 0711): tests that run
    the agent as uid 65534 import the copy's src as that uid."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet staged is skipped
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            target.chmod(target.stat().st_mode & 0o7777 | 0o444)
    for directory in [into, *(p for p in into.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)
    return into


def run_tests(copy_dir: Path, tests: list[str], timeout: float) -> str:
    """'passed', 'failed' or 'timeout': pytest in the copy, its src first on sys.path."""
    env = dict(os.environ, PYTHONPATH=str(copy_dir / "src"), PYTHONDONTWRITEBYTECODE="1")
    # no bytecode: two mutants of one size written in one second would share a stale .pyc
    command = [sys.executable, "-m", "pytest", *PYTEST, f"--basetemp={copy_dir}/.tmp", *tests]
    process = subprocess.Popen(command, cwd=copy_dir, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the whole session: threads, children
        process.wait()
        return "timeout"
    return "passed" if code == 0 else "failed"


def test_files(module: str) -> list[str]:
    globbed = (sorted(ROOT.glob(pattern)) for pattern in MODULES[module])
    found = list(dict.fromkeys(str(p.relative_to(ROOT)) for paths in globbed for p in paths))
    if not found:
        raise SystemExit(f"mutants: no tests match {MODULES[module]} for {module}")
    return found


def check_copy(copy_dir: Path, module: str, tests: list[str]) -> float:
    """Proof that the copy is what the tests import (a canary mutant must fail them),
    then a clean run of the unmutated (re-unparsed) module; returns its duration."""
    target = copy_dir / "src" / module
    original = target.read_text()
    target.write_text("raise ImportError('mutants: canary')\n" + original)
    try:
        if run_tests(copy_dir, tests, 600) != "failed":
            raise SystemExit(f"mutants: the tests did not import {target}; is PYTHONPATH ignored?")
    finally:
        target.write_text(original)
    target.write_text(ast.unparse(ast.parse(original)))  # as every mutant is written
    start = time.monotonic()
    outcome = run_tests(copy_dir, tests, 600)
    target.write_text(original)
    if outcome != "passed":
        raise SystemExit(f"mutants: {' '.join(tests)} fail without any mutant; fix them first")
    return time.monotonic() - start


# --- one module, then the report ------------------------------------------------------


Results = dict[str, list[Mutant]]  # killed / timeout / survived / equivalent -> mutants


def run_module(module: str, args: argparse.Namespace, copies: list[Path]) -> Results:
    source = (ROOT / "src" / module).read_text()
    mutants = mutants_of(module, source)
    if args.sample and args.sample < len(mutants):
        chosen = random.Random(args.seed).sample(mutants, args.sample)  # noqa: S311 (no secret)
        mutants = sorted(chosen, key=lambda m: (m.line, m.index))
    tests = test_files(module)
    baseline = check_copy(copies[0], module, tests)
    # generous: a slow machine must not turn a survivor into a "timeout"
    timeout = max(20.0, 4 * baseline)
    print(f"{module}: {len(mutants)} mutants, tests {' '.join(tests)} "
          f"({baseline:.1f} s clean, timeout {timeout:.0f} s)", flush=True)  # fmt: skip
    free: queue.Queue[Path] = queue.Queue()
    for copy_dir in copies:
        free.put(copy_dir)
    results: Results = {"killed": [], "timeout": [], "survived": [], "equivalent": []}
    lock = threading.Lock()

    def one(mutant: Mutant) -> None:
        copy_dir = free.get()
        target = copy_dir / "src" / module
        try:
            target.write_text(mutated_source(source, mutant))
            outcome = run_tests(copy_dir, tests, timeout)
        finally:
            target.write_text(source)
            free.put(copy_dir)
        key = (module, mutant.original.strip(), mutant.mutated.strip())
        kind = {"failed": "killed", "timeout": "timeout"}.get(outcome, "survived")
        if kind == "survived" and key in EQUIVALENT:
            kind = "equivalent"
        with lock:
            results[kind].append(mutant)
            done = sum(len(v) for v in results.values())
            if args.verbose or kind == "survived":
                print(f"  [{done}/{len(mutants)}] {kind}: {_where(mutant)}", flush=True)

    with ThreadPoolExecutor(len(copies)) as pool:
        list(pool.map(one, mutants))
    return results


def _where(mutant: Mutant) -> str:
    return f"src/{mutant.module}:{mutant.line} {mutant.operator}"


def report(module: str, results: Results, list_survivors: bool) -> float:
    killed, timed_out = len(results["killed"]), len(results["timeout"])
    survived, equivalent = len(results["survived"]), len(results["equivalent"])
    counted = killed + timed_out + survived
    score = 100.0 * (killed + timed_out) / counted if counted else 100.0
    print(f"{module}: killed {killed}, timed out {timed_out}, survived {survived}, "
          f"equivalent {equivalent}: score {score:.1f}%")  # fmt: skip
    if list_survivors:
        for mutant in sorted(results["survived"], key=lambda m: (m.line, m.index)):
            print(f"  {_where(mutant)}\n    - {mutant.original.strip()}\n"
                  f"    + {mutant.mutated.strip()}")  # fmt: skip
        for mutant in sorted(results["equivalent"], key=lambda m: (m.line, m.index)):
            why = EQUIVALENT[(module, mutant.original.strip(), mutant.mutated.strip())]
            print(f"  equivalent {_where(mutant)}: {mutant.mutated.strip()}\n    ({why})")
    return score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", metavar="NAME",
                        help="a module of MODULES, by path or part of it (repeatable)")
    parser.add_argument("--sample", type=int, metavar="N", help="N mutants at random per module")
    parser.add_argument("--seed", type=int, default=16, help="for --sample (default 16)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                        help="copies run in parallel")
    parser.add_argument("--list-survivors", action="store_true")
    parser.add_argument("--list", action="store_true", help="list the mutants; run nothing")
    parser.add_argument("--verbose", action="store_true", help="print every mutant's outcome")
    parser.add_argument("--fail-under", type=float, default=0.0, metavar="PERCENT",
                        help="exit 1 when a module scores below this")
    args = parser.parse_args(argv)  # fmt: skip
    chosen = [m for m in MODULES if not args.module or any(w in m for w in args.module)]
    if not chosen:
        parser.error(f"no module matches {args.module}; known: {', '.join(MODULES)}")
    if args.list:
        for module in chosen:
            found = mutants_of(module, (ROOT / "src" / module).read_text())
            for mutant in sorted(found, key=lambda m: (m.line, m.index)):
                print(f"{_where(mutant)}: {mutant.mutated.strip()}")
        return 0
    scores = {}
    with tempfile.TemporaryDirectory(prefix="sandbox-agent-mutants.") as base:
        Path(base).chmod(0o711)  # others may pass through to the copies, not list them
        copies = [make_copy(Path(base) / f"copy{i}") for i in range(max(1, args.jobs))]
        for module in chosen:
            results = run_module(module, args, copies)
            scores[module] = report(module, results, args.list_survivors)
    print("\nscores: " + ", ".join(f"{m} {s:.1f}%" for m, s in scores.items()))
    return 1 if any(s < args.fail_under for s in scores.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
