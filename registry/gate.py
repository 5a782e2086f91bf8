"""An exact, cheap "has this sqlite database changed?" for the loop thread.

Asking sqlite for a generation on every request (`PRAGMA data_version`, a
query) costs about 5 µs and a GIL hand-off. A commit in WAL mode always writes
the -wal file, so when that file kept its size and mtime, nothing was
committed and the generation last read still holds. An fstat of the -wal
file, kept open, costs about 1 µs: no path to walk. The file cannot be
replaced under us: sqlite removes or recreates a -wal only when no connection
is open, and the process asking (the server) keeps its own connection open.
Without a -wal file (a database not in WAL mode, or an object store's store)
nothing is cached.

The catch is the clock: file times move in kernel ticks (a few ms), and once
the WAL restarts from its beginning a commit may leave the size unchanged. A
commit in the same tick as the mtime we saw would then look like no change.
So the stat result is trusted only if, when the generation was read, that
mtime was already older than SETTLED_NS: any later commit then gets a later
mtime. While the file is young (a write just happened) every call reads the
real generation.
"""
import os
import time

__all__ = ["StatGate"]

SETTLED_NS = 100_000_000      # far more than any file-time granularity


class StatGate:
    """`get()` returns read_generation()'s value, reading it only when needed."""

    def __init__(self, path, read_generation):
        # No path, or not a local one (an object store's "s3://..."): no WAL
        # to stat, so every get() reads the generation.
        self._wal = os.fspath(path) + "-wal" if path is not None else None
        self._fd = None
        self._read = read_generation
        self._seen = None
        self._value = None

    def _stat(self):
        if self._fd is None:
            if self._wal is None:
                return None
            try:
                self._fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        return os.fstat(self._fd)

    def get(self):
        st = self._stat()
        if st is None:
            return self._read()
        seen = (st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return self._value
        # Stat before reading, so what we remember is never newer than the
        # generation it stands for.
        value = self._read()
        self._value = value
        self._seen = seen if time.time_ns() - seen[1] > SETTLED_NS else None
        return value

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
