"""A body of known length into one object, pushed in chunks, checked before
the object exists.

An `Upload` takes the body as whoever has it pushes it, the server's loop
included (registry/uploads.py hands it the buffers it reads the socket into;
no thread waits for the next bytes, none copies them again):

* ``begin()`` starts a multipart upload when the body is at least
  ``threshold`` bytes. Its chunks (``part`` bytes) are then parts, which the
  caller may send up to ``lanes`` (= ``concurrency``) at once; a smaller
  body is kept in memory, one chunk, and PUT whole at the end.
* ``digest(view)`` hashes the chunks in order; ``write(number, offset, view)``
  sends chunk ``number`` (from 1; its offset is not needed). The two may run
  at once, on two threads.
* ``check()`` raises ShortBody / DigestMismatch unless the whole body came
  and its sha256 is the one announced. Nothing exists under the key yet, so
  a caller can decide here whether it should (registry/s3commit.py judges
  its claim);
* ``finish()`` makes the object exist (one PUT, or completing the multipart
  upload); ``abort()`` leaves nothing (the multipart upload is aborted).

Parts are at least 24 MiB, two in flight. A part costs the store a request
whatever its size (Swift on loopback: about 20 ms of CPU for its auth, the
segment's container update and fsync, measured), and on a machine the store
shares with the replica that CPU is upload speed: 8 MiB parts, four in
flight, left Swift 7 s of CPU per GiB, 24 MiB ones 5 s. Two lanes keep one
part's request overhead under the other's bytes. The memory this holds is
(lanes + 2) chunks per upload (registry/uploads.py): 4 x 24 MiB for a large
body, made once and reused. The part size grows with the length so that the
largest package fits in S3's 10,000 parts: length/9,000 rounded up to a MiB
when that is more (up to about 200 GiB the parts are 24 MiB; 1 TiB goes in
117 MiB ones). A chunk may be a little longer than ``part`` (the server
reads whole TLS records): parts only need 5 MiB, except the last.
"""
import hashlib
import threading

__all__ = ["Upload", "upload", "part_size", "DigestMismatch", "ShortBody",
           "MULTIPART_FROM"]

MIB = 1 << 20
MULTIPART_FROM = 16 * MIB
_MIN_PART = 24 * MIB
_LANES = 2
_MAX_PARTS = 10_000


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
                 concurrency=_LANES):
        self.client, self.key, self.length, self.sha256 = client, key, length, sha256
        self.multipart = length >= threshold
        self.part = part_size(length) if self.multipart else length
        self.lanes = concurrency if self.multipart else 1
        self.received = 0             # bytes arrived so far (a heartbeat watches it)
        self.upload_id = None
        self._digest = hashlib.sha256()
        self._hashed = 0
        self._chunks = {}             # number -> ETag of the part, or the bytes
        self._lock = threading.Lock()
        self._done = False

    def begin(self):
        if self.multipart:
            self.upload_id = self.client.create_multipart(self.key)

    def digest(self, view):
        self._digest.update(view)
        self._hashed += len(view)

    def write(self, number, offset, view):
        if self.multipart:
            etag = self.client.upload_part(self.key, self.upload_id, number, view)
        else:
            etag = bytes(view)
        with self._lock:
            self._chunks[number] = etag

    def check(self):
        """Raise unless the whole body came, every chunk written, and it is the one announced."""
        if self._hashed != self.length or \
                sorted(self._chunks) != list(range(1, len(self._chunks) + 1)):
            raise ShortBody(f"body ended after {self._hashed} of {self.length} bytes")
        actual = self._digest.hexdigest()
        if actual != self.sha256:
            raise DigestMismatch(f"body has sha256 {actual}, not {self.sha256}")

    def finish(self):
        """Make the checked object exist under the key (once)."""
        if self._done:
            return
        chunks = [self._chunks[n] for n in sorted(self._chunks)]
        if self.multipart:
            self.client.complete_multipart(self.key, self.upload_id, chunks)
        else:
            self.client.put(self.key, b"".join(chunks))
        self._done = True
        self._chunks = {}

    def abort(self):
        """Leave nothing of an upload that will not be finished."""
        self._chunks = {}
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
           concurrency=_LANES) -> None:
    """Store exactly ``length`` bytes of ``stream`` at ``key`` if their sha256
    is ``sha256``; else raise DigestMismatch / ShortBody (nothing stored).
    One chunk at a time: the server pushes its bodies, this is for the rest."""
    up = Upload(client, key, length, sha256, threshold, concurrency)
    try:
        up.begin()
        number = 0
        while up.received < length:
            chunk = bytearray()
            want = min(up.part, length - up.received)
            while len(chunk) < want:      # whole parts: S3 takes none under 5 MiB
                data = stream.read(min(want - len(chunk), MIB))
                if not data:
                    break
                chunk += data
            if not chunk:
                break
            number += 1
            up.received += len(chunk)
            up.digest(chunk)
            up.write(number, up.received - len(chunk), chunk)
        up.check()
        up.finish()
    except BaseException:
        up.abort()
        raise

