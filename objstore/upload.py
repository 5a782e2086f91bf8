"""Streaming a body of known length into one object, checked before it exists.

An `Upload` goes in two steps so that a caller can decide in between whether
the object should exist at all (registry/s3commit.py judges its claim there):

* ``send(stream)`` moves and checks the bytes. Small bodies (below
  ``threshold``) are read into memory; larger ones go as a multipart upload
  whose parts travel, up to ``concurrency`` at once, while the next is read.
  The whole body's sha256 must match, else DigestMismatch / ShortBody.
* ``finish()`` makes the object exist (one PUT, or completing the multipart
  upload); ``abort()`` leaves nothing (the multipart upload is aborted).

Memory is bounded: ``concurrency + 1`` part buffers, reused. Each is filled
in place (readinto when the stream has it) and sent as is, never copied
again; hashing runs on a thread of its own, in order, beside the reading (the
sha256 releases the GIL), so the reading thread only moves bytes.

The part size grows with the length so that the largest package fits in
S3's 10,000 parts: at least 8 MiB, and length/9,000 rounded up to a MiB (a
64 GiB package goes in 8 MiB parts, 200 GiB in 23 MiB ones).
"""
import concurrent.futures
import hashlib

__all__ = ["Upload", "upload", "part_size", "DigestMismatch", "ShortBody",
           "MULTIPART_FROM"]

MIB = 1 << 20
MULTIPART_FROM = 16 * MIB
_MIN_PART = 8 * MIB
_MAX_PARTS = 10_000
_READ = MIB


class DigestMismatch(Exception):
    """The body's sha256 is not the one announced."""


class ShortBody(Exception):
    """The body ended before its announced length."""


def part_size(length) -> int:
    want = -(-length // (_MAX_PARTS - 1000))
    return max(_MIN_PART, -(-want // MIB) * MIB)


class Upload:
    """``length`` bytes to ``key`` if their sha256 is ``sha256``."""

    def __init__(self, client, key, length, sha256, threshold=MULTIPART_FROM,
                 concurrency=4, on_upload_id=None):
        self.client, self.key, self.length, self.sha256 = client, key, length, sha256
        self.multipart = length >= threshold
        self.concurrency = concurrency
        self.on_upload_id = on_upload_id
        self.received = 0             # bytes read so far (a heartbeat watches it)
        self.upload_id = None
        self._data = None
        self._etags = None
        self._done = False

    def _fill(self, stream, view):
        """Fill ``view`` from ``stream`` exactly, or raise ShortBody."""
        readinto = getattr(stream, "readinto", None)
        pos, n = 0, len(view)
        while pos < n:
            want = min(_READ, n - pos)
            if readinto is not None:
                got = readinto(view[pos:pos + want])
            else:
                chunk = stream.read(want)
                got = len(chunk)
                if got > want:
                    raise ShortBody("stream returned more than asked")
                view[pos:pos + got] = chunk
            if not got:
                raise ShortBody(f"body ended after {self.received} of "
                                f"{self.length} bytes")
            pos += got
            self.received += got

    def send(self, stream):
        """Read, hash and (multipart) send the body; raise if it is not the one
        announced. Nothing exists under the key until finish()."""
        if not self.multipart:
            buf = bytearray(self.length)
            self._fill(stream, memoryview(buf))
            _check(hashlib.sha256(buf), self.sha256)
            self._data = buf
            return
        self.upload_id = self.client.create_multipart(self.key)
        if self.on_upload_id is not None:
            self.on_upload_id(self.upload_id)
        size = part_size(self.length)
        digest = hashlib.sha256()
        free, flying, futures = [], {}, []
        with concurrent.futures.ThreadPoolExecutor(self.concurrency,
                                                   thread_name_prefix="s3-part") as pool, \
                concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="s3-hash") \
                as hasher:
            try:
                done = 0
                while done < self.length:
                    while len(flying) >= self.concurrency:
                        self._settle(flying, free)
                    buf = free.pop() if free else bytearray(size)
                    view = memoryview(buf)[:min(size, self.length - done)]
                    self._fill(stream, view)
                    hashed = hasher.submit(digest.update, view)
                    sent = pool.submit(self.client.upload_part, self.key, self.upload_id,
                                       len(futures) + 1, view)
                    flying[sent] = (hashed, buf)
                    futures.append(sent)
                    done += len(view)
                while flying:
                    self._settle(flying, free)
            finally:
                for f in flying:
                    f.cancel()
        _check(digest, self.sha256)
        self._etags = [f.result() for f in futures]

    @staticmethod
    def _settle(flying, free):
        """Wait for one part in flight to be sent (and hashed); free its buffer."""
        done, _ = concurrent.futures.wait(list(flying), return_when="FIRST_COMPLETED")
        for sent in done:
            hashed, buf = flying.pop(sent)
            sent.result()               # raises the store's error
            hashed.result()
            free.append(buf)

    def finish(self):
        """Make the checked object exist under the key (once)."""
        if self._done:
            return
        if self.multipart:
            self.client.complete_multipart(self.key, self.upload_id, self._etags)
        else:
            self.client.put(self.key, self._data)
        self._done = True
        self._data = None

    def abort(self):
        """Leave nothing of an upload that will not be finished."""
        self._data = None
        if self.upload_id is None or self._done:
            return
        try:
            # Once: a store that fails now would hold the answer for a minute of
            # retries; what stays is collected later (registry/s3gc.py).
            self.client.abort_multipart(self.key, self.upload_id, attempts=1)
        except Exception:       # noqa: BLE001 - stale uploads are cleaned later
            pass
        self._done = True


def upload(client, key, stream, length, sha256, threshold=MULTIPART_FROM,
           concurrency=4, on_upload_id=None) -> None:
    """Store exactly ``length`` bytes of ``stream`` at ``key`` if their sha256
    is ``sha256``; else raise DigestMismatch / ShortBody (nothing stored)."""
    up = Upload(client, key, length, sha256, threshold, concurrency, on_upload_id)
    try:
        up.send(stream)
        up.finish()
    except BaseException:
        up.abort()
        raise


def _check(digest, sha256):
    actual = digest.hexdigest()
    if actual != sha256:
        raise DigestMismatch(f"body has sha256 {actual}, not {sha256}")
