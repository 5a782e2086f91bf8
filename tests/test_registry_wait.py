"""Long-poll listings (`wait=SECONDS`): held on the loop until the listing changes."""
import hashlib
import json
import socket
import sqlite3
import ssl
import threading
import time

import pytest

from certs import make_cert
from regserver import Client, registry  # noqa: F401


def _etag(client):
    status, _, resp = client.json("GET", "/1.0/applications")
    assert status == 200
    return resp.getheader("ETag")


def _waiting(registry, n):
    """Block until n requests wait in the server (its own count, read-only)."""
    deadline = time.monotonic() + 30
    while len(registry.server.handler.waiters) != n:
        assert time.monotonic() < deadline, len(registry.server.handler.waiters)
        time.sleep(0.01)


class _Waiter(threading.Thread):
    def __init__(self, client, etag, seconds=30, query=""):
        super().__init__(daemon=True)
        self.client, self.etag, self.seconds, self.query = client, etag, seconds, query
        self.result = None

    def run(self):
        try:
            self.result = self.client.json(
                "GET", f"/1.0/applications?wait={self.seconds}{self.query}",
                headers={"If-None-Match": self.etag})
        except OSError as exc:
            self.result = exc


def test_a_publish_answers_waiting_requests_with_the_new_listing(registry, certs):
    reader = registry.client(certs.client, timeout=60)
    etag = _etag(reader)
    waiter = _Waiter(reader, etag)
    waiter.start()
    _waiting(registry, 1)
    pub = registry.client(certs.publisher)
    assert pub.upload("game", 0, "amd64", b"bytes")[0] == 201
    waiter.join(60)
    status, body, resp = waiter.result
    assert status == 200
    assert [a["name"] for a in body["metadata"]] == ["game"]
    assert resp.getheader("ETag") != etag
    # The connection carries on as usual.
    assert reader.json("GET", "/1.0/status")[0] == 200


def test_time_up_without_a_change_is_304(registry, certs):
    reader = registry.client(certs.client)
    etag = _etag(reader)
    status, _, resp = reader.json("GET", "/1.0/applications?wait=1",
                                  headers={"If-None-Match": etag})
    assert status == 304
    assert resp.getheader("ETag") == etag


def test_a_different_etag_is_answered_at_once(registry, certs):
    reader = registry.client(certs.client)
    status, body, _ = reader.json("GET", "/1.0/applications?wait=60",
                                  headers={"If-None-Match": '"stale"'})
    assert status == 200 and body["metadata"] == []
    status, _, _ = reader.json("GET", "/1.0/applications?wait=60")
    assert status == 200                  # nothing to compare: no waiting


@pytest.mark.parametrize("value", ["61", "-1", "abc", "1.5", "%C2%B2", "1000000", "%205"])
def test_bad_wait_values_are_400(registry, certs, value):
    reader = registry.client(certs.client)
    status, body, _ = reader.json("GET", f"/1.0/applications?wait={value}",
                                  headers={"If-None-Match": '"x"'})
    assert status == 400
    assert "wait" in body["error"]


def test_only_matching_filters_are_woken(registry, certs):
    reader = registry.client(certs.client, timeout=60)
    other = registry.client(certs.client, timeout=60)
    etag_arm = reader.json("GET", "/1.0/applications?architecture=arm64")[2].getheader("ETag")
    etag_all = _etag(other)
    arm = _Waiter(reader, etag_arm, seconds=2, query="&architecture=arm64")
    every = _Waiter(other, etag_all)
    arm.start()
    every.start()
    _waiting(registry, 2)
    assert registry.client(certs.publisher).upload("game", 0, "amd64", b"x")[0] == 201
    every.join(60)
    assert every.result[0] == 200
    arm.join(60)
    assert arm.result[0] == 304           # an amd64 package leaves arm64's listing alone


def test_a_change_by_another_process_is_noticed(registry, certs):
    pub = registry.client(certs.publisher)
    assert pub.upload("game", 0, "amd64", b"bytes")[0] == 201
    reader = registry.client(certs.client, timeout=60)
    etag = _etag(reader)
    waiter = _Waiter(reader, etag)
    waiter.start()
    _waiting(registry, 1)
    # Another writer of packages.db (a replica, a maintenance command): it
    # commits without telling this server.
    db = sqlite3.connect(registry.data.packages_db, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO packages SELECT 'other', version, architecture, size, "
                   "sha256, created_at, publisher, tags, manifest FROM packages")
        db.execute("UPDATE counters SET value = value + 1 WHERE name = 'generation'")
        db.execute("COMMIT")
    finally:
        db.close()
    waiter.join(60)
    status, body, _ = waiter.result
    assert status == 200
    assert [a["name"] for a in body["metadata"]] == ["game", "other"]


def test_waiting_requests_hold_no_thread(registry, certs):
    reader = registry.client(certs.client)
    etag = _etag(reader)
    threads_before = {t.name for t in threading.enumerate() if t.name.startswith("aar")}
    waiters = [_Waiter(Client(registry.port, certs.client, timeout=60), etag)
               for _ in range(100)]
    for w in waiters:
        w.start()
    _waiting(registry, 100)
    threads_now = {t.name for t in threading.enumerate() if t.name.startswith("aar")}
    assert threads_now == threads_before
    # A plain request is served at once while they wait.
    assert reader.json("GET", "/1.0/status")[0] == 200
    assert registry.client(certs.publisher).upload("game", 0, "amd64", b"x")[0] == 201
    for w in waiters:
        w.join(60)
    assert [w.result[0] for w in waiters] == [200] * 100


def test_a_client_that_leaves_is_forgotten(registry, certs):
    reader = registry.client(certs.client, timeout=60)
    etag = _etag(reader)
    waiter = _Waiter(reader, etag)
    waiter.start()
    _waiting(registry, 1)
    reader.conn.sock.shutdown(socket.SHUT_RDWR)
    _waiting(registry, 0)
    waiter.join(60)
    assert isinstance(waiter.result, OSError)


def test_a_certificate_revoked_while_waiting_gets_403(registry, certs, tmp_path):
    pair = make_cert(tmp_path, "waits")
    registry.trust_cert(pair, "client")
    reader = registry.client(pair, timeout=60)
    etag = _etag(reader)
    waiter = _Waiter(reader, etag)
    waiter.start()
    _waiting(registry, 1)
    registry.trust.revoke(registry.trust.resolve(
        hashlib.sha256(ssl.PEM_cert_to_DER_cert(pair.pem)).hexdigest()))
    assert registry.client(certs.publisher).upload("game", 0, "amd64", b"x")[0] == 201
    waiter.join(60)
    status, body, resp = waiter.result
    assert status == 403 and "revoked" in body["error"]
    assert resp.getheader("Connection") == "close"
