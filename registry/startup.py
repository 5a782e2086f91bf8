"""What `aar serve` and `aar trust` check before they touch a data directory.

On a fresh data directory every missing file is made. Once a registry has
served from it (registry/served.py), a missing file is a loss, and recreating
it would hide that loss and make it worse:

- a new empty trust store forgets every revocation, so a revoked certificate
  could be trusted again: refuse; restore it, or ``--recover`` sets it aside;
- a damaged trust store is refused too (sqlite's integrity_check);
- a new server key is a new fingerprint, and every node pins the old one:
  refuse; restore the key, or rotate it deliberately with ``--new-identity``.

The package store checks its own files (registry/recovery.py).
"""

import os
import pathlib
import socket

from registry.errors import StartRefused
from registry.recovery import Quarantine
from registry.served import has_served, read_state
from trust import certs
from trust.errors import CertificateError, Damaged
from trust.store import TrustStore

__all__ = ["open_trust_store", "server_identity", "TRUST_LOST", "IDENTITY_LOST",
           "IDENTITY_PRESENT"]

TRUST_LOST = ("trust store {path} is {state}, but a registry has served from this "
              "data directory: recreating it would forget every trusted and revoked "
              "certificate. Restore trust.db from a backup, or run `aar serve "
              "--recover` to start over with an empty trust store")
TRUST_DAMAGED_HINT = ", or run `aar serve --recover` to set it aside and start over"
IDENTITY_LOST = ("{missing} missing, but this registry {why}: a new key would "
                 "change the server fingerprint every node pins. Restore {files} "
                 "from a backup, or run `aar serve --new-identity` to make a new "
                 "key and certificate on purpose (then give every node the new "
                 "certificate and fingerprint)")

IDENTITY_PRESENT = ("--new-identity replaces a lost server key, but {key} and {cert} "
                    "are both present: to rotate them on purpose, move both out of "
                    "the way first, then start with --new-identity")


def _file_state(path):
    try:
        return None if os.stat(path).st_size else "empty (0 bytes)"
    except FileNotFoundError:
        return "missing"


def open_trust_store(datadir, recover=False) -> TrustStore:
    """The data directory's trust store, checked; raises StartRefused or
    StoreError (one line each). ``recover`` sets a lost or damaged store
    aside under quarantine/ and starts a new one: the operator's choice."""
    path = datadir.trust_db
    state = _file_state(path)
    # Only state.json proves it: certificates alone may have been copied in
    # before the first start (a replica, a charm), with no trust store yet.
    if state is not None and has_served(datadir):
        if not recover:
            raise StartRefused(TRUST_LOST.format(path=path, state=state))
        _set_aside(datadir, path)
    try:
        return TrustStore(path, check_integrity=True)
    except Damaged as exc:
        if not recover:
            raise Damaged(f"{exc}{TRUST_DAMAGED_HINT}") from None
    _set_aside(datadir, path)
    return TrustStore(path, check_integrity=True)


def _set_aside(datadir, path):
    quarantine = Quarantine(datadir)
    for suffix in ("", "-wal", "-shm"):
        extra = pathlib.Path(f"{path}{suffix}")
        if extra.exists():
            quarantine.move(extra, extra.name)


def server_identity(datadir, sans, trusted_count, new_identity=False):
    """(certificate, created): the server's certificate, made on the first
    start. A lost key or certificate on a registry that has served raises
    StartRefused unless ``new_identity``; a certificate left without its key
    then goes to quarantine/, never deleted. ``new_identity`` with both
    files present is refused too. ``trusted_count`` goes in the message."""
    cert, key = datadir.server_cert, datadir.server_key
    if cert.exists() and key.exists():
        if new_identity:
            # Left in a service's command line, the flag would otherwise
            # change the identity at every restart.
            raise StartRefused(IDENTITY_PRESENT.format(cert=cert, key=key))
        try:
            return certs.load_certificate(cert), False
        except CertificateError as exc:
            # "not a PEM certificate" alone would leave the operator guessing which.
            message = str(exc)
            raise CertificateError(message if str(cert) in message
                                   else f"{cert}: {message}") from None
    missing = [p for p in (key, cert) if not p.exists()]
    fingerprint = read_state(datadir).get("server_fingerprint")
    # Trusted nodes alone prove nothing (`aar trust add` may run before the
    # first start); a certificate is only ever written after its key, so a
    # certificate without its key is a loss even where state.json predates us.
    if not new_identity and (has_served(datadir) or cert.exists()):
        why = (f"has served with fingerprint {fingerprint}" if fingerprint
               else "has served")
        if trusted_count:
            why += f" and trusts {trusted_count} certificate(s)"
        raise StartRefused(IDENTITY_LOST.format(
            missing=" and ".join(str(p) for p in missing) + (" is" if len(missing) == 1
                                                            else " are"),
            why=why, files=" and ".join(p.name for p in missing)))
    if new_identity and cert.exists():      # a certificate whose key is lost
        Quarantine(datadir).move(cert, "certs", cert.name)
    from trust import openssl
    openssl.create_key_and_cert(cert, key, common_name=f"aar@{socket.gethostname()}",
                                sans=sans, server=True)
    return certs.load_certificate(cert), True
