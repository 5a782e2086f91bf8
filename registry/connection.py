"""One client connection: a state machine driven by the event loop.

    HANDSHAKE ──► READING ──head──► (handler) ──► WRITING ──► READING …
        │            ▲                  │  blocking work:       │
        │            │                  ├─► BUSY (pool) ────────┤
        │            │                  ├─► UPLOAD (the loop     │
        │            │                  │   reads the body, the  │
        │            │                  │   pool writes it) ─────┤
        │            │                  ├─► WAITING (wait=) ─────┤
        │            │                  └─► STREAMING (file) ────┘
        └─refused──► LINGER ──► closed  ◄── Connection: close, errors, timeouts

Every socket is non-blocking and only the loop thread touches it. A
connection that waits, for a handshake, a request, a slow reader, a slow
uploader (uploads.py) or a `wait=`, costs its socket and its buffers, never
a thread.

Deadlines are plain numbers that the server's sweep compares once a second:
the handshake, the idle time between requests, the whole request head from
its first byte, and each write that makes no progress.

The answers, and what follows them, are replies.py's (a mixin of this class).
"""
import logging
import time

from registry.bodies import Reply
from registry.loop import ERRORS, READ
from registry.protocol import MAX_DISCARD, ProtocolError, head_end, parse_head
from registry.repeats import KEPT_LONGEST
from registry.replies import Replies
from registry.transport import (BUSY, CLOSED, DISCARD, HANDSHAKE, LINGER, READING,
                                STREAMING, UPLOAD, WAITING, WRITING, Transport)
from trust.certs import fingerprint as der_fingerprint

__all__ = ["Connection"]

log = logging.getLogger("aar.server")

# Requests answered from one buffer before other connections get a turn: a
# client that pipelines hundreds of requests cannot hold the loop for long.
_TURN = 16
_NEVER = float("inf")
_monotonic = time.monotonic


class Connection(Replies, Transport):
    """A client socket from accept to close; `on_event` is called by the loop."""

    # Defaults for what most connections never change, or change later: a
    # class attribute costs nothing per connection, and an assignment makes
    # the connection's own. (Set one by one in __init__, these cost a new
    # connection about 4 us of its ~100 us of Python.)
    state = HANDSHAKE
    events = READ
    buf = b""
    scanned = 0                           # how much of buf head_end has seen
    fingerprint = None
    request = None
    discarding = 0
    stream = None                         # _FileStream while STREAMING
    upload = None                         # uploads._Body while UPLOAD
    close_after = False
    linger_left = 0                       # bytes LINGER still reads and drops
    linger_until = 0.0                    # ... and until when at most
    dead = False                          # the peer vanished while a job ran
    body_unread = 0                       # bytes of an upload's body still on the wire
    processing = False                    # _process is on the stack
    route = "other"                       # the route template, for the metrics
    started = 0.0                         # when the current request was dispatched

    def __init__(self, server, sock, addr):
        self.server = server
        loop = self.loop = server.loop
        self.sock = sock                  # the TCP socket, beneath TLS
        self.fd = sock.fileno()
        self.addr = addr
        self.opened = _monotonic()
        self.deadline = loop.now + server.settings.handshake_timeout
        self.out = []                     # buffers waiting to be written
        self.repeats = server.handler.repeats

    # -- events ------------------------------------------------------------------

    def on_event(self, mask):
        state = self.state
        if mask & ERRORS and state != BUSY:
            log.debug("closing %s: connection reset or broken", self.peer)
            return self.close()
        if state == READING or state == DISCARD:
            self._readable()
        elif state == WRITING or state == STREAMING:
            self._flush()
        elif state == HANDSHAKE:
            self.handshake()
        elif state == UPLOAD:
            self._flush() if self.out or self.wire else self.upload.readable()
        elif state == WAITING:
            self._readable_while_waiting()
        elif state == LINGER:
            self._linger_read()
        elif state == BUSY:
            # Interest is off while a job runs; only an error or hang-up
            # reaches here. Forget the descriptor so epoll stops reporting
            # it, and close once the job is back.
            self.dead = True
            self.loop.remove(self.fd)

    def _established(self):
        """The TLS handshake is done: requests may come."""
        server = self.server
        server.events.handshake(_monotonic() - self.opened)
        der = self.tls.getpeercert(True)
        # No certificate (the context is CERT_OPTIONAL for joining nodes):
        # fingerprint None, and the handler admits it to the join endpoint
        # only. It gets the handshake's time, not the idle time, to ask.
        self.fingerprint = der_fingerprint(der) if der else None
        server.handshake_done(self)
        self.state = READING
        settings = server.settings
        self.deadline = self.loop.now + (settings.idle_timeout if der
                                         else settings.handshake_timeout)
        if self.events != READ:
            self._watch(READ)

    # -- reading requests ----------------------------------------------------------

    def _readable(self):
        if self.events != READ:
            self._watch(READ)
        data = self._recv()
        if not data:
            if data is None:
                return
            if self.buf and self.state == READING:
                log.debug("closing %s: connection closed mid-request", self.peer)
            return self.close()
        tried = None
        if self.buf:
            self.buf += data
        elif self.state == READING:
            # One request alone, as a keep-alive client sends it: if it is a
            # repeat (repeats.py), its kept answer goes out at once, with no
            # buffering or scanning. A kept request's bytes end with their
            # only blank line, so a hit is exactly one whole request.
            if len(data) <= KEPT_LONGEST and self.fingerprint is not None:
                if self.repeats.answer(self, data):
                    return
                tried = data              # not asked again below
            self.buf = data
            # The whole head must arrive within request_timeout of its
            # first byte, however slowly it drips.
            self.deadline = self.loop.now + self.server.settings.request_timeout
        else:
            self.buf = data
        self._process(tried)

    def _process(self, tried=None):
        """Serve the requests in buf for as long as answers go out at once,
        at most _TURN of them before the loop serves other connections;
        `tried`: bytes repeats.py was just asked about, in vain."""
        if self.processing:
            return                        # an answer went out inside the loop below
        self.processing = True
        try:
            self._serve_buffered(tried)
        finally:
            self.processing = False

    def _resume(self):
        if self.state == READING and self.buf:
            self._process()

    def _serve_buffered(self, tried=None):
        served = 0
        while self.buf and self.state in (READING, DISCARD):
            if served == _TURN:
                self.loop.call_soon(self._resume)
                return
            served += 1
            if self.state == DISCARD:
                n = min(self.discarding, len(self.buf))
                self.request.body += self.buf[:n]
                self.buf = self.buf[n:]
                self.discarding -= n
                if self.discarding:
                    return
                self.state = READING
                self._dispatch(self.request)
                continue
            try:
                end = head_end(self.buf, self.scanned)
                if end < 0:
                    self.scanned = len(self.buf)
                    return
                whole = self.buf[:end + 4]        # the head and its blank line
                self.buf = self.buf[end + 4:]
                self.scanned = 0
                # (A head that is all of `tried` is the same object: its
                # bytes were sliced whole.)
                if self.fingerprint is not None and whole is not tried \
                        and self.repeats.answer(self, whole):
                    continue
                request = parse_head(whole[:-4])
            except ProtocolError as exc:
                self.request = None
                return self.send_error(exc.status, exc.message)
            self.request = request
            # An upload's body is on the wire until uploads.py reads it; a
            # chunked one's length is unknown (it is refused), so 1: some.
            self.body_unread = 0 if request.method != "PUT" else \
                1 if request.body_length is None else request.body_length
            if request.body_length != 0 and request.method != "PUT":
                # Only an upload's body is streamed (uploads.py). Any other is
                # read into request.body (a join's is used, the rest are
                # dropped), never taken for the next request; one too large,
                # or chunked, ends the connection.
                if request.body_length is None or request.body_length > MAX_DISCARD:
                    what = "a chunked body" if request.body_length is None else \
                        f"a body of {request.body_length} bytes"
                    return self.send_error(400, f"{request.method} takes no body; "
                                                f"{what} was sent")
                self.discarding = request.body_length
                self.state = DISCARD
                continue
            # The head lets a plain answer be kept for a repeat (repeats.py).
            self._dispatch(request, whole)
        if self.state == READING and not self.buf:
            self.deadline = self.loop.now + self.server.settings.idle_timeout

    def _dispatch(self, request, whole=None):
        self.started = _monotonic()
        self.server.handler.handle(self, request, whole)

    # -- work off the loop -------------------------------------------------------------

    def run(self, job, then=None, drop=None):
        """Run job() in the pool. Back on the loop, its result is the Reply to
        send, or `then(result)` makes it (None: `then` took the request over);
        `drop(result)` lets go of what it holds if the connection closed."""
        self.state = BUSY
        self.deadline = _NEVER            # the job ends; the sweep leaves it be
        self._watch(0)
        self.server.pool.submit(job, lambda result, error: self._job_done(
            result, error, then, drop))

    def _job_done(self, result, error, then, drop):
        if self.state == CLOSED:
            if isinstance(result, Reply) and result.file is not None:
                result.file.file.close()
            elif drop is not None and result is not None:
                drop(result)
            return
        handler = self.server.handler
        self.state = WRITING
        if self.dead:
            return self.close()
        reply = result
        if error is None and then is not None:
            try:
                reply = then(result)
            except Exception as exc:
                error = exc
            else:
                if reply is None:
                    return
        if error is not None:
            reply = handler.error_reply(self, self.request, error)
        self.reply(reply)

    def wait(self):
        """Hold the request (a `wait=` listing); a later reply() answers it."""
        self.state = WAITING
        self.deadline = _NEVER            # the waiter's own timer answers

    def _readable_while_waiting(self):
        # The next request may begin to arrive, or the client may leave.
        data = self._recv()
        if data == b"":
            return self.close()           # server.forget drops its waiter
        if data:
            self.buf += data
            if len(self.buf) > 2 * MAX_DISCARD:
                self._watch(0)            # enough: read again after the answer

    # -- closing -------------------------------------------------------------------------

    def close(self):
        previous = self.state
        if previous == CLOSED:
            return
        self.state = CLOSED
        if self.stream is not None:
            self.stream.abandon()
            self.stream = None
        if self.upload is not None:
            self.upload.abandon()
        if self.stepping:                 # the socket stays open till the step is back
            self.loop.remove(self.fd)
        else:                             # closed now, which takes it out of epoll
            self.loop.forget(self.fd)
        self._release()
        self.server.forget(self, previous)

    def timed_out(self):
        """Called by the server's sweep when the deadline has passed."""
        state = self.state
        if state == HANDSHAKE:
            log.info("closing %s: no TLS handshake in time", self.peer)
        elif state == READING and not self.buf:
            log.debug("closing %s: idle", self.peer)
        elif state in (READING, DISCARD):
            log.info("closing %s: request head not received in time", self.peer)
            if state == READING and self.request is None:
                return self.send_error(408, "request head not received in time")
        elif state in (WRITING, STREAMING):
            log.info("closing %s: the client stopped reading", self.peer)
        elif state == UPLOAD:
            log.info("closing %s: upload interrupted: no bytes for %g s", self.peer,
                     self.server.settings.request_timeout)
        self.close()
