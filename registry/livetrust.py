"""The running server's view of the trust store, kept current without a restart.

`aar trust add|remove|revoke` run in other processes and write the shelf; the
server notices through the store's generation number, read through a StatGate
(registry/gate.py) so that checking it on every request costs a comparison of
a few mapped bytes, not a query, and stays exact. When it moves, the trusted records are read again and the
TLS context is rebuilt, so that

* new handshakes verify against the new set of certificates, and
* TLS sessions resumed from tickets of the old context fail (a new context has
  new ticket keys and an empty session cache), forcing a full handshake that a
  revoked certificate cannot pass.

Requests on connections that are already open are authorised against the same
records by `authorise()`, so a revocation also ends an open keep-alive session at
its next request.

Revoked and expired certificates are let through the handshake on purpose:
OpenSSL refuses them without saying whom it refused, and operators need to
tell "a revoked node keeps knocking" from "a stranger". The context therefore
verifies revoked certificates too and skips the date check, and `authorise()`
refuses them at their first request with 403, naming the certificate; the
service log and the audit log get its fingerprint and name. Unknown
certificates are still refused in the handshake.

The context is CERT_OPTIONAL: a caller with no certificate at all completes
the handshake, and the handlers let it reach the join endpoint and nothing
else (registry/handlers.py).
"""
import datetime
import logging
import threading
import time

from registry.gate import StatGate
from trust import certs, tls
from trust.errors import StoreError

__all__ = ["LiveTrust", "Refusal"]

log = logging.getLogger("aar.trust")
_now = time.time


class Refusal(Exception):
    """A request or handshake refused for its certificate; `reason` says why,
    `code` is one of registry.events.REASONS, `name` the certificate's name."""

    def __init__(self, reason, code="untrusted", name=None):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.name = name


def _epoch(iso):
    """'2027-11-22T07:49:05Z' -> seconds since the epoch (inf when unknown)."""
    if not iso:
        return float("inf")
    moment = datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def _not_before(pem):
    try:
        return certs.parse_pem(pem).not_before.timestamp()
    except Exception:    # a record the store accepted: its dates are readable
        return 0.0


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
        self._revoked = {}
        self._context = None
        self._current()

    def refresh(self):
        """Reload records and context if the store changed since the last
        look, asking the store itself (a store that cannot be read raises:
        the health check counts on it). Any thread."""
        self._reload(self._store.generation())

    def _current(self):
        """refresh() through the gate: the loop thread's per-request check."""
        generation = self._gate.get()
        if generation != self._generation:
            self._reload(generation)

    def _reload(self, generation):
        if generation == self._generation:
            return
        with self._lock:
            if generation == self._generation:
                return
            every = self._store.records(revoked=True)
            context = tls.server_context(
                self._certfile, self._keyfile, [r.pem for r in every],
                check_time=False, certificate_optional=True)
            # What a request needs, precomputed: role, validity as numbers, name.
            self._records = {r.fingerprint: (r.role, _not_before(r.pem),
                                             _epoch(r.not_after), r.not_after, r.name)
                             for r in every if not r.revoked}
            self._revoked = {r.fingerprint: (r.revoked_at, r.name) for r in every
                             if r.revoked}
            self._context = context
            if self._generation is not None:
                log.info("trust store changed: %d trusted certificate(s); "
                         "TLS context rebuilt", len(self._records))
            self._generation = generation

    def close(self):
        """Release the descriptor the generation check keeps open."""
        self._gate.close()

    @property
    def context(self):
        try:
            self._current()
        except StoreError:
            pass      # handshakes go on; authorise() refuses their requests (503)
        return self._context

    def authorise(self, fingerprint):
        """Return the caller's role, or raise Refusal saying why not; StoreError
        when the trust store cannot be confirmed current (an object store's
        store fails closed, registry/s3trust.py)."""
        generation = self._gate.get()
        if generation != self._generation:
            self._reload(generation)
        entry = self._records.get(fingerprint)
        if entry is None:
            revoked = self._revoked.get(fingerprint)
            if revoked is not None:
                raise Refusal(f"certificate revoked at {revoked[0]}", "revoked", revoked[1])
            raise Refusal("certificate not trusted", "untrusted")
        role, starts, expires, expires_text, name = entry
        now = _now()
        if expires < now:
            raise Refusal(f"certificate expired at {expires_text}", "expired", name)
        if starts > now:
            raise Refusal("certificate not valid yet", "expired", name)
        return role

    def name_of(self, fingerprint):
        """The name a trusted or revoked certificate is listed under, or None."""
        entry = self._records.get(fingerprint)
        if entry is not None:
            return entry[4]
        revoked = self._revoked.get(fingerprint)
        return revoked[1] if revoked else None

    def roles(self):
        """The role of every trusted certificate (for the metrics)."""
        try:
            self.refresh()
        except StoreError:
            pass      # the last view: a scrape is no authorisation
        return [entry[0] for entry in self._records.values()]
