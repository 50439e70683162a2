"""The stage the attack probes play on: canary secrets planted where a pilot's real
ones are, and the host listening for what gets out.

Each piece is something a payload would be after on a worker node, holding a secret
no probe could guess (a fresh random word):

* a canary key in the agent's own credential directory, with the modes of the real
  ones (``HOME/certs``, 0700, the key 0600), and the variables a pilot holds its
  token paths and secrets in (``SANDBOX_AGENT_KEY``, ``X509_USER_PROXY``, ...);
* a descriptor the agent holds open on a file only it can read, left inheritable;
* a SysV shared memory segment (mode 0666) and a file in the host's /dev/shm;
* a decoy process outside the sandbox, as the uid the sandbox runs as on the host
  (the easiest target: same uid, dumpable), the secret in its environment, which
  reports any signal that reaches it;
* TCP listeners on loopback and the host's own address, a UDP echo and an abstract
  unix socket, each recording what reaches it;
* a host directory anyone may write (under /var/tmp), which no bind should reach.

``Stage.config()`` is what the probe's runner takes (``probe/run.py --json``): the
secrets and paths hex-encoded, so that no argv inside holds them.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sandbox_agent.runtime.launch import SANDBOX_HOST_UID

# The variables a pilot keeps its token paths and secrets in (the canary sets each).
SECRET_VARIABLES = ("SANDBOX_AGENT_KEY", "SANDBOX_AGENT_CERT", "X509_USER_PROXY",
                    "SANDBOX_AGENT_SELFTEST_SECRET")  # fmt: skip
CANARY_PREFIX = ".selftest-canary-"

# The decoy: sleeps, and says so on stdout when a signal reaches it. It dies with its
# parent (PR_SET_PDEATHSIG, set after the switch to the sandbox's uid, which clears it),
# and in any case after two minutes.
DECOY = (
    "import ctypes, signal, sys, time\n"
    "ctypes.CDLL(None).prctl(1, 9)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "report = lambda n, f: (sys.stdout.write(signal.Signals(n).name + '\\n'), sys.stdout.flush())\n"
    "for s in (signal.SIGURG, signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP):\n"
    "    signal.signal(s, report)\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)
STALE = 600  # seconds after which canaries a killed run left are taken away


def sweep_stale(certs: Path) -> None:
    """Take away the canaries a selftest killed outright (SIGKILL) left behind: files in
    ``certs``, /dev/shm and /var/tmp older than STALE (a run lasts seconds)."""
    old = time.time() - STALE
    places = [(certs, f"{CANARY_PREFIX}*"), (Path("/dev/shm"), "sandbox-agent-probe-*"),  # noqa: S108
              (Path("/var/tmp"), "sandbox-agent-selftest-*")]  # noqa: S108  # fmt: skip
    for directory, pattern in places:
        for path in directory.glob(pattern):
            try:
                info = path.lstat()
                if info.st_mtime >= old or info.st_uid != os.geteuid():  # young, or not ours
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
            except OSError:
                continue  # another's, or gone: not ours to insist on


def sandbox_host_uid() -> int:
    """Who the sandbox is on the host: 65534 when the agent is root, else the agent."""
    return SANDBOX_HOST_UID if os.geteuid() == 0 else os.geteuid()


def canary(kind: str) -> str:
    return f"CANARY-{kind}-{secrets.token_hex(8)}"


def hexed(text: object) -> str:
    return str(text).encode().hex()


def host_address() -> list[str]:
    """The host's own non-loopback IPv4 address (the source of a route out: connecting
    a UDP socket sends nothing), or none without a route."""
    for target in ("192.0.2.1", "10.255.255.254"):  # TEST-NET-1, a private address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((target, 9))
            except OSError:
                continue
            address = str(sock.getsockname()[0])
        if not address.startswith("127.") and address != "0.0.0.0":  # noqa: S104 (a comparison)
            return [address]
    return []


class Listeners:
    """The host's side of the network attacks; ``arrived`` records what reached it."""

    def __init__(self) -> None:
        self.abstract = f"sandbox-agent-probe-{secrets.token_hex(6)}"
        self.sockets: dict[socket.socket, str] = {}
        self.tcp: list[tuple[str, int]] = []
        self.udp: list[tuple[str, int]] = []
        self.arrived: dict[str, list[bytes]] = {"tcp": [], "udp": [], "unix": []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        try:
            for address in ["127.0.0.1", *host_address()]:
                sock = self._add(socket.AF_INET, socket.SOCK_STREAM, "tcp")
                sock.bind((address, 0))
                sock.listen(8)
                self.tcp.append((address, sock.getsockname()[1]))
            udp = self._add(socket.AF_INET, socket.SOCK_DGRAM, "udp")
            udp.bind(("127.0.0.1", 0))
            self.udp.append(("127.0.0.1", udp.getsockname()[1]))
            unix = self._add(socket.AF_UNIX, socket.SOCK_STREAM, "unix")
            unix.bind("\0" + self.abstract)
            unix.listen(8)
        except BaseException:
            self.close()
            raise
        self._thread.start()

    def _add(self, family: int, kind: int, name: str) -> socket.socket:
        sock = socket.socket(family, kind)
        self.sockets[sock] = name
        return sock

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(list(self.sockets), [], [], 0.05)
            for sock in ready:
                kind = self.sockets[sock]
                if kind == "udp":
                    data, peer = sock.recvfrom(512)
                    self.arrived[kind].append(data)
                    sock.sendto(b"HOST", peer)
                    continue
                conn, _ = sock.accept()
                with conn:
                    conn.settimeout(1)
                    try:
                        data = conn.recv(512) or b"(connected)"
                        conn.sendall(b"HOST\n")
                    except OSError:
                        data = b"(connected)"
                    self.arrived[kind].append(data)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for sock in self.sockets:
            sock.close()


class SysvSegment:
    """A SysV shared memory segment of the host, mode 0666, holding ``secret``: only
    the IPC namespace keeps a payload from attaching it."""

    def __init__(self, secret: str) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.shmat.restype = ctypes.c_void_p
        for _ in range(16):
            self.key = secrets.randbelow(0x7FFFFFFF) + 1
            self.id = self._libc.shmget(self.key, 4096, 0o1000 | 0o2000 | 0o666)  # CREAT|EXCL
            if self.id >= 0:
                break
        else:
            raise OSError(ctypes.get_errno(), "shmget: cannot make a SysV segment")
        address = self._libc.shmat(self.id, None, 0)
        ctypes.memmove(address, secret.encode(), len(secret))
        self._libc.shmdt(ctypes.c_void_p(address))

    def remove(self) -> None:
        self._libc.shmctl(self.id, 0, None)  # IPC_RMID


class Decoy:
    """A process outside the sandbox, as the sandbox's host uid, ``variables`` in its
    environment and ``marker`` in its argv (so the probe can tell it from a sandbox
    process that happens to have the same pid)."""

    def __init__(self, python: str, variables: dict[str, str], marker: str) -> None:
        uid = sandbox_host_uid() if os.geteuid() == 0 else None
        self.process = subprocess.Popen(
            [python, "-I", "-S", "-c", DECOY, marker], env=variables,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, user=uid, group=uid, extra_groups=None if uid is None else [],
        )  # fmt: skip
        assert self.process.stdout is not None
        try:
            ready = self.process.stdout.readline() == "ready\n"  # its handlers are in place
        except BaseException:  # stopped while it starts: it must not outlive us
            self.stop()
            raise
        if not ready:
            self.stop()
            raise OSError("the decoy process did not start")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> list[str]:
        """The signals that reached it (and a note if it died); it is gone after."""
        died = self.process.poll() is not None
        self.process.kill()
        output, _ = self.process.communicate(timeout=10)
        return output.split() + (["(it died)"] if died else [])


class Stage:
    """Every canary, planted for one probe run; ``close()`` takes them all away."""

    def __init__(self, certs: Path, python: str = sys.executable) -> None:
        self.certs = certs
        self.outside: Path | None = None
        self.key_secret, self.env_secret = canary("KEY"), canary("ENV")
        self.fd_secret, self.ipc_secret = canary("FD"), canary("IPC")
        self.marker = f"sandbox-agent-decoy-{secrets.token_hex(6)}"
        self.planted: list[Path] = []
        self.fd = -1
        self.segment: SysvSegment | None = None
        self.listeners: Listeners | None = None
        self.decoy: Decoy | None = None
        try:
            self._plant(python)
        except BaseException:
            self.close()
            raise

    def _plant(self, python: str) -> None:
        # The key where the agent's are, with their modes: the directory is made as
        # `certs init` makes it when there is none yet.
        self.certs.mkdir(mode=0o700, parents=True, exist_ok=True)
        sweep_stale(self.certs)
        tag = secrets.token_hex(4)
        self.key = self._write(self.certs / f"{CANARY_PREFIX}{tag}.key",
                               f"-----BEGIN PRIVATE KEY-----\n{self.key_secret}\n"
                               "-----END PRIVATE KEY-----\n")  # fmt: skip
        self.cert = self._write(self.certs / f"{CANARY_PREFIX}{tag}.pem", "not a secret\n")
        fd_file = self._write(self.certs / f"{CANARY_PREFIX}{tag}.fd", self.fd_secret)
        self.fd = os.open(fd_file, os.O_RDONLY | os.O_CLOEXEC)
        os.set_inheritable(self.fd, True)  # only the launcher's close_fds keeps it out
        self.segment = SysvSegment(self.ipc_secret)
        # readable by all: only the sandbox's own /dev/shm may keep it out (made new,
        # never through a link someone planted in the shared directory)
        shm = Path(f"/dev/shm/sandbox-agent-probe-{tag}")  # noqa: S108
        self.shm = self._write(shm, self.ipc_secret)
        self.shm.chmod(0o644)
        self.listeners = Listeners()
        self.outside = Path(tempfile.mkdtemp(prefix="sandbox-agent-selftest-", dir="/var/tmp"))
        self.outside.chmod(0o711)
        (self.outside / "writable").mkdir()
        (self.outside / "writable").chmod(0o777)  # the sandbox's uid could, if it were bound
        self.decoy = Decoy(python, {"SANDBOX_AGENT_SELFTEST_SECRET": self.env_secret},
                           self.marker)  # fmt: skip

    def _write(self, path: Path, text: str) -> Path:
        # listed before it exists: a SIGTERM between the two would leave it untracked
        self.planted.append(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError:
            self.planted.remove(path)  # not ours: never removed by close()
            raise
        with os.fdopen(fd, "w") as file:
            file.write(text)
        return path

    def environment(self) -> dict[str, str]:
        """The variables the agent would hold, canaries in place of the real values."""
        return {"SANDBOX_AGENT_KEY": str(self.key), "SANDBOX_AGENT_CERT": str(self.cert),
                "X509_USER_PROXY": str(self.key),
                "SANDBOX_AGENT_SELFTEST_SECRET": self.env_secret}  # fmt: skip

    def secrets(self) -> tuple[str, ...]:
        return (self.key_secret, self.env_secret, self.fd_secret, self.ipc_secret)

    def config(self) -> dict[str, Any]:
        assert self.listeners is not None and self.segment is not None
        assert self.decoy is not None
        return {
            "secrets": [hexed(s) for s in self.secrets()],
            "env_names": list(SECRET_VARIABLES),
            "key_paths": [hexed(self.key)],
            "cert_dirs": [hexed(self.certs)],
            "sysv_key": self.segment.key,
            "shm_paths": [hexed(self.shm)],
            "host_pid": self.decoy.pid,
            "host_marker": hexed(self.marker),
            "tcp": self.listeners.tcp,
            "udp": self.listeners.udp,
            "abstract": self.listeners.abstract,
            "canary_fd": self.fd,
            "write_paths": [str(self.outside / "writable")] if self.outside else [],
        }

    def host_saw(self) -> dict[str, list[str]]:
        """What reached the host while the probe ran, by the mechanism it went through
        (network: the listeners; processes: the decoy), each a leak in itself unless
        the policy grants that mechanism (network.mode = "host"). The decoy is stopped
        to read what it saw: call this once, after the probe."""
        time.sleep(0.05)  # a datagram or a signal that got out is seen
        seen: dict[str, list[str]] = {"network": [], "processes": []}
        if self.listeners is not None:
            for kind, data in self.listeners.arrived.items():
                if data:
                    seen["network"].append(f"the host's {kind} listener received {data[0][:40]!r}")
        if self.decoy is not None:
            seen["processes"] += [f"the decoy outside the sandbox: {s}" for s in self.decoy.stop()]
            self.decoy = None
        return seen

    def close(self) -> None:
        if self.decoy is not None:
            self.decoy.stop()
            self.decoy = None
        if self.listeners is not None:
            self.listeners.close()
            self.listeners = None
        if self.segment is not None:
            self.segment.remove()
            self.segment = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for path in self.planted:
            path.unlink(missing_ok=True)
        self.planted = []
        if self.outside is not None:
            shutil.rmtree(self.outside, ignore_errors=True)
            self.outside = None
