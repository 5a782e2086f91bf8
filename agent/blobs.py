"""Content-addressed package files under blobs/sha256/, and their cleanup.

A blob only ever appears complete: it is written under staging/ and fsynced
by its producer (staging.stage), then commit() renames it into place and
fsyncs the directory. A blob no version refers to is garbage: a killed
import leaves one, and so does deleting the last version that used it.

Writers hold apps.lock shared from staging until their version is in the
database; collect() takes it exclusively, and not at all if it would have to
wait. So cleanup never deletes a file that a live writer, in this process or
another, has yet to record, and a busy writer never stalls a delete: the
garbage is left for the next collect().
"""
import contextlib
import fcntl
import os
import tempfile

import cas

__all__ = ["Blobs"]


class Blobs:
    """The blobs and staging area of one paths.DataDir (already ensured)."""

    def __init__(self, dirs):
        self.dirs = dirs

    def path(self, sha256):
        return self.dirs.blob_path(sha256)

    @contextlib.contextmanager
    def writing(self):
        """Hold apps.lock shared while staging, committing and recording."""
        fd = os.open(self.dirs.apps_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def staging_file(self):
        """A new empty file under staging/, removed on exit. The writers'
        lock is held throughout, so collect() in another process (any
        command opening the store) leaves it alone."""
        with self.writing():
            fd, path = tempfile.mkstemp(dir=self.dirs.staging_dir, suffix=".part")
            os.close(fd)
            try:
                yield path
            finally:
                self.discard(path)

    def discard(self, staged):
        cas.unlink_quiet(staged)

    def commit(self, staged, sha256):
        """Move a complete, fsynced staging file to the blob path of sha256."""
        cas.commit(staged, self.dirs.blob_path(sha256))

    def collect(self, used, staging=False) -> bool:
        """Delete blobs whose digest is not in used() (and, with staging=True,
        every staging file); False if a writer is active and nothing was done.
        used is called under the lock, so it sees every committed version.
        """
        fd = os.open(self.dirs.apps_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if staging:
                for entry in os.scandir(self.dirs.staging_dir):
                    cas.unlink_quiet(entry.path)
            keep = set(used())
            for fan_out in os.scandir(self.dirs.blobs_dir):
                if not fan_out.is_dir(follow_symlinks=False):
                    continue
                for blob in os.scandir(fan_out.path):
                    if blob.name not in keep:
                        cas.unlink_quiet(blob.path)
                with contextlib.suppress(OSError):
                    os.rmdir(fan_out.path)  # only succeeds when empty
            return True
        finally:
            os.close(fd)
