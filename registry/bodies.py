"""What a handler answers with, and the bodies too large for one buffer.

* `Reply`: status, headers, and a body as bytes or as a `FileBody`;
* `FileStream`: a package file sent by the loop while the pool reads the
  next 1 MiB, so a slow reader holds two buffers and no thread.

An upload's request body, the other way, is uploads.py's.
"""
import logging

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
    """A FileBody to a connection: the pool reads a chunk ahead while the loop
    sends the previous one. The connection calls next() whenever its output
    is empty; FileStream queues the next chunk on it, or ends the response."""

    def __init__(self, conn, body):
        self.conn = conn
        self.file = body.file
        self.left = body.length           # bytes not yet asked of the pool
        self.spare = [bytearray(CHUNK), bytearray(CHUNK)]
        self.ready = None                 # (buffer, n) read and not yet sent
        self.reading = False
        self.sending = None               # the buffer being sent
        self.done = False
        self._read_ahead()

    def _read_ahead(self):
        if self.reading or self.left <= 0 or not self.spare:
            return
        buf = self.spare.pop()
        n = min(self.left, CHUNK)
        self.left -= n
        self.reading = True
        f = self.file

        def job():
            view = memoryview(buf)[:n]
            got = 0
            while got < n:                # an object store's body reads short
                k = f.readinto(view[got:])
                if not k:
                    break
                got += k
            return buf, got, n
        self.conn.server.pool.submit(job, self._read_done)

    def _read_done(self, result, error):
        self.reading = False
        if self.done:
            return
        conn = self.conn
        if error is not None or result[1] != result[2]:
            # The head promised more bytes: ending the connection says so.
            log.error("reading %s for %s failed: %s",
                      getattr(self.file, "name", "a blob in the object store"),
                      conn.peer, error or "the blob ended early")
            return conn.close()
        buf, n, _ = result
        self.ready = (buf, n)
        if conn.streaming_idle():
            self.next()

    def next(self):
        """The previous chunk is sent: send the next one, or finish."""
        conn = self.conn
        if self.sending is not None:
            self.spare.append(self.sending)
            self.sending = None
        if self.ready is not None:
            buf, n = self.ready
            self.ready = None
            self.sending = buf
            self._read_ahead()
            return conn.send_more(memoryview(buf)[:n])
        if self.left <= 0 and not self.reading:
            self.abandon()
            return conn.stream_done()
        self._read_ahead()
        conn.stream_paused()              # nothing to send until the pool reads

    def abandon(self):
        self.done = True
        self.file.close()
