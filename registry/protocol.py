"""HTTP/1.1 request heads in, response heads out: pure functions, no sockets.

connection.py feeds the bytes it read to `head_end`, hands a complete head to
`parse_head`, and sends what `response_head` builds. Everything a request may
not do is decided here and raised as ProtocolError with the status to answer:

* a head longer than MAX_HEAD (431) or with more than MAX_HEADERS fields (431);
* line endings other than CR LF, and control characters anywhere (400): a bare
  LF is refused as soon as it arrives, instead of waiting for a CR LF CR LF
  that will never come;
* a Content-Length that is not plain ASCII digits, repeated with different
  values, or sent together with Transfer-Encoding (400).

Headers are split by hand: the stdlib's `email` parser costs several times
the request it serves.
"""
import email.utils
import http
import re
import time

__all__ = ["MAX_HEAD", "MAX_HEADERS", "MAX_DISCARD", "ProtocolError", "Request",
           "head_end", "parse_head", "response_head", "BARE_LF"]
# Request headers are a dict by lower-case name, repeated fields joined
# with ", ": callers look them up by lower-case name.

MAX_HEAD = 64 * 1024          # request line + headers
MAX_HEADERS = 100
MAX_DISCARD = 64 * 1024       # a body on a request that takes none is read and dropped

BARE_LF = "lines must end with CR LF"
# After CR LF pairs are replaced, any control character left (a bare CR or LF,
# NUL, ...) is a protocol error; horizontal tab is allowed in field values.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_LENGTH = re.compile(r"[0-9]{1,18}\Z")
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


class ProtocolError(Exception):
    """The client broke HTTP; `status` is the code to answer with, if any."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """One parsed request head."""

    __slots__ = ("method", "target", "version", "headers", "body_length", "close", "body")

    def __init__(self, method, target, version, headers, body_length, close):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body_length = body_length          # None: chunked (refused)
        self.close = close                      # the client asked to close after this
        self.body = b""                         # a small body read with the head

    @property
    def line(self):
        return f"{self.method} {self.target} {self.version}"


def head_end(buf, start):
    """Index of the CR LF CR LF ending the head in buf, or -1 while incomplete.

    `start` is how far the previous call looked: only new bytes are scanned,
    so a head that drips in a byte at a time costs linear time in all.
    Raises ProtocolError for a bare LF or a head past MAX_HEAD.
    """
    end = buf.find(b"\r\n\r\n", max(0, start - 3))
    if end >= 0:
        return end
    # A CR LF straddling `start` is counted by the second count, which starts
    # one byte earlier.
    if buf.count(b"\n", start) != buf.count(b"\r\n", max(0, start - 1)):
        raise ProtocolError(400, BARE_LF)
    if len(buf) > MAX_HEAD:
        raise ProtocolError(431, "request head too large")
    return -1


# Nodes ask the same thing again and again with the same head bytes (a
# keep-alive agent's listing poll, a status probe): the parsed fields of
# recent heads are kept, so a repeated head costs one dict lookup, not a
# parse. Only what parsing would have accepted is kept, and never a large head.
_PARSED = {}
_PARSED_MAX = 256
_PARSED_HEAD = 2048


def parse_head(head):
    """The Request for a head (the bytes before the blank line).

    Raises ProtocolError for anything a server cannot answer safely.
    """
    known = _PARSED.get(head)
    if known is not None:
        return Request(*known)
    fields = _parse(head)
    if len(head) <= _PARSED_HEAD:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[bytes(head)] = fields
    return Request(*fields)


def _parse(head):
    """(method, target, version, headers, body length, close) of a head,
    checked. The headers dict is shared by every request with the same head:
    read only."""
    if len(head) > MAX_HEAD:
        raise ProtocolError(431, "request head too large")
    if _CONTROL.search(head.replace(b"\r\n", b"\t")):
        raise ProtocolError(400, "control character or bare CR/LF in the request head")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProtocolError(400, f"bad request line {lines[0][:80]!r}")
    if len(lines) - 1 > MAX_HEADERS:
        raise ProtocolError(431, "too many header fields")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        # No whitespace around a field name (RFC 9112 5.1); tabs are all
        # that _CONTROL left among the characters that could be there.
        if not sep or not name or name[0] in " \t" or name[-1] in " \t":
            raise ProtocolError(400, f"bad header line {line[:80]!r}")
        name = name.lower()
        value = value.strip(" \t")
        if name in headers:
            headers[name] = headers[name] + ", " + value
        else:
            headers[name] = value
    connection = headers.get("connection", "").lower()
    close = "keep-alive" not in connection if parts[2] == "HTTP/1.0" else \
        "close" in connection
    return parts[0], parts[1], parts[2], headers, _body_length(headers), close


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


class _HeadCache:
    """Responses differ only by their Date within a second: the heads of
    small answers (status, info, errors, 304s, a listing and its ETag), and
    with a small body the whole answer, are built once a second, not once a
    request. `room` bounds the body bytes kept in one second."""

    __slots__ = ("second", "date", "heads", "room")

    def __init__(self):
        self.second = 0
        self.date = b""
        self.heads = {}
        self.room = 0

    def now(self):
        now = int(time.time())
        if now != self.second:
            self.date = ("Date: %s\r\n" % email.utils.formatdate(now, usegmt=True)).encode()
            self.heads = {}
            self.room = _CACHED_BODIES
            self.second = now
        return self.heads


_heads = _HeadCache()
_STATUS_LINES = {}
_CACHED_HEADS = 256
_CACHED_BODIES = 1 << 20


def response_head(status, content_type=None, length=None, headers=(), close=False,
                  server="aar", body=b""):
    """The bytes of a response's status line and headers, blank line
    included, followed by `body` (a small one: the caller sends a large body
    on its own rather than copy it here)."""
    heads = _heads.now()
    if type(headers) is tuple and type(body) is bytes and len(heads) < _CACHED_HEADS:
        # The body is part of the key: a listing's bytes are one object
        # while it is cached, so its hash is computed once and a hit
        # compares identity.
        key = (status, content_type, length, headers, close, server, body)
        head = heads.get(key)
        if head is None:
            head = _build_head(status, content_type, length, headers, close, server)
            if body:
                head += body
                if len(body) > _heads.room:
                    return head
                _heads.room -= len(body)
            heads[key] = head
        return head
    head = _build_head(status, content_type, length, headers, close, server)
    return head + body if body else head


def _build_head(status, content_type, length, headers, close, server):
    line = _STATUS_LINES.get((status, server))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\nServer: %s\r\n" % (
            status, _REASONS.get(status, "Unknown").encode(), server.encode())
        _STATUS_LINES[(status, server)] = line
    parts = [line, _heads.date]
    if content_type:
        parts.append(b"Content-Type: " + content_type.encode() + b"\r\n")
    if length is not None:
        parts.append(b"Content-Length: %d\r\n" % length)
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
