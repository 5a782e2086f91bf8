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
