"""TLS through memory BIOs (registry/tlsio.py): the edges a socket BIO did not have.

The server reads many TLS records with one recv() and seals many into one
send(). epoll then knows nothing of records already in the incoming BIO,
and a slow reader must not make the sealed, unsent bytes grow. The client
here runs its TLS in memory over a plain socket, so each test decides which
records travel together in one segment.
"""
import hashlib
import socket
import ssl
import time

import pytest

from regserver import Client, ThreadServer, client_context

GUARD = 20                                # a hang fails, it does not block the suite
STATUS = b"GET /1.0/status HTTP/1.1\r\nHost: registry\r\n\r\n"


class MemoryClient:
    """A mutual-TLS client whose records are sealed in memory and sent when
    and how the test says."""

    def __init__(self, port, pair):
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context(pair).wrap_bio(self.incoming, self.outgoing)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
        self.plain = b""

    def handshake(self, *then):
        """Handshake; the client's last flight leaves in one send() with
        the records of `then` (requests) sealed behind it."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self._feed()
        self.send(*then)

    def send(self, *records):
        """Each of `records` sealed as a TLS record of its own; all in one send()."""
        for record in records:
            self.tls.write(record)
        self.sock.sendall(self.outgoing.read())

    def _feed(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.incoming.write(chunk)

    def read(self, n):
        """Exactly n bytes of plaintext."""
        while len(self.plain) < n:
            try:
                self.plain += self.tls.read(1 << 20)
            except ssl.SSLWantReadError:
                self._feed()
        data, self.plain = self.plain[:n], self.plain[n:]
        return data

    def answer(self):
        """(status, body) of the next whole HTTP/1.1 response."""
        while b"\r\n\r\n" not in self.plain:
            try:
                self.plain += self.tls.read(1 << 20)
            except ssl.SSLWantReadError:
                self._feed()
        head, self.plain = self.plain.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in lines
                      if line.lower().startswith(b"content-length:"))
        return int(lines[0].split()[1]), self.read(length)

    def close(self):
        self.sock.close()


@pytest.fixture(params=[0, 2], ids=["steps-on-the-loop", "steps-in-tls-threads"])
def server(request, tmp_path, certs):
    from registry.server import Settings
    srv = ThreadServer(tmp_path / "d", settings=Settings(
        workers=2, handshake_threads=request.param))
    srv.trust_cert(certs.client)
    srv.trust_cert(certs.publisher, "publisher")
    yield srv
    srv.stop()


def test_a_request_in_the_segment_that_ends_the_handshake_is_answered(server, certs):
    # The client's Finished and its first request arrive in one recv(): the
    # request waits in the BIO, where no epoll event announces it.
    client = MemoryClient(server.port, certs.client)
    try:
        client.handshake(STATUS)
        status, body = client.answer()
        assert status == 200 and b"\"status\":\"ok\"" in body
        client.send(STATUS)               # the connection serves on
        assert client.answer()[0] == 200
    finally:
        client.close()


def test_many_records_in_one_segment_are_all_answered(server, certs):
    # 40 requests, each its own record, and one request cut across two
    # records, all in one segment: one recv() brings them all.
    client = MemoryClient(server.port, certs.client)
    try:
        client.handshake()
        client.send(*([STATUS] * 40), STATUS[:9], STATUS[9:])
        answers = [client.answer() for _ in range(41)]
        assert [status for status, _ in answers] == [200] * 41
        assert len({body for _, body in answers}) == 1
    finally:
        client.close()


def test_a_slow_reader_of_a_large_download_holds_one_batch_sealed(server, certs):
    from registry.tlsio import BATCH
    from registry.loop import WRITE
    payload = hashlib.sha256(b"big").digest() * (12 * 2 ** 20 // 32)     # 12 MiB
    publisher = Client(server.port, certs.publisher)
    try:
        status, _, _ = publisher.upload("game", 0, "amd64", payload, {"name": "game"})
        assert status in (200, 201)
    finally:
        publisher.close()
    client = MemoryClient(server.port, certs.client)
    try:
        client.handshake(b"GET /1.0/applications/game/0/amd64/package HTTP/1.1\r\n"
                         b"Host: registry\r\n\r\n")
        first = client.read(1)            # the head began; then no more reading
        # The server fills the socket's buffers and waits to write.
        conn = None
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline:
            streaming = [c for c in server.server.connections if c.stream is not None]
            if streaming and streaming[0].events & WRITE and streaming[0].wire:
                conn = streaming[0]
                break
            time.sleep(0.05)
        assert conn is not None, "the download never filled the socket"
        for _ in range(5):                # and stays so while the reader sleeps
            wire = conn.wire or []
            assert sum(len(piece) for piece in wire) <= BATCH + BATCH // 64
            assert conn.outbio.pending == 0
            time.sleep(0.05)
        # Everything arrives, in order, once the client reads again.
        head = first
        while not head.endswith(b"\r\n\r\n"):
            head += client.read(1)
        assert head.startswith(b"HTTP/1.1 200")
        body = client.read(len(payload))
        assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
    finally:
        client.close()
