#!/usr/bin/env python3
"""Many agents waiting at once (bench row 8): lightweight mutual-TLS
connections, each holding one real request, spread over a few driver
processes.

Each driver process (`python3 bench/waiters.py worker …`) opens its share of
connections with the trusted client certificate, sends each one GET (with
If-None-Match when an ETag is given), prints `ready`, and then records when
each whole answer arrives (status and time.time(), comparable across the
processes). It prints `done` once every connection has its answer, keeps the
connections open until its standard input closes, and then prints its
answers as one JSON line.

    w = Waiters(port, client, path, etag, count=1000); w.start(); …; w.wait_done(30); w.finish()
"""
import json
import os
import queue
import selectors
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tlsconns  # noqa: E402

HERE = os.path.abspath(__file__)
MAX_WAITERS = 5000
BATCH = 50              # connections a driver process opens at once


class _Answer:
    """The answer on one connection, read as it comes."""

    __slots__ = ("data", "need", "status", "at")

    def __init__(self):
        self.data, self.need, self.status, self.at = b"", None, None, None

    def feed(self, chunk):
        """Take bytes; True once the whole answer is here."""
        if self.need is None:
            self.data += chunk
            head, sep, body = self.data.partition(b"\r\n\r\n")
            if not sep:
                return False
            self.status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.need = 0 if self.status in (204, 304) else length - len(body)
            self.data = b""
        else:
            self.need -= len(chunk)
        if self.need <= 0:
            self.at = time.time()
            return True
        return False


def worker(port, cert, key, path, etag, count, budget):
    tlsconns.raise_nofile()
    ctx = tlsconns.context(cert, key)
    end = time.monotonic() + budget
    extra = f"If-None-Match: {etag}\r\n" if etag != "-" else ""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()
    conns, failed = [], 0
    # In batches, as agents that start over some time: a server may (and
    # should) cap its unfinished handshakes, and 1,000 at one instant would
    # measure that cap rather than held requests.
    for start in range(0, count, BATCH):
        socks, n_failed = tlsconns.connect_many(port, min(BATCH, count - start), end)
        done, hs_failed = tlsconns.handshake_many(ctx, socks, end, first=request)
        conns += done
        failed += n_failed + hs_failed
    sel = selectors.DefaultSelector()
    answers = {}
    for sock in conns:
        answers[sock] = _Answer()
        sel.register(sock, selectors.EVENT_READ)
    print(json.dumps({"ready": len(answers), "failed": failed}), flush=True)
    sel.register(sys.stdin, selectors.EVENT_READ)
    waiting, closed, told = len(answers), {}, False
    while True:
        if not waiting and not told:
            print(json.dumps({"done": True}), flush=True)
            told = True
        events = sel.select(1.0)
        if any(key.fileobj is sys.stdin for key, _ in events):
            break
        for key, _ in events:
            sock = key.fileobj
            answer = answers[sock]
            try:
                while True:
                    chunk = sock.recv(262144)
                    if not chunk:
                        raise ConnectionResetError
                    if answer.feed(chunk):
                        sel.unregister(sock)
                        waiting -= 1
                        break
            except (ssl.SSLWantReadError, BlockingIOError):
                pass
            except (OSError, ssl.SSLError) as error:
                sel.unregister(sock)
                waiting -= 1
                what = getattr(error, "reason", None) or type(error).__name__
                if answer.status is not None:
                    what += f" after {answer.status}"
                closed[what] = closed.get(what, 0) + 1
    result = {"answers": [[a.status, a.at] for a in answers.values() if a.at is not None],
              "unanswered": waiting, "closed": closed, "failed": failed}
    print(json.dumps(result), flush=True)
    for sock in answers:
        sock.close()
    return 0


class Waiters:
    """count waiting connections over `procs` driver processes."""

    def __init__(self, port, client, path, etag=None, count=1000, procs=4, budget=60.0):
        if count > MAX_WAITERS:
            raise ValueError(f"at most {MAX_WAITERS} waiters")
        self.lines = queue.Queue()
        shares = [count // procs + (i < count % procs) for i in range(procs)]
        self.procs = [subprocess.Popen(
            [sys.executable, HERE, "worker", str(port), str(client.cert), str(client.key),
             path, etag or "-", str(n), str(budget)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for n in shares if n]
        for proc in self.procs:
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        self.budget = budget

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.put(json.loads(line))

    def _collect(self, field, timeout):
        """The lines with `field`, one per process, or fewer at the timeout."""
        got, end = [], time.monotonic() + timeout
        others = []
        while len(got) < len(self.procs):
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            (got if field in line else others).append(line)
        for line in others:
            self.lines.put(line)
        return got

    def ready(self):
        """{ready: connections holding a request, failed: not opened}."""
        got = self._collect("ready", self.budget + 30)
        return {"ready": sum(g["ready"] for g in got),
                "failed": sum(g["failed"] for g in got)}

    def wait_done(self, timeout):
        """True when every process has every answer, within timeout seconds."""
        return len(self._collect("done", timeout)) == len(self.procs)

    def finish(self):
        """Close the connections; {answers: [[status, time]], unanswered, closed: {why: n},
        failed}."""
        for proc in self.procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        got = self._collect("answers", 60)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        total = {"answers": [], "unanswered": 0, "closed": {}, "failed": 0}
        for g in got:
            total["answers"] += g["answers"]
            for k in ("unanswered", "failed"):
                total[k] += g[k]
            for why, n in g["closed"].items():
                total["closed"][why] = total["closed"].get(why, 0) + n
        return total


if __name__ == "__main__":
    if len(sys.argv) == 9 and sys.argv[1] == "worker":
        a = sys.argv[2:]
        sys.exit(worker(int(a[0]), a[1], a[2], a[3], a[4], int(a[5]), float(a[6])))
    sys.exit("usage: waiters.py worker PORT CERT KEY PATH ETAG|- COUNT BUDGET")
