#!/usr/bin/env python3
"""The slow-connection attack: peers that cost a server connections without
ever making a request (bench row 9, tests/test_registry_hostage.py).

    idle      TCP connections that send nothing at all
    drippers  connections that send a real ClientHello one byte at a time,
              DRIP seconds apart, and present no certificate; one the server
              closes is replaced by a new one, so the attack lasts
    silent    trusted mutual-TLS connections: the handshake completes, then
              nothing is ever sent

Bounded in count and in time, to 127.0.0.1 only. As a program it opens them,
prints one JSON line of what it opened, drips until its standard input
closes (or --seconds pass), then closes everything:

    python3 bench/slowpeers.py PORT --idle 200 --drippers 500 --silent 40 \\
        --cert client.crt --key client.key
"""
import argparse
import json
import os
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tlsconns  # noqa: E402

__all__ = ["Peers", "client_hello"]

MAX_PEERS = 2000        # a bound on what one run may open
MAX_SECONDS = 600       # and on how long it may drip


def client_hello():
    """The bytes of a real TLS ClientHello, as a client would open with."""
    ctx = tlsconns.context()
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


class Peers:
    """The three kinds of slow peers against one port; open(), then close()."""

    def __init__(self, port, *, idle=0, drippers=0, silent=0, cert=None, key=None,
                 drip=1.0, timeout=20.0):
        if idle + drippers + silent > MAX_PEERS:
            raise ValueError(f"at most {MAX_PEERS} peers")
        if silent and not cert:
            raise ValueError("silent peers need a trusted client certificate")
        self.port, self.drip, self.timeout = port, drip, timeout
        self.want = dict(idle=idle, drippers=drippers, silent=silent)
        self.cert, self.key = cert, key
        self.idle, self.drippers, self.silent = [], [], []
        self.failed = dict(idle=0, drippers=0, silent=0)
        self.hung_up = 0            # drippers the server closed (each was replaced)
        self._hello = client_hello()
        self._sent = {}             # dripper -> bytes of the ClientHello sent
        self._stop = threading.Event()
        self._thread = None

    def open(self):
        """Open them all: the silent ones first (their handshakes need the
        server's attention), then the idle ones, then the drippers. A dict of
        how many of each are open."""
        if self.want["silent"]:
            deadline = time.monotonic() + self.timeout
            socks, failed = tlsconns.connect_many(self.port, self.want["silent"], deadline)
            ctx = tlsconns.context(self.cert, self.key)
            self.silent, hs_failed = tlsconns.handshake_many(ctx, socks, deadline)
            self.failed["silent"] = failed + hs_failed
        for kind in ("idle", "drippers"):
            socks, failed = tlsconns.connect_many(self.port, self.want[kind],
                                                  time.monotonic() + self.timeout)
            setattr(self, kind, socks)
            self.failed[kind] = failed
        for sock in self.drippers:
            self._sent[sock] = 0
        self._drip_once()
        self._thread = threading.Thread(target=self._dripping, daemon=True)
        self._thread.start()
        return self.counts()

    def counts(self):
        return {"idle": len(self.idle), "drippers": len(self.drippers),
                "silent": len(self.silent), "failed": dict(self.failed),
                "hung_up": self.hung_up}

    def _drip_once(self):
        closed = 0
        for sock, sent in list(self._sent.items()):
            try:
                if sent < len(self._hello):
                    sock.send(self._hello[sent:sent + 1])
                    self._sent[sock] = sent + 1
                elif sock.recv(4096) == b"":    # all sent: now it waits, unless closed
                    raise ConnectionResetError
            except BlockingIOError:
                pass
            except OSError:
                del self._sent[sock]
                self.drippers.remove(sock)
                sock.close()
                closed += 1
        if closed:
            self.hung_up += closed
            fresh, _ = tlsconns.connect_many(self.port, closed, time.monotonic() + self.drip)
            self.drippers += fresh
            self._sent.update((sock, 0) for sock in fresh)

    def _dripping(self):
        while not self._stop.wait(self.drip):
            self._drip_once()

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for sock in self.idle + self.drippers + self.silent:
            try:
                sock.close()
            except OSError:
                pass
        self.idle, self.drippers, self.silent = [], [], []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--idle", type=int, default=0)
    ap.add_argument("--drippers", type=int, default=0)
    ap.add_argument("--silent", type=int, default=0)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--drip", type=float, default=1.0, help="seconds between a dripper's bytes")
    ap.add_argument("--seconds", type=float, default=MAX_SECONDS,
                    help=f"give up after this long (at most {MAX_SECONDS})")
    o = ap.parse_args(argv)
    tlsconns.raise_nofile()
    peers = Peers(o.port, idle=o.idle, drippers=o.drippers, silent=o.silent, cert=o.cert,
                  key=o.key, drip=o.drip)
    try:
        print(json.dumps(peers.open()), flush=True)
        # until the parent closes our standard input, or the time is up
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        done.wait(min(o.seconds, MAX_SECONDS))
        print(json.dumps(peers.counts()), flush=True)
    finally:
        peers.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
