"""The server makes a connection a TLS one only once its first record (the
ClientHello) is all here (registry/transport.py): a ClientHello that arrives
in pieces, cut inside the record header and inside the record, still leads
to a handshake and an answer."""
import socket
import ssl
import time

from regserver import client_context, registry  # noqa: F401

CUTS = (3, 5, 40)        # inside the 5-byte header, right after it, inside the body


def test_a_clienthello_in_pieces_is_answered(registry, certs):
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(certs.client).wrap_bio(incoming, outgoing)
    with socket.create_connection(("127.0.0.1", registry.port), timeout=20) as sock:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outgoing.read()
        assert hello[0] == 0x16 and len(hello) > CUTS[-1]
        start = 0
        for cut in CUTS + (len(hello),):
            sock.sendall(hello[start:cut])
            start = cut
            time.sleep(0.2)               # each piece its own arrival
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                out = outgoing.read()
                if out:
                    sock.sendall(out)
                chunk = sock.recv(65536)
                assert chunk, "closed during the handshake"
                incoming.write(chunk)
        tls.write(b"GET /1.0/status HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.sendall(outgoing.read())
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                chunk = sock.recv(65536)
                assert chunk, "closed before the answer"
                incoming.write(chunk)
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_an_accepted_connection_is_non_blocking_and_sends_at_once(registry, certs):
    # The server sets TCP_NODELAY once, on the listening socket, and counts
    # on Linux giving it to every connection it accepts (server.listen).
    with socket.create_connection(("127.0.0.1", registry.port), timeout=20):
        end = time.monotonic() + 20       # a hang guard, not a measurement
        while not registry.server.connections:
            assert time.monotonic() < end, "the connection was never accepted"
            time.sleep(0.01)
        accepted = next(iter(registry.server.connections)).sock
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert accepted.getblocking() is False
