"""The HTCondor slot a pilot was started in: its machine ad, its scratch directory and the
device nodes of the GPUs it was assigned (docs/htcondor.md).

HTCondor's starter writes the slot's machine ad, in the old ClassAd format (one
``Name = value`` line per attribute), to ``.machine.ad`` in the job's scratch directory
and names it in ``$_CONDOR_MACHINE_AD``; ``$_CONDOR_SCRATCH_DIR`` names the directory.
For a dynamic slot the ad describes that slot: ``Cpus``, ``Memory`` (MiB), ``Disk``
(KiB), ``GPUs`` and ``AssignedGPUs`` (the GPU ids, comma separated).

The ad is read, never evaluated: the attributes the pilot uses must be literals
(integers, reals, strings, booleans), and anything else there is refused in one line
naming the file, the line and the attribute. Every other line is skipped unread, whatever
it holds. A bad or missing ad is a ``CondorError`` (a ValueError): one line, never a
crash, and never a fallback to the whole node, which would offer what the slot lacks.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from sandbox_agent.readfile import read_capped

MACHINE_AD_VAR = "_CONDOR_MACHINE_AD"
SCRATCH_VAR = "_CONDOR_SCRATCH_DIR"
ASSIGNED_GPUS_VAR = "_CONDOR_AssignedGPUs"  # the starter's raw copy of AssignedGPUs
VISIBLE_VARS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
WORK_AREA_NAME = "sandbox-agent-work"  # the work area, made inside the scratch directory
AD_LIMIT = 1 << 20  # bytes: a slot's ad is tens of KB; a bigger file is not one
INFO_LIMIT = 1 << 16  # bytes of one /proc/driver/nvidia/gpus/*/information file
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
DEV = Path("/dev")
# What every NVIDIA GPU job needs besides its own /dev/nvidia<minor>.
NVIDIA_SHARED = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")

_KIB_PER_MIB = 1024
_INT64 = 1 << 63
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_REAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)")
_STRING = re.compile(r'"([ !#-\[\]-~]*)"')  # printable ASCII without '"' and '\'
_GPU_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_SHORT_OR_FULL_UUID = re.compile(r"GPU-[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){0,3}(?:-[0-9a-fA-F]{12})?")

Literal = int | float | str | bool


class CondorError(ValueError):
    """The HTCondor slot cannot be read: one line, naming the file or the variable."""


@dataclass(frozen=True)
class MachineAd:
    """What the pilot takes from its slot's machine ad, in the slot description's units."""

    path: Path
    cpus: int
    memory_mib: int
    disk_mib: int  # the ad's Disk is KiB: floored to MiB, never rounded up
    gpus: int | None  # None: the ad has no GPUs attribute
    gpu_ids: tuple[str, ...]  # AssignedGPUs, in the ad's order
    name: str | None = None  # e.g. "slot1_3@node.example.org"
    slot_type: str | None = None  # "Dynamic", "Static" (or absent)
    notes: tuple[str, ...] = ()  # environment values the ad overrules, said once each

    @property
    def memory_per_core_mib(self) -> int:
        """The slot's memory per core: what one core's share of a job may use."""
        return self.memory_mib // self.cpus if self.cpus else 0

    def devices(self, proc: Path | None = None, dev: Path | None = None) -> GpuDevices:
        """The device nodes of this slot's GPUs (``gpu_devices``); a slot that counts
        more GPUs than it names has GPUs whose devices are unknown, and says so."""
        found = gpu_devices(self.gpu_ids, proc or NVIDIA_PROC, dev or DEV)
        if (self.gpus or 0) <= len(self.gpu_ids):
            return found
        short = (f"{self.path}: GPUs = {self.gpus} but AssignedGPUs names "
                 f"{len(self.gpu_ids)}: the others' devices are unknown")  # fmt: skip
        return replace(found, unmapped=(*found.unmapped, short))


@dataclass(frozen=True)
class GpuDevices:
    """The device nodes of the assigned GPUs, where they are knowable."""

    ids: tuple[str, ...]
    paths: tuple[str, ...]  # each GPU's /dev/nvidia<minor>, then the shared nodes
    unmapped: tuple[str, ...]  # "<id>: why its device is not known"

    def refusal(self) -> str | None:
        """Why these GPUs cannot be bound as assigned (None when every one can): the
        pilot binds no GPU it cannot name, and never a guessed one."""
        if not self.unmapped:
            return None
        return "cannot bind the GPUs HTCondor assigned: " + "; ".join(self.unmapped)


def machine_ad(environ: Mapping[str, str] = os.environ) -> MachineAd | None:
    """The machine ad ``$_CONDOR_MACHINE_AD`` names, or None when that variable is unset
    or empty (not started by HTCondor). The ad's AssignedGPUs must agree with
    ``$_CONDOR_AssignedGPUs`` when both are there; ``CUDA_VISIBLE_DEVICES`` and its kin
    are what the site's configuration made of AssignedGPUs, and never overrule it."""
    given = environ.get(MACHINE_AD_VAR, "")
    if not given:
        return None
    path = Path(given)
    if not path.is_absolute():
        raise CondorError(f"{MACHINE_AD_VAR}={given!r} is not an absolute path; HTCondor's "
                          "starter names the ad in the job's scratch directory")  # fmt: skip
    ad = read_machine_ad(path)
    raw = environ.get(ASSIGNED_GPUS_VAR)
    if raw is not None and ad.gpu_ids and _ids(raw) != ad.gpu_ids:
        raise CondorError(f"{path}: AssignedGPUs = {','.join(ad.gpu_ids)!r} but "
                          f"{ASSIGNED_GPUS_VAR}={raw!r}; the starter copies one into the other, "
                          "so one of them was changed: the slot's GPUs are unknown")  # fmt: skip
    notes = tuple(_visible_notes(ad, environ))
    if raw is not None and not ad.gpu_ids:
        notes += (f"{ASSIGNED_GPUS_VAR}={raw!r} is ignored: the ad assigns no GPU (the "
                  "starter sets the unassigned value, 10000 by default, there)",)  # fmt: skip
    return replace(ad, notes=notes)


def read_machine_ad(path: Path) -> MachineAd:
    """The slot ``path`` describes (a machine ad in the old ClassAd format)."""
    values, lines = _literals(path, ("Cpus", "Memory", "Disk", "GPUs", "AssignedGPUs",
                                     "Name", "SlotType"))  # fmt: skip

    def amount(name: str) -> int | None:
        if name not in values:
            return None
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise CondorError(f"{path}:{lines[name]}: {name} = {value!r} is not an amount "
                              "(a number of 0 or more)")  # fmt: skip
        return math.floor(value)

    def text(name: str) -> str | None:
        value = values.get(name)
        if value is not None and not isinstance(value, str):
            raise CondorError(f"{path}:{lines[name]}: {name} must be a string")
        return value

    slot_type = text("SlotType")
    if slot_type is not None and slot_type.casefold() == "partitionable":
        raise CondorError(f"{path}:{lines['SlotType']}: the ad of a partitionable slot: its "
                          "Cpus, Memory and Disk are what is left to share out, not what this "
                          "job holds (a job runs in a dynamic slot, whose ad the starter "
                          "writes)")  # fmt: skip
    found = {name: amount(name) for name in ("Cpus", "Memory", "Disk")}
    for name, value in found.items():
        if value is None:
            raise CondorError(f"{path}: no {name} attribute; a machine ad names its slot's "
                              "Cpus, Memory (MiB) and Disk (KiB)")  # fmt: skip
    assigned = text("AssignedGPUs")
    ids = _ids(assigned) if assigned is not None else ()
    for gpu in ids:
        if not _GPU_ID.fullmatch(gpu):
            raise CondorError(f"{path}:{lines['AssignedGPUs']}: AssignedGPUs holds {gpu!r}, "
                              "which is not a GPU id")  # fmt: skip
    cpus, memory, disk = found["Cpus"], found["Memory"], found["Disk"]
    assert cpus is not None and memory is not None and disk is not None
    return MachineAd(path=path, cpus=cpus, memory_mib=memory, disk_mib=disk // _KIB_PER_MIB,
                     gpus=amount("GPUs"), gpu_ids=ids, name=text("Name"),
                     slot_type=slot_type)  # fmt: skip


def scratch_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The job's scratch directory ``$_CONDOR_SCRATCH_DIR`` (HTCondor removes it when the
    job leaves the slot), or None when the variable is unset or empty."""
    given = environ.get(SCRATCH_VAR, "")
    if not given:
        return None
    path = Path(given)
    if not path.is_absolute():
        raise CondorError(f"{SCRATCH_VAR}={given!r} is not an absolute path")
    try:
        info = path.stat()
    except OSError as exc:
        raise CondorError(f"{SCRATCH_VAR}={given!r}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise CondorError(f"{SCRATCH_VAR}={given!r} is not a directory")
    return path


def work_area(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the pilot's work directories go under HTCondor: a directory of its own in
    the scratch directory (never the scratch directory itself, which holds the starter's
    files), or None when there is no scratch directory."""
    scratch = scratch_dir(environ)
    return None if scratch is None else scratch / WORK_AREA_NAME


def gpu_devices(ids: Iterable[str], proc: Path = NVIDIA_PROC, dev: Path = DEV) -> GpuDevices:
    """The device nodes of the GPUs ``ids`` (AssignedGPUs), mapped as HTCondor's starter
    maps them when it hides the others: through the NVIDIA driver's
    ``proc/<bus>/information`` files, which pair each GPU's UUID with its device minor.

    Knowable: ``GPU-<uuid>`` ids, full or HTCondor's short form (the first 8 hex digits),
    matching exactly one GPU there. Not knowable, and said so: ``CUDA<N>`` (N is CUDA's
    enumeration index, which need not be the device minor: binding /dev/nvidia<N> could
    hand the job another slot's GPU), ``MIG-`` instances (they are reached through
    /dev/nvidia-caps), OpenCL and other ids, and UUIDs the driver does not list."""
    wanted = tuple(dict.fromkeys(ids))  # -repeat shares a GPU: one bind each
    gpus = _nvidia_gpus(proc)
    paths: list[str] = []
    unmapped: list[str] = []
    for gpu in wanted:
        why = None
        if gpu.startswith("CUDA") and gpu[4:].isdigit():
            why = ("CUDA<N> is CUDA's enumeration index, not the device minor; give the "
                   "GPUs uuid ids (condor_gpu_discovery -short-uuid, the default since "
                   "9.0)")  # fmt: skip
        elif gpu.startswith("MIG-"):
            why = "a MIG instance, reached through /dev/nvidia-caps: not mapped"
        elif not _SHORT_OR_FULL_UUID.fullmatch(gpu):
            why = "not an NVIDIA GPU id (GPU-<uuid>)"
        elif gpus is None:
            why = f"{proc} is not readable: no NVIDIA driver to name the device"
        else:
            minors = sorted({m for uuid, m in gpus if _uuid_matches(uuid, gpu)})
            if len(minors) != 1:
                why = (f"the driver lists {'no' if not minors else len(minors)} GPU(s) with "
                       "this uuid")  # fmt: skip
            elif not _is_char_device(dev / f"nvidia{minors[0]}"):
                why = f"{dev / f'nvidia{minors[0]}'} is not a character device"
            else:
                paths.append(str(dev / f"nvidia{minors[0]}"))
        if why is not None:
            unmapped.append(f"{gpu}: {why}")
    if paths:
        paths += [str(dev / name) for name in NVIDIA_SHARED if _is_char_device(dev / name)]
    return GpuDevices(ids=wanted, paths=tuple(paths), unmapped=tuple(unmapped))


def _literals(path: Path, wanted: tuple[str, ...]) -> tuple[dict[str, Literal], dict[str, int]]:
    """The literal values of the attributes ``wanted`` (names ignore case, as in ClassAds)
    and the line of each; every other line is skipped unread."""
    try:
        data = read_capped(path, AD_LIMIT)
    except OSError as exc:
        raise CondorError(f"{path}: cannot read the machine ad: {exc.strerror}") from None
    if len(data) > AD_LIMIT:
        raise CondorError(f"{path}: more than {AD_LIMIT >> 20} MiB, which no machine ad is")
    if b"\x00" in data:
        raise CondorError(f"{path}: holds a NUL byte, which no machine ad does")
    names = {name.casefold(): name for name in wanted}
    values: dict[str, Literal] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(data.decode("utf-8", "replace").split("\n"), start=1):
        left, equals, right = raw.removesuffix("\r").partition("=")  # no regex: linear
        if not equals or not _NAME.fullmatch(left.strip(" ")):
            continue
        name = names.get(left.strip(" ").casefold())
        if name is None:
            continue
        if name in lines:
            raise CondorError(f"{path}:{number}: {name} is given again (first at line "
                              f"{lines[name]}); which one holds is unknown")  # fmt: skip
        lines[name] = number
        values[name] = _literal(path, number, name, right.strip(" "))
    return values, lines


def _literal(path: Path, number: int, name: str, text: str) -> Literal:
    if _INTEGER.fullmatch(text):
        value = int(text)
        if -_INT64 <= value < _INT64:
            return value
        raise CondorError(f"{path}:{number}: {name} = {text[:40]} is beyond a ClassAd integer")
    if _REAL.fullmatch(text) and math.isfinite(float(text)):
        return float(text)
    string = _STRING.fullmatch(text)
    if string is not None:
        return string.group(1)
    if text.casefold() in ("true", "false"):
        return text.casefold() == "true"
    shown = text if len(text) <= 60 else text[:57] + "..."
    raise CondorError(f"{path}:{number}: {name} = {shown!r} is not a literal value; the pilot "
                      "reads a machine ad and never evaluates its expressions")  # fmt: skip


def _ids(value: str) -> tuple[str, ...]:
    """A list of resource ids as HTCondor writes one: separated by commas and/or spaces."""
    return tuple(part for part in re.split(r"[,\s]+", value) if part)


def _visible_notes(ad: MachineAd, environ: Mapping[str, str]) -> list[str]:
    """The GPU variables of the environment that say otherwise than the ad: notes, not
    refusals, since a site's ENVIRONMENT_FOR_AssignedGPUs may rewrite the ids at will."""
    notes = []
    for var in VISIBLE_VARS:
        value = environ.get(var)
        if value is None or _visible_agrees(ad.gpu_ids, _ids(value)):
            continue
        notes.append(f"{var}={value!r} is not what AssignedGPUs = "
                     f"{','.join(ad.gpu_ids)!r} makes; the machine ad holds")  # fmt: skip
    return notes


def _visible_agrees(ids: tuple[str, ...], visible: tuple[str, ...]) -> bool:
    if not ids:
        return visible in ((), ("10000",), ("none",))  # the unassigned values
    if visible == ids:
        return True
    if len(visible) != len(ids):
        return False
    stripped = tuple(re.sub(r"^(CUDA|OCL)", "", gpu) for gpu in ids)  # the default rewrite
    digits = tuple("".join(c for c in gpu if c.isdigit()) for gpu in ids)  # the older one
    if visible in (stripped, digits):
        return True
    # the starter's AvailableGPUs rewrite: each id's full uuid, in some order
    return all(any(_uuid_matches(full, gpu) for gpu in ids) for full in visible)


def _uuid_matches(uuid: str, gpu: str) -> bool:
    """Whether the full ``uuid`` (GPU-xxxxxxxx-...) is the GPU named ``gpu``: the same
    uuid, or its short form (whole dash-separated groups from the start)."""
    uuid, gpu = uuid.casefold(), gpu.casefold()
    return uuid == gpu or uuid.startswith(gpu + "-")


def _nvidia_gpus(proc: Path) -> list[tuple[str, int]] | None:
    """(uuid, device minor) of each GPU the NVIDIA driver lists, or None without one."""
    try:
        buses = sorted(os.listdir(proc))
    except OSError:
        return None
    found = []
    for bus in buses:
        try:
            text = read_capped(proc / bus / "information", INFO_LIMIT)[:INFO_LIMIT]
        except OSError:
            continue
        fields = {}
        for line in text.decode("ascii", "replace").splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        uuid, minor = fields.get("GPU UUID", ""), fields.get("Device Minor", "")
        if uuid and minor.isdigit():
            found.append((uuid, int(minor)))
    return found


def _is_char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(path.stat().st_mode)
    except OSError:
        return False
