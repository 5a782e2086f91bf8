"""What the registry server reports about itself: one call per event, three outlets.

The transport (server.py, or any core that replaces it) and the API handlers
call `server.events.<event>(…)`; this module decides what each event means to

* the audit log (registry/audit.py): refusals, package writes and deletes,
  token uses, each written before the answer leaves;
* the metrics (metrics.py), scraped from `aar serve --metrics-listen`;
* the service log (logging): refusals at WARNING, writes, deletes and
  downloads at INFO.

Refusal reasons are a short fixed vocabulary (REASONS), so that the
`aar_refusals_total{reason=…}` label stays low-cardinality; the detail goes
to the logs.

Events the transport owes (any core must call them):
    connection_opened() / connection_closed()   once each per accepted socket
    handshake(seconds)                          after each completed TLS handshake
    refused(address, reason, detail, fingerprint=None)   every refused handshake
    request(route, method, code, seconds, received, sent)  every answered request
"""
import logging

from metrics.core import Metrics, tally

__all__ = ["Events", "REASONS"]

REASONS = ("no_certificate", "untrusted", "revoked", "expired", "read_only", "tls",
           "token", "rate_limited")

log = logging.getLogger("aar.events")


class Events:
    """The server's audit log, metrics and service log behind one interface."""

    def __init__(self, audit=None):
        self.audit = audit
        m = self.metrics = Metrics()
        self._requests = m.counter(
            "aar_requests_total", "Requests answered, by route template, method and "
            "status code", ("route", "method", "code"))
        self._request_seconds = m.histogram(
            "aar_request_duration_seconds", "Time from a request's head to the end "
            "of its answer", ("route",))
        self._received = m.counter("aar_received_bytes_total",
                                   "Request body bytes received")
        self._sent = m.counter("aar_sent_bytes_total", "Response body bytes sent")
        self._received_total = self._received.labels()   # the families' one child
        self._sent_total = self._sent.labels()
        self._handshake_seconds = m.histogram(
            "aar_tls_handshake_duration_seconds", "Duration of completed TLS handshakes")
        self._refusals = m.counter("aar_refusals_total", "Handshakes and requests "
                                   "refused, by reason", ("reason",))
        self._connections = m.gauge("aar_open_connections", "Connections open now")
        self.uploads = m.gauge("aar_uploads_in_progress", "Package uploads being "
                               "received now")
        self._storage_errors = m.counter("aar_storage_errors_total", "Requests that "
                                         "failed on a storage error")
        self._audit_errors = m.counter("aar_audit_errors_total", "Audit records that "
                                       "could not be written")
        self._trusted = m.gauge("aar_trusted_certificates", "Trusted (unrevoked) client "
                                "certificates, by role", ("role",), collect=self._roles)
        self._packages = m.gauge("aar_packages", "Packages stored",
                                 collect=lambda: self._totals(0))
        self._stored_bytes = m.gauge("aar_stored_bytes", "Bytes of packages stored "
                                     "(counted per package, before deduplication)",
                                     collect=lambda: self._totals(1))
        self._server = None
        self._recorders = {}                 # (route, method, code) -> recorder()
        # Once per connection each: the children themselves, not the families
        # (whose inc() and observe() look the child up, a Python call more).
        self._open = self._connections.labels()
        self.handshake = self._handshake_seconds.labels().observe
        for reason in REASONS:               # every reason shows, 0 until it happens
            self._refusals.labels(reason)

    def attach(self, server):
        """Let the scrape-time gauges read the server's trust view and packages."""
        self._server = server

    # -- collected at scrape time -----------------------------------------------

    def _roles(self):
        counts = {("client",): 0, ("publisher",): 0}
        for role in self._server.trust.roles():
            counts[(role,)] = counts.get((role,), 0) + 1
        return counts

    def _totals(self, which):
        # A store without totals() (S3's) shows no sample rather than a false 0.
        totals = getattr(self._server.packages, "totals", None)
        return {(): totals()[which]} if totals is not None else {}

    # -- transport events ----------------------------------------------------------

    def connection_opened(self):
        self._open.value += 1

    def connection_closed(self):
        self._open.value -= 1

    # handshake(seconds): the histogram child's observe, bound in __init__.

    def request(self, route, method, code, seconds, received, sent):
        record = self._recorders.get((route, method, code)) \
            or self.recorder(route, method, code)
        record(seconds, sent, received)

    def recorder(self, route, method, code):
        """`record(seconds, sent, received=0)`: request()'s counting for one
        (route, method, code) as one call on its children, made once. The
        lookups and method calls would cost about as much again as the
        counting; repeats.py keeps one for an answer sent again and again."""
        key = (route, method, code)
        record = self._recorders.get(key)
        if record is None:
            record = self._recorders[key] = tally(
                self._requests.labels(route, method, str(code)),
                self._request_seconds.labels(route), self._sent_total,
                self._received_total)
        return record

    def storage_error(self):
        self._storage_errors.inc()

    # -- audited events --------------------------------------------------------------

    def refused(self, address, reason, detail, fingerprint=None, name=None, **extra):
        """A handshake or request refused: count, log at WARNING, audit."""
        self._refusals.labels(reason).inc()
        who = address + (f" ({fingerprint[:12]}{', ' + name if name else ''})"
                         if fingerprint else "")
        log.warning("refused %s: %s", who, detail)
        self._record("refusal", address=address, fingerprint=fingerprint, name=name,
                     reason=detail, code=reason, **extra)

    def stored(self, fingerprint, name, package, created):
        log.info("%s %s/%s/%s by %s: %d bytes, sha256 %s",
                 "stored" if created else "unchanged", package["name"],
                 package["version"], package["architecture"], fingerprint,
                 package["size"], package["sha256"])
        if created:
            self._record("package.write", **self._package_fields(fingerprint, name, package))

    def deleted(self, fingerprint, name, packages):
        for package in packages:
            log.info("deleted %s/%s/%s by %s", package["name"], package["version"],
                     package["architecture"], fingerprint)
            self._record("package.delete", **self._package_fields(fingerprint, name, package))

    def downloaded(self, address, fingerprint, package, start, end):
        log.info("download %s/%s/%s by %s (%s): bytes %d-%d of %d", package["name"],
                 package["version"], package["architecture"], address,
                 (fingerprint or "-")[:12], start, max(start, end - 1), package["size"])

    def joined(self, address, token, record):
        log.info("%s joined with token %s as %s %s (%s)", address, token["id"],
                 record.role, record.fingerprint, record.name)
        self._record("token.use", address=address, token=token["id"],
                     fingerprint=record.fingerprint, name=record.name, role=record.role)

    @staticmethod
    def _package_fields(fingerprint, name, package):
        return {"fingerprint": fingerprint, "name": name,
                "application": package["name"], "version": package["version"],
                "architecture": package["architecture"], "sha256": package["sha256"],
                "size": package["size"]}

    def _record(self, event, **fields):
        if self.audit is None:
            return
        try:
            self.audit.record(event, **fields)
        except Exception as error:   # AuditError, or worse: never fail the request on it
            self._audit_errors.inc()
            log.error("%s", error)
