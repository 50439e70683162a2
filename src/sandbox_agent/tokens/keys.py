"""Private keys: made where they are used, written 0600, refused when others can read them.

Keys never appear in logs or messages; what is shown of a certificate is its SHA-256
fingerprint.
"""

from __future__ import annotations

import hashlib
import os
import stat
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sandbox_agent.tokens.errors import InsecureKeyFile, MalformedToken

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

MIN_RSA_BITS = 2048
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1)


class KeyType(Enum):
    EC = "ec"  # P-256: fast to make and to verify, the default
    RSA = "rsa"  # 3072-bit, for sites whose other tools need RSA

    @classmethod
    def parse(cls, text: str) -> KeyType:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ValueError(f"unknown key type '{text}'; use ec or rsa") from None


def new_key(kind: KeyType = KeyType.EC) -> PrivateKey:
    if kind is KeyType.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP256R1())


def check_public_key(key: object, what: str) -> PublicKey:
    """Accept EC P-256/P-384 and RSA of at least 2048 bits; refuse anything else."""
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return key
    raise MalformedToken(
        f"{what}: key type not accepted; use EC P-256/P-384 or RSA of {MIN_RSA_BITS}+ bits"
    )


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the certificate's DER: what logs and audit records show."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_directory(path: Path) -> Path:
    """Make ``path`` a directory only its owner can enter (0700), or refuse an existing one
    that others can read."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode):
            raise InsecureKeyFile(f"{path}: not a directory") from None
        if info.st_mode & 0o077:
            raise InsecureKeyFile(
                f"{path}: directory for keys is open to others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 700 {path}"
            ) from None
    return path


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` to a new file, 0600 from its creation; never replace an existing one."""
    private_directory(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise InsecureKeyFile(f"{path}: already exists; remove it first to replace it") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem(key))


def write_public_file(path: Path, data: bytes) -> None:
    """Write a certificate or CRL (public data) with mode 0644, replacing atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def load_private_key(path: Path) -> PrivateKey:
    """Read a key file the way ssh does: refused if it is a link, not ours, or readable by
    group or others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InsecureKeyFile(f"{path}: key file not found") from None
    except OSError as exc:
        raise InsecureKeyFile(f"{path}: cannot open the key file ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InsecureKeyFile(f"{path}: not a regular file")
        if info.st_uid != os.geteuid():
            raise InsecureKeyFile(f"{path}: key file belongs to uid {info.st_uid}, not to us")
        if info.st_mode & 0o077:
            raise InsecureKeyFile(
                f"{path}: key file is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"run: chmod 600 {path}"
            )
        data = handle.read(64 * 1024)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise MalformedToken(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise MalformedToken(f"{path}: key type not accepted; use EC or RSA")
    check_public_key(key.public_key(), str(path))
    return key


def same_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    """Whether ``cert`` certifies the public half of ``key``."""
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)
    )
