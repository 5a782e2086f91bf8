"""S3TrustStore: the trust store in the bucket, one for every replica.

The same interface as trust/store.py's TrustStore. Every change is its own
object, so no writer ever reads, edits and writes back an object another
host may be changing (keys under ``<prefix>trust/``):

    certs/<fp>/<inc>/record.json      an add: pem, role, name, added_at, not_after
    certs/<fp>/<inc>/role-<n>.json    a set-role: {"role": ...}; the latest counts
    revoked/<fp>.json                 a revocation: written once, never removed

(A bucket written by the first S3 layout, one ``trust/<fp>.json`` per
certificate, is still read: each such record counts as an incarnation.)
`<inc>` is a fresh random id per add (an "incarnation"). A remove deletes
the incarnation's objects; nothing but an add ever writes a record.json,
and an add always picks a new id, so a set-role racing a remove can leave
only a role object without a record, which counts for nothing: a removed
certificate is never brought back. A revocation object makes its
fingerprint revoked whatever else exists for it, so no change on another
host can undo it. Two hosts adding one certificate at once are decided by
registry/s3settle.py: the first incarnation wins, the other add deletes its
own and reports AlreadyExists, exactly as if it had come second.

The server's copy LISTs ``trust/`` every POLL seconds (records are read once
per ETag), so generation() stays a memory read. It also fails closed: once
the view has not been confirmed by a LIST that started within FRESH seconds,
generation() raises StoreError, and the server refuses requests that need
trust with 503 rather than authorise them on what may be a stale view (a
revocation made elsewhere must be refused everywhere within FRESH seconds).
The outage is logged once; the next LIST that succeeds ends it.
"""
import dataclasses
import hashlib
import json
import logging
import secrets
import threading
import time

from names import check_fingerprint
from objstore.client import S3Client, S3Error, Unreachable
from registry import s3settle
from registry.s3claims import SETTLE, date_time, store_time
from trust.certs import Certificate
from trust.errors import AlreadyExists, Revoked, StoreError
from trust.store import (ROLES, Record, _FIELDS, _now, _timestamp, check_absent,
                         check_role, pick)

__all__ = ["S3TrustStore", "POLL", "FRESH"]

log = logging.getLogger("aar.trust")

POLL = 0.5             # seconds between the server's LISTs of trust/
FRESH = 2.0            # older than this, the view is not used to authorise
POLL_TIMEOUT = 1.5     # the poller's requests: a hanging bucket is an outage
_ADDED = ("pem", "role", "name", "added_at", "not_after")
_LEGACY = "first"          # the incarnation name of a record in the first layout
_STORE_ERRORS = (S3Error, Unreachable, s3settle.TooSlow, s3settle.Vanished)


class S3TrustStore:
    """Trust records in one bucket under one prefix."""

    def __init__(self, client, prefix="", poll=None):
        self.client = client
        self.root = prefix
        self.prefix = prefix + "trust/"
        self.path = f"s3://{client.endpoint.bucket}/{self.prefix}"
        self._objects = {}            # key -> (etag, value)
        self._records = {}
        self._incarnations = {}       # fingerprint -> (the incarnation that counts, time)
        self._listed_at = 0.0         # the store's clock at the last LIST
        self._generation = 0
        self._lock = threading.Lock()
        self._confirmed = 0.0         # monotonic start of the last good LIST
        self._outage = None           # why the bucket fails, while it does
        self._polling = bool(poll)
        self._stop = threading.Event()
        self.refresh()
        if poll:
            # Its own client with short timeouts and no retries: the next
            # round is the retry, and a hanging bucket must not hold it.
            poller = S3Client(client.endpoint, client.creds, timeout=POLL_TIMEOUT,
                              attempts=1)
            threading.Thread(target=self._poll, args=(poll, poller), name="aar-s3-trust",
                             daemon=True).start()

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except _STORE_ERRORS as exc:
            raise StoreError(f"trust store {self.path}: {exc}") from None

    # -- the view ---------------------------------------------------------------

    def _poll(self, interval, client):
        while True:
            started = time.monotonic()
            try:
                self.refresh(client)
            except StoreError as exc:
                self._down(str(exc))
            # Rounds start every `interval`, however long a LIST took.
            if self._stop.wait(max(0.0, interval - (time.monotonic() - started))):
                return

    def _down(self, reason):
        with self._lock:
            if self._outage is None:
                log.error("trust store unreachable: %s; requests that need trust are "
                          "refused (503) until it answers", reason)
                self._outage = reason

    def refresh(self, client=None):
        """LIST trust/ and rebuild the view (raises StoreError)."""
        client = client or self.client
        started = time.monotonic()
        items, date = self._call(client.list, self.prefix)
        objects, ranks = {}, {}
        for item in items:
            key = item["key"]
            ranks[key] = (store_time(item["modified"]), key)
            cached = self._objects.get(key)
            if cached is None or cached[0] != item["etag"]:
                body = self._call(client.get, key)
                if body is None:
                    continue          # removed between LIST and GET: not this round
                try:
                    cached = (item["etag"], json.loads(body))
                except ValueError:      # kept as None: said once per ETag
                    log.error("trust object %s is not JSON: ignored", key)
                    cached = (item["etag"], None)
            objects[key] = cached
        records, incarnations = self._view(objects, ranks)
        digest = hashlib.sha256("\n".join(f"{k} {e}" for k, (e, _) in
                                          sorted(objects.items())).encode()).digest()
        with self._lock:
            if started < self._confirmed:
                return                  # a newer LIST's view is in place already
            self._objects = objects
            self._records = records
            self._incarnations = incarnations
            self._listed_at = date_time(date) if date else time.time()
            self._generation = int.from_bytes(digest[:7], "big")
            self._confirmed = started
            if self._outage is not None:
                log.info("trust store answers again")
                self._outage = None

    def _view(self, objects, ranks):
        """({fingerprint: Record}, {fingerprint: (incarnation, its LastModified)})."""
        adds, roles, records = {}, {}, {}
        for key, (_, value) in objects.items():
            parts = key[len(self.prefix):].split("/")
            if not isinstance(value, dict):
                continue
            if len(parts) == 2 and parts[0] == "revoked" and parts[1].endswith(".json"):
                if set(_FIELDS) <= set(value):
                    fp = parts[1][:-5]
                    records[fp] = Record(fingerprint=fp,
                                         **{f: value[f] for f in _FIELDS})
            elif len(parts) == 1 and parts[0].endswith(".json") and set(_ADDED) <= set(value):
                # The first S3 layout kept one trust/<fp>.json per certificate.
                adds.setdefault(parts[0][:-5], []).append((ranks[key], _LEGACY, value))
            elif len(parts) == 4 and parts[0] == "certs":
                fp, inc, leaf = parts[1:]
                if leaf == "record.json" and set(_ADDED) <= set(value):
                    adds.setdefault(fp, []).append((ranks[key], inc, value))
                elif leaf.startswith("role-") and value.get("role") in ROLES:
                    roles.setdefault((fp, inc), []).append((ranks[key], value["role"]))
        incarnations = {}
        for fp, found in adds.items():
            rank, inc, value = min(found)     # two adds at once: the first one counts
            incarnations[fp] = (inc, rank[0])
            if fp in records:                 # revoked: the revocation counts
                continue
            fields = {f: value[f] for f in _ADDED}
            if roles.get((fp, inc)):
                fields["role"] = max(roles[(fp, inc)])[1]
            records[fp] = Record(fingerprint=fp, revoked_at=None, **fields)
        return records, incarnations

    # -- reading ----------------------------------------------------------------

    def get(self, fingerprint):
        return self._records.get(check_fingerprint(fingerprint, allow_prefix=False))

    def resolve(self, fp_or_prefix) -> str:
        return pick(check_fingerprint(fp_or_prefix, allow_prefix=True), self._records)

    def records(self, revoked=False) -> list:
        found = [r for r in self._records.values() if revoked or not r.revoked]
        return sorted(found, key=lambda r: (r.added_at, r.fingerprint))

    def trusted(self) -> dict:
        return {fp: r for fp, r in self._records.items() if not r.revoked}

    def generation(self) -> int:
        """The view's generation; StoreError once it is too old to authorise."""
        if self._polling:
            age = time.monotonic() - self._confirmed
            if age > FRESH:
                reason = self._outage or f"no answer from the bucket for {age:.1f}s"
                self._down(reason)
                raise StoreError(f"trust store unreachable: {reason}")
        return self._generation

    # -- changing -------------------------------------------------------------------

    def _certs(self, fingerprint):
        return f"{self.prefix}certs/{fingerprint}/"

    def _absent(self, fingerprint):
        check_absent(fingerprint, self._records.get(fingerprint))

    def add(self, cert, role, name=None):
        if not isinstance(cert, Certificate):
            raise TypeError("add() takes a trust.certs.Certificate")
        check_role(role)
        self.refresh()
        fp = cert.fingerprint
        existing = self._records.get(fp)
        # An add that may still lose to one not yet listed decides nothing:
        # join the contest, which settles them all.
        if existing is None or existing.revoked or \
                self._incarnations[fp][1] + SETTLE < self._listed_at:
            self._absent(fp)
        record = Record(fingerprint=fp, pem=cert.pem, role=role,
                        name=cert.common_name if name is None else name,
                        added_at=_now(), not_after=_timestamp(cert.not_after),
                        revoked_at=None)
        mine = f"{self._certs(fp)}{secrets.token_hex(8)}/record.json"
        body = json.dumps({f: getattr(record, f) for f in _ADDED}, sort_keys=True)
        items, _ = self._call(s3settle.claim, self.client, mine, body.encode(),
                              self._certs(fp))
        first = s3settle.first(i for i in items if i["key"].endswith("/record.json"))
        if first["key"] != mine:          # another host added it first
            self._call(self.client.delete, mine)
            self.refresh()
            self._absent(fp)
            raise AlreadyExists(f"certificate {fp} was added by another host meanwhile")
        self.refresh()
        return record

    def _existing(self, prefix):
        self.refresh()
        return self._records[self.resolve(prefix)]

    def remove(self, prefix):
        record = self._existing(prefix)
        if record.revoked:
            raise Revoked(f"certificate {record.fingerprint} is revoked; revoked "
                          "certificates stay in the trust store for good")
        # Every incarnation, records first: a role object left behind by a
        # racing set-role means nothing without its record.
        items, _ = self._call(self.client.list, self._certs(record.fingerprint))
        keys = [f"{self.prefix}{record.fingerprint}.json"]       # the first layout's
        keys += sorted((i["key"] for i in items), key=lambda k: not k.endswith("/record.json"))
        for key in keys:
            self._call(self.client.delete, key)
        self.refresh()
        return record

    def set_role(self, prefix, role):
        check_role(role)
        record = self._existing(prefix)
        if record.revoked:
            raise Revoked(f"certificate {record.fingerprint} is revoked; its role "
                          "no longer matters")
        inc = self._incarnations[record.fingerprint][0]
        # The writer's clock in the name orders two changes the store stamps alike.
        key = (f"{self._certs(record.fingerprint)}{inc}/role-{time.time_ns():020d}-"
               f"{secrets.token_hex(4)}.json")
        self._call(self.client.put, key, json.dumps({"role": role}).encode())
        self.refresh()
        return dataclasses.replace(record, role=role)

    def revoke(self, prefix):
        record = self._existing(prefix)
        if record.revoked:
            raise Revoked(f"certificate {record.fingerprint} was already "
                          f"revoked at {record.revoked_at}")
        record = dataclasses.replace(record, revoked_at=_now())
        body = json.dumps(record._stored(), sort_keys=True).encode()
        self._call(self.client.put, f"{self.prefix}revoked/{record.fingerprint}.json", body)
        self.refresh()
        return record

    def join_tokens(self):
        """The join tokens kept next to this store (registry/s3tokens.py)."""
        from registry.s3tokens import S3Tokens
        return S3Tokens(self)

    def close(self):
        self._stop.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
