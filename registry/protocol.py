"""HTTP/1.1 over one TLS connection: request reading, keep-alive, responses.

`http.server.BaseHTTPRequestHandler` gives the response machinery (status line,
header buffer, status texts); this module replaces the parts of it that cost
the most per request or that a production server cannot use as they are:

* Headers are read from our own buffer and split by hand. The stdlib parses them
  with the `email` package, which is several times slower than the request it
  serves, and its `BufferedReader` hides whether a pipelined request is already
  waiting, which the server needs to know before it parks a connection.
* Every response leaves in one write (headers and a small body together): with
  TCP_NODELAY set, nothing waits on Nagle and delayed ACKs (the naive server's
  ~40 ms stall per keep-alive request).
* Size limits on the request line and headers, and a time limit on each request.
* A handler serves requests only while the client is sending them. When the
  connection goes quiet for `linger` seconds it is handed back to the server's
  poller, so an idle keep-alive connection never holds a worker thread.
"""
import email.utils
import http.server
import re
import socket
import time

__all__ = ["Connection", "Headers", "RequestHandler", "ProtocolError", "parse_head"]

MAX_HEAD = 64 * 1024          # request line + headers
MAX_HEADERS = 100
MAX_DISCARD = 64 * 1024       # a body on a request that takes none is read and dropped
_JOIN_BELOW = 64 * 1024       # bodies smaller than this leave with their head
_CHUNK = 64 * 1024            # below malloc's mmap threshold: no mmap/munmap per read


class ProtocolError(Exception):
    """The client broke HTTP; `status` is the code to answer with, if any."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Connection:
    """One accepted socket and the bytes read from it but not yet consumed."""

    __slots__ = ("sock", "addr", "buf", "fingerprint", "deadline", "tls", "consumed")

    def __init__(self, sock, addr):
        self.sock = sock
        self.addr = addr
        self.buf = bytearray()
        self.fingerprint = None
        self.deadline = 0.0
        self.tls = False
        self.consumed = 0                 # body bytes handed out by read()

    def has_buffered(self):
        """A request (or part of one) is already read, by us or by TLS."""
        return bool(self.buf) or (self.tls and self.sock.pending() > 0)

    def wait_for_request(self, linger, timeout):
        """After a response: 'ready' when the next request has begun to arrive
        within `linger` seconds, 'idle' when it has not, 'eof' when the peer left.

        Reading straight away (rather than select() first) saves a system call
        per keep-alive request; Python's socket timeout polls for us anyway.
        """
        if self.buf:
            return "ready"
        self.sock.settimeout(linger)
        try:
            return "ready" if self._fill() else "eof"
        except (socket.timeout, TimeoutError):
            return "idle"
        finally:
            self.sock.settimeout(timeout)

    def _fill(self):
        data = self.sock.recv(_CHUNK)
        if not data:
            return False
        self.buf += data
        return True

    def read_head(self, limit):
        """Bytes up to the blank line ending a request head; None on a clean EOF.

        The whole head must arrive within `limit` seconds: the socket timeout
        bounds each read, and this bounds their sum, so a client that drips a
        byte now and then cannot hold a worker for ever.
        """
        start = 0
        deadline = None
        while True:
            end = self.buf.find(b"\r\n\r\n", start)
            if end >= 0:
                head = bytes(self.buf[:end])
                del self.buf[:end + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise ProtocolError(431, "request head too large")
            if bare_lf(self.buf, start):
                raise ProtocolError(400, BARE_LF)
            start = max(0, len(self.buf) - 3)
            if deadline is None:
                deadline = time.monotonic() + limit
            elif time.monotonic() > deadline:
                raise ProtocolError(408, "request head not received in time")
            if not self._fill():
                if self.buf:
                    raise ProtocolError(None, "connection closed mid-request")
                return None

    def discard(self, n):
        """Read and drop n bytes of body; False if the peer left first."""
        while n > 0:
            got = len(self.read(min(n, _CHUNK)))
            if not got:
                return False
            n -= got
        return True

    def read(self, n):
        """Up to n bytes of body, blocking until n arrive or the peer closes."""
        if self.buf:
            chunk = bytes(self.buf[:n])
            del self.buf[:n]
            if len(chunk) == n:
                self.consumed += n
                return chunk
            parts = [chunk]
            n -= len(chunk)
        else:
            parts = []
        while n > 0:
            data = self.sock.recv(min(n, _CHUNK))
            if not data:
                break
            parts.append(data)
            n -= len(data)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.consumed += len(data)
        return data

    def send(self, data):
        self.sock.sendall(data)

    # BaseHTTPRequestHandler writes through `wfile.write`.
    write = send


class Headers(dict):
    """Request headers by lower-case name; repeated fields joined with ', '."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)


BARE_LF = "lines must end with CR LF"
# After CR LF pairs are replaced, any control character left (a bare CR or LF,
# NUL, ...) is a protocol error; horizontal tab is allowed in field values.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_LENGTH = re.compile(r"[0-9]{1,18}\Z")


def bare_lf(buf, start):
    """True if buf holds a LF not preceded by CR at or after `start`.

    Only the bytes from `start` on are counted, so a head that arrives a byte
    at a time costs linear time in all. A CR LF that straddles `start` is
    counted by the second count because it starts one byte earlier.
    """
    return buf.count(b"\n", start) != buf.count(b"\r\n", max(0, start - 1))


def parse_head(head):
    """(method, target, version, headers, body length) of a request head.

    The head is the bytes before the blank line. Raises ProtocolError for
    anything a server cannot answer safely: control characters, a bad request
    line or header line, an unreadable or ambiguous Content-Length.
    """
    if _CONTROL.search(head.replace(b"\r\n", b"\t")):
        raise ProtocolError(400, "control character or bare CR/LF in the request head")
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProtocolError(400, f"bad request line {lines[0][:80]!r}")
    if len(lines) - 1 > MAX_HEADERS:
        raise ProtocolError(431, "too many header fields")
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(400, f"bad header line {line[:80]!r}")
        name = name.lower()
        value = value.strip()
        if name in headers:
            headers[name] = headers[name] + ", " + value
        else:
            headers[name] = value
    return parts[0], parts[1], parts[2], headers, _body_length(headers)


def _body_length(headers):
    """The body's length in bytes: 0 without one, None for a chunked body."""
    if "transfer-encoding" in headers:
        if "content-length" in headers:
            # Two framings at once is how requests are smuggled past proxies.
            raise ProtocolError(400, "both Content-Length and Transfer-Encoding")
        return None
    value = headers.get("content-length")
    if value is None:
        return 0
    values = {v.strip() for v in value.split(",")}
    length = values.pop()
    if values or not _LENGTH.match(length):
        raise ProtocolError(400, f"bad Content-Length {value[:40]!r}")
    return int(length)


class _DateCache:
    """The Date header changes once a second; format it once a second."""

    __slots__ = ("second", "value")

    def __init__(self):
        self.second = 0
        self.value = b""

    def header(self):
        now = int(time.time())
        if now != self.second:
            self.value = ("Date: %s\r\n" % email.utils.formatdate(now, usegmt=True)).encode()
            self.second = now
        return self.value


_date = _DateCache()


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """Serves the requests of one connection for as long as they keep coming.

    Unlike the stdlib's handler it is not constructed per socket by a
    socketserver: the server builds one per stint of work with `serve(conn)`.
    Subclasses implement `dispatch()`.
    """

    protocol_version = "HTTP/1.1"
    linger = 1.0              # seconds to wait for the next request before parking
    request_timeout = 60.0    # seconds a request may take between two reads

    def __init__(self, conn, server):  # noqa: D107 - deliberately no super().__init__
        self.conn = conn
        self.server = server
        self.request = self.connection = conn.sock
        self.client_address = conn.addr
        self.wfile = conn
        self.rfile = conn
        self.requestline = ""
        self.request_version = self.protocol_version
        self.command = None

    def serve(self):
        """Handle requests; True if the connection should be parked, False to close."""
        while True:
            if not self._one_request():
                return False
            if self.close_connection:
                return False
            if self.server.others_waiting():
                # Every worker is taken and a connection waits: give this
                # worker up after each request, or a busy keep-alive client
                # could hold it for as long as it keeps asking.
                return True
            state = self.conn.wait_for_request(self.linger, self.request_timeout)
            if state != "ready":
                return state == "idle"

    def _one_request(self):
        self.close_connection = False
        self._headers_buffer = []
        try:
            head = self.conn.read_head(self.request_timeout)
            if head is None:
                return False
            (self.command, self.path, self.request_version, self.headers,
             self.body_length) = parse_head(head)
            # Only an upload's handler reads its body; any other is dropped now.
            self.body_pending = self.body_length != 0
            if self.command != "PUT":
                self._drop_body()
                self.body_pending = False
        except ProtocolError as exc:
            if exc.status:
                self.command = self.command or "-"
                self.send_error_response(exc.status, exc.message)
            return False
        self.requestline = f"{self.command} {self.path} {self.request_version}"
        connection = self.headers.get("connection", "").lower()
        if self.request_version == "HTTP/1.0":
            self.close_connection = "keep-alive" not in connection
        elif "close" in connection:
            self.close_connection = True
        self.dispatch()
        return True

    def _drop_body(self):
        # Only uploads carry a body. Any other request's body is read and
        # dropped, so it is never taken for the next request; one too large
        # to drop, or chunked, ends the connection.
        if self.body_length is None:
            raise ProtocolError(400, f"{self.command} takes no chunked body")
        if self.body_length > MAX_DISCARD:
            raise ProtocolError(400, f"{self.command} takes no body "
                                f"({self.body_length} bytes sent)")
        if self.body_length and not self.conn.discard(self.body_length):
            raise ProtocolError(None, "connection closed mid-body")

    def dispatch(self):  # pragma: no cover - subclasses implement it
        raise NotImplementedError

    # -- responses ---------------------------------------------------------

    def start_response(self, status, content_type=None, length=None, headers=()):
        """Queue the status line and headers; the body may follow in `finish_response`."""
        self.send_response_only(status)
        buf = self._headers_buffer
        buf.append(_date.header())
        if content_type:
            buf.append(b"Content-Type: " + content_type.encode() + b"\r\n")
        if length is not None:
            buf.append(b"Content-Length: %d\r\n" % length)
        for name, value in headers:
            buf.append(f"{name}: {value}\r\n".encode("latin-1"))
        if self.close_connection:
            buf.append(b"Connection: close\r\n")
        buf.append(b"\r\n")
        self.log_request(status, length if length is not None else "-")

    def finish_response(self, body=b""):
        """Send the queued head and `body`: in one write when the body is small.

        A large body (a listing of a thousand applications is ~0.5 MB) goes in
        a second write: joining it to the head would copy it for nothing, and
        at that size one more TLS record costs less than the copy.
        """
        if body and self.command != "HEAD":
            if len(body) < _JOIN_BELOW:
                self._headers_buffer.append(body)
            else:
                self.flush_headers()
                self.conn.send(body)
                return
        self.flush_headers()

    def send_bytes(self, status, body, content_type, headers=()):
        self.start_response(status, content_type, len(body), headers)
        self.finish_response(body)

    def send_error_response(self, status, message):
        """A protocol-level error (the subclass sends API errors its own way)."""
        self.close_connection = True
        body = message.encode() + b"\n"
        self.send_bytes(status, body, "text/plain; charset=utf-8")

    def send_continue(self):
        """Answer `Expect: 100-continue` so clients start sending the body."""
        self.conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def log_request(self, code="-", size="-"):
        # Access lines go to the debug log: at production rates the stdlib's
        # stderr line per request would cost more than the request.
        self.server.access_log(self, code, size)
