"""What is particular to the bucket's package store: a listing's cost, and the
claim protocol's ordering rules."""
import hashlib
import io
import json
import os
import threading
import time

import pytest

from objstore.client import S3Client
from registry import s3claims
from registry.errors import ApiError
from registry.s3store import S3PackageStore
from s3env import client_for


class Counting(S3Client):
    """Our client, counting the requests it makes by method."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.count = {}

    def request(self, method, key="", params=(), *a, **kw):
        kind = "LIST" if method == "GET" and not key else method
        self.count[kind] = self.count.get(kind, 0) + 1
        return super().request(method, key, params, *a, **kw)


def test_a_listing_of_many_packages_costs_a_few_lists_not_a_get_each(swift, bucket):
    plain = client_for(swift, bucket)
    blob = b"package bytes"
    sha = hashlib.sha256(blob).hexdigest()
    plain.put(f"blobs/sha256/{sha}", blob)
    for i in range(150):
        record = {"name": f"app{i:03d}", "version": 1, "architecture": "amd64",
                  "size": len(blob), "sha256": sha, "created_at": "2026-01-01T00:00:00Z",
                  "publisher": "", "tags": [], "manifest": {}}
        plain.put(f"packages/app{i:03d}/1/amd64/{sha}.json", json.dumps(record).encode())
    counting = Counting(plain.endpoint, plain.creds)
    store = S3PackageStore(counting, read_only=True)
    try:
        assert len(store.list()) == 150
        assert counting.count["GET"] == 150           # each record read once
        counting.count.clear()
        store.refresh()
        store.refresh()
        assert len(store.list()) == 150
        assert counting.count.get("GET", 0) == 0       # cached by key and ETag
        assert counting.count["LIST"] <= 4
    finally:
        store.close()


def test_a_record_whose_blob_is_missing_is_not_listed(swift, bucket):
    plain = client_for(swift, bucket)
    record = {"name": "ghost", "version": 1, "architecture": "amd64", "size": 3,
              "sha256": "ab" * 32, "created_at": "2026-01-01T00:00:00Z",
              "publisher": "", "tags": [], "manifest": {}}
    plain.put(f"packages/ghost/1/amd64/{'ab' * 32}.json", json.dumps(record).encode())
    store = S3PackageStore(plain, read_only=True)
    try:
        assert store.list() == [] and store.get("ghost", 1, "amd64") is None
    finally:
        store.close()


def test_claims_are_ordered_by_time_then_digest():
    items = [{"key": "claims/a/1/amd64/" + "b" * 64, "modified": "2026-11-30T10:00:01.500Z"},
             {"key": "claims/a/1/amd64/" + "c" * 64, "modified": "2026-11-30T10:00:01.200Z"},
             {"key": "claims/a/1/amd64/" + "a" * 64, "modified": "2026-11-30T10:00:01.200Z"}]
    assert s3claims.first_claim(items) is items[2]
    assert s3claims.first_claim(items[:2]) is items[1]
    assert s3claims.parse_record_key("p/", "p/packages/a/7/amd64/" + "d" * 64 + ".json") == \
        ("a", 7, "amd64", "d" * 64)
    assert s3claims.parse_record_key("p/", "p/packages/a/x/amd64/y.json") is None
    assert s3claims.store_time("2026-11-30T10:00:01Z") + 0.5 == \
        s3claims.store_time("2026-11-30T10:00:01.5Z")


def _put(store, app, version, data, stream=None):
    return store.put(app, version, "amd64", stream or io.BytesIO(data), len(data),
                     hashlib.sha256(data).hexdigest(), {"name": app, "version": version},
                     "")


class Gated:
    """A body that stops halfway until ``gate`` is set, as a slow client does."""

    def __init__(self, data, gate):
        self.data, self.gate, self.pos = data, gate, 0

    def read(self, n):
        if self.pos >= len(self.data) // 2:
            self.gate.wait(60)
        chunk = self.data[self.pos:self.pos + min(n, 65536)]
        self.pos += len(chunk)
        return chunk


def _claims(c, app, sha):
    return [i for i in c.list(s3claims.claim_prefix("reg/", app, 1, "amd64"))[0]
            if s3claims.digest_of(i["key"]) == sha]


def _in_flight(store, app, data):
    """Start a push that stops halfway; return (thread, gate, results) once its
    claim is in the bucket."""
    gate, results = threading.Event(), []
    worker = threading.Thread(target=lambda: results.append(
        _put(store, app, 1, data, stream=Gated(data, gate))))
    worker.start()
    for _ in range(200):
        if _claims(store.client, app, hashlib.sha256(data).hexdigest()):
            return worker, gate, results
        time.sleep(0.05)
    gate.set()
    raise AssertionError("the push never claimed its version")


def test_a_delete_racing_a_push_of_the_same_version(swift, bucket):
    store = S3PackageStore(client_for(swift, bucket), prefix="reg/", redirect=False,
                           gc_every=3600)
    try:
        # A push in flight is not published: a delete finds nothing, and the
        # push then publishes (the delete came first).
        data = os.urandom(1 << 20)
        worker, gate, results = _in_flight(store, "race", data)
        assert store.delete_package("race", 1, "amd64") is False
        gate.set()
        worker.join()
        assert results[0][0] is True
        assert store.get("race", 1, "amd64")["sha256"] == hashlib.sha256(data).hexdigest()
        # The same bytes pushed twice, the version deleted between the two
        # commits: the delete removes the first one's record and the shared
        # claim, the second push claims again and publishes after the delete.
        other = os.urandom(1 << 20)
        sha = hashlib.sha256(other).hexdigest()
        worker, gate, results = _in_flight(store, "again", other)
        assert _put(store, "again", 1, other)[0] is True
        assert store.delete_package("again", 1, "amd64") is True
        assert store.get("again", 1, "amd64") is None
        gate.set()
        worker.join()
        assert results[0][0] is True
        store.refresh()
        assert store.get("again", 1, "amd64")["sha256"] == sha
        # Never a record without its claim (which keeps other bytes out) or blob.
        c = store.client
        assert len(_claims(c, "again", sha)) == 1
        assert c.head(f"reg/blobs/sha256/{sha}") is not None
        with pytest.raises(ApiError) as err:
            _put(store, "again", 1, b"different bytes")
        assert err.value.code == "conflict"
    finally:
        store.close()


def test_the_collector_removes_only_what_nothing_can_use(swift, bucket):
    c = client_for(swift, bucket)
    # Pushes go through a store with the normal claim rules: a 3 s one would
    # call a push on a loaded machine stalled. Only the collector's store
    # judges claims by 3 s, so the dead claim below expires within the test.
    pusher = S3PackageStore(c, prefix="reg/", redirect=False, gc_every=3600)
    store = S3PackageStore(c, prefix="reg/", redirect=False, stale_claims=3.0,
                           blob_age=0.0, gc_every=3600)
    try:
        def sha(data):
            return hashlib.sha256(data).hexdigest()
        deleted, kept, flying, dead = (os.urandom(1000) for _ in range(4))
        _put(pusher, "gone", 1, deleted)
        _put(pusher, "kept", 1, kept)
        assert store.delete_package("gone", 1, "amd64")
        assert c.head(f"reg/blobs/sha256/{sha(deleted)}") is not None  # not at delete
        # A dead push: a claim whose heartbeat stopped, and its bytes.
        c.put(f"reg/claims/dead/1/amd64/{sha(dead)}.d1", b"")
        c.put(f"reg/blobs/sha256/{sha(dead)}", dead)
        # A push in flight re-sending bytes already in the bucket: an old
        # claim, but its heartbeat is fresh.
        c.put(f"reg/claims/flying/1/amd64/{sha(flying)}.f1", b"")
        c.put(f"reg/blobs/sha256/{sha(flying)}", flying)
        time.sleep(4.5)

        def present(data):
            return c.head(f"reg/blobs/sha256/{sha(data)}") is not None
        for _ in range(10):           # a pass is bounded: it may stop early
            c.put(f"reg/alive/flying/1/amd64/{sha(flying)}.f1", b"")
            store.collect()
            if not present(deleted) and not present(dead):
                break
        assert not present(deleted) and not present(dead)
        assert present(kept) and present(flying)
        assert c.head(f"reg/claims/dead/1/amd64/{sha(dead)}.d1") is None
        assert c.head(f"reg/claims/flying/1/amd64/{sha(flying)}.f1") is not None
        assert store.get("kept", 1, "amd64")["sha256"] == sha(kept)
    finally:
        store.close()
        pusher.close()


def test_the_collector_runs_by_itself(swift, bucket):
    c = client_for(swift, bucket)
    store = S3PackageStore(c, prefix="reg/", redirect=False, blob_age=0.0, gc_every=0.5)
    try:
        data = os.urandom(1000)                  # what a 409 loser's bytes leave
        key = f"reg/blobs/sha256/{hashlib.sha256(data).hexdigest()}"
        c.put(key, data)
        for _ in range(300):
            if c.head(key) is None:
                break
            time.sleep(0.1)
        assert c.head(key) is None
    finally:
        store.close()


def test_an_unchanged_index_costs_a_head_and_a_change_anywhere_is_listed(swift, bucket):
    plain = client_for(swift, bucket)
    counting = Counting(plain.endpoint, plain.creds)
    watcher = S3PackageStore(counting, poll=0.05, gc_every=3600, full_every=3600)
    writer = S3PackageStore(client_for(swift, bucket), read_only=True)  # another host
    try:
        counting.count.clear()
        while counting.count.get("HEAD", 0) < 5:     # polls with nothing changed
            time.sleep(0.05)
        assert counting.count.get("LIST", 0) == 0 and counting.count.get("GET", 0) == 0
        data = b"published elsewhere"
        assert _put(writer, "elsewhere", 1, data)[0] is True
        for _ in range(600):
            if watcher.get("elsewhere", 1, "amd64") is not None:
                break
            time.sleep(0.05)
        assert watcher.get("elsewhere", 1, "amd64")["sha256"] == \
            hashlib.sha256(data).hexdigest()
        assert writer.delete_application("elsewhere") == 1
        for _ in range(600):
            if watcher.get("elsewhere", 1, "amd64") is None:
                break
            time.sleep(0.05)
        assert watcher.get("elsewhere", 1, "amd64") is None and watcher.list() == []
    finally:
        watcher.close()
        writer.close()
