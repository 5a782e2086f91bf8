"""S3TrustStore: the trust store in the bucket, one for every replica.

The same interface as trust/store.py's TrustStore, over two kinds of object:

    trust/<fingerprint>.json           the record (pem, role, name, added_at, not_after)
    trust/revoked/<fingerprint>.json   written once by a revocation, never removed

A revocation is its own object, not an edit of the record, so it can never be
lost to a concurrent add, remove or set-role on another host: a fingerprint
with a revocation object is revoked, whatever else exists for it. Records are
small and read once per ETag. The server's copy LISTs ``trust/`` every POLL
seconds (a background thread), so a change made on any replica's host reaches
every replica within about a second, and generation() stays a memory read.
"""
import dataclasses
import hashlib
import json
import logging
import threading

from names import check_fingerprint
from objstore.client import S3Error, Unreachable
from trust.certs import Certificate
from trust.errors import AlreadyExists, Ambiguous, NotFound, Revoked, StoreError
from trust.store import Record, _FIELDS, _now, _timestamp, check_role

__all__ = ["S3TrustStore"]

log = logging.getLogger("aar.trust")

POLL = 1.0


class S3TrustStore:
    """Trust records in one bucket under one prefix."""

    def __init__(self, client, prefix="", poll=None):
        self.client = client
        self.prefix = prefix + "trust/"
        self.path = f"s3://{client.endpoint.bucket}/{self.prefix}"
        self._objects = {}            # key -> (etag, dict)
        self._records = {}
        self._generation = 0
        self._stop = threading.Event()
        self.refresh()
        if poll:
            threading.Thread(target=self._poll, args=(poll,), name="aar-s3-trust",
                             daemon=True).start()

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except (S3Error, Unreachable) as exc:
            raise StoreError(f"trust store {self.path}: {exc}") from None

    def _poll(self, interval):
        failing = False
        while not self._stop.wait(interval):
            try:
                self.refresh()
                failing = False
            except StoreError as exc:
                if not failing:
                    log.error("%s", exc)
                failing = True

    def refresh(self):
        items, _ = self._call(self.client.list, self.prefix)
        objects = {}
        for item in items:
            cached = self._objects.get(item["key"])
            if cached is None or cached[0] != item["etag"]:
                body = self._call(self.client.get, item["key"])
                if body is None:
                    continue
                try:
                    cached = (item["etag"], json.loads(body))
                except ValueError:
                    log.error("trust record %s is not JSON: ignored", item["key"])
                    continue
            objects[item["key"]] = cached
        records, revoked = {}, {}
        for key, (_, value) in objects.items():
            name = key[len(self.prefix):]
            is_revocation = name.startswith("revoked/")
            fp = name[len("revoked/"):] if is_revocation else name
            if not fp.endswith(".json") or not isinstance(value, dict) \
                    or not set(_FIELDS) <= set(value):
                continue
            fp = fp[:-5]
            record = Record(fingerprint=fp, **{f: value[f] for f in _FIELDS})
            (revoked if is_revocation else records)[fp] = record
        records.update(revoked)
        digest = hashlib.sha256("\n".join(f"{k} {e}" for k, (e, _) in
                                          sorted(objects.items())).encode()).digest()
        self._objects = objects
        self._records = records
        self._generation = int.from_bytes(digest[:7], "big")

    # -- reading ----------------------------------------------------------------

    def get(self, fingerprint):
        return self._records.get(check_fingerprint(fingerprint, allow_prefix=False))

    def resolve(self, fp_or_prefix) -> str:
        wanted = check_fingerprint(fp_or_prefix, allow_prefix=True)
        matches = sorted(fp for fp in self._records if fp.startswith(wanted))
        if not matches:
            raise NotFound(f"no certificate with a fingerprint starting {wanted} "
                           "in the trust store")
        if len(matches) > 1:
            raise Ambiguous(f"{len(matches)} certificates have fingerprints starting "
                            f"{wanted}; give more digits")
        return matches[0]

    def records(self, revoked=False) -> list:
        found = [r for r in self._records.values() if revoked or not r.revoked]
        return sorted(found, key=lambda r: (r.added_at, r.fingerprint))

    def trusted(self) -> dict:
        return {fp: r for fp, r in self._records.items() if not r.revoked}

    def generation(self) -> int:
        return self._generation

    # -- changing -------------------------------------------------------------------

    def _write(self, record, revoked=False):
        key = f"{self.prefix}{'revoked/' if revoked else ''}{record.fingerprint}.json"
        body = json.dumps(record._stored(), sort_keys=True).encode()
        self._call(self.client.put, key, body)
        self.refresh()

    def add(self, cert, role, name=None):
        if not isinstance(cert, Certificate):
            raise TypeError("add() takes a trust.certs.Certificate")
        check_role(role)
        self.refresh()
        existing = self._records.get(cert.fingerprint)
        if existing is not None and existing.revoked:
            raise Revoked(f"certificate {cert.fingerprint} was revoked at "
                          f"{existing.revoked_at} and cannot be trusted again")
        if existing is not None:
            raise AlreadyExists(f"certificate {cert.fingerprint} is already "
                                f"trusted as {existing.role}")
        record = Record(fingerprint=cert.fingerprint, pem=cert.pem, role=role,
                        name=cert.common_name if name is None else name,
                        added_at=_now(), not_after=_timestamp(cert.not_after),
                        revoked_at=None)
        self._write(record)
        return record

    def _existing(self, prefix):
        self.refresh()
        return self._records[self.resolve(prefix)]

    def remove(self, prefix):
        record = self._existing(prefix)
        if record.revoked:
            raise Revoked(f"certificate {record.fingerprint} is revoked; revoked "
                          "certificates stay in the trust store for good")
        self._call(self.client.delete, f"{self.prefix}{record.fingerprint}.json")
        self.refresh()
        return record

    def set_role(self, prefix, role):
        check_role(role)
        record = self._existing(prefix)
        if record.revoked:
            raise Revoked(f"certificate {record.fingerprint} is revoked; its role "
                          "no longer matters")
        record = dataclasses.replace(record, role=role)
        self._write(record)
        return record

    def revoke(self, prefix):
        record = self._existing(prefix)
        if record.revoked:
            raise Revoked(f"certificate {record.fingerprint} was already "
                          f"revoked at {record.revoked_at}")
        record = dataclasses.replace(record, revoked_at=_now())
        self._write(record, revoked=True)
        return record

    def close(self):
        self._stop.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
