"""TLS handshake steps in threads of their own (registry/transport.py): many
handshakes at once with slow peers among them are all answered, and a
connection closed or revoked while its step waits in the pool is treated as
on the loop. Untimed: only who gets answered and what each count says.
"""
import logging
import socket
import ssl
import threading
import time

from regserver import Client, ProcessServer, ThreadServer, aar, client_context

GUARD = 30              # seconds: a hang guard, never a measurement


def _until(check, what):
    """Wait for check() to be true (a hang guard, not a timing assertion)."""
    end = time.monotonic() + GUARD
    while not check():
        assert time.monotonic() < end, f"still waiting for {what}"
        time.sleep(0.01)


def _hold_tls_threads(server):
    """Keep every handshake thread busy until the returned Event is set, so
    the next steps wait in the pool's queue."""
    _until(lambda: server.tls_pool is not None, "the server's threads")
    release = threading.Event()
    started = threading.Semaphore(0)

    def job():
        started.release()
        release.wait(GUARD)

    for _ in range(server.settings.handshake_threads):
        server.tls_pool.submit(job, lambda result, error: None)
    for _ in range(server.settings.handshake_threads):
        assert started.acquire(timeout=GUARD)
    return release


def _silent_after_hello(port):
    """A TLS client that sends its whole ClientHello, then nothing: its first
    step runs in the pool, and then it must hold no thread. The hello is
    made in memory and sent on a plain socket, which reads nothing: a TLS
    socket that read the server's answer within its first do_handshake()
    (a fast server, a client descheduled after its write) would finish its
    certificate-less handshake, and be no silent peer."""
    outgoing = ssl.MemoryBIO()
    tls = client_context(None).wrap_bio(ssl.MemoryBIO(), outgoing)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    raw = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
    raw.sendall(outgoing.read())
    return raw


def _status_in_thread(port, pair, results):
    def run():
        try:
            client = Client(port, pair, timeout=GUARD)
            try:
                results.append(client.json("GET", "/1.0/status")[0])
            finally:
                client.close()
        except (OSError, ssl.SSLError) as exc:
            results.append(type(exc).__name__)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _a_step_held_in_the_pool(srv, pair):
    """With every handshake thread held busy, start a client whose step then
    waits in the pool's queue: (the release Event, its thread, its results)."""
    srv.trust_cert(pair)
    release = _hold_tls_threads(srv.server)
    results = []
    thread = _status_in_thread(srv.port, pair, results)
    _until(lambda: srv.server.in_tls_pool, "a step waiting in the pool")
    return release, thread, results


def test_many_handshakes_at_once_with_slow_peers_among_them_are_all_answered(tmp_path, certs):
    from registry.server import Settings
    # More silent peers than handshake threads: each step is short and never
    # waits for its peer, so they cannot keep the trusted clients out.
    srv = ThreadServer(tmp_path / "d", settings=Settings(workers=2, handshake_threads=2))
    peers = []
    try:
        srv.trust_cert(certs.client)
        for _ in range(10):               # one byte of a ClientHello, then a drip
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=GUARD)
            s.sendall(b"\x16")
            peers.append(s)
        peers += [_silent_after_hello(srv.port) for _ in range(10)]
        results = []
        threads = [_status_in_thread(srv.port, certs.client, results) for _ in range(24)]
        for t in threads:
            t.join(GUARD)
        assert results == [200] * 24
        assert not srv.server.in_tls_pool
        # The slow peers are still there, waiting for their own handshakes.
        assert len(srv.server.handshaking) == 20
    finally:
        for p in peers:
            p.close()
        srv.stop()


def test_a_handshake_timing_out_while_its_step_is_in_the_pool(tmp_path, certs, caplog):
    from registry.server import Settings
    srv = ThreadServer(tmp_path / "d", settings=Settings(
        workers=2, handshake_threads=1, handshake_timeout=0.5))
    caplog.set_level(logging.INFO, logger="aar.server")
    try:
        release, thread, results = _a_step_held_in_the_pool(srv, certs.client)
        server = srv.server
        conn = next(iter(server.in_tls_pool))
        # The sweep times it out: gone from every count at once...
        _until(lambda: conn.state == "closed", "the handshake timeout")
        assert conn not in server.connections and conn not in server.handshaking
        # ...but its socket stays open while the queued step may still use it,
        # so its descriptor cannot be handed to a newcomer meanwhile.
        assert conn.sock.fileno() != -1
        release.set()
        _until(lambda: not server.in_tls_pool, "the step back from the pool")
        _until(lambda: conn.sock.fileno() == -1, "the socket closed")
        thread.join(GUARD)
        assert len(results) == 1 and results[0] != 200, results
        assert "no TLS handshake in time" in caplog.text
        # The server goes on: a new client is answered.
        client = Client(srv.port, certs.client, timeout=GUARD)
        assert client.json("GET", "/1.0/status")[0] == 200
        client.close()
    finally:
        srv.stop()


def test_a_certificate_revoked_while_its_handshake_is_in_the_pool_is_refused(tmp_path, certs):
    from registry.server import Settings
    from trust import certs as tcerts
    srv = ThreadServer(tmp_path / "d", settings=Settings(workers=2, handshake_threads=1))
    try:
        release, thread, results = _a_step_held_in_the_pool(srv, certs.client)
        srv.trust.revoke(tcerts.load_certificate(certs.client.cert).fingerprint)
        release.set()
        thread.join(GUARD)
        assert results == [403]
    finally:
        srv.stop()


def test_aar_serve_with_handshakes_on_the_loop_or_in_threads(tmp_path, certs):
    # `--handshake-threads 0` keeps every step on the loop; 2 hands them out.
    for threads in ("0", "2"):
        data = tmp_path / threads
        server = ProcessServer(data, extra=("--handshake-threads", threads))
        try:
            added = aar("trust", "add", str(certs.client.cert), data_dir=data)
            assert added.returncode == 0, added.stderr
            results = []
            clients = [_status_in_thread(server.port, certs.client, results)
                       for _ in range(4)]
            for t in clients:
                t.join(GUARD)
            assert results == [200] * 4
        finally:
            server.stop()


def test_on_an_idle_loop_only_the_first_step_goes_to_a_thread(tmp_path, certs):
    from registry.server import Settings
    # A hand-off costs wake-ups and GIL changes; a step after the first one
    # goes to a thread only while other work waits for the loop. One client
    # at a time leaves the loop idle: its second step runs there.
    srv = ThreadServer(tmp_path / "d", settings=Settings(workers=2, handshake_threads=2))
    try:
        srv.trust_cert(certs.client)
        _until(lambda: srv.server.tls_pool is not None, "the server's threads")
        pool = srv.server.tls_pool
        submitted = []
        submit = pool.submit
        pool.submit = lambda job, done: (submitted.append(job), submit(job, done))
        for _ in range(3):
            client = Client(srv.port, certs.client, timeout=GUARD)
            assert client.json("GET", "/1.0/status")[0] == 200
            client.close()
        assert len(submitted) == 3        # each client's first step, no other
    finally:
        srv.stop()
