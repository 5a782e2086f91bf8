"""The event-loop core's limits: unfinished handshakes, connections per address,
pipelined requests taking turns. Untimed: only who gets answered."""
import collections
import re
import socket

from regserver import Client, ThreadServer, client_context, registry  # noqa: F401


def _half_hello(port):
    """A TCP connection that sends one byte of a TLS record and no more."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\x16")
    return s


def _closed(sock):
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True


def test_the_oldest_unfinished_handshakes_make_room(tmp_path, certs):
    from registry.server import Settings
    srv = ThreadServer(tmp_path / "d", settings=Settings(workers=2, max_handshakes=4, handshake_grace=0))
    try:
        srv.trust_cert(certs.client)
        peers = [_half_hello(srv.port) for _ in range(8)]
        c = Client(srv.port, certs.client, timeout=10)
        assert c.json("GET", "/1.0/status")[0] == 200
        # The first ones were closed to make room; the newest still wait.
        assert all(_closed(p) for p in peers[:4])
        assert len(srv.server.handshaking) <= 4
        for p in peers:
            p.close()
    finally:
        srv.stop()


class _Peak(collections.OrderedDict):
    """The server's table of unfinished handshakes, remembering its largest size."""

    peak = 0

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.peak = max(self.peak, len(self))


def test_the_handshake_limit_is_hard_even_for_a_burst_of_fresh_ones(tmp_path, certs):
    from registry.server import Settings
    srv = ThreadServer(tmp_path / "d", settings=Settings(workers=2, max_handshakes=4,
                                                         handshake_grace=0.5))
    try:
        table = srv.server.handshaking = _Peak()
        srv.trust_cert(certs.client)
        # Eight fresh half-handshakes at once, then a real client: none of the
        # first four has had its grace when the next arrive, so they wait in
        # the backlog instead of being let in beyond the limit.
        peers = [_half_hello(srv.port) for _ in range(8)]
        c = Client(srv.port, certs.client, timeout=30)
        assert c.json("GET", "/1.0/status")[0] == 200
        assert table.peak <= 4, f"{table.peak} unfinished handshakes at once"
        assert all(_closed(p) for p in peers[:4])
        for p in peers:
            p.close()
    finally:
        srv.stop()


def test_connections_per_address_are_bounded(tmp_path, certs):
    from registry.server import Settings
    srv = ThreadServer(tmp_path / "d", settings=Settings(workers=2, max_per_address=3))
    try:
        srv.trust_cert(certs.client)
        clients = [Client(srv.port, certs.client, timeout=10) for _ in range(3)]
        for c in clients:
            assert c.json("GET", "/1.0/status")[0] == 200
        # A fourth from the same address: the idlest of the three makes room.
        fourth = Client(srv.port, certs.client, timeout=10)
        assert fourth.json("GET", "/1.0/status")[0] == 200
        assert srv.server.per_address["127.0.0.1"] <= 3
    finally:
        srv.stop()


def test_pipelined_requests_are_all_answered_in_order(registry, certs):
    ctx = client_context(certs.client)
    n = 200
    with socket.create_connection(("127.0.0.1", registry.port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            paths = ["/1.0/status" if i % 2 else "/nope" for i in range(n)]
            tls.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                                 for p in paths))
            data = b""
            while data.count(b"HTTP/1.1 ") < n:
                chunk = tls.recv(65536)
                assert chunk, data[-200:]
                data += chunk
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 ([0-9]{3}) ", data)]
    assert statuses == [200 if i % 2 else 404 for i in range(n)]
