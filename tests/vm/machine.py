"""A small virtual machine with a real kernel, to test what this machine's kernel is not.

The machines CI runs on are cgroup v1 (hybrid); most worker nodes are pure cgroup v2.
This boots a Debian kernel package in QEMU with a pure v2 hierarchy and runs one command
in it as root, then powers off:

* the guest's root is this machine's ``/``, exported read-only over 9p under a tmpfs
  overlay, so the checkout, its ``.venv``, bwrap and python3 are all there at the same
  paths, and nothing the guest writes reaches this machine;
* one directory (``out``) is shared writable: the command's output, exit status and
  whatever reports it writes there come back through it;
* the kernel and busybox come from Debian's package registry (a release's own package
  lists in a cache directory, leaving this machine's apt configuration alone); the
  initramfs is built here from them, loading the modules the guest needs in the order
  their ``depends=`` fields give;
* the guest has a zram swap device, so that swap limits can be exceeded for real.

There is no usable KVM on these machines, so QEMU emulates the CPU (TCG) and Python runs
about twenty times slower than here; a kernel boots in seconds.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# name -> (Debian release, what the kernel lacks that the tests must meet)
KERNELS = {
    "6.1": ("bookworm", "Debian 12's kernel: cgroup.kill, memory.peak, landlock ABI 2"),
    "5.10": ("bullseye", "Debian 11's kernel: no landlock, no memory.peak, no cgroup.kill"),
}
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
CACHE = Path(os.environ.get("SANDBOX_AGENT_VM_CACHE", "/var/cache/sandbox-agent-vm"))
# virtio and 9p for the root, overlay on it; loop, ext4 and crc32c for the job's work
# directory (ext4 asks the crypto API for crc32c, so no depends= names it); fuse for
# images; zram for swap; nftables' NAT, redirect and fib for a job's egress (their
# depends= bring nfnetlink, nf_nat, nf_conntrack)
MODULES = (
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "loop",
    "crc32c_generic",
    "ext4",
    "fuse",
    "zram",
    "nf_tables",
    "nft_chain_nat",
    "nft_redir",
    "nft_fib_inet",
)
MEMORY_MB = 2048
SWAP_MB = 1024


class Unavailable(Exception):
    """The machine cannot be booted here: one line saying why and what would fix it."""


def unavailable() -> str | None:
    """Why no machine can be booted here, or None."""
    if platform.machine() != "x86_64":
        return "the test machines are x86_64 Debian kernels"
    if os.geteuid() != 0:
        return "booting a test machine needs root (the guest's 9p root keeps owners)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    if shutil.which("apt-get") is None or not Path(KEYRING).exists():
        return "kernels come from Debian's package registry: needs apt-get and its keyring"
    return None


@dataclass(frozen=True)
class Kernel:
    name: str
    version: str  # the package's kernel release, e.g. 6.1.0-57-amd64
    vmlinuz: Path
    initrd: Path


def _apt(release: str, *args: str, cwd: Path | None = None) -> str:
    """apt-get or apt-cache against ``release``'s own lists in the cache."""
    base = CACHE / release
    options = ["-o", f"Dir::Etc::sourcelist={base / 'sources.list'}",
               "-o", "Dir::Etc::sourceparts=/dev/null",
               "-o", f"Dir::State::Lists={base / 'lists'}",
               "-o", f"Dir::Cache={base / 'apt-cache'}",
               # none of this machine's installed versions: the release's own candidates
               "-o", f"Dir::State::status={base / 'status'}", "-q"]  # fmt: skip
    done = subprocess.run([*args[:1], *options, *args[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise Unavailable(f"{args[0]} {args[1]} for Debian {release} failed: {said}")
    return done.stdout


def fetch(name: str) -> tuple[Path, Path]:
    """The kernel package and busybox-static of ``name``'s release, downloaded once."""
    release = KERNELS[name][0]
    base = CACHE / release
    debs = base / "debs"
    kernels = sorted(debs.glob("linux-image-*.deb")) if debs.exists() else []
    boxes = sorted(debs.glob("busybox-static_*.deb")) if debs.exists() else []
    if kernels and boxes:
        return kernels[-1], boxes[-1]
    for directory in (debs, base / "lists/partial", base / "apt-cache/archives/partial"):
        directory.mkdir(parents=True, exist_ok=True)
    (base / "sources.list").write_text(f"deb [signed-by={KEYRING}] {MIRROR} {release} main\n")
    (base / "status").write_text("")
    _apt(release, "apt-get", "update")
    depends = _apt(release, "apt-cache", "depends", "linux-image-amd64")
    found = re.search(r"Depends: (linux-image-\d\S*)", depends)
    if found is None:
        raise Unavailable(f"Debian {release}'s linux-image-amd64 names no kernel package")
    _apt(release, "apt-get", "download", found.group(1), "busybox-static", cwd=debs)
    return fetch(name)


def _module_files(tree: Path) -> dict[str, Path]:
    files = {}
    for path in tree.rglob("*.ko*"):
        match = re.fullmatch(r"(.+)\.ko(\.xz|\.gz)?", path.name)
        if match:
            files[match.group(1).replace("-", "_")] = path
    return files


def _module_bytes(path: Path) -> bytes:
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    return path.read_bytes()


def load_order(tree: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """The modules ``wanted`` needs, each after those its ``depends=`` names; a name
    that is no module file is built into the kernel."""
    files = _module_files(tree)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in files:
            return
        seen.add(name)
        data = _module_bytes(files[name])
        found = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
        for needed in found.group(1).decode().split(",") if found else []:
            if needed:
                visit(needed.replace("-", "_"))
        order.append((name, data))

    for name in wanted:
        visit(name)
    return order


INITRAMFS_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "initramfs: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower || exec sh
mount -t tmpfs -o size=6G,mode=755 tmpfs /upper; mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /root \\
  || exec sh
next=$(sed -n 's/.* guest=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
umount /proc /sys /dev
exec switch_root /root "$next"
"""


def prepare(name: str, work: Path) -> Kernel:
    """The kernel and an initramfs for it, built in ``work`` from the packages."""
    kernel_deb, busybox_deb = fetch(name)
    tree, box, ramfs = work / "kernel", work / "busybox", work / "initramfs"
    for directory in (tree, box, ramfs):
        shutil.rmtree(directory, ignore_errors=True)
    for deb, into in ((kernel_deb, tree), (busybox_deb, box)):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True, timeout=300)
    modules_root = next(p for p in (tree / "lib/modules", tree / "usr/lib/modules") if p.is_dir())
    version = next(modules_root.iterdir()).name
    for directory in ("bin", "proc", "sys", "dev", "lower", "upper", "root", "modules"):
        (ramfs / directory).mkdir(parents=True)
    busybox = ramfs / "bin" / "busybox"
    shutil.copy(box / "bin" / "busybox", busybox)
    names = []
    for module, data in load_order(modules_root / version, MODULES):
        (ramfs / "modules" / f"{module}.ko").write_bytes(data)
        names.append(module)
    (ramfs / "modules" / "order").write_text("\n".join(names) + "\n")
    init = ramfs / "init"
    init.write_text(INITRAMFS_INIT)
    init.chmod(0o755)
    listing = subprocess.run(["find", "."], cwd=ramfs, capture_output=True, check=True)
    archive = subprocess.run([str(busybox), "cpio", "-o", "-H", "newc"], cwd=ramfs,
                             input=listing.stdout, capture_output=True, check=True)  # fmt: skip
    initrd = work / "initrd.img"
    initrd.write_bytes(gzip.compress(archive.stdout, compresslevel=1))
    vmlinuz = next((tree / "boot").glob("vmlinuz-*"))
    return Kernel(name, version, vmlinuz, initrd)


GUEST_INIT = """#!/bin/sh
# The guest's first process after switch_root: the machine a v2 site gives its pilot.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t 9p -o trans=virtio,version=9p2000.L,rw out {out}
mount -t cgroup2 none /sys/fs/cgroup
# as systemd does: init in a leaf of its own, the controllers handed to the root's children
mkdir /sys/fs/cgroup/init; echo $$ > /sys/fs/cgroup/init/cgroup.procs
echo "+memory +pids +cpu" > /sys/fs/cgroup/cgroup.subtree_control
echo {swap}M > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null && swapon /dev/zram0
hostname v2guest; ip link set lo up 2>/dev/null
echo "guest: kernel $(uname -r), cgroup v2: $(cat /sys/fs/cgroup/cgroup.controllers)" \\
  > {out}/command.log
cd {cwd}
env {env} {command} >> {out}/command.log 2>&1
echo $? > {out}/status
sync; echo o > /proc/sysrq-trigger; sleep 30
"""


@dataclass(frozen=True)
class Result:
    status: int | None  # the command's exit status; None when it never finished
    log: str  # what the command printed
    console: str  # what the kernel printed (for a guest that did not boot)
    out: Path  # the shared directory, with whatever else the command wrote there


def boot(kernel: Kernel, command: list[str], *, work: Path, cwd: Path,
         env: dict[str, str], timeout: float) -> Result:  # fmt: skip
    """Boot ``kernel``, run ``command`` as root in ``cwd`` with ``env`` added, power off."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    init = work / "guest-init.sh"
    init.write_text(GUEST_INIT.format(
        out=shlex.quote(str(out)), cwd=shlex.quote(str(cwd)), swap=SWAP_MB,
        env=" ".join(shlex.quote(f"{k}={v}") for k, v in {**env, "VM_OUT": str(out)}.items()),
        command=" ".join(shlex.quote(word) for word in command)))  # fmt: skip
    init.chmod(0o755)
    append = (f"console=ttyS0 quiet loglevel=3 panic=-1 cgroup_no_v1=all "
              f"systemd.unified_cgroup_hierarchy=1 guest={init}")  # fmt: skip
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64",
            "-m", str(MEMORY_MB), "-smp", "2", "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(kernel.initrd), "-append", append,
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,"
                       "readonly=on,multidevs=remap",
            "-virtfs", f"local,path={out},mount_tag=out,security_model=passthrough"]  # fmt: skip
    console = work / "console.log"
    # a machine that does not finish in time is reported as no status
    with open(console, "wb") as sink, contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                       timeout=timeout, check=False)  # fmt: skip
    status_file = out / "status"
    status = int(status_file.read_text()) if status_file.exists() else None
    logged = out / "command.log"
    log = logged.read_text(errors="replace") if logged.exists() else ""
    return Result(status, log, console.read_text(errors="replace"), out)


def workspace(name: str) -> Path:
    """A fresh directory for one machine, on this machine's disk (the guest sees it)."""
    return Path(tempfile.mkdtemp(prefix=f"sandbox-agent-vm-{name}-", dir="/var/tmp"))


# -- the guest suite: what tests/vm/test_kernels.py runs in each kernel --------------------

ROOT = Path(__file__).resolve().parents[2]
INSIDE = "tests/vm/inside/test_delegated_v2.py::"
PILOT = INSIDE + "test_the_pilot_runs_jobs_alone_in_its_delegated_cgroup_and_holds_every_limit"
# The adversarial resource tests whose defence is the job's cgroup (the work directory's
# filesystem, the wall time and the PID namespace do not depend on the cgroup version)
RESOURCES = tuple(
    "tests/adversarial/test_adv_resources.py::" + name
    for name in ("test_fork_bomb_hits_the_pids_cap_and_the_agent_still_forks",
                 "test_memory_past_the_cap_kills_the_job_not_the_agent",
                 "test_memory_kill_of_the_whole_job_is_reported",
                 "test_a_daemon_without_a_pid_namespace_is_killed_at_teardown_and_reported")
)  # fmt: skip
# What each kernel runs: all of tests/vm/inside on 6.1; on 5.10 (an emulated CPU is
# slow) the pilot once as root and once unprivileged with nsdelegate, swap and the
# shared cgroup. The resource tests on both (5.10 has no memory.peak, no cgroup.kill).
SUITES = {
    "6.1": ("tests/vm/inside", *RESOURCES),
    "5.10": (
        PILOT + "[root-plain]",
        PILOT + "[nobody-nsdelegate]",
        INSIDE + "test_swap_beyond_memory_is_the_policys_to_give[nobody]",
        INSIDE + "test_doctor_names_the_processes_that_share_the_pilots_cgroup",
        *RESOURCES,
    ),
}
SCOPES = "/sys/fs/cgroup/scopes"  # where each command gets a cgroup of its own
SLOWER = 20  # how much slower the emulated CPU runs Python than this machine
BOOT_TIMEOUT = 1500.0  # seconds, per kernel


def run_suite(name: str) -> Result:
    """Boot ``name`` and run the guest tests in it; their junit report is in out/."""
    work = workspace(name)
    kernel = prepare(name, work)
    setup = (f"mkdir {SCOPES} && echo '+memory +pids +cpu' > {SCOPES}/cgroup.subtree_control"
             ' && exec "$@"')  # fmt: skip
    command = ["sh", "-c", setup, "sh", str(Path(sys.executable).parent / "python"),
               "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o", "timeout=1200",
               "--junitxml", str(work / "out" / "junit.xml"), *SUITES[name]]  # fmt: skip
    env = {"SANDBOX_AGENT_VM_GUEST": name, "SANDBOX_AGENT_TEST_SCOPES": SCOPES,
           "SANDBOX_AGENT_TEST_SLOW": str(SLOWER), "NO_COLOR": "1"}  # fmt: skip
    try:
        return boot(kernel, command, work=work, cwd=ROOT, env=env, timeout=BOOT_TIMEOUT)
    finally:  # the unpacked kernel is hundreds of MB; out/ stays for the report
        for unpacked in ("kernel", "busybox", "initramfs"):
            shutil.rmtree(work / unpacked, ignore_errors=True)


class Runs:
    """Each kernel's guest suite, run once per test session, in the background from the
    moment the tests are collected."""

    def __init__(self) -> None:
        self.results: dict[str, Result | str] = {}  # a string: why it could not run
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._all, name="test machines", daemon=True)
            self._thread.start()

    def _all(self) -> None:
        for name in KERNELS:
            reason = unavailable()
            if reason:
                self.results[name] = reason
                continue
            try:
                self.results[name] = run_suite(name)
            except Unavailable as exc:
                self.results[name] = str(exc)
            except (OSError, subprocess.SubprocessError, StopIteration) as exc:
                self.results[name] = f"the {name} machine could not be prepared: {exc!r}"

    def wait(self, name: str) -> Result | str:
        self.start()
        deadline = time.monotonic() + BOOT_TIMEOUT * len(KERNELS) + 600
        while name not in self.results and time.monotonic() < deadline:
            time.sleep(1)
        return self.results.get(name, f"the {name} machine did not finish in time")


RUNS = Runs()
