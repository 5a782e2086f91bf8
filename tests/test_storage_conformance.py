"""DESIGN's storage rules, one suite for both package stores: local and S3.

Staged (nothing of an upload in flight is listed), checked (size and sha256
before commit), atomic (listed whole or not at all), immutable (the same bytes
again are a no-op, other bytes a conflict), nothing half-listed after any
failure, and recovery of what an interrupted upload leaves.
"""
import hashlib
import io
import os
import threading

import pytest

from registry.errors import ApiError
from registry.storage import PackageStore
from s3env import client_for

PUBLISHER = "cd" * 32


def sha(data):
    return hashlib.sha256(data).hexdigest()


def put(store, app, version, arch, data, tags=(), stream=None, length=None, digest=None):
    manifest = {"name": app, "version": version, "tags": list(tags)}
    return store.put(app, version, arch, stream or io.BytesIO(data),
                     len(data) if length is None else length, digest or sha(data),
                     manifest, PUBLISHER)


def listed(store):
    return [(a["name"], [(p["version"], p["architecture"], p["sha256"])
                         for p in a["versions"]]) for a in store.list()]


class Backend:
    """Opens stores of one kind on the same storage, as a restart would."""

    def __init__(self, kind, tmp_path, swift=None, bucket=None):
        self.kind, self.tmp, self.swift, self.bucket = kind, tmp_path, swift, bucket
        self.opened = []

    def open(self, **kw):
        if self.kind == "local":
            store = PackageStore(self.tmp / "data")
        else:
            from registry.s3store import S3PackageStore
            store = S3PackageStore(client_for(self.swift, self.bucket), prefix="reg/",
                                   redirect=False, **kw)
        self.opened.append(store)
        return store

    def close_all(self):
        for store in self.opened:
            store.close()


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path):
    if request.param == "s3":
        swift = request.getfixturevalue("swift")
        bucket = request.getfixturevalue("bucket")
        b = Backend("s3", tmp_path, swift, bucket)
    else:
        b = Backend("local", tmp_path)
    yield b
    b.close_all()


@pytest.fixture
def store(backend):
    return backend.open()


class Exploding:
    """A body that fails after ``good`` bytes, as a dropped connection does."""

    def __init__(self, data, good):
        self._data, self._good, self._pos = data, good, 0

    def read(self, n):
        if self._pos >= self._good:
            raise ConnectionResetError("client went away")
        chunk = self._data[self._pos:min(self._pos + n, self._good)]
        self._pos += len(chunk)
        return chunk


class Untouchable:
    def read(self, n):
        raise AssertionError("the body must not be read")


def test_put_then_read_it_back_everywhere(store):
    data = os.urandom(5000)
    created, pkg = put(store, "game", 3, "amd64", data, tags=["a"])
    assert created and pkg["sha256"] == sha(data) and pkg["size"] == 5000
    assert store.get("game", 3, "amd64")["sha256"] == sha(data)
    assert store.application("game")["versions"][0]["version"] == 3
    assert listed(store) == [("game", [(3, "amd64", sha(data))])]
    with store.open_blob(pkg, 0, 5000) as f:
        assert f.read(5000) == data
    with store.open_blob(pkg, 100, 200) as f:
        assert f.read(100) == data[100:200]


def test_same_bytes_again_is_a_no_op_other_bytes_conflict(store):
    data = b"first bytes"
    put(store, "app", 1, "amd64", data)
    generation = store.generation()
    created, pkg = put(store, "app", 1, "amd64", data, stream=Untouchable())
    assert not created and pkg["sha256"] == sha(data)
    with pytest.raises(ApiError) as err:
        put(store, "app", 1, "amd64", b"other bytes", stream=Untouchable())
    assert err.value.code == "conflict"
    assert store.generation() == generation
    assert listed(store) == [("app", [(1, "amd64", sha(data))])]


@pytest.mark.parametrize("case", ["digest", "short", "dropped"])
def test_a_failed_upload_leaves_nothing_listed(store, case):
    data = os.urandom(3 * 1024 * 1024)
    with pytest.raises((ApiError, ConnectionError)) as err:
        if case == "digest":
            put(store, "bad", 1, "amd64", data, digest=sha(b"something else"))
        elif case == "short":
            put(store, "bad", 1, "amd64", data, length=len(data) + 10)
        else:
            put(store, "bad", 1, "amd64", data, stream=Exploding(data, 1024 * 1024))
    expected = {"digest": "digest_mismatch", "short": "size_mismatch"}.get(case)
    if expected:
        assert err.value.code == expected
    assert store.get("bad", 1, "amd64") is None
    assert listed(store) == []
    put(store, "bad", 1, "amd64", data)            # and the version is still free
    assert store.get("bad", 1, "amd64")["sha256"] == sha(data)


def test_a_large_package_streams_through_and_is_checked(store):
    data = os.urandom(17 * 1024 * 1024 + 3)        # S3: a multipart upload
    created, pkg = put(store, "big", 0, "arm64", data)
    assert created
    with store.open_blob(pkg, len(data) - 10, len(data)) as f:
        assert f.read(10) == data[-10:]
    with pytest.raises(ApiError) as err:
        put(store, "big", 1, "arm64", data, digest=sha(b"no"))
    assert err.value.code == "digest_mismatch"
    assert [v["version"] for v in store.application("big")["versions"]] == [0]


def test_listing_filters_and_order(store):
    put(store, "zeta", 1, "amd64", b"z1", tags=["x"])
    put(store, "alpha", 2, "arm64", b"a2", tags=["y"])
    put(store, "alpha", 1, "amd64", b"a1", tags=["x", "y"])
    assert [(a["name"], [p["version"] for p in a["versions"]]) for a in store.list()] == \
        [("alpha", [1, 2]), ("zeta", [1])]
    assert [a["name"] for a in store.list(architecture="arm64")] == ["alpha"]
    assert [(a["name"], len(a["versions"])) for a in store.list(tags=["x"])] == \
        [("alpha", 1), ("zeta", 1)]


def test_delete_package_and_application(store):
    put(store, "app", 1, "amd64", b"one")
    put(store, "app", 2, "amd64", b"two")
    before = store.generation()
    assert store.delete_package("app", 1, "amd64") is True
    assert store.delete_package("app", 1, "amd64") is False
    assert store.generation() != before
    assert listed(store) == [("app", [(2, "amd64", sha(b"two"))])]
    assert store.delete_application("app") == 1
    assert store.delete_application("app") == 0
    assert listed(store) == []
    put(store, "app", 1, "amd64", b"new bytes after delete")
    assert store.get("app", 1, "amd64")["sha256"] == sha(b"new bytes after delete")


def test_an_upload_in_flight_is_not_listed_and_reopening_recovers(backend, store):
    data = os.urandom(20 * 1024 * 1024)
    gate = threading.Event()

    class Stalling:
        pos = 0

        def read(self, n):
            if self.pos >= len(data) // 2:
                gate.wait(30)
                raise ConnectionResetError("the publisher died")
            chunk = data[self.pos:self.pos + n]
            self.pos += len(chunk)
            return chunk

    failed = []
    worker = threading.Thread(target=lambda: failed.append(
        pytest.raises(ConnectionError, put, store, "slow", 1, "amd64", data,
                      stream=Stalling())))
    worker.start()
    try:
        for _ in range(100):
            if listed(store) == [] and store.get("slow", 1, "amd64") is None:
                break
        assert store.get("slow", 1, "amd64") is None and listed(store) == []
    finally:
        gate.set()
        worker.join()
    assert failed
    store.close()
    reopened = backend.open(stale_uploads=0) if backend.kind == "s3" else backend.open()
    assert reopened.get("slow", 1, "amd64") is None and listed(reopened) == []
    if backend.kind == "s3":
        assert reopened.client.list_multipart("") == []
