"""The blob files of a data directory: staging, digest check, durable commit.

Only files here, no metadata: registry/storage.py decides which blobs a
package row needs and when one may go. A blob is written in staging/ and
renamed into blobs/sha256/<2 hex>/<64 hex> (see registry/paths.py) only after
its length and sha256 are checked and its bytes fsynced, so a file under
blobs/ is always complete; a crash leaves at worst a staging file or an
unreferenced blob, both removed at the next start.
"""

import errno
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading

import cas
from cas import is_sha256, unlink_quiet
from registry.errors import ApiError

__all__ = ["BlobFiles", "Staging", "WriteLock", "CHUNK_SIZE"]

log = logging.getLogger("aar.storage")

CHUNK_SIZE = 1 << 20


# A periodic fdatasync spreads the final fsync's flush over a large upload.
# The chunks are hashed and written apart, and two writes may run at once
# (at their own offsets), so that the disk, the slowest of the three, never
# waits for the sha256, nor for the server to hand it the next chunk, and one
# write goes on while the other waits for its fdatasync (uploads.py).
_SYNC_EVERY = 64 * CHUNK_SIZE


class Staging:
    """One body on its way into staging/: its chunks, in order, to update()
    (the sha256), one call at a time, and to write() at their offsets (the
    file), from other threads meanwhile; then finish(), which checks its
    length and sha256 and makes it durable, or abort() once no call runs.
    A failed finish aborts too, so nothing of a failed upload stays behind."""

    def __init__(self, staging_dir, length, sha256):
        self._fd, self.path = tempfile.mkstemp(prefix="upload-", dir=staging_dir)
        self.length = self.left = length
        self._sha256 = sha256
        self._digest = hashlib.sha256()
        self._unsynced = 0
        self._lock = threading.Lock()

    def update(self, chunk):
        self._digest.update(chunk)

    def write(self, offset, chunk):
        view = memoryview(chunk)
        if offset + len(view) > self.length:
            raise ApiError.of("size_mismatch", "more bytes than announced")
        at = offset
        while view:
            n = os.pwrite(self._fd, view, at)
            view, at = view[n:], at + n
        with self._lock:
            self.left -= len(chunk)
            self._unsynced += len(chunk)
            sync = self._unsynced >= _SYNC_EVERY
            if sync:
                self._unsynced = 0
        if sync:
            os.fdatasync(self._fd)

    def finish(self) -> str:
        """The staging file's path, complete, checked and fsynced."""
        try:
            if self.left:
                raise ApiError.of("size_mismatch", f"body ended after "
                                  f"{self.length - self.left} of {self.length} bytes")
            actual = self._digest.hexdigest()
            if actual != self._sha256:
                raise ApiError.of("digest_mismatch",
                                  f"body has sha256 {actual}, not {self._sha256}")
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self):
        """Close and remove the staging file; a second call does nothing."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            unlink_quiet(self.path)


class BlobFiles:
    """Staging and content-addressed blob files under one DataDir."""

    def __init__(self, datadir):
        self.datadir = datadir
        self._lockfd = None

    def lock(self):
        """Claim the data directory for this process, or raise ApiError."""
        # clear_staging() at start would destroy another process's uploads in
        # flight. flock on staging/ is released by the kernel when the holder
        # dies, even by SIGKILL, so a crash never leaves a stale lock.
        fd = os.open(self.datadir.staging_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise ApiError.of("internal", f"data directory {self.datadir.root} "
                              "is in use by another registry process: is another "
                              "`aar serve` running on it?") from None
        self._lockfd = fd

    def hand_over_lock(self) -> int:
        """The claim's descriptor, no longer this object's to close."""
        fd, self._lockfd = self._lockfd, None
        return fd

    def unlock(self):
        if self._lockfd is not None:
            os.close(self._lockfd)
            self._lockfd = None

    def path(self, sha256):
        return self.datadir.blob_path(sha256)

    def staging(self, length, sha256):
        """A Staging file for a body that is pushed to it chunk by chunk."""
        return Staging(self.datadir.staging_dir, length, sha256)

    def commit(self, staged, sha256):
        """Move a checked staging file to its blob path, durably."""
        cas.commit(staged, self.path(sha256))

    def remove(self, sha256) -> bool:
        """Delete a blob; False if it was not there."""
        try:
            os.unlink(self.path(sha256))
        except FileNotFoundError:
            return False
        return True

    def clear_staging(self) -> list:
        """Remove everything under staging/; return the names removed."""
        removed = []
        for entry in os.scandir(self.datadir.staging_dir):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
        return removed

    def scan(self) -> dict:
        """sha256 -> size of every well-named blob file."""
        found = {}
        for fanout in os.scandir(self.datadir.blobs_dir):
            if not fanout.is_dir(follow_symlinks=False):
                log.warning("recovery: leaving unexpected file %s", fanout.path)
                continue
            for entry in os.scandir(fanout.path):
                # Anything else is not ours to delete: leave it, say so.
                if (is_sha256(entry.name) and entry.name[:2] == fanout.name
                        and entry.is_file(follow_symlinks=False)):
                    found[entry.name] = entry.stat(follow_symlinks=False).st_size
                else:
                    log.warning("recovery: leaving unexpected file %s", entry.path)
        return found


class WriteLock:
    """A thread lock, then flock on blobs/ through a descriptor of this
    process's own: exclusive between threads and between the worker
    processes of one server. A write holds it for a rename and a short
    transaction, so the two extra system calls are noise beside the fsync."""

    def __init__(self, path):
        self._threads = threading.Lock()
        self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self):
        self._threads.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
