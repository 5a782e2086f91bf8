"""Misbehaving registries for the agent's tests, over real TLS sockets.

FakeRegistry: an HTTPS server presenting a real registry's certificate (so
the agent's pin accepts it) whose every answer the test writes: 500s,
malformed listings, bodies cut short, keep-alive connections dropped.

ListingRegistry: a FakeRegistry of one listing with an ETag, for the agent's
held requests (`wait=`): it holds them, ignores them, fails them or holds
them for good, as the test says.

CuttingProxy: a TCP relay in front of the real registry that passes TLS
through untouched and, while `cut_after` is set, ends (or stalls) each
connection after that many bytes from the server: a link that breaks in the
middle of a download.
"""
import http.server
import json
import socket
import ssl
import threading
import time
import urllib.parse

__all__ = ["FakeRegistry", "ListingRegistry", "CuttingProxy"]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.owner.requests.append((self.command, self.path, dict(self.headers), body))
        self.server.owner.answer(self)

    do_GET = do_PUT = do_DELETE = do_HEAD = _any


class FakeRegistry:
    """answer(handler) writes the response; `requests` records what came in."""

    def __init__(self, certfile, keyfile, answer):
        self.answer = answer
        self.requests = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certfile), str(keyfile))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.owner = self
        self.port = self.server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def send(handler, status, body=b"", headers=(), length=None, close=False):
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        if close:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class ListingRegistry(FakeRegistry):
    """GET /1.0/applications answers `listing` with ETag `"v<generation>"`,
    304 to a matching If-None-Match. A request with `wait=` is treated as
    `wait_mode` says:

        "hold"     the registry's contract: answered when change() is called,
                   else 304 when the time asked is up;
        "ignore"   at once, as a registry that does not know `wait`;
        "fail"     502 at once, as a proxy that cuts held requests;
        "refuse"   400 at once, as a registry that takes `wait` for a mistake;
        "forever"  held until stop(), to show what else ends a held request.
    """

    def __init__(self, certfile, keyfile, wait_mode="hold", listing=()):
        self.wait_mode = wait_mode
        self.listing = list(listing)
        self.generation = 1
        self.held = 0                      # requests being held right now
        self._cond = threading.Condition()
        self._stopping = False
        super().__init__(certfile, keyfile, self._answer)

    @property
    def etag(self):
        return f'"v{self.generation}"'

    def change(self, listing=None):
        """A new listing (the same one by default) under a new ETag."""
        with self._cond:
            if listing is not None:
                self.listing = list(listing)
            self.generation += 1
            self._cond.notify_all()

    def waits(self):
        return [r for r in self.requests if "wait=" in r[1]]

    def cycles(self):
        """Listing requests that were not held: the agent's cycles."""
        return [r for r in self.requests if r[1].startswith("/1.0/applications")
                and "wait=" not in r[1]]

    def _answer(self, handler):
        path, _, query = handler.path.partition("?")
        if path != "/1.0/applications":
            return self.send(handler, 404, b'{"type":"error","error":"not found",'
                                           b'"error_code":404}')
        wait = urllib.parse.parse_qs(query).get("wait")
        asked = handler.headers.get("If-None-Match")
        if wait and self.wait_mode == "fail":
            return self.send(handler, 502, b"<html>502 Bad Gateway</html>", close=True)
        if wait and self.wait_mode == "refuse":
            return self.send(handler, 400, b'{"type":"error","error":"unknown parameter wait",'
                                           b'"error_code":400}')
        if wait and self.wait_mode in ("hold", "forever"):
            end = time.monotonic() + float(wait[0])
            with self._cond:
                self.held += 1
                try:
                    while not self._stopping and asked == self.etag:
                        if self.wait_mode == "hold" and time.monotonic() >= end:
                            break
                        self._cond.wait(0.1)
                finally:
                    self.held -= 1
            if self._stopping:
                return self.send(handler, 503, b"", close=True)
        with self._cond:
            etag, listing = self.etag, self.listing
        if asked == etag:
            return self.send(handler, 304, headers=(("ETag", etag),))
        body = json.dumps({"type": "sync", "status": "Success", "status_code": 200,
                           "metadata": listing}).encode()
        self.send(handler, 200, body, headers=(("ETag", etag),
                                               ("Content-Type", "application/json")))

    def stop(self):
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        super().stop()


class CuttingProxy:
    """127.0.0.1:port -> 127.0.0.1:target, optionally breaking connections."""

    def __init__(self, target_port, cut_after=None, stall=False, cuts=None):
        self.target_port = target_port
        self.cut_after = cut_after      # bytes from the server per connection, or None
        self.cuts = cuts                # how many connections to cut; None: all
        self.stall = stall              # hold a cut connection open instead of closing it
        self.connections = 0
        self.relayed = 0                # bytes from the server, all connections
        self.cut = threading.Event()    # set the first time a connection is cut
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._open = []
        self._release = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.connections += 1
            self._open += [client, server]
            limit = self.cut_after
            if self.cuts is not None:
                limit = limit if self.cuts > 0 else None
                self.cuts -= 1
            threading.Thread(target=self._pump, args=(client, server, None, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, limit, True),
                             daemon=True).start()

    def _pump(self, src, dst, limit, downstream):
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    self.relayed += limit - sent
                    self.cut.set()
                    if self.stall:
                        self._release.wait()      # hold it open until stop()
                    break
                dst.sendall(data)
                sent += len(data)
                if downstream:
                    self.relayed += len(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def stop(self):
        self._release.set()
        self._listener.close()
        for sock in self._open:
            try:
                sock.close()
            except OSError:
                pass
