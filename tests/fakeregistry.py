"""Misbehaving registries for the agent's tests, over real TLS sockets.

FakeRegistry: an HTTPS server presenting a real registry's certificate (so
the agent's pin accepts it) whose every answer the test writes: 500s,
malformed listings, bodies cut short, keep-alive connections dropped.

CuttingProxy: a TCP relay in front of the real registry that passes TLS
through untouched and, while `cut_after` is set, ends (or stalls) each
connection after that many bytes from the server: a link that breaks in the
middle of a download.
"""
import http.server
import socket
import ssl
import threading

__all__ = ["FakeRegistry", "CuttingProxy"]


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
