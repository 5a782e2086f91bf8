"""POST /1.0/join: a node with a join token enrols its client certificate.

    request   {"token": ID, "secret": SECRET, "certificate": PEM}
    answer    {"role", "name", "fingerprint" (the node's), "server_fingerprint",
               "server_certificate" (PEM, for the node's trust store)}

The caller usually has no trusted certificate yet (the handlers let a caller
without any certificate reach this endpoint and nothing else). It has already
pinned us by the token's fingerprint before sending the secret. The token is
checked and used, and the certificate trusted, all or nothing: in one
transaction of the trust store (trust/tokens.py), or, with the trust store in
S3, by a claim that only one node can win (registry/s3tokens.py). The running
server's trust view is refreshed at once, so the node's next connection gets in.

Guessing is rate-limited: every refused attempt costs a credit from the
caller address's bucket and from a global one (so many addresses cannot
share the work); with either bucket empty, attempts get 429 until it refills.
A token's secret has 256 random bits, so the limit is about noise and load
more than about odds.
"""
import json
import threading
import time

from registry.errors import ApiError
from trust import certs
from trust.errors import AlreadyExists, StoreError, TrustError, Revoked
from trust.tokens import TokenRefused

__all__ = ["PATH", "MAX_BODY", "Gate", "join", "INVALID", "RATE_LIMITED"]

PATH = "/1.0/join"
MAX_BODY = 64 * 1024
INVALID = ("invalid join token: wrong, already used, expired or removed; "
           "ask the registry's operator for a new one (aar trust token add)")
RATE_LIMITED = "too many failed join attempts; try again in a minute"


class _Bucket:
    __slots__ = ("credit", "stamp")

    def __init__(self, burst, now):
        self.credit = float(burst)
        self.stamp = now


class Gate:
    """Failed-attempt buckets: per address (burst, per minute) and global."""

    def __init__(self, per_address=5, overall=50, window=60.0, clock=time.monotonic):
        self._per_address = per_address
        self._overall = overall
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets = {}
        self._global = _Bucket(overall, clock())
        self._tokens = None

    def tokens(self, store):
        """The trust store's join tokens (made once, here)."""
        if self._tokens is None:
            self._tokens = store.join_tokens()
        return self._tokens

    def _refill(self, bucket, burst, now):
        bucket.credit = min(burst, bucket.credit + (now - bucket.stamp) * burst / self._window)
        bucket.stamp = now

    def allowed(self, address) -> bool:
        host = address.rpartition(":")[0]
        now = self._clock()
        with self._lock:
            self._refill(self._global, self._overall, now)
            bucket = self._buckets.get(host)
            if bucket is not None:
                self._refill(bucket, self._per_address, now)
            return self._global.credit >= 1 and (bucket is None or bucket.credit >= 1)

    def failed(self, address):
        host = address.rpartition(":")[0]
        now = self._clock()
        with self._lock:
            if len(self._buckets) > 10000:          # forget the long-quiet ones
                self._buckets = {h: b for h, b in self._buckets.items()
                                 if now - b.stamp < self._window}
            bucket = self._buckets.setdefault(host, _Bucket(self._per_address, now))
            self._refill(bucket, self._per_address, now)
            bucket.credit = max(0.0, bucket.credit - 1)
            self._global.credit = max(0.0, self._global.credit - 1)


def _parse(body):
    try:
        request = json.loads(body)
        token_id, secret, pem = request["token"], request["secret"], request["certificate"]
        if not all(isinstance(v, str) for v in (token_id, secret, pem)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ApiError.of("bad_request", 'a join body is {"token": ID, "secret": SECRET, '
                          '"certificate": PEM}') from None
    try:
        cert = certs.parse_pem(pem.encode())
    except TrustError as error:
        raise ApiError.of("bad_request", f"certificate: {error}") from None
    return token_id[:64], secret, cert


def join(server, address, body) -> dict:
    """Use a token for the certificate in body; the answer's metadata, or ApiError."""
    gate, events = server.join_gate, server.events
    if not gate.allowed(address):
        events.refused(address, "rate_limited", "join refused: too many failed attempts")
        raise ApiError.of("too_many_requests", RATE_LIMITED)
    try:
        token_id, secret, cert = _parse(body)
    except ApiError as error:
        gate.failed(address)
        events.refused(address, "token", f"join refused: {error.message}")
        raise
    if cert.expired():
        raise ApiError.of("bad_request", "the certificate to join with has expired")
    try:
        token, record = gate.tokens(server.trust_store).redeem(token_id, secret, cert)
    except TokenRefused as refusal:
        gate.failed(address)
        events.refused(address, "token", f"join with token {token_id} refused: {refusal}",
                       fingerprint=cert.fingerprint, name=cert.common_name, token=token_id)
        raise ApiError.of("forbidden", INVALID) from None
    except (AlreadyExists, Revoked) as error:
        # Nothing changed: the token stays unused for a node with a new certificate.
        events.refused(address, "token", f"join with token {token_id} refused: {error}",
                       fingerprint=cert.fingerprint, name=cert.common_name, token=token_id)
        if isinstance(error, Revoked):
            raise ApiError.of("forbidden", f"{error}: make a new client certificate "
                              "and join again") from None
        raise ApiError.of("conflict", str(error)) from None
    except StoreError as error:
        server.events.storage_error()
        raise ApiError.of("unavailable", f"join failed: {error}") from None
    events.joined(address, token, record)
    server.trust.refresh()
    return {"role": record.role, "name": record.name, "fingerprint": record.fingerprint,
            "server_fingerprint": server.server_fingerprint,
            "server_certificate": server.server_pem}
