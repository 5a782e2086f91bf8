"""No connection holds another hostage: a trusted client is answered while
idle TCP connections, connections that drip a ClientHello without a
certificate, and trusted connections that finished the handshake and stay
silent are open against a real `aar serve` (the peers of bench row 9, in
bench/slowpeers.py). Not timed: only that the answers arrive.
"""
import sys

from regserver import ROOT, Client, ProcessServer, aar

sys.path.insert(0, str(ROOT / "bench"))
import slowpeers  # noqa: E402

ANSWER_WITHIN = 30      # seconds, a hang guard per request, never a measurement
WORKERS = 4             # a small pool for the work that blocks: the peers below
                        # outnumber it (on the threaded core of before, they took
                        # every worker and the client waited in vain)


def test_a_trusted_client_is_answered_while_slow_peers_hold_connections(tmp_path, certs):
    data = tmp_path / "aar"
    server = ProcessServer(data, extra=("--workers", str(WORKERS)))
    added = aar("trust", "add", str(certs.client.cert), data_dir=data)
    assert added.returncode == 0, added.stderr
    peers = slowpeers.Peers(server.port, idle=20, drippers=60, silent=WORKERS,
                            cert=certs.client.cert, key=certs.client.key, drip=0.5,
                            timeout=ANSWER_WITHIN)
    try:
        opened = peers.open()
        assert opened["drippers"] == 60 and opened["idle"] == 20, opened
        answers = []
        for _ in range(5):           # a new connection each time, as a node's next cycle
            client = Client(server.port, certs.client, timeout=ANSWER_WITHIN)
            try:
                status, body, _ = client.json("GET", "/1.0/status")
            finally:
                client.close()
            answers.append((status, body["metadata"]["status"]))
        assert answers == [(200, "ok")] * 5
        # the peers were there all along: still open, or closed by the
        # server and replaced (drippers)
        still = peers.counts()
        assert still["idle"] == 20 and still["drippers"] == 60, still
    finally:
        peers.close()
        server.stop()
