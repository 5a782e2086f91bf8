"""What is particular to the bucket's package store: a listing's cost, and the
claim protocol's ordering rules."""
import hashlib
import json

from objstore.client import S3Client
from registry import s3claims
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
