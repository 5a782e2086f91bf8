"""S3PackageStore: the package store in an S3 bucket, shared by every replica.

The same interface as registry/storage.py's PackageStore (put, receive, get,
application, list, generation, delete_*, recover, open_blob, redirect_url),
so the handlers do not know which one they talk to. The keys and the commit
protocol that makes concurrent pushes from several replicas safe are in
registry/s3claims.py, a push's side of it in registry/s3commit.py; what
deletes and dead pushes leave is collected by registry/s3gc.py, at start and
then every GC_EVERY seconds on the index thread.

Reading never waits for the bucket: a thread LISTs ``packages/`` (and
``blobs/``) and swaps in a new index. Records are immutable once written, so
each is fetched once and cached by key and ETag: a listing of 1,000 packages
costs a LIST page or two, not 1,000 GETs. Nor does it LIST every second when
nothing changed: every writer of records (a push, a delete, on any replica
or host) rewrites ``index/changed`` afterwards, and the thread HEADs that
object every POLL seconds and LISTs only when its ETag moved, or FULL_EVERY
seconds after its last LIST whatever it says (a writer that died between
its record and the marker, a blob removed by hand, an older replica that
writes no marker: seen within FULL_EVERY). A record whose blob is missing
or has the wrong size is left out of the index, loudly. When the index has
not been confirmed (a LIST, or a HEAD of an unmoved marker) for STALE_INDEX
seconds, generation() raises 503 with the reason: a replica never serves a
listing that silently lost packages.
"""
import concurrent.futures
import hashlib
import json
import logging
import os
import threading
import time

from objstore.client import S3Error, Unreachable
from registry import s3claims as claims
from registry import s3gc
from registry.errors import ApiError
from registry.packagerules import build_listing, check_upload, same_or_conflict
from registry.incoming import pump
from registry.s3blob import ObjectReader
from registry.s3commit import Incoming, unavailable

__all__ = ["S3PackageStore", "StorageError"]

log = logging.getLogger("aar.storage")

POLL = 1.0
FULL_EVERY = 10.0
GC_EVERY = 60.0
BLOB_AGE = 600.0
_RECOVER_BUDGET = 10_000
STALE_INDEX = 10.0
_FETCHERS = 8
_LIST_CACHE_SIZE = 8
_STORE_ERRORS = (S3Error, Unreachable, OSError)


class StorageError(Exception):
    """The bucket cannot be used; the message is one line saying why."""


def _now_text():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class S3PackageStore:
    """Packages in one bucket under one prefix. Thread-safe."""

    def __init__(self, client, prefix="", redirect=True, presign_expiry=300,
                 stale_uploads=86400.0, stale_claims=claims.STALE, poll=POLL,
                 read_only=False, blob_age=BLOB_AGE, gc_every=GC_EVERY,
                 full_every=FULL_EVERY):
        self.client = client
        self.prefix = prefix
        self.redirect = redirect
        self.presign_expiry = presign_expiry
        self.stale_uploads = stale_uploads
        self.stale_claims = stale_claims
        self.blob_age = blob_age
        self._records = {}            # key -> (etag, record); records never change
        self._index = {}
        self._generation = 0
        self._listed_at = 0.0
        self._changed = None          # index/changed's ETag before the last LIST
        self._error = None
        self._polling = not read_only
        self._lock = threading.Lock()
        self._cache = {}
        self._stop = threading.Event()
        where = f"bucket {client.endpoint.bucket!r} at {client.endpoint.url}"
        try:
            client.head_bucket()
            if not read_only:
                self.recover()
            self.refresh()
        except _STORE_ERRORS as exc:
            raise StorageError(f"S3 storage unusable ({where}): {exc}") from None
        if not read_only:
            threading.Thread(target=self._poll, args=(poll, gc_every, full_every),
                             name="aar-s3-index",
                             daemon=True).start()

    def close(self):
        self._stop.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the index ------------------------------------------------------------

    def _poll(self, interval, gc_every, full_every):
        collected = listed = time.monotonic()
        while not self._stop.wait(interval):
            try:
                marker = self._marker()
                if time.monotonic() - listed >= full_every or marker != self._changed:
                    self.refresh(marker)
                    listed = time.monotonic()
                else:                     # no writer since the last LIST
                    self._confirmed()
            except _STORE_ERRORS as exc:
                if self._error is None:
                    log.error("cannot list the bucket: %s", exc)
                self._error = str(exc)
                continue
            if time.monotonic() - collected >= gc_every:
                collected = time.monotonic()
                try:
                    self.collect()
                except _STORE_ERRORS as exc:
                    log.warning("collecting garbage in the bucket: %s", exc)

    def _marker(self):
        """index/changed's ETag now ("" while no writer made it): a writer
        rewrites it after its records (raises on store errors)."""
        return (self.client.head(claims.changed_key(self.prefix)) or {}).get("etag", "")

    def _confirmed(self):
        """The index is current as of now (a LIST, or an unmoved marker)."""
        with self._lock:
            self._listed_at = time.monotonic()
            if self._error is not None:
                log.info("the bucket answers again")
            self._error = None

    def _touch(self):
        """Tell every replica's index thread that records changed."""
        try:
            self.client.put(claims.changed_key(self.prefix), os.urandom(8).hex().encode())
        except _STORE_ERRORS as exc:
            log.warning("marking the index changed: %s (other replicas see the change "
                        "within %.0fs)", exc, FULL_EVERY)

    def refresh(self, changed=None):
        """LIST the bucket and swap in a new index (raises on store errors).
        `changed`: the marker's ETag if just read; it is read before the LIST,
        so a write that lands during the LIST moves it again."""
        if changed is None:
            changed = self._marker()
        items, _ = self.client.list(self.prefix + "packages/")
        blobs, _ = self.client.list(self.prefix + "blobs/sha256/")
        sizes = {b["key"].rsplit("/", 1)[1]: b["size"] for b in blobs}
        wanted = [i for i in items if claims.parse_record_key(self.prefix, i["key"])]
        self._fetch([i for i in wanted
                     if self._records.get(i["key"], (None,))[0] != i["etag"]])
        index, seen = {}, []
        for item in wanted:
            cached = self._records.get(item["key"])
            if cached is None or cached[0] != item["etag"]:
                continue
            record = cached[1]
            if sizes.get(record["sha256"]) != record["size"]:
                log.error("package %s %s %s: blob %s is missing or not %d bytes; "
                          "not listed", record["name"], record["version"],
                          record["architecture"], record["sha256"], record["size"])
                continue
            key = (record["name"], record["version"], record["architecture"])
            if key in index and index[key]["sha256"] < record["sha256"]:
                continue          # never written by the protocol; be deterministic
            index[key] = record
            seen.append(f"{item['key']} {item['etag']}")
        digest = hashlib.sha256("\n".join(sorted(seen)).encode()).digest()
        with self._lock:
            self._index = index
            self._generation = int.from_bytes(digest[:7], "big")
            self._changed = changed
        self._confirmed()
        live = {i["key"] for i in items}
        for key in [k for k in self._records if k not in live]:
            self._records.pop(key, None)

    def _fetch(self, items):
        def one(item):
            body = self.client.get(item["key"])
            if body is None:
                return            # deleted between LIST and GET: not this round
            try:
                record = json.loads(body)
            except ValueError:
                log.error("record %s is not JSON; not listed", item["key"])
                return
            self._records[item["key"]] = (item["etag"], record)
        if len(items) <= 1:
            for item in items:
                one(item)
            return
        with concurrent.futures.ThreadPoolExecutor(_FETCHERS) as pool:
            list(pool.map(one, items))

    def _current(self):
        with self._lock:
            # A store that hangs raises nothing for minutes (timeouts, retries):
            # the index's age, not only a failed listing, makes it unavailable.
            age = time.monotonic() - self._listed_at
            if self._polling and age > STALE_INDEX:
                reason = self._error or f"the bucket has not been listed for {age:.0f}s"
                raise ApiError.of("unavailable", f"storage unavailable: {reason}")
            return self._index, self._generation

    # -- reading ----------------------------------------------------------------

    def generation(self) -> int:
        return self._current()[1]

    def get(self, app, version, arch):
        found = self._current()[0].get((app, version, arch))
        return None if found is None else dict(found)

    def application(self, app):
        index = self._current()[0]
        versions = sorted((dict(p) for k, p in index.items() if k[0] == app),
                          key=lambda p: (p["version"], p["architecture"]))
        return {"name": app, "versions": versions} if versions else None

    def list(self, architecture=None, tags=()):
        if isinstance(tags, str):
            tags = tags.split(",")
        wanted = tuple(sorted({t for t in tags if t}))
        index, generation = self._current()
        key = (generation, architecture, wanted)
        cached = self._cache.get(key)
        if cached is None:
            cached = build_listing(index.values(), architecture, frozenset(wanted))
            if len(self._cache) >= _LIST_CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def redirect_url(self, pkg):
        """A presigned GET of the package's bytes when downloads are redirected."""
        if not self.redirect:
            return None
        return self.client.presigned_url(self._blob_key(pkg["sha256"]),
                                         expires=self.presign_expiry)

    def open_blob(self, pkg, start, end):
        try:
            return ObjectReader(self.client.open(self._blob_key(pkg["sha256"]), start, end))
        except (S3Error, Unreachable) as exc:
            raise ApiError.of("unavailable", f"storage unavailable: {exc}") from None

    def _blob_key(self, sha256):
        return f"{self.prefix}blobs/sha256/{sha256}"

    # -- writing ------------------------------------------------------------------

    def put(self, app, version, arch, stream, length, sha256, manifest=None,
            publisher="") -> tuple:
        """Store a package read from ``stream`` (see PackageStore.put)."""
        return pump(self.receive(app, version, arch, length, sha256, manifest, publisher),
                    stream, length)

    def receive(self, app, version, arch, length, sha256, manifest=None,
                publisher=""):
        """put() for a caller that pushes the body: ``(created, package)`` when
        the answer needs no body, else an Incoming (registry/incoming.py,
        s3commit.py's: claimed, its upload begun). Its calls block on the
        bucket: the server makes them in its worker pool."""
        version, sha256, tags, manifest = check_upload(
            app, version, arch, length, sha256, manifest)
        with unavailable(f"storing {app} {version} {arch}"):
            existing = self._record_of(app, version, arch)
        if existing is not None:
            return False, same_or_conflict(existing, sha256, length)
        record = {"name": app, "version": version, "architecture": arch,
                  "size": length, "sha256": sha256, "created_at": _now_text(),
                  "publisher": publisher, "tags": tags, "manifest": manifest}
        return Incoming(self.client, self.prefix, record, self._blob_key(sha256),
                        self.stale_claims, self._published)

    def _published(self, record):
        log.info("stored %s %s %s: %d bytes, sha256 %s, publisher %s", record["name"],
                 record["version"], record["architecture"], record["size"],
                 record["sha256"], record["publisher"] or "-")
        self._touch()
        try:
            self.refresh()
        except _STORE_ERRORS:
            pass                     # the poller will catch up

    def _record_of(self, app, version, arch):
        items, _ = self.client.list(claims.record_prefix(self.prefix, app, version, arch))
        if not items:
            return None
        first = min(items, key=lambda i: i["key"])
        body = self.client.get(first["key"])
        return None if body is None else json.loads(body)

    def delete_package(self, app, version, arch) -> bool:
        return self._delete(claims.record_prefix(self.prefix, app, version, arch)) > 0

    def delete_application(self, app) -> int:
        return self._delete(claims.record_prefix(self.prefix, app))

    def _delete(self, records):
        """Delete the records, then the claims of their digests: a push in
        flight keeps its claim (s3commit: it publishes after this delete)."""
        try:
            found = []
            for item in self.client.list(records)[0]:
                parsed = claims.parse_record_key(self.prefix, item["key"])
                if parsed:
                    self.client.delete(item["key"])
                    found.append(parsed)
            for parsed in found:
                for item in self.client.list(claims.claim_prefix(self.prefix,
                                                                  *parsed[:3]))[0]:
                    if claims.digest_of(item["key"]) == parsed[3]:
                        self.client.delete(item["key"])
        except (S3Error, Unreachable) as exc:
            raise ApiError.of("unavailable", f"storage unavailable: {exc}") from None
        for parsed in found:
            log.info("deleted %s %s %s", *parsed[:3])
        if found:
            self._touch()
        try:
            self.refresh()
        except _STORE_ERRORS:
            pass
        return len({p[:3] for p in found})

    # -- collecting garbage ---------------------------------------------------------

    def recover(self) -> dict:
        """Remove what dead pushes and deletes left (s3gc: provable garbage only)."""
        return s3gc.collect(self.client, self.prefix, self.stale_uploads,
                            self.stale_claims, self.blob_age, budget=_RECOVER_BUDGET)

    def collect(self) -> dict:
        """One bounded pass of the collector (the index thread runs it every
        gc_every seconds)."""
        return s3gc.collect(self.client, self.prefix, self.stale_uploads,
                            self.stale_claims, self.blob_age)
