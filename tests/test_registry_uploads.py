"""Upload bodies are read by the event loop, not by a worker: publishers that
send their PUT body slowly hold no thread, so the requests that need the pool
(metadata, downloads, another upload) are still answered, with packages on
the local disk and in an object store alike. Also the edges of
reading a body on the loop: a stalled upload is cut off and leaves nothing,
Expect: 100-continue, and a request pipelined right behind a body.

Not timed: only who gets answered and what is stored.
"""
import hashlib
import json
import os
import socket
import threading
import time

from regserver import (Client, ProcessServer, ThreadServer, aar, client_context,  # noqa: F401
                       registry)

ANSWER_WITHIN = 30      # seconds, a hang guard per request, never a measurement
WORKERS = 2             # the pool for blocking work; the drippers outnumber it
DRIPPERS = 6


def _put_head(app, length, digest, extra=""):
    return (f"PUT /1.0/applications/{app}/1/amd64/package HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {length}\r\nX-Aar-Sha256: {digest}\r\n{extra}\r\n").encode()


def _tls(port, pair, timeout=ANSWER_WITHIN):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return client_context(pair).wrap_socket(raw)


def _response(sock, data=b""):
    """One response's status, body (Content-Length framed) and the bytes
    read past it, given those already read."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                  if ln.lower().startswith(b"content-length:")][0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return int(head.split()[1]), body[:length], body[length:]


class Drippers:
    """Publishers each sending a PUT of 1 MiB one byte at a time, in a thread."""

    def __init__(self, port, pair, n):
        self.socks = [_tls(port, pair) for _ in range(n)]
        for i, s in enumerate(self.socks):
            s.sendall(_put_head(f"drip{i}", 1 << 20, "0" * 64) + b"x")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self):
        while not self.stop.wait(0.1):
            for s in self.socks:
                try:
                    s.sendall(b"x")
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def test_publishers_dripping_bodies_hold_no_worker(tmp_path, certs):
    data = tmp_path / "aar"
    server = ProcessServer(data, extra=("--workers", str(WORKERS)))

    def left_behind():
        return [p.name for p in (data / "staging").iterdir()]
    try:
        _while_drippers_drip(server, data, certs, left_behind)
    finally:
        server.stop()


def test_publishers_dripping_bodies_hold_no_worker_with_s3_storage(tmp_path, certs,
                                                                    swift, bucket):
    """The same with storage.s3: the object store takes the pushed body too,
    and what the drippers began there (claims, multipart uploads) is gone."""
    from test_replicas import write_conf
    data = tmp_path / "aar"
    write_conf(data, swift, bucket, redirect=False)   # downloads need the pool
    server = ProcessServer(data, extra=("--workers", str(WORKERS)))
    s3 = swift.client()

    def left_behind():
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        keys = [o["Key"] for o in s3.list_objects_v2(
            Bucket=bucket, Prefix="registry/").get("Contents", [])]
        return [u["Key"] for u in uploads] + [k for k in keys if "/drip" in k]
    try:
        _while_drippers_drip(server, data, certs, left_behind)
    finally:
        server.stop()


def _while_drippers_drip(server, data, certs, left_behind):
    for pair, role in ((certs.publisher, ["-p"]), (certs.client, [])):
        added = aar("trust", "add", *role, str(pair.cert), data_dir=data)
        assert added.returncode == 0, added.stderr
    for pair in (certs.publisher, certs.client):  # a replica sees trust within 2 s
        for _ in range(100):
            probe = Client(server.port, pair, timeout=ANSWER_WITHIN)
            try:
                if probe.request("GET", "/1.0/applications")[0].status == 200:
                    break
            except OSError:
                pass
            finally:
                probe.close()
            time.sleep(0.1)
    publisher = Client(server.port, certs.publisher, timeout=ANSWER_WITHIN)
    assert publisher.upload("game", 1, "amd64", b"before")[0] == 201
    drippers = Drippers(server.port, certs.publisher, DRIPPERS)
    try:
        time.sleep(0.5)               # let them start: each has sent its head
        # Requests that need the pool, while every dripper is mid-body.
        client = Client(server.port, certs.client, timeout=ANSWER_WITHIN)
        status, body, _ = client.json("GET", "/1.0/applications/game")
        assert status == 200 and body["metadata"]["versions"][0]["version"] == 1
        resp, got = client.request("GET", "/1.0/applications/game/1/amd64/package")
        assert resp.status == 200 and got == b"before"
        payload = os.urandom(3 << 20)
        status, body, _ = publisher.upload("other", 2, "amd64", payload)
        assert status == 201, body
        resp, got = client.request("GET", "/1.0/applications/other/2/amd64/package")
        assert resp.status == 200 and got == payload
        client.close()
    finally:
        drippers.close()
    # The drippers' uploads ended unfinished: nothing of them is listed or left.
    status, body, _ = publisher.json("GET", "/1.0/applications")
    assert status == 200
    assert sorted(a["name"] for a in body["metadata"]) == ["game", "other"]
    publisher.close()
    for _ in range(100):              # their close reaches the loop, which cleans up
        if not left_behind():
            break
        time.sleep(0.1)
    assert left_behind() == []


def test_a_stalled_upload_is_cut_off_and_leaves_nothing(tmp_path, certs, caplog):
    from registry.server import Settings
    caplog.set_level("INFO", logger="aar.server")
    srv = ThreadServer(tmp_path / "d", settings=Settings(workers=2, request_timeout=0.5))
    try:
        srv.trust_cert(certs.publisher, "publisher")
        with _tls(srv.port, certs.publisher) as s:
            s.sendall(_put_head("stall", 5 << 20, "0" * 64) + b"y" * (2 << 20))
            s.settimeout(ANSWER_WITHIN)
            while True:               # the server ends the connection
                try:
                    if not s.recv(65536):
                        break
                except OSError:
                    break
        client = srv.client(certs.publisher)
        status, body, _ = client.json("GET", "/1.0/applications")
        assert status == 200 and body["metadata"] == []
        client.close()
        for _ in range(100):
            if not list(srv.data.staging_dir.iterdir()):
                break
            time.sleep(0.1)
        assert list(srv.data.staging_dir.iterdir()) == []
    finally:
        srv.stop()
    assert any("upload interrupted" in r.getMessage() for r in caplog.records)


def test_continue_then_a_request_pipelined_behind_the_body(registry, certs):
    payload = os.urandom(300_000)
    digest = hashlib.sha256(payload).hexdigest()
    with _tls(registry.port, certs.publisher) as s:
        s.sendall(_put_head("cont", len(payload), digest, "Expect: 100-continue\r\n"))
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = s.recv(1024)
            assert chunk
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        rest = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        assert rest == b""
        # The body, and the next request in the same write.
        s.sendall(payload + b"GET /1.0/applications/cont HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body, rest = _response(s)
        assert status == 201, body
        assert json.loads(body)["metadata"]["sha256"] == digest
        status, body, _ = _response(s, rest)
        assert status == 200 and json.loads(body)["metadata"]["name"] == "cont"
    client = registry.client(certs.client)
    resp, got = client.request("GET", "/1.0/applications/cont/1/amd64/package")
    assert resp.status == 200 and got == payload
    client.close()


def test_a_refused_upload_sent_whole_before_reading_still_reads_its_answer(
        registry, certs):
    """Most clients (http.client, curl without Expect) send the whole body
    before they read. The registry answers a refused upload at once; it must
    then read and drop the rest of the body, or closing with it unread would
    reset the connection and the client would see no reason at all."""
    registry.client(certs.client).close()             # the client role is trusted
    payload = os.urandom(32 << 20)                    # far more than socket buffers
    with _tls(registry.port, certs.client) as s:
        s.sendall(_put_head("refused", len(payload), "0" * 64) + payload)
        status, body, _ = _response(s)
        assert status == 403, body
        assert b"publisher" in body
        assert s.recv(65536) == b""                   # then the registry closed
    assert registry.client(certs.publisher).request(
        "GET", "/1.0/applications/refused")[0].status == 404
