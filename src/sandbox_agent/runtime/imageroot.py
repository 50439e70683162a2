"""An image as the sandbox's root, for bwrap: the image's top level bound read-only
onto bwrap's own tmpfs root, and the host's python3 carried in for the JobWrapper.

The root stays bwrap's tmpfs, so the sandbox's own mount points (the work directory,
/.sandbox-agent) need not exist in the image. A bind, tmpfs or the work directory
under one of the image's top-level directories needs a place there: an empty one (a
mount point, as /cvmfs usually is) is left out for bwrap to make; one with content
must hold a directory or file of the right kind at that path, or the job is refused
with the reason (its own fault when the bind is its JDL's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox_agent.images import ImageRefused
from sandbox_agent.images.hostpython import PRIVATE, NoHostPython
from sandbox_agent.policy import gate
from sandbox_agent.runtime.plan import HostView, Requirements

if TYPE_CHECKING:
    from sandbox_agent.images.prepare import ReadyImage
    from sandbox_agent.policy.compose import EffectivePolicy

# Top-level names of an image the sandbox makes itself rather than binds from it.
OWN_TOP = frozenset({"proc", "dev", ".sandbox-agent"})


def mounts(
    effective: EffectivePolicy, image: ReadyImage | None, host: HostView,
    out: list[tuple[str, list[str]]], need: Requirements,
) -> list[str]:  # fmt: skip
    """Add the image's top level and the carried python3 to ``out`` (bwrap's mounts);
    returns the argv prefix that starts that python3 inside."""
    name = effective.view.filesystem.image
    if not name.startswith("/"):
        gate.refuse("filesystem.image", f"bwrap cannot pull the OCI image {name:.80}; "
                    "Apptainer, Docker or Podman run those")  # fmt: skip
    if image is None:
        gate.refuse("filesystem.image", f"{name:.80} was not made ready (checked, and "
                    "mounted if a file) before the sandbox was rendered")  # fmt: skip
    made = _made(effective)
    try:
        entries = host.entries(image.root)
    except OSError as error:
        raise ImageRefused(f"{image.named}: cannot list its top level: {error.strerror}") from None
    holders = places(effective, image, host, entries)
    for entry, kind in entries:
        target = f"/{entry}"
        if entry in OWN_TOP or target in made or entry in holders:
            continue
        if kind.startswith("symlink:"):
            out.append((target, ["--symlink", kind.split(":", 1)[1], target]))
        elif kind in ("dir", "file"):
            out.append((target, ["--ro-bind", f"{image.root}/{entry}", target]))
    try:
        carried = host.python()
    except NoHostPython as error:
        gate.refuse("filesystem.image", f"the wrapper's interpreter: {error}")
    for source, inside in carried.binds:
        out.append((inside, ["--ro-bind", source, inside]))
    pinned = ", pinned" if image.pinned else ""
    need.met(
        "filesystem.image", f"the {image.kind} image {image.path} ({image.digest}{pinned}), "
        f"its top level bound read-only; the wrapper on the host's python3 at {PRIVATE}",
    )  # fmt: skip
    return list(carried.command)


def _made(effective: EffectivePolicy) -> set[str]:
    """What the sandbox mounts itself: the tmpfs mounts and the work directory."""
    filesystem = effective.view.filesystem
    return {path for path, _ in filesystem.tmpfs} | {filesystem.workdir}


def places(effective: EffectivePolicy, image: ReadyImage, host: HostView,
           entries: list[tuple[str, str]]) -> set[str]:  # fmt: skip
    """The top-level directories left out for bwrap to make (empty ones with something
    to mount under them); ImageRefused for a mount with no place in the image."""
    kinds = dict(entries)
    made = _made(effective)
    wanted: list[tuple[str, str, str]] = []  # (path, the kind it needs, origin)
    for key in ("filesystem.read_only", "filesystem.writable", "devices.paths"):
        wanted += [(str(i.value), host.kind(str(i.value)), i.origin) for i in effective[key].value]
    tmpfs = effective["filesystem.tmpfs"].origin
    wanted += [(path, "dir", tmpfs) for path, _ in effective.view.filesystem.tmpfs]
    workdir = effective["filesystem.workdir"]
    wanted.append((str(workdir.value), "dir", workdir.origin))
    left_out: set[str] = set()
    for path, need, origin in wanted:
        parts = path.strip("/").split("/")
        top = parts[0]
        if len(parts) == 1 or top in OWN_TOP or f"/{top}" in made or top not in kinds:
            continue
        if need == "missing":  # a host path that is not there: nothing is bound
            continue
        job = origin.startswith("jdl:")
        try:
            if kinds[top] == "dir" and not host.entries(f"{image.root}/{top}"):
                left_out.add(top)
                continue
            inside = host.resolve(image.root, path)
        except OSError as error:
            raise ImageRefused(f"the image {image.named}: cannot read /{top}: {error.strerror} "
                               f"({origin})", job=job) from None  # fmt: skip
        found = host.kind(inside) if inside is not None else "missing"
        if need.startswith("symlink:") or found != need:
            have = "nothing" if found == "missing" else f"a {found.split(':')[0]}"
            raise ImageRefused(f"the image {image.named} has {have} at {path}, where a "
                               f"{need.split(':')[0]} is to be mounted (/{top} comes from the "
                               f"image): mount it elsewhere ({origin})", job=job)  # fmt: skip
    return left_out
