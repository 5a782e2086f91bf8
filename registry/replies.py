"""The answer half of a connection: sending a request's reply, and what
follows once it is written (the next request, a file's next chunk, or the
close).

Connection (connection.py) reads and dispatches requests; the handler
answers each with `reply()` (a Reply), `reply_kept()` (an answer kept for a
repeated head, repeats.py) or `unanswered()`. Every answer, whichever way it
goes, is counted in the metrics and, when access logging is on, logged, before
its bytes are queued; Transport (transport.py) writes the queue and calls
`_sent()` when it is empty.

FileStream (bodies.py) drives a file's body through the hooks at the end.
"""
import logging
import time

from registry.bodies import FileStream, Reply
from registry.loop import READ
from registry.protocol import response_head
from registry.transport import READING, STREAMING, UPLOAD

__all__ = ["Replies", "JOIN_BELOW"]

_access = logging.getLogger("aar.access")      # server.access_log's
_DEBUG = logging.DEBUG

JOIN_BELOW = 64 * 1024        # bodies smaller than this leave with their head
_monotonic = time.monotonic


class Replies:
    """Connection's reply path (a mixin: Connection's state is `self`)."""

    def _sent(self):
        """Everything queued is written: the next chunk of a file, or the next request."""
        if self.stream is not None:
            self.state = STREAMING
            return self.stream.next()
        if self.state == UPLOAD:          # a 100 Continue went out
            return self.upload.readable()
        self._written()

    def unanswered(self):
        """Close without an answer (a certificate-less caller off the join path)."""
        request = self.request
        self.server.events.request(self.route, request.method, "none",
                                   _monotonic() - self.started,
                                   len(request.body), 0)
        unread = self._unread()
        self.linger(unread) if unread else self.close()

    def send_error(self, status, message):
        """A protocol-level error: a text answer, then the connection closes."""
        body = message.encode() + b"\n"
        self.reply(Reply(status, body, "text/plain; charset=utf-8", close=True))

    def reply(self, reply):
        """Send `reply` to the current request; then serve the next one."""
        if self.dead:
            return self.close()
        request = self.request
        server = self.server
        status = reply.status
        file = reply.file
        body = reply.body
        length = file.length if file is not None else \
            reply.length if reply.length is not None else len(body)
        if _access.isEnabledFor(_DEBUG):
            server.access_log(self, request, status, length)
        close, head_only = True, False
        if request is not None:
            # An upload answered before its body was read leaves the rest of
            # the body on the wire: this connection can carry no other request.
            close = reply.close or request.close or self.body_unread != 0
            method = request.method
            head_only = method == "HEAD"
            received = request.body_length if method == "PUT" and \
                not self.body_unread else len(request.body)
            server.events.request(self.route, method, status,
                                  _monotonic() - self.started, received,
                                  0 if head_only else length)
        self.close_after = close
        if file is not None:
            if head_only:
                file.file.close()
            else:
                self.stream = FileStream(self, file)
        # Head and a small body in one buffer (one TLS record, one write); a
        # large body (a listing of a thousand applications is ~0.5 MB) on
        # its own, as joining would copy it.
        body = b"" if head_only else body
        small = len(body) < JOIN_BELOW
        data = response_head(status, reply.content_type, length, reply.headers,
                             close, server.server_version, body if small else b"")
        self.out.append(data)
        if not small:
            self.out.append(memoryview(body))
        self._send(len(data) + (0 if small else len(body)))

    def reply_kept(self, kept, data):
        """reply() for an answer repeats.py kept (to a GET with no body):
        `data` is its head and body as built (the connection closes after
        it if its request says so), and `kept.record(seconds, sent)` its
        line of the metrics (events.recorder)."""
        if _access.isEnabledFor(_DEBUG):
            self.server.access_log(self, self.request, kept.status, kept.length)
        kept.record(_monotonic() - self.started, kept.length)
        self.close_after = kept.request.close
        self.out.append(data)
        self._send(len(data))

    def _written(self):
        if self.close_after:
            unread = self._unread()
            return self.linger(unread) if unread else self.close()
        self.request = None
        self.state = READING
        settings = self.server.settings
        self.deadline = self.loop.now + (settings.request_timeout if self.buf
                                         else settings.idle_timeout)
        if self.events != READ:
            self._watch(READ)
        if self.buf:
            self._process()

    # -- what FileStream calls ----------------------------------------------------------

    def streaming_idle(self):
        """True when a stream's next chunk could go out now."""
        return self.state == STREAMING and not self.out and not self.wire

    def send_more(self, chunk):
        self.out.append(chunk)
        self._flush()

    def stream_done(self):
        self.stream = None
        self._written()

    def stream_paused(self):
        self._watch(0)                    # nothing to send until the pool reads

    def _unread(self):
        """How many bytes the client sent or will send that no request takes."""
        return len(self.buf) + self.body_unread
