"""Load drivers: the client side of the request-rate figures. In one run the
same driver, with the same settings, measures aar and its reference.

Request rates (rows 1-3): `rate()` starts N worker processes of this file
(`python3 bench/drivers.py worker …`). Each worker owns one mutual-TLS
connection (or, in new-connection mode, opens a fresh one per request without
session resumption), sends a pre-built HTTP/1.1 GET, reads the response head
and skips the body by Content-Length or chunked framing. No http.client, no
per-request allocation beyond the socket reads: it costs about half the client
CPU per request of the curl command line (see README.md). Workers start
together at a common instant after their first handshake and stop at a request
budget or a deadline, whichever comes first.

Bulk transfers (rows 4-6) are curl's, in transfers.py; they share this
module's curl command line (`curl_base`) and CPU accounting (`proc_cpu`).

`rate(..., driver="curl")` measures the same thing with parallel curl
processes, to cross-check the Python driver (`run.py --driver curl`).
"""
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CURL_TLS13 = "TLS_AES_128_GCM_SHA256"


# --------------------------------------------------------------------------
# worker (runs in its own process)

class _Conn:
    __slots__ = ("sock", "buf", "view", "have", "pos")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray(1 << 18)
        self.view = memoryview(self.buf)
        self.have = 0   # bytes in buf
        self.pos = 0    # parse position

    def _fill(self):
        if self.pos == self.have:
            self.pos = self.have = 0
        elif self.have == len(self.buf):
            # compact
            rest = self.have - self.pos
            self.buf[:rest] = self.buf[self.pos:self.have]
            self.pos, self.have = 0, rest
            if rest == len(self.buf):
                raise ValueError("response head too large")
        n = self.sock.recv_into(self.view[self.have:])
        if not n:
            raise EOFError("connection closed")
        self.have += n

    def _line_block(self):
        """Bytes up to and including the blank line that ends a head."""
        while True:
            i = self.buf.find(b"\r\n\r\n", self.pos, self.have)
            if i >= 0:
                head = bytes(self.buf[self.pos:i])
                self.pos = i + 4
                return head
            self._fill()

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos, self.have)
            if i >= 0:
                line = bytes(self.buf[self.pos:i])
                self.pos = i + 2
                return line
            self._fill()

    def _skip(self, n):
        while n:
            if self.pos == self.have:
                self._fill()
            take = min(n, self.have - self.pos)
            self.pos += take
            n -= take

    def response(self, head_request=False):
        """Read one response; returns (status, body bytes skipped, will_close)."""
        head = self._line_block()
        status = int(head[9:12])
        if status == 100:
            return self.response(head_request)
        low = head.lower()
        close = b"\r\nconnection: close" in low or low.startswith(b"http/1.0")
        if head_request or status in (204, 304):
            return status, 0, close
        j = low.find(b"\r\ncontent-length:")
        if j >= 0:
            end = low.find(b"\r\n", j + 2)
            n = int(low[j + 17:end if end > 0 else len(low)])
            self._skip(n)
            return status, n, close
        if b"\r\ntransfer-encoding: chunked" in low:
            total = 0
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():   # trailers
                        pass
                    return status, total, close
                self._skip(size + 2)
                total += size
        # read until close
        total = self.have - self.pos
        self.pos = self.have
        try:
            while True:
                self._fill()
                total += self.have - self.pos
                self.pos = self.have
        except (EOFError, ConnectionError, ssl.SSLError):
            pass
        return status, total, True


def _context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    return ctx


def _connect(ctx, port):
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw)


def worker(argv):
    """worker MODE PORT CERT KEY PATH COUNT START_AT DEADLINE -> JSON on stdout."""
    mode, port, cert, key, path, count, start_at, deadline = argv
    port, count = int(port), int(count)
    start_at, deadline = float(start_at), float(deadline)
    ctx = _context(cert, key)
    host = f"Host: 127.0.0.1:{port}\r\n"
    ok = bad = nbytes = 0
    statuses = {}
    conns = 0
    if mode == "keepalive":
        req = f"GET {path} HTTP/1.1\r\n{host}Accept: */*\r\n\r\n".encode()
        sock = _connect(ctx, port)
        conns = 1
        conn = _Conn(sock)
        sock.sendall(req)   # warm the connection before the clock starts
        conn.response()
        while time.time() < start_at:
            time.sleep(0.001)
        t0, c0 = time.time(), time.process_time()
        for _ in range(count):
            sock.sendall(req)
            status, n, close = conn.response()
            nbytes += n
            if status == 200:
                ok += 1
            else:
                bad += 1
                statuses[status] = statuses.get(status, 0) + 1
            if close:
                sock.close()
                sock = _connect(ctx, port)
                conn = _Conn(sock)
                conns += 1
            if time.time() > deadline:
                break
        t1, c1 = time.time(), time.process_time()
        sock.close()
    elif mode == "newconn":
        req = f"GET {path} HTTP/1.1\r\n{host}Accept: */*\r\nConnection: close\r\n\r\n".encode()
        while time.time() < start_at:
            time.sleep(0.001)
        t0, c0 = time.time(), time.process_time()
        for _ in range(count):
            try:
                sock = _connect(ctx, port)
                conns += 1
                sock.sendall(req)
                status, n, _ = _Conn(sock).response()
                sock.close()
            except (OSError, ssl.SSLError, EOFError, ValueError) as e:
                status, n = type(e).__name__, 0
            nbytes += n
            if status == 200:
                ok += 1
            else:
                bad += 1
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            if time.time() > deadline:
                break
        t1, c1 = time.time(), time.process_time()
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps({"ok": ok, "bad": bad, "statuses": {str(k): v for k, v in statuses.items()},
                      "bytes": nbytes, "t0": t0, "t1": t1, "conns": conns,
                      "cpu": c1 - c0}))
    return 0


# --------------------------------------------------------------------------
# process CPU accounting

def proc_cpu(pids):
    """User+system CPU seconds of processes (threads included)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / tick


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Result(dict):
    """rate: successful requests per second; plus server/client CPU per request."""


def rate(mode, port, client, path, *, requests, conns, cap, server_pids=(),
         driver="python"):
    """Measure a request rate; mode 'keepalive' or 'newconn'.

    Returns Result(rate, ok, bad, seconds, server_us, client_us, bytes, conns,
    statuses). Raises RuntimeError when no request succeeded.
    """
    per = max(1, requests // conns)
    srv0 = proc_cpu(server_pids)
    cli0 = _children_cpu()
    if driver == "curl":
        res = _curl_rate(mode, port, client, path, per, conns, cap)
    else:
        start_at = time.time() + 0.4 + 0.05 * conns
        deadline = start_at + cap
        procs = [subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "worker", mode, str(port),
             str(client.cert), str(client.key), path, str(per), repr(start_at),
             repr(deadline)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(conns)]
        outs = []
        errs = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=cap + 60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            if p.returncode == 0 and out.strip():
                outs.append(json.loads(out.strip().splitlines()[-1]))
            else:
                errs.append((err.strip().splitlines() or ["exit %s" % p.returncode])[-1])
        if not outs:
            raise RuntimeError("driver failed: " + "; ".join(errs)[:300])
        t0 = min(o["t0"] for o in outs)
        t1 = max(o["t1"] for o in outs)
        statuses = {}
        for o in outs:
            for k, v in o["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
        if errs:
            statuses["driver-error"] = len(errs)
        res = dict(ok=sum(o["ok"] for o in outs), bad=sum(o["bad"] for o in outs),
                   seconds=max(t1 - t0, 1e-9), bytes=sum(o["bytes"] for o in outs),
                   conns=sum(o["conns"] for o in outs), statuses=statuses,
                   client_cpu=sum(o["cpu"] for o in outs))
    srv = proc_cpu(server_pids) - srv0
    # the Python workers time their own measured loop (interpreter start-up
    # excluded); curl's figure includes its (small) process start-up
    cli = res.pop("client_cpu", None)
    if cli is None:
        cli = _children_cpu() - cli0
    ok = res["ok"]
    if not ok:
        raise RuntimeError("no successful request: " + ", ".join(
            f"{k}×{v}" for k, v in res["statuses"].items()))
    return Result(res, rate=ok / res["seconds"],
                  server_us=(srv / ok * 1e6) if server_pids else None,
                  client_us=cli / ok * 1e6)


def curl_base(client):
    return ["curl", "-sS", "-k", "--http1.1", "--cert", str(client.cert), "--key", str(client.key),
            "--tls13-ciphers", CURL_TLS13]


def _curl_rate(mode, port, client, path, per, conns, cap):
    """The same measurement with the curl command line: one curl per connection,
    many URLs each (curl reuses the connection; a URL glob on a fragment, which
    curl strips before sending, repeats the request per times)."""
    args = curl_base(client) + ["-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n"]
    if mode == "newconn":
        args += ["-H", "Connection: close", "--no-sessionid"]
    url = f"https://127.0.0.1:{port}{path}#[1-{per}]"
    t0 = time.monotonic()
    procs = [subprocess.Popen(args + [url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for _ in range(conns)]
    ok = bad = nconn = 0
    statuses = {}
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(0.0, cap - (time.monotonic() - t0)) + 1)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        for line in out.splitlines():
            code, nc = (line.split() + ["0"])[:2]
            nconn += int(nc)
            if code == "200":
                ok += 1
            else:
                bad += 1
                statuses[code] = statuses.get(code, 0) + 1
    seconds = time.monotonic() - t0
    return dict(ok=ok, bad=bad, seconds=seconds, bytes=0, conns=nconn, statuses=statuses)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(worker(sys.argv[2:]))
    sys.exit("usage: drivers.py worker MODE PORT CERT KEY PATH COUNT START_AT DEADLINE")
