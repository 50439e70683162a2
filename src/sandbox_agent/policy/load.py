"""Reading site policies: TOML validated against the schema, ``extends`` followed.

A file may say ``extends = "base"``: a policy name, looked up in the file's own directory,
then where named policies are (``policy_dirs``), so a site policy anywhere extends the
shipped ones by name. Later files
override earlier ones key by key; a list written as a plain array replaces, a list
written as ``{ append = [...] }`` adds to what it extends. Every refusal names the file
and line: unknown keys, wrong types, relative or ``..`` paths, cycles in ``extends``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import posixpath
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from sandbox_agent.jdl.units import parse_size
from sandbox_agent.policy import destinations
from sandbox_agent.policy.lines import key_lines
from sandbox_agent.policy.model import BUILTIN, Item, Policy, PolicyError, Setting
from sandbox_agent.policy.schema import (
    FIELDS,
    LIMITS,
    LIST_KINDS,
    TOP_LEVEL,
    Field,
    Kind,
)
from sandbox_agent.readfile import read_capped

# What optional.requirements may name: any key, a whole limit, or the rlimits together.
REQUIREMENT_KEYS = {*FIELDS, *(f"limits.{name}" for name in LIMITS), "process.rlimits"}
MAX_CHAIN = 16  # policies extending policies: deeper than this is a mistake
MAX_FILE_BYTES = 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PLATFORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CAPABILITY = re.compile(r"CAP_[A-Z_]{2,32}")
_IMAGE_REF = re.compile(
    r"[a-z0-9][a-z0-9._/-]{0,200}(?::[A-Za-z0-9._-]{1,128})?(?:@sha256:[0-9a-f]{64})?"
)


# The policies and seccomp profiles installed with the package (package data).
SHIPPED = Path(__file__).resolve().parent.parent / "policies"


def policy_dirs(home: Path | None = None) -> list[Path]:
    """Where named policies are looked up: ``$SANDBOX_AGENT_POLICIES``, ``HOME/policies``,
    then the ``policies/`` directory installed with the package."""
    dirs: list[Path] = []
    if os.environ.get("SANDBOX_AGENT_POLICIES"):
        dirs.append(Path(os.environ["SANDBOX_AGENT_POLICIES"]))
    if home is not None:
        dirs.append(home / "policies")
    dirs.append(SHIPPED)
    return dirs


def find_policy(ref: str, dirs: list[Path]) -> Path:
    """A policy file from a name (``default``) or a path (``./site.toml``)."""
    if "/" in ref or ref.endswith(".toml"):
        path = Path(ref)
        if not _is_file(path):
            raise PolicyError(f"{ref}: policy file not found")
        return path
    if not _NAME.fullmatch(ref):
        raise PolicyError(f"policy name '{ref}' must be letters, digits, '_' or '-'")
    for directory in dirs:
        candidate = directory / f"{ref}.toml"
        if _is_file(candidate):
            return candidate
    where = ", ".join(str(d) for d in dirs)
    raise PolicyError(f"no policy named '{ref}' in {where}; give a path or one of those names")


def _everyones(directory: Path) -> bool:
    try:
        return bool(os.stat(directory).st_mode & stat.S_IWOTH)
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError as exc:  # a directory the agent may not search
        raise PolicyError(f"{path}: cannot look for the policy here ({exc.strerror})") from None


def load_policy(ref: str, dirs: list[Path] | None = None) -> Policy:
    """The policy ``ref`` with everything it extends, every schema key set."""
    dirs = dirs if dirs is not None else policy_dirs()
    path = find_policy(ref, dirs)
    chain: list[tuple[Path, dict[str, Any], dict[str, int]]] = []
    seen: list[Path] = []
    current: Path | None = path
    while current is not None:
        resolved = current.resolve()
        if resolved in seen:
            names = " -> ".join(p.stem for p in [*seen, resolved])
            closing = chain[-1]  # the file whose extends closes the cycle
            line = closing[2].get("extends", 1)
            raise PolicyError(f"{closing[0]}:{line}: extends makes a cycle ({names})")
        if len(seen) >= MAX_CHAIN:
            raise PolicyError(f"{_show(current)}: extends goes more than {MAX_CHAIN} deep")
        seen.append(resolved)
        data, lines = _read(current)
        chain.append((current, data, lines))
        current = _parent(current, data, lines, dirs)
    chain.reverse()
    settings = {name: _builtin(spec) for name, spec in FIELDS.items()}
    for file, data, lines in chain:
        for name, raw in _flatten(file, data, lines):
            spec = FIELDS[name]
            origin = f"{_show(file)}:{_line(lines, name)}"
            merged = _merge(settings[name], spec, raw, file, origin)
            settings[name] = dataclasses.replace(merged, directory=file.parent.resolve())
    return Policy(path.stem, tuple(f for f, _, _ in chain), path.parent, settings)


def overridden(policy: Policy, key: str, raw: Any, origin: str) -> Policy:
    """``policy`` with one scalar setting replaced by ``raw``, checked as a policy file's
    value would be, its origin ``origin`` (a site's environment: JOB_CONTAINER_PATH for
    filesystem.image). PolicyError names the origin."""
    spec = FIELDS[key]
    if spec.kind in LIST_KINDS or spec.kind is Kind.MAPPING:
        raise ValueError(f"{key} is not a scalar setting")
    setting = Setting(_scalar(spec, raw, origin), origin)
    return Policy(policy.name, policy.files, policy.directory, {**policy.settings, key: setting})


def replaced(policy: Policy, key: str, values: list[str], origin: str) -> Policy:
    """``policy`` with the path list ``key`` replaced: ``values`` kept from the policy
    keep their items (and origins), the others are given ``origin`` (what the node's
    batch system assigned: the GPUs of an HTCondor slot). Each is checked as a policy
    file's would be."""
    spec = FIELDS[key]
    if spec.kind is not Kind.PATHS:
        raise ValueError(f"{key} is not a list of paths")
    had = {str(i.value): i for i in policy[key].value}
    items = tuple(had.get(v) or Item(_list_item(spec, v, origin), origin) for v in values)
    setting = Setting(items, origin, policy[key].directory)
    return Policy(policy.name, policy.files, policy.directory, {**policy.settings, key: setting})


def _line(lines: dict[str, int], name: str) -> int:
    """The line of ``name``, or of the nearest enclosing table or inline table."""
    parts = name.split(".")
    while parts:
        found = lines.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return 1


def _show(path: Path) -> str:
    """A file as provenance shows it: its directory's name and its own."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _read(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    try:
        if os.stat(path).st_mode & stat.S_IWOTH:
            raise PolicyError(f"{path}: writable by every user; a policy must be the site's "
                              "alone (chmod o-w)")  # fmt: skip
        raw = read_capped(path, MAX_FILE_BYTES)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise PolicyError(f"{path}: larger than {MAX_FILE_BYTES} bytes; not a policy")
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise PolicyError(f"{path}: nested too deeply to be a policy") from None
    return data, key_lines(text)


def _parent(
    path: Path, data: dict[str, Any], lines: dict[str, int], dirs: list[Path]
) -> Path | None:
    """The file ``path`` extends: the name in its own directory, else in ``dirs`` (a
    site's ``default.toml`` may extend the shipped ``default``: a file never extends
    itself)."""
    if "extends" not in data:
        return None
    name = data["extends"]
    where = f"{path}:{lines.get('extends', 1)}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PolicyError(
            f"{where}: extends takes a policy name, like \"base\" (no paths, no '..')"
        )
    try:
        places = [path.parent, *(d for d in dirs if d.resolve() != path.parent.resolve())]
    except (OSError, RuntimeError) as exc:  # a symlink loop among the directories
        raise PolicyError(f"{where}: cannot look for '{name}': {exc}") from None
    # a directory every user may write (/tmp) is never searched by name: anyone could
    # put a default.toml there for a policy beside it to extend
    places = [d for d in places if not _everyones(d)]
    itself = False
    for directory in places:
        candidate = directory / f"{name}.toml"
        if _is_file(candidate):
            if candidate.resolve() != path.resolve():
                return candidate
            itself = True
    if itself:
        raise PolicyError(f"{where}: extends makes a cycle ({path.stem} -> {name})")
    where_looked = ", ".join(str(d) for d in places)
    raise PolicyError(f"{where}: extends '{name}', but no {name}.toml is in {where_looked}")


def _flatten(file: Path, data: dict[str, Any], lines: dict[str, int]) -> list[tuple[str, Any]]:
    """(schema key, raw value) pairs of one file; refuses keys the schema lacks."""
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, table: dict[str, Any]) -> None:
        for key, value in table.items():
            name = f"{prefix}{key}"
            if not prefix and name in TOP_LEVEL:
                continue
            if name in FIELDS:
                out.append((name, value))
            elif isinstance(value, dict) and any(f.startswith(name + ".") for f in FIELDS):
                walk(name + ".", value)
            else:
                line = _line(lines, name)
                hint = difflib.get_close_matches(name, FIELDS, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise PolicyError(f"{file}:{line}: unknown key '{name}'{suggestion}")

    walk("", data)
    return out


def _builtin(spec: Field) -> Setting:
    """The schema's default; a path in it is the shipped one (the builtin profile)."""
    if spec.kind in LIST_KINDS or spec.kind is Kind.MAPPING:
        return Setting(tuple(Item(v, BUILTIN) for v in spec.default), BUILTIN, SHIPPED)
    return Setting(spec.default, BUILTIN, SHIPPED)


def _merge(old: Setting, spec: Field, raw: Any, file: Path, origin: str) -> Setting:
    where = f"{file}:{origin.rsplit(':', 1)[1]}"
    if spec.kind is Kind.MAPPING:
        if not isinstance(raw, dict):
            raise PolicyError(f"{where}: {spec.path} must be {spec.kind.value}")
        merged = {i.value[0]: i for i in old.value}
        for key, value in raw.items():
            merged[key] = Item(_mapping_item(spec, key, value, where), origin)
        return Setting(tuple(merged.values()), origin)
    if spec.kind in LIST_KINDS:
        append = isinstance(raw, dict)
        if append:
            if set(raw) != {"append"}:
                raise PolicyError(
                    f"{where}: {spec.path} is a list, or {{ append = [...] }} to add to the one "
                    "it extends"
                )
            raw = raw["append"]
        if not isinstance(raw, list):
            raise PolicyError(f"{where}: {spec.path} must be {spec.kind.value}")
        items = [Item(_list_item(spec, item, where), origin) for item in raw]
        kept = list(old.value) if append else []
        for item in items:
            if all(item.value != k.value for k in kept):
                kept.append(item)
        return Setting(tuple(kept), origin)
    return Setting(_scalar(spec, raw, where), origin)


def _scalar(spec: Field, raw: Any, where: str) -> Any:
    wrong = PolicyError(f"{where}: {spec.path} must be {spec.describe_type()}, not {raw!r:.40}")
    if spec.kind is Kind.CHOICE:
        if raw not in spec.choices:
            raise wrong
        return raw
    if spec.kind is Kind.BOOL:
        if not isinstance(raw, bool):
            raise wrong
        return raw
    if spec.kind is Kind.PATH:
        return _path(spec, raw, where)
    if spec.kind is Kind.STRING:
        if not isinstance(raw, str) or "\x00" in raw:
            raise wrong
        if spec.path == "filesystem.image" and raw != "host":
            if raw.startswith("docker://"):
                if not _IMAGE_REF.fullmatch(raw[len("docker://") :]):
                    raise PolicyError(
                        f"{where}: filesystem.image: '{raw:.60}' is not an image reference"
                    )
                return raw
            return _path(spec, raw, where, colon=True)
        if spec.path == "network.proxy" and raw:
            return _proxy(raw, where)
        if spec.path == "process.seccomp" and (raw.startswith("/") or ".." in raw.split("/")):
            raise PolicyError(
                f"{where}: process.seccomp names a profile inside the policy directory, "
                "like \"seccomp/default.json\" (no absolute path, no '..')"
            )
        return raw
    number = _number(spec, raw, where)
    if spec.minimum is not None and number < spec.minimum:
        raise PolicyError(f"{where}: {spec.path} must be at least {spec.minimum}, not {number}")
    if spec.maximum is not None and number > spec.maximum:
        raise PolicyError(f"{where}: {spec.path} must be at most {spec.maximum}, not {number}")
    return number


def _proxy(raw: str, where: str) -> str:
    """``http://HOST:PORT``: the form every http_proxy reader takes, and one the relay
    can let through."""
    host = raw.removeprefix("http://").removesuffix("/")
    try:
        if host == raw or ":" not in host:
            raise ValueError(raw)
        _, port, network = destinations.split(host)
        # one host: the relay lets the proxy through whatever network.allow says
        if port is None or (network is not None and network.num_addresses != 1):
            raise ValueError(raw)
    except ValueError:
        raise PolicyError(
            f'{where}: network.proxy must be "http://HOST:PORT" (the site\'s '
            f"squid), not {raw!r:.60}"
        ) from None
    return raw


def _number(spec: Field, raw: Any, where: str) -> int:
    if isinstance(raw, bool):
        raise PolicyError(f"{where}: {spec.path} must be {spec.describe_type()}, not {raw}")
    if spec.kind is Kind.SIZE and isinstance(raw, str):
        if raw.strip() in ("0", "0B"):
            return 0
        try:
            return parse_size(raw)
        except ValueError as exc:
            raise PolicyError(f"{where}: {spec.path}: {exc}") from None
    if isinstance(raw, int) and 0 <= raw <= 2**62:
        return raw
    raise PolicyError(f"{where}: {spec.path} must be {spec.describe_type()}, not {raw!r:.40}")


def _path(spec: Field, raw: Any, where: str, *, colon: bool = False) -> str:
    """An absolute path, normalised. ``colon``: an image path, which bwrap and Apptainer
    take whole (CVMFS names images by tag: .../centos:centos7), so ':' is allowed."""
    if not isinstance(raw, str) or not raw.startswith("/") or "\x00" in raw:
        raise PolicyError(f"{where}: {spec.path}: '{raw!s:.60}' must be an absolute path")
    if ".." in raw.split("/"):
        raise PolicyError(f"{where}: {spec.path}: '{raw:.60}' must not contain '..'")
    if any(c in raw for c in ("," if colon else ",:")) or not raw.isprintable():
        # runtimes split bind specs on ',' and ':' (Apptainer, Docker)
        raise PolicyError(f"{where}: {spec.path}: '{raw:.60}' may not hold ',' ':' or controls")
    normal = posixpath.normpath(raw)
    return "/" if normal == "//" else normal


def _mapping_item(spec: Field, key: str, value: Any, where: str) -> tuple[str, str]:
    if spec.path == "images.platforms":
        if not _PLATFORM.fullmatch(key):
            raise PolicyError(f"{where}: images.platforms: '{key:.40}' is not a platform name "
                              "like el9-x86_64")  # fmt: skip
        return key, _path(spec, value, where, colon=True)
    if spec.path == "images.pins":
        if key.startswith("docker://"):  # an engine's image, pinned by its id in the store
            if not _IMAGE_REF.fullmatch(key.removeprefix("docker://")):
                raise PolicyError(f"{where}: images.pins: {key:.60!r} is not an image reference")
            path = key
        else:
            path = _path(spec, key, where, colon=True)
        if not isinstance(value, str) or not _DIGEST.fullmatch(value):
            raise PolicyError(f"{where}: images.pins: the pin of {path:.60} must be "
                              '"sha256:" and 64 hex digits (image pin prints it)')  # fmt: skip
        return path, value
    if not _ENV_NAME.fullmatch(key) or not isinstance(value, str) or "\x00" in value:
        raise PolicyError(f"{where}: {spec.path}.{key} must be a string variable")
    return key, value


def _list_item(spec: Field, item: Any, where: str) -> Any:
    if spec.kind is Kind.PATHS:
        return _path(spec, item, where)
    if spec.kind is Kind.TMPFS:
        if not isinstance(item, dict) or set(item) != {"path", "size"}:
            raise PolicyError(f'{where}: {spec.path} items are {{ path = "/abs", size = "256MB" }}')
        size = _number(Field(spec.path, Kind.SIZE, 0, ""), item["size"], where)
        return (_path(spec, item["path"], where), size)
    if not isinstance(item, str):
        raise PolicyError(f"{where}: {spec.path} items must be strings, not {item!r:.40}")
    if spec.kind is Kind.DESTINATIONS:
        try:
            return destinations.check(item)
        except ValueError as exc:
            raise PolicyError(
                f"{where}: {spec.path}: {exc!s:.120} (write host:port, "
                "address[:port], [v6]:port or network/prefix[:port])"
            ) from None
    if spec.path == "process.capabilities" and not _CAPABILITY.fullmatch(item):
        raise PolicyError(f"{where}: '{item:.40}' is not a capability name like CAP_NET_RAW")
    if spec.path == "process.environment.allow" and not _ENV_NAME.fullmatch(item):
        raise PolicyError(f"{where}: '{item:.40}' is not an environment variable name")
    if spec.path == "optional.requirements" and item not in REQUIREMENT_KEYS:
        raise PolicyError(f"{where}: optional.requirements: '{item:.60}' is not a policy key")
    return item
