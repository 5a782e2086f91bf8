"""Key and self-signed certificate creation with the `openssl` command.

The standard library cannot make keys or certificates, and the design allows
exactly one outside tool for it. Both files are written beside their targets
under temporary names and moved into place only when openssl succeeded and
the certificate reads back, so a crash or a failure never leaves half a pair:
the key is moved first, so a certificate never exists without its key.
"""
import contextlib
import os
import re
import shutil
import subprocess
import tempfile

from .certs import load_certificate
from .errors import TrustError

__all__ = ["create_key_and_cert", "NO_OPENSSL", "OPENSSL_FAILED"]

NO_OPENSSL = ("the 'openssl' command was not found: install OpenSSL "
              "(e.g. 'apt install openssl') to create keys and certificates")
OPENSSL_FAILED = "openssl could not create the certificate: {detail}"

# OpenSSL 3 error lines: "40A7…:error:11000080:LIB:FUNC:REASON:FILE:LINE:DATA".
_ERROR_LINE = re.compile(r"[0-9A-F]+:error:[0-9A-F]+:[^:]*:[^:]*:([^:]*):[^:]*:\d+:?(.*)")

# Enough for key generation on a slow board; a hang must not last forever.
_TIMEOUT = 120


# A TLS server's certificate is a leaf: it may not sign other certificates
# (openssl req -x509 would otherwise mark it CA:TRUE), and it is only good for
# serving TLS. The agent pins it by fingerprint, which none of this changes.
_SERVER_EXTENSIONS = ("basicConstraints=critical,CA:FALSE",
                      "keyUsage=critical,digitalSignature",
                      "extendedKeyUsage=serverAuth")


def create_key_and_cert(cert_path, key_path, common_name, sans=(), days=3650,
                        server=False):
    """Write a new EC P-256 key (mode 0600) and a self-signed certificate.

    sans are subjectAltName entries such as "DNS:localhost" or
    "IP:127.0.0.1"; server=True makes a TLS server's leaf certificate
    (CA:FALSE, serverAuth). Returns the new certificate
    (trust.certs.Certificate).
    """
    subject = _subject(common_name)
    sans = list(sans)
    for san in sans:
        if not isinstance(san, str) or "," in san or ":" not in san or _unprintable(san):
            raise TrustError(f"bad subjectAltName {san!r}: expected e.g. "
                             "'DNS:localhost' or 'IP:127.0.0.1'")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise TrustError(f"bad certificate lifetime {days!r}: expected a number of days >= 1")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TrustError(NO_OPENSSL)
    cert_path, key_path = os.fspath(cert_path), os.fspath(key_path)
    for path in (cert_path, key_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temps = []
    try:
        # mkstemp creates the files 0600, so the key is private from birth.
        tmp_key = _temp_beside(key_path, temps)
        tmp_cert = _temp_beside(cert_path, temps)
        args = [openssl, "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", tmp_key, "-out", tmp_cert, "-subj", subject,
                "-days", str(days)]
        if sans:
            args += ["-addext", "subjectAltName=" + ",".join(sans)]
        if server:
            for extension in _SERVER_EXTENSIONS:
                args += ["-addext", extension]
        _run(args)
        certificate = load_certificate(tmp_cert)
        os.chmod(tmp_key, 0o600)  # in case openssl replaced the file
        os.chmod(tmp_cert, 0o644)  # public by nature
        for path in (tmp_key, tmp_cert):
            _fsync(path)
        os.replace(tmp_key, key_path)
        os.replace(tmp_cert, cert_path)
        temps.clear()
        for path in {os.path.dirname(os.path.abspath(p)) for p in (cert_path, key_path)}:
            _fsync(path)
        return certificate
    finally:
        for path in temps:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _subject(common_name) -> str:
    if not isinstance(common_name, str) or not common_name.strip():
        raise TrustError("the certificate needs a common name")
    if _unprintable(common_name) or len(common_name) > 64:
        raise TrustError(f"bad common name {common_name!r}: at most 64 printable characters")
    # openssl's -subj splits on '/' and '+' and unescapes '\'.
    escaped = "".join("\\" + ch if ch in "\\/+" else ch for ch in common_name)
    return "/CN=" + escaped


def _unprintable(text) -> bool:
    return any(not ch.isprintable() for ch in text)


def _temp_beside(path, temps) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    temps.append(temp)
    return temp


def _run(args):
    try:
        result = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=_TIMEOUT)
    except FileNotFoundError:
        raise TrustError(NO_OPENSSL) from None
    except (OSError, subprocess.TimeoutExpired) as error:
        raise TrustError(OPENSSL_FAILED.format(detail=error)) from None
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        # openssl prints progress first and the reason last.
        detail = lines[-1].strip() if lines else f"exit status {result.returncode}"
        match = _ERROR_LINE.fullmatch(detail)
        if match:
            # Keep the reason and its data; drop the codes and source lines.
            reason, data = match.group(1), match.group(2).strip()
            detail = f"{reason} ({data})" if data else reason
        raise TrustError(OPENSSL_FAILED.format(detail=detail))


def _fsync(path):
    # Directories too: the rename is only durable once its directory is.
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
