"""An upload's body: the loop reads it, the pool hashes and stores it.

    socket ──loop reads into──► buffer 1 ─┬─pool─► digest (sha256, in order)
                                          └─pool─► write (the disk, or a part
                                                   to the object store)
                                buffer 2 filling meanwhile, then 3 …
    body complete ──pool──► finish (checked, committed) ──► Reply

The store's receive() gives the body's sink (registry/incoming.py): how large
a chunk it takes (`part`) and how many it writes at once (`lanes`). The loop
reads TLS records straight into a chunk's buffer; a full chunk goes to the
pool twice at once, to be hashed and to be written, so the disk (or the
object store) never waits for the sha256, nor the sha256 for it, and the
loop decrypts the next chunk meanwhile. At most lanes + 2 buffers, made when
first needed and reused: when none is free the loop stops reading (interest
0) until the pool hands one back, so memory stays flat however fast the
client sends; the request timeout then does not run, since the wait is ours.

A publisher that sends its body slowly costs its socket and one buffer,
never a worker: the pool sees a chunk only when it is full or ends the body.
An upload that makes no progress for request_timeout is cut off; one that
fails (the disk, the object store) is answered at once; either way the sink
is aborted once none of its calls runs, and nothing of it stays.
"""
import collections
import logging

from registry.bodies import Reply
from registry.loop import READ
from registry.transport import UPLOAD

__all__ = ["receive"]

log = logging.getLogger("aar.server")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TURN = 4                # reads (of 256 KiB at most) per event before others get a turn
_SLACK = 64 * 1024       # room past a chunk's end, so a whole record always fits
_NEVER = float("inf")


def receive(conn, store, args, expect, stored):
    """Take over conn's current request, a PUT whose head was read.

    args are store.receive()'s; expect: the client waits for 100 Continue.
    stored(created, package) -> Reply runs in a worker once the package is
    stored (or known already) and makes the answer.
    """
    def job():
        got = store.receive(*args)
        return stored(*got) if isinstance(got, tuple) else got

    def then(got):
        if isinstance(got, Reply):
            return got                    # answered without the body
        _Body(conn, got, stored).start(expect)
        return None

    def drop(got):                        # the client left before the body came
        if not isinstance(got, Reply):
            conn.server.pool.submit(got.abort, _ignore)
    conn.run(job, then, drop)


class _Chunk:
    __slots__ = ("number", "offset", "buf", "view", "jobs")

    def __init__(self, number, offset, buf, view):
        self.number, self.offset, self.buf, self.view = number, offset, buf, view
        self.jobs = 2                             # its digest and its write


class _Body:
    """The loop's side of one upload (see the module's docstring).

    It is the connection's body half, as transport.py is its socket half: it
    reads through the connection's transport (`_recv_into`, `_watch`) and
    keeps its deadline while the connection is in the UPLOAD state."""

    def __init__(self, conn, sink, stored):
        self.conn = conn
        self.sink = sink
        self.stored = stored
        length = conn.request.body_length
        self.left = length                        # bytes not yet read
        self.part = sink.part or 1
        self.size = min(self.part, length) + _SLACK
        self.most = min(sink.lanes + 2, -(-length // self.part))
        self.made = 0
        self.free = []
        self.buf = self.view = None               # the buffer being filled
        self.pos = 0                              # ... and how full it is
        self.number = 0                           # chunks handed to the pool
        self.to_hash = collections.deque()
        self.to_write = collections.deque()
        self.hashing = False
        self.writing = 0
        self.running = 0                          # pool jobs not back yet
        self.over = False                         # finishing, failed or abandoned
        self.finishing = False
        self.aborted = False
        conn.server.events.uploads.inc()

    def start(self, expect):
        conn = self.conn
        conn.upload, conn.state = self, UPLOAD
        conn.deadline = conn.loop.now + conn.server.settings.request_timeout
        if expect and self.left:
            conn.send_more(_CONTINUE)             # its end calls readable()
        else:
            self._next()

    # -- the loop reads ----------------------------------------------------------

    def readable(self):
        """The socket has bytes: read them into the buffer, hand full ones on."""
        conn = self.conn
        for _ in range(_TURN):
            if not self.left or (self.buf is None and not self._new_buffer()):
                break
            got = conn._recv_into(self.view[self.pos:])
            if got is None:
                break
            if not got:
                log.info("closing %s: upload interrupted: the connection ended after "
                         "%d of %d bytes", conn.peer,
                         conn.request.body_length - self.left, conn.request.body_length)
                return conn.close()
            conn.deadline = conn.loop.now + conn.server.settings.request_timeout
            take = min(got, self.left)
            if got > take:                        # a request pipelined behind the body
                conn.buf = bytes(self.view[self.pos + take:self.pos + got])
            self._took(take)
        self._next()

    def _new_buffer(self):
        if self.free:
            self.buf = self.free.pop()
        elif self.made < self.most:
            self.buf = bytearray(self.size)
            self.made += 1
        else:
            return False                          # all in the pool: pause
        self.view = memoryview(self.buf)
        return True

    def _took(self, n):
        self.pos += n
        self.left -= n
        self.sink.received = self.conn.request.body_length - self.left
        self.conn.body_unread = self.left
        if self.pos >= self.part or not self.left:
            self.number += 1
            offset = self.conn.request.body_length - self.left - self.pos
            chunk = _Chunk(self.number, offset, self.buf, self.view[:self.pos])
            self.buf = self.view = None
            self.pos = 0
            self.to_hash.append(chunk)
            self.to_write.append(chunk)
            self._submit()

    def _next(self):
        """Take bytes read with the head (or left over); read on while a
        buffer is free, else pause; finish when all is hashed and written."""
        if self.over:
            return
        conn = self.conn
        while self.left and conn.buf and (self.buf is not None or self._new_buffer()):
            data, conn.buf = conn.buf, b""
            n = min(len(data), self.left, self.size - self.pos)
            self.view[self.pos:self.pos + n] = memoryview(data)[:n]
            conn.buf = data[n:]
            self._took(n)
        if self.left and (self.buf is not None or self.free or self.made < self.most):
            if conn.events != READ:               # reading again after a pause
                conn.deadline = conn.loop.now + conn.server.settings.request_timeout
                conn._watch(READ)
        else:
            conn.deadline = _NEVER                # the wait is ours, not the client's
            conn._watch(0)                        # full, or the body is all here
            if not self.left and not self.running and not self.to_write:
                self._finish()

    # -- the pool hashes and writes -------------------------------------------------

    def _submit(self):
        if not self.hashing and self.to_hash:
            self.hashing = True
            self._run(self.to_hash.popleft(), True)
        while self.writing < self.sink.lanes and self.to_write:
            self.writing += 1
            self._run(self.to_write.popleft(), False)

    def _run(self, chunk, hashed):
        sink = self.sink
        self.running += 1
        job = (lambda: sink.digest(chunk.view)) if hashed else \
            (lambda: sink.write(chunk.number, chunk.offset, chunk.view))
        self.conn.server.pool.submit(job, lambda _, error: self._done(chunk, error, hashed))

    def _done(self, chunk, error, hashed):
        self.running -= 1
        if hashed:
            self.hashing = False
        else:
            self.writing -= 1
        chunk.jobs -= 1
        if not chunk.jobs:
            self.free.append(chunk.buf)
        if self.over:
            return self._discard()                # failed or abandoned meanwhile
        if error is not None:
            return self._fail(error)
        self._submit()
        self._next()

    def _fail(self, error):
        self._end()
        conn = self.conn
        self._discard()
        # The rest of the body may be on the wire: the answer closes.
        conn.reply(conn.server.handler.error_reply(conn, conn.request, error))

    def _finish(self):
        self._end()
        self.finishing = True
        self.free = []
        sink, stored = self.sink, self.stored
        self.conn.run(lambda: stored(*sink.finish()))

    def _end(self):
        if not self.over:
            self.over = True
            self.conn.server.events.uploads.dec()
            self.conn.upload = None
            self.to_hash.clear()
            self.to_write.clear()

    def abandon(self):
        """The connection closed before the body was all read."""
        self._end()
        self._discard()

    def _discard(self):
        """Abort the sink once none of its calls runs (once, never after finish)."""
        if self.running or self.finishing or self.aborted:
            return
        self.aborted = True
        self.free = []
        self.conn.server.pool.submit(self.sink.abort, _ignore)


def _ignore(result, error):
    if error is not None:
        log.error("aborting an interrupted upload failed: %s", error)
