"""The registry over real mutual TLS: who gets in, what the API answers."""
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from certs import make_cert
from regserver import Client, ThreadServer, client_context, registry  # noqa: F401


def _handshake_fails(port, pair):
    ctx = client_context(pair)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                # TLS 1.3 reports a refused client certificate only at the
                # first read after the handshake.
                tls.sendall(b"GET /1.0/status HTTP/1.1\r\nHost: x\r\n\r\n")
                return tls.recv(100) == b""
        except (ssl.SSLError, ConnectionError):
            return True


# -- who gets in ---------------------------------------------------------------

def test_trusted_client_gets_status_and_info(registry, certs):
    c = registry.client(certs.client)
    status, body, resp = c.json("GET", "/1.0/status")
    assert status == 200
    assert body == {"type": "sync", "status": "Success", "status_code": 200,
                    "metadata": {"status": "ok"}}
    status, body, _ = c.json("GET", "/1.0")
    assert body["metadata"]["role"] == "client"
    assert body["metadata"]["server_fingerprint"] == registry.fingerprint
    assert len(body["metadata"]["fingerprint"]) == 64


@pytest.mark.parametrize("who", ["none", "stranger"])
def test_untrusted_certificates_are_refused(registry, certs, who, caplog):
    pair = {"none": None, "stranger": certs.stranger}[who]
    assert _handshake_fails(registry.port, pair)
    # The server keeps serving the trusted.
    assert registry.client(certs.client).json("GET", "/1.0/status")[0] == 200


def _fingerprint(pair):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pair.pem)).hexdigest()


@pytest.mark.parametrize("who", ["expired", "revoked"])
def test_expired_and_revoked_are_refused_by_name(registry, certs, who, caplog, tmp_path):
    # OpenSSL would refuse these in the handshake without saying whom; the
    # registry lets them finish it and refuses their first request instead,
    # so the log can name the certificate.
    if who == "expired":
        pair = certs.expired
        registry.trust_cert(pair, "publisher")  # trusted, yet past its notAfter
    else:
        pair = make_cert(tmp_path, "gone")
        registry.trust_cert(pair, "client")
        registry.trust.revoke(_fingerprint(pair))
    status, body, resp = registry.client(pair).json("GET", "/1.0/status")
    assert status == 403 and who in body["error"]
    assert resp.getheader("Connection") == "close"
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any(_fingerprint(pair)[:12] in m and who in m for m in refusals)
    assert registry.client(certs.client).json("GET", "/1.0/status")[0] == 200


def test_refused_clients_read_the_alert_not_a_reset(registry, certs, caplog):
    # The server lingers after a refused handshake, so a TLS 1.3 client that
    # already sent its request reads the alert instead of a connection reset.
    for _ in range(10):
        ctx = client_context(certs.stranger)
        with socket.create_connection(("127.0.0.1", registry.port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"GET /1.0/status HTTP/1.1\r\nHost: x\r\n\r\n")
                with pytest.raises(ssl.SSLError) as err:
                    tls.recv(100)
                assert "ALERT" in err.value.reason
    assert any("not trusted" in r.getMessage() for r in caplog.records)


def _plain_http(port, head):
    """Send head over plain TCP to the HTTPS port; (status line, headers, body) read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(head)
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    top, _, body = answer.partition(b"\r\n\r\n")
    lines = top.decode("ascii").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    return lines[0], headers, body.decode("utf-8")


@pytest.mark.parametrize("host, shown", [
    ("registry.example.net", "registry.example.net"),        # the name the caller used
    ("127.0.0.1:{port}", "127.0.0.1"),
    (None, "127.0.0.1"),                                      # no Host: where it arrived
    ("evil.net/<script>", "127.0.0.1"),                       # nothing odd is echoed
])
def test_plain_http_on_the_https_port_is_told_to_use_https(registry, certs, caplog,
                                                           host, shown):
    port = registry.port
    head = b"GET /1.0/status HTTP/1.1\r\n"
    if host is not None:
        head += b"Host: " + host.format(port=port).encode() + b"\r\n"
    status, headers, body = _plain_http(port, head + b"Accept: */*\r\n\r\n")
    assert status == "HTTP/1.1 400 Bad Request"
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Connection"] == "close"
    assert "plain HTTP request was sent to an HTTPS port" in body
    assert f"Use https://{shown}:{port} " in body and "<" not in body
    assert any("plain HTTP on the HTTPS port" in r.getMessage() for r in caplog.records)
    # The registry goes on serving its TLS clients.
    assert registry.client(certs.client).json("GET", "/1.0/status")[0] == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_on_http_reads_why(registry):
    url = f"http://127.0.0.1:{registry.port}/1.0/status"
    result = subprocess.run(["curl", "-sS", "-i", "--max-time", "20", url],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 400 Bad Request")
    assert f"Use https://127.0.0.1:{registry.port} " in result.stdout


def test_revocation_ends_open_keepalive_and_resumed_sessions(registry, certs, tmp_path):
    pair = make_cert(tmp_path, "soon-revoked")
    registry.trust_cert(pair, "publisher")
    c = registry.client(pair)
    assert c.json("GET", "/1.0/status")[0] == 200
    session = c.conn.sock.session
    registry.trust.revoke(registry.trust.resolve(
        hashlib.sha256(ssl.PEM_cert_to_DER_cert(pair.pem)).hexdigest()))
    status, body, resp = c.json("GET", "/1.0/status")
    assert status == 403
    assert "revoked" in body["error"]
    assert resp.getheader("Connection") == "close"
    # A resumed session (from before the revocation) must not get in either.
    ctx = c.context
    with socket.create_connection(("127.0.0.1", registry.port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, session=session) as tls:
                tls.sendall(b"GET /1.0/status HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = tls.recv(4096)
        except (ssl.SSLError, ConnectionError):
            answer = b""
    assert b" 200 " not in answer.split(b"\r\n", 1)[0]


def test_removal_and_addition_take_effect_without_restart(registry, certs, tmp_path):
    newcomer = make_cert(tmp_path, "newcomer")
    assert _handshake_fails(registry.port, newcomer)
    registry.trust_cert(newcomer, "client")
    c = registry.client(newcomer)
    assert c.json("GET", "/1.0/status")[0] == 200
    registry.trust.remove(registry.trust.resolve(
        hashlib.sha256(ssl.PEM_cert_to_DER_cert(newcomer.pem)).hexdigest()))
    status, body, _ = c.json("GET", "/1.0/status")
    assert status == 403 and "not trusted" in body["error"]


def test_client_role_cannot_write(registry, certs, caplog):
    reader = registry.client(certs.client)
    status, body, _ = reader.upload("game", 0, "amd64", b"data")
    assert status == 403
    assert "read-only" in body["error"]
    assert body["type"] == "error" and body["error_code"] == 403
    reader = registry.client(certs.client)
    assert reader.json("DELETE", "/1.0/applications/game")[0] == 403
    assert any("cannot write" in r.getMessage() for r in caplog.records)


def test_idle_connections_do_not_block_real_clients(registry, certs):
    idle = [socket.create_connection(("127.0.0.1", registry.port)) for _ in range(50)]
    try:
        c = Client(registry.port, certs.client, timeout=5)
        assert c.json("GET", "/1.0/status")[0] == 200
    finally:
        for s in idle:
            s.close()


def test_keepalive_serves_many_requests_on_one_connection(registry, certs):
    c = registry.client(certs.client)
    c.json("GET", "/1.0/status")
    sock = c.conn.sock
    for _ in range(50):
        assert c.json("GET", "/1.0/status")[0] == 200
    assert c.conn.sock is sock


def test_parked_connection_is_served_again(tmp_path, certs):
    from registry.server import Settings
    srv = ThreadServer(tmp_path / "d", settings=Settings(workers=2))
    try:
        srv.trust_cert(certs.client)
        c = srv.client(certs.client)
        assert c.json("GET", "/1.0/status")[0] == 200
        time.sleep(0.3)                   # long enough to be parked in the poller
        assert c.json("GET", "/1.0/status")[0] == 200
    finally:
        srv.stop()


# -- the API ---------------------------------------------------------------------

def test_upload_list_download_delete(registry, certs):
    pub = registry.client(certs.publisher)
    payload = b"package bytes " * 1000
    status, body, _ = pub.upload("game", 0, "amd64", payload,
                                 manifest={"name": "game", "tags": ["fun"]})
    assert status == 201
    assert body["metadata"]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert pub.upload("game", 0, "amd64", payload)[0] == 200          # same bytes: no-op
    assert pub.upload("game", 0, "amd64", payload + b"x")[0] == 409   # other bytes
    reader = registry.client(certs.client)
    status, body, resp = reader.json("GET", "/1.0/applications")
    assert status == 200
    apps = body["metadata"]
    assert [a["name"] for a in apps] == ["game"]
    assert apps[0]["versions"][0]["tags"] == ["fun"]
    etag = resp.getheader("ETag")
    status, _, _ = reader.json("GET", "/1.0/applications", headers={"If-None-Match": etag})
    assert status == 304
    resp, data = reader.request("GET", "/1.0/applications/game/0/amd64/package")
    assert resp.status == 200 and data == payload
    assert resp.getheader("ETag") == '"%s"' % hashlib.sha256(payload).hexdigest()
    resp, data = reader.request("GET", "/1.0/applications/game/0/amd64/package",
                                headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and data == payload[10:20]
    assert resp.getheader("Content-Range") == f"bytes 10-19/{len(payload)}"
    resp, data = reader.request("GET", "/1.0/applications/game/0/amd64/package",
                                headers={"Range": f"bytes={len(payload)}-"})
    assert resp.status == 416
    assert pub.json("DELETE", "/1.0/applications/game/0/amd64")[0] == 200
    status, body, _ = reader.json("GET", "/1.0/applications",
                                  headers={"If-None-Match": etag})
    assert status == 200 and body["metadata"] == []
    assert reader.json("GET", "/1.0/applications/game")[0] == 404


def test_listing_filters(registry, certs):
    pub = registry.client(certs.publisher)
    pub.upload("a", 0, "amd64", b"1", manifest={"tags": ["x"]})
    pub.upload("a", 0, "arm64", b"2", manifest={"tags": ["y"]})
    pub.upload("b", 0, "amd64", b"3", manifest={"tags": ["y", "z"]})
    c = registry.client(certs.client)
    def names(query):
        return [(a["name"], [v["architecture"] for v in a["versions"]])
                for a in c.json("GET", "/1.0/applications" + query)[1]["metadata"]]
    assert names("?architecture=arm64") == [("a", ["arm64"])]
    assert names("?tags=z") == [("b", ["amd64"])]
    assert names("?tags=x,z&architecture=amd64") == [("a", ["amd64"]), ("b", ["amd64"])]


@pytest.mark.parametrize("headers,status", [
    ({"X-Aar-Sha256": "0" * 64}, 422),                    # wrong digest
    ({"X-Aar-Sha256": "nothex"}, 400),
    ({}, 400),                                            # no digest
    ({"X-Aar-Manifest": "{not json"}, 400),
])
def test_bad_uploads_leave_nothing(registry, certs, headers, status):
    pub = registry.client(certs.publisher)
    payload = b"abc" * 100
    hdrs = {"X-Aar-Sha256": hashlib.sha256(payload).hexdigest(),
            "Content-Length": str(len(payload))}
    hdrs.update(headers)
    if not headers:
        del hdrs["X-Aar-Sha256"]
    got, body, _ = pub.json("PUT", "/1.0/applications/app/0/amd64/package", payload, hdrs)
    assert got == status, body
    assert body["type"] == "error"
    c = registry.client(certs.client)
    assert c.json("GET", "/1.0/applications")[1]["metadata"] == []
    assert list(registry.data.staging_dir.iterdir()) == []


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/nope", 404),
    ("GET", "/1.0/applications/bad..name", 400),
    ("GET", "/1.0/applications/game/x/amd64", 400),
    ("GET", "/1.0/applications/game/0/AMD64", 400),
    ("GET", "/1.0/applications/game/0/amd64/package", 404),
    ("POST", "/1.0/applications", 405),
])
def test_error_table(registry, certs, method, path, status):
    got, body, _ = registry.client(certs.publisher).json(method, path)
    assert got == status
    assert body["error_code"] == status and body["error"]


def test_malformed_http_gets_400(registry, certs):
    ctx = client_context(certs.client)
    with socket.create_connection(("127.0.0.1", registry.port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"NONSENSE\r\n\r\n")
            assert tls.recv(100).startswith(b"HTTP/1.1 400")


def test_chunked_upload_is_refused(registry, certs):
    ctx = client_context(certs.publisher)
    with socket.create_connection(("127.0.0.1", registry.port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"PUT /1.0/applications/a/0/amd64/package HTTP/1.1\r\nHost: x\r\n"
                        b"Transfer-Encoding: chunked\r\nX-Aar-Sha256: " + b"0" * 64 +
                        b"\r\n\r\n")
            head = tls.recv(4096)
            assert head.startswith(b"HTTP/1.1 411"), head
            body = json.loads(head.split(b"\r\n\r\n", 1)[1])
            assert "Content-Length" in body["error"]


def test_a_dripping_request_head_is_cut_off(tmp_path, certs):
    from registry.server import Settings
    srv = ThreadServer(tmp_path / "d", settings=Settings(workers=2, request_timeout=0.5))
    try:
        srv.trust_cert(certs.client)
        ctx = client_context(certs.client)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                answer = b""
                for byte in b"GET /1.0/status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 40:
                    try:
                        tls.sendall(bytes([byte]))
                    except OSError:
                        break
                    time.sleep(0.05)
                    tls.settimeout(0.01)
                    try:
                        answer += tls.recv(4096)
                    except (socket.timeout, ssl.SSLError):
                        pass
                    if answer:
                        break
                assert answer.startswith(b"HTTP/1.1 408"), answer
        # Each read took far less than the timeout; their sum did not.
    finally:
        srv.stop()


def test_a_busy_keepalive_client_does_not_starve_others(tmp_path, certs):
    # One worker, and a client that never stops asking on its connection:
    # a second client must still be served while the first goes on.
    from registry.server import Settings
    import threading
    srv = ThreadServer(tmp_path / "d", settings=Settings(workers=1))
    try:
        srv.trust_cert(certs.client)
        done = threading.Event()
        served = []

        def hog():
            c = srv.client(certs.client)
            deadline = time.monotonic() + 30     # longer than the other's timeout
            while not done.is_set() and time.monotonic() < deadline:
                served.append(c.json("GET", "/1.0/status")[0])
            c.close()

        t = threading.Thread(target=hog)
        t.start()
        while not served:
            time.sleep(0.01)
        other = Client(srv.port, certs.client, timeout=10)
        assert other.json("GET", "/1.0/status")[0] == 200
        before = len(served)
        done.set()
        t.join()
        assert served.count(200) == len(served) and before > 0
        other.close()
    finally:
        srv.stop()
