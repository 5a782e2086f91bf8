"""What a handler answers with, and the bodies too large for one buffer.

* `Reply`: status, headers, and a body as bytes or as a `FileBody`;
* `FileStream`: a package file or an object store's body sent by the loop
  while the pool reads ahead, so a slow reader holds a few buffers and no
  thread.

An upload's request body, the other way, is uploads.py's.
"""
import collections
import logging
import threading

__all__ = ["Reply", "FileBody", "FileStream"]

log = logging.getLogger("aar.server")

CHUNK = 1 << 20


class FileBody:
    """An open package file, positioned where sending starts: `length` bytes."""

    __slots__ = ("file", "length")

    def __init__(self, file, length):
        self.file = file
        self.length = length


class Reply:
    """A response: status, headers, and a body as bytes or as a FileBody."""

    __slots__ = ("status", "body", "content_type", "headers", "close", "file", "length")

    def __init__(self, status, body=b"", content_type=None, headers=(), close=False,
                 file=None, length=None):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.close = close
        self.file = file
        self.length = length              # Content-Length of a HEAD answer


class FileStream:
    """A FileBody to a connection: the pool reads ahead while the loop sends.

    The connection calls next() whenever its output is empty; FileStream
    queues the next chunk on it, or ends the response. One reader job at a
    time fills free buffers in order until none is free (a file reads one
    chunk ahead; an object store's body, which arrives at the store's pace,
    `read_ahead` chunks), so a slow client holds a few buffers and no thread,
    and a steady store is read without a pause while the loop sends.
    """

    def __init__(self, conn, body):
        self.conn = conn
        self.file = body.file
        self.left = body.length           # bytes not yet taken by the reader
        depth = 1 + getattr(self.file, "read_ahead", 1)
        self.chunk = getattr(self.file, "chunk", CHUNK)
        self.spare = [bytearray(self.chunk) for _ in range(depth)]
        self.ready = collections.deque()  # (buffer, n) read and not yet sent
        self.lock = threading.Lock()      # spare, ready, reading, waiting
        self.reading = False              # a reader job is out
        self.waiting = False              # the loop waits for the reader
        self.sending = None               # the buffer being sent
        self.done = False
        self._read_ahead()

    def _read_ahead(self):
        """On the loop: start a reader job if there is work and none is out."""
        with self.lock:
            if self.reading or self.left <= 0 or not self.spare:
                return
            self.reading = True
        self.conn.server.pool.submit(self._reader, self._reader_done)

    def _reader(self):
        """In the pool: read chunks into free buffers, in order, until none
        is free or the body is all read. Returns the failure of a read."""
        f = self.file
        failure = None
        while failure is None:
            with self.lock:
                if self.done or self.left <= 0 or not self.spare:
                    break
                buf = self.spare.pop()
                n = min(self.left, self.chunk)
                self.left -= n
            view = memoryview(buf)[:n]
            got = 0
            try:
                while got < n:            # an object store's body reads short
                    k = f.readinto(view[got:])
                    if not k:
                        break
                    got += k
            except Exception as exc:      # noqa: BLE001 - the loop ends the response
                failure = exc
                break
            if got != n:
                failure = EOFError("the blob ended early")
                break
            with self.lock:
                self.ready.append((buf, n))
                wake, self.waiting = self.waiting, False
            if wake:
                self.conn.server.loop.call_soon_threadsafe(self._resume)
        with self.lock:
            self.reading = False
            close = self.done
        if close:                         # abandoned while this job read
            self.file.close()
        return failure

    def _reader_done(self, failure, error):
        failure = failure or error
        if self.done:
            return None
        if failure is None:
            return self._resume()         # the last chunk may be in, or more room
        # The head promised more bytes: ending the connection says so.
        log.error("reading %s for %s failed: %s",
                  getattr(self.file, "name", "a blob in the object store"),
                  self.conn.peer, failure)
        return self.conn.close()

    def _resume(self):
        if not self.done and self.conn.streaming_idle():
            self.next()

    def next(self):
        """The previous chunk is sent: send the next one, or finish."""
        conn = self.conn
        with self.lock:
            if self.sending is not None:
                self.spare.append(self.sending)
                self.sending = None
            if self.ready:
                buf, n = self.ready.popleft()
            else:
                buf = None
                finished = self.left <= 0 and not self.reading
                self.waiting = not finished
        if buf is not None:
            self.sending = buf
            self._read_ahead()
            return conn.send_more(memoryview(buf)[:n])
        if finished:
            self.abandon()
            return conn.stream_done()
        self._read_ahead()
        conn.stream_paused()              # nothing to send until the reader posts

    def abandon(self):
        with self.lock:
            self.done = True
            reading = self.reading
        if not reading:
            self.file.close()
