"""A request head sent again is answered from the answer kept for it
(registry/repeats.py): what the full path decides must still hold for every
repeat. Real TLS, one keep-alive connection sending the same bytes each time.
"""
import email.utils
import hashlib
import json
import re
import socket
import ssl
import time

from certs import make_cert
from regserver import access, client_context, registry  # noqa: F401  (fixtures)

PAYLOAD = b"repeat" * 100


def _fingerprint(pair):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pair.pem)).hexdigest()


class _Conn:
    """One keep-alive connection that sends exactly `head` each time."""

    def __init__(self, port, pair, path):
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.tls = client_context(pair).wrap_socket(raw)
        self.head = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        self.reader = self.tls.makefile("rb")

    def get(self):
        """(status, headers by lower-case name, body)."""
        self.tls.sendall(self.head)
        return self.read()

    def read(self):
        """The next answer: (status, headers by lower-case name, body)."""
        status = int(self.reader.readline().split()[1])
        headers = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, self.reader.read(int(headers.get("content-length", 0)))

    def close(self):
        self.reader.close()
        self.tls.close()


def test_a_repeat_is_refused_as_soon_as_the_certificate_is_revoked(
        registry, certs, tmp_path, access):  # noqa: F811
    pair = make_cert(tmp_path, "soon-gone")
    registry.trust_cert(pair, "client")
    conn = _Conn(registry.port, pair, "/1.0/status")
    try:
        for _ in range(3):
            status, _, body = conn.get()
            assert status == 200 and json.loads(body)["metadata"] == {"status": "ok"}
        registry.trust.revoke(_fingerprint(pair))
        status, headers, body = conn.get()
        assert status == 403 and "revoked" in json.loads(body)["error"]
        assert headers.get("connection") == "close"
    finally:
        conn.close()
    # Every repeat is in the access log and the metrics, as any answer is.
    mine = [line for line in access if _fingerprint(pair)[:12] in line]
    assert [line.split('"')[-1].split()[0] for line in mine] == ["200"] * 3 + ["403"]
    metrics = registry.server.events.metrics.render().decode()
    ok = re.search(r'aar_requests_total\{route="/1.0/status",method="GET",code="200"\} (\d+)',
                   metrics)
    assert ok and int(ok.group(1)) >= 3


def test_a_repeated_listing_follows_every_publish(registry, certs):  # noqa: F811
    publisher = registry.client(certs.publisher)
    conn = _Conn(registry.port, certs.client, "/1.0/applications")
    try:
        seen = []
        for i in range(3):
            assert publisher.upload(f"app{i}", 0, "amd64", PAYLOAD)[0] == 201
            for _ in range(2):                # the second is a repeat
                status, headers, body = conn.get()
                assert status == 200
                names = [a["name"] for a in json.loads(body)["metadata"]]
                assert names == [f"app{j}" for j in range(i + 1)]
                seen.append(headers["etag"])
        assert seen[0] == seen[1] and seen[2] == seen[3] and seen[4] == seen[5]
        assert len(set(seen)) == 3
        # A delete is a change too.
        assert publisher.json("DELETE", "/1.0/applications/app1")[0] == 200
        status, _, body = conn.get()
        assert [a["name"] for a in json.loads(body)["metadata"]] == ["app0", "app2"]
    finally:
        conn.close()
        publisher.close()


def test_a_repeat_in_a_later_second_names_that_second(registry, certs):  # noqa: F811
    conn = _Conn(registry.port, certs.client, "/1.0/status")
    try:
        dates = []
        for _ in range(2):
            status, headers, _ = conn.get()
            assert status == 200
            dates.append(email.utils.parsedate_to_datetime(headers["date"]))
            time.sleep(1.1)               # into the next second, at least
        status, headers, _ = conn.get()
        later = email.utils.parsedate_to_datetime(headers["date"])
        assert dates[0] < dates[1] < later
    finally:
        conn.close()


def _status_figures(registry):
    """(answers, timed answers) of /1.0/status with 200, and body bytes sent."""
    text = registry.server.events.metrics.render().decode()
    found = [re.search(pattern, text) for pattern in (
        r'aar_requests_total\{route="/1.0/status",method="GET",code="200"\} (\d+)',
        r'aar_request_duration_seconds_count\{route="/1.0/status"\} (\d+)',
        r'aar_sent_bytes_total (\d+)')]
    return [int(match.group(1)) if match else 0 for match in found]


def test_every_repeat_is_counted_once_however_its_bytes_arrive(
        registry, certs, access):  # noqa: F811
    """Read whole, two in one read, or split across reads: each repeat is
    answered, counted in the metrics and logged exactly once."""
    before = _status_figures(registry)
    conn = _Conn(registry.port, certs.client, "/1.0/status")
    try:
        answers = [conn.get() for _ in range(4)]      # the first is the handler's
        conn.tls.sendall(conn.head * 2)
        answers += [conn.read(), conn.read()]
        conn.tls.sendall(conn.head[:7])
        time.sleep(0.2)                                 # its own read, surely
        conn.tls.sendall(conn.head[7:])
        answers.append(conn.read())
    finally:
        conn.close()
    assert [status for status, _, _ in answers] == [200] * 7
    assert all(json.loads(body)["metadata"] == {"status": "ok"} for _, _, body in answers)
    after = _status_figures(registry)
    assert after[0] - before[0] == 7 and after[1] - before[1] == 7
    assert after[2] - before[2] == sum(len(body) for _, _, body in answers)
    assert len([line for line in access if '"GET /1.0/status HTTP/1.1" 200' in line]) == 7


# -- requests that close the connection: a probe on a new connection each time

CLOSE_HEAD = b"GET /1.0/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def _one_shot(port, pair, head):
    """Send `head` on a new connection and read until the server closes it:
    [(status, headers by lower-case name, body)] for every answer read."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    with client_context(pair).wrap_socket(raw) as tls:
        tls.sendall(head)
        data = b""
        while True:
            try:
                got = tls.recv(65536)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError):
                break
            if not got:
                break
            data += got
    answers = []
    while data:
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        answers.append((int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]
    return answers


def test_a_probe_on_a_new_connection_each_time_is_a_repeat_that_closes(
        registry, certs, access):  # noqa: F811
    """`Connection: close` is in the request's bytes: its kept answer says
    so and the connection ends after it, while the same probe kept open on
    another connection gets its own answer, which does not close."""
    before = _status_figures(registry)
    answers = []
    for _ in range(4):                    # the first is the handler's, then repeats
        got = _one_shot(registry.port, certs.client, CLOSE_HEAD)
        assert len(got) == 1              # answered once, then the server closed
        answers += got
    assert CLOSE_HEAD in registry.server.handler.repeats._kept
    for status, headers, body in answers:
        assert status == 200 and headers["connection"] == "close"
        assert json.loads(body)["metadata"] == {"status": "ok"}
    kept_open = _Conn(registry.port, certs.client, "/1.0/status")
    try:
        for _ in range(3):
            status, headers, body = kept_open.get()
            assert status == 200 and "connection" not in headers
            answers.append((status, headers, body))
    finally:
        kept_open.close()
    after = _status_figures(registry)
    assert after[0] - before[0] == 7 and after[1] - before[1] == 7
    assert after[2] - before[2] == sum(len(body) for _, _, body in answers)
    assert len([line for line in access if '"GET /1.0/status HTTP/1.1" 200' in line]) == 7


def test_a_kept_answer_that_closes_is_refused_once_revoked(
        registry, tmp_path):  # noqa: F811
    pair = make_cert(tmp_path, "probe")
    registry.trust_cert(pair, "client")
    for _ in range(2):
        [(status, _, _)] = _one_shot(registry.port, pair, CLOSE_HEAD)
        assert status == 200
    registry.trust.revoke(_fingerprint(pair))
    [(status, headers, body)] = _one_shot(registry.port, pair, CLOSE_HEAD)
    assert status == 403 and "revoked" in json.loads(body)["error"]
    assert headers["connection"] == "close"


def test_http10_probes_close_unless_they_ask_to_stay(registry, certs):  # noqa: F811
    plain = b"GET /1.0/status HTTP/1.0\r\nHost: x\r\n\r\n"
    for _ in range(3):
        [(status, headers, _)] = _one_shot(registry.port, certs.client, plain)
        assert status == 200 and headers["connection"] == "close"
    # Keep-alive asked for: two answers on one connection, the second kept;
    # the third request closes it.
    stay = b"GET /1.0/status HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
    got = _one_shot(registry.port, certs.client, stay + stay + plain)
    assert [status for status, _, _ in got] == [200, 200, 200]
    assert [headers.get("connection") for _, headers, _ in got] == [None, None, "close"]


def test_nothing_after_a_kept_answer_that_closes_is_answered(
        registry, certs):  # noqa: F811
    """A request pipelined behind one that closes is read and dropped, never
    answered, whether the closing one's answer is kept or not."""
    before = _status_figures(registry)
    for _ in range(3):
        got = _one_shot(registry.port, certs.client,
                        CLOSE_HEAD + b"GET /1.0/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [status for status, _, _ in got] == [200]
    assert _status_figures(registry)[0] - before[0] == 3
