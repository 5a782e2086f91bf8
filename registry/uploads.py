"""An upload's body: the loop reads it, the pool writes it.

    socket ──loop reads──► buffer A (1 MiB) ──pool──► Incoming.write (sha256, disk)
                           buffer B filling meanwhile; reading pauses when it is
                           full and A is still in the pool (two buffers, no more)
    body complete ──pool──► Incoming.finish (checked, fsynced, committed) ──► Reply

A publisher that sends its body slowly costs its socket and one buffer (the
body's size, at most 1 MiB and a read), never a worker: the pool sees a
buffer only when it is full or holds the body's end. The loop stops reading
while the pool is behind, so memory stays flat however fast the client
sends; the request timeout then does not run, since the wait is ours.
Otherwise an upload that makes no progress for request_timeout is cut off,
and its staging file removed.

A store without `receive()` (the object store, whose multipart upload reads
its body itself) gets the same buffers through a feed its `put()` reads in a
worker; that worker is held for the whole upload, as before.
"""
import logging
import threading

from registry.bodies import Reply
from registry.loop import READ
from registry.transport import CLOSED, UPLOAD

__all__ = ["receive", "CHUNK"]

log = logging.getLogger("aar.server")

CHUNK = 1 << 20
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TURN = 16               # TLS records read per event before others get a turn
_RECV_MAX = 64 * 1024    # the most one transport read returns (transport._RECV)
_NEVER = float("inf")


def receive(conn, store, args, expect, stored):
    """Take over conn's current request, a PUT whose head was read.

    args are store.receive()'s (or put()'s without the stream); expect: the
    client waits for 100 Continue. stored(created, package) -> Reply runs in
    a worker once the package is stored (or known already) and makes the answer.
    """
    if not hasattr(store, "receive"):
        return _Feed(conn, store, args, stored).start(expect)

    def job():
        got = store.receive(*args)
        return stored(*got) if isinstance(got, tuple) else got

    def then(got):
        if isinstance(got, Reply):
            return got                    # answered without the body
        _Body(conn, got, stored).start(expect)
        return None
    conn.run(job, then)


class _Body:
    """The loop's side of one upload into an Incoming (see the docstring).

    It is the connection's body half, as transport.py is its socket half: it
    reads through the connection's transport (`_recv`, `_watch`) and keeps
    its deadline while the connection is in the UPLOAD state. Two buffers,
    made once: the loop fills one while the pool writes the other."""

    def __init__(self, conn, incoming, stored):
        self.conn = conn
        self.sink = incoming
        self.stored = stored
        self.left = conn.request.body_length      # bytes not yet read
        # A read returns at most _RECV_MAX bytes, so while a buffer holds
        # less than CHUNK the next read fits.
        self.size = min(self.left, CHUNK + _RECV_MAX)
        self.buf = None                           # the buffer being filled
        self.pos = 0                              # ... and how full it is
        self.spare = []
        self.writing = None                       # the buffer in the pool
        self.over = False                         # finished, failed or abandoned
        conn.server.events.uploads.inc()

    def start(self, expect):
        conn = self.conn
        conn.upload, conn.state = self, UPLOAD
        conn.deadline = conn.loop.now + conn.server.settings.request_timeout
        if expect and self.left:
            conn.send_more(_CONTINUE)             # its end calls readable()
        else:
            self._next()

    def readable(self):
        """The socket has bytes: read what the buffer takes, then hand it on."""
        conn = self.conn
        for _ in range(_TURN):
            if not self.left or self.pos >= CHUNK:
                break
            data = conn._recv()
            if data is None:
                break
            if not data:
                log.info("closing %s: upload interrupted: the connection ended after "
                         "%d of %d bytes", conn.peer,
                         conn.request.body_length - self.left, conn.request.body_length)
                return conn.close()
            conn.deadline = conn.loop.now + conn.server.settings.request_timeout
            self._take(data)
        self._next()

    def _take(self, data):
        """Copy body bytes into the buffer; the rest (a request pipelined
        behind the body, or what did not fit) waits in conn.buf."""
        if self.buf is None:
            self.buf = self.spare.pop() if self.spare else bytearray(self.size)
        n = min(len(data), self.left, self.size - self.pos)
        self.buf[self.pos:self.pos + n] = memoryview(data)[:n]
        self.pos += n
        self.left -= n
        self.conn.buf = data[n:]
        if not self.left:
            self.conn.body_unread = False

    def _next(self):
        """Hand a full buffer (or the last) to the pool if it has none; read on
        while there is room; finish when all is written."""
        if self.over:
            return
        conn = self.conn
        while True:
            if self.pos and self.writing is None and (self.pos >= CHUNK or not self.left):
                self.writing, self.buf, n = self.buf, None, self.pos
                self.pos = 0
                self._submit(memoryview(self.writing)[:n])
            elif self.left and conn.buf and self.pos < CHUNK:
                data, conn.buf = conn.buf, b""    # read with the head, or left over
                self._take(data)
            else:
                break
        if self.left and self.pos < CHUNK:
            if conn.events != READ:               # reading again after a pause
                conn.deadline = conn.loop.now + conn.server.settings.request_timeout
                conn._watch(READ)
        else:
            conn.deadline = _NEVER                # the wait is ours, not the client's
            conn._watch(0)                        # full, or the body is all here
            if not self.left and self.writing is None and not self.pos:
                self._finish()

    def _submit(self, chunk):
        sink = self.sink
        self.conn.server.pool.submit(lambda: sink.write(chunk), self._written)

    def _written(self, result, error):
        self.spare.append(self.writing)
        self.writing = None
        if self.over:                             # abandoned meanwhile
            return self._discard()
        if error is not None:
            self._end()                           # the Incoming removed its file
            return self.conn.reply(self.conn.server.handler.error_reply(
                self.conn, self.conn.request, error))
        self._next()

    def _finish(self):
        self._end()
        sink, stored = self.sink, self.stored
        self.conn.run(lambda: stored(*sink.finish()))

    def _end(self):
        if not self.over:
            self.over = True
            self.conn.server.events.uploads.dec()
            self.conn.upload = None

    def abandon(self):
        """The connection closed before the body was all read."""
        if not self.over:
            self._end()
            if self.writing is None:
                self._discard()

    def _discard(self):
        self.conn.server.pool.submit(self.sink.abort, _ignore)


def _ignore(result, error):
    if error is not None:
        log.error("removing an interrupted upload's staging file failed: %s", error)


class _Feed(_Body):
    """The same loop side for a store that reads its body itself: put() runs
    in a worker from the start, reading the chunks the loop hands it."""

    def __init__(self, conn, store, args, stored):
        super().__init__(conn, None, stored)
        self.store, self.args = store, args
        self.cond = threading.Condition()
        self.chunk_in = None                      # the chunk put() is taking
        self.taken = 0                            # ... and how much of it

    def start(self, expect):
        self.conn.server.pool.submit(self._put, self._put_done)
        super().start(expect)

    def _put(self):
        return self.stored(*self.store.put(*self.args[:3], self, *self.args[3:]))

    def read(self, n):
        """put()'s stream: the next bytes; b"" once abandoned."""
        with self.cond:
            while self.chunk_in is None and not self.over:
                self.cond.wait()
            if self.over:
                return b""
            chunk = self.chunk_in
            data = bytes(memoryview(chunk)[self.taken:self.taken + n])
            self.taken += len(data)
            if self.taken < len(chunk):
                return data
            self.chunk_in = None
        self.conn.loop.call_soon_threadsafe(self._written, None, None)
        return data

    def _submit(self, chunk):
        with self.cond:
            self.chunk_in, self.taken = chunk, 0
            self.cond.notify()

    def _finish(self):
        pass                                      # put() returns when it has all

    def _end(self):
        with self.cond:
            super()._end()
            self.cond.notify()

    def _discard(self):
        pass                                      # put() sees the end and cleans up

    def _put_done(self, result, error):
        conn = self.conn
        self._end()
        if conn.state == CLOSED:
            return
        if error is not None:
            result = conn.server.handler.error_reply(conn, conn.request, error)
        conn.reply(result)
