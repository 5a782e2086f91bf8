"""Streaming a body of known length into one object, checked before it exists.

Small bodies (below ``threshold``) are read into memory, hashed and PUT once.
Larger ones go as a multipart upload: parts are read and hashed in order by the
calling thread while up to ``concurrency`` parts travel at once; the upload is
completed only when the whole body's sha256 matched, so an object under the
key never holds unchecked bytes. Any failure (a short body, a wrong digest,
the store) aborts the multipart upload before the error propagates.

The part size grows with the length so that the largest package fits in
S3's 10,000 parts: at least 8 MiB, and length/9,000 rounded up to a MiB (a
64 GiB package goes in 8 MiB parts, 200 GiB in 23 MiB ones).
"""
import concurrent.futures
import hashlib

from objstore.client import S3Error

__all__ = ["upload", "part_size", "DigestMismatch", "ShortBody", "MULTIPART_FROM"]

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


def _read_exactly(stream, n, digest, done_before, length):
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_READ, n - len(buf)))
        if not chunk:
            raise ShortBody(f"body ended after {done_before + len(buf)} of {length} bytes")
        if len(chunk) > n - len(buf):
            raise ShortBody("stream returned more than asked")
        buf += chunk
    digest.update(buf)
    return bytes(buf)


def upload(client, key, stream, length, sha256, threshold=MULTIPART_FROM,
           concurrency=4, on_upload_id=None) -> None:
    """Store exactly ``length`` bytes of ``stream`` at ``key`` if their sha256
    is ``sha256``; else raise DigestMismatch / ShortBody (nothing stored)."""
    digest = hashlib.sha256()
    if length < threshold:
        data = _read_exactly(stream, length, digest, 0, length)
        _check(digest, sha256)
        client.put(key, data)
        return
    upload_id = client.create_multipart(key)
    if on_upload_id is not None:
        on_upload_id(upload_id)
    size = part_size(length)
    try:
        with concurrent.futures.ThreadPoolExecutor(concurrency,
                                                   thread_name_prefix="s3-part") as pool:
            futures, done = [], 0
            while done < length:
                data = _read_exactly(stream, min(size, length - done), digest, done, length)
                # Bound what waits in memory: wait for the oldest part in flight.
                while sum(not f.done() for f in futures) >= concurrency:
                    concurrent.futures.wait(futures, return_when="FIRST_COMPLETED")
                for f in futures:
                    if f.done() and f.exception() is not None:
                        raise f.exception()
                futures.append(pool.submit(client.upload_part, key, upload_id,
                                           len(futures) + 1, data))
                done += len(data)
            etags = [f.result() for f in futures]
        _check(digest, sha256)
        client.complete_multipart(key, upload_id, etags)
    except BaseException:
        try:
            client.abort_multipart(key, upload_id)
        except (S3Error, OSError, Exception):
            pass       # stale uploads are cleaned at the next start
        raise


def _check(digest, sha256):
    actual = digest.hexdigest()
    if actual != sha256:
        raise DigestMismatch(f"body has sha256 {actual}, not {sha256}")
