"""The running server's view of the trust store, kept current without a restart.

`aar trust add|remove|revoke` run in other processes and write the shelf; the
server notices through the store's generation number, read through a StatGate
(registry/gate.py) so that checking it on every request costs two stat calls,
not a query, and stays exact. When it moves, the trusted records are read again and the
TLS context is rebuilt, so that

* new handshakes verify against the new set of certificates, and
* TLS sessions resumed from tickets of the old context fail (a new context has
  new ticket keys and an empty session cache), forcing a full handshake that a
  revoked certificate cannot pass.

Requests on connections that are already open are authorised against the same
records by `authorise()`, so a revocation also ends an open keep-alive session at
its next request.
"""
import datetime
import logging
import threading
import time

from registry.gate import StatGate
from trust import tls

__all__ = ["LiveTrust", "Refusal"]

log = logging.getLogger("aar.trust")


class Refusal(Exception):
    """A request or handshake refused for its certificate; `reason` says why."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def _epoch(iso):
    """'2027-11-22T07:49:05Z' -> seconds since the epoch (inf when unknown)."""
    if not iso:
        return float("inf")
    moment = datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


class LiveTrust:
    """Trusted records and the matching server SSLContext, refreshed on change."""

    def __init__(self, store, certfile, keyfile):
        self._store = store
        self._gate = StatGate(store.path, store.generation)
        self._certfile = certfile
        self._keyfile = keyfile
        self._lock = threading.Lock()
        self._generation = None
        self._records = {}
        self._context = None
        self.refresh()

    def refresh(self):
        """Reload records and context if the store changed since the last look."""
        generation = self._gate.get()
        if generation == self._generation:
            return
        with self._lock:
            if generation == self._generation:
                return
            records = self._store.trusted()
            context = tls.server_context(
                self._certfile, self._keyfile, [r.pem for r in records.values()])
            # What a request needs, precomputed: role and expiry as a number.
            self._records = {fp: (r.role, _epoch(r.not_after), r.not_after)
                             for fp, r in records.items()}
            self._context = context
            if self._generation is not None:
                log.info("trust store changed: %d trusted certificate(s); "
                         "TLS context rebuilt", len(records))
            self._generation = generation

    @property
    def context(self):
        self.refresh()
        return self._context

    def authorise(self, fingerprint):
        """Return the caller's role, or raise Refusal saying why not."""
        self.refresh()
        entry = self._records.get(fingerprint)
        if entry is None:
            stored = self._store.get(fingerprint)
            if stored is not None and stored.revoked_at:
                raise Refusal(f"certificate revoked at {stored.revoked_at}")
            raise Refusal("certificate not trusted")
        role, expires, expires_text = entry
        if expires < time.time():
            raise Refusal(f"certificate expired at {expires_text}")
        return role
