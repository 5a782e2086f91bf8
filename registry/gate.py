"""An exact, cheap "has this sqlite database changed?" for the loop thread.

Asking sqlite for a generation on every request (`PRAGMA data_version`, a
query) costs about 5 µs and a GIL hand-off. A commit in WAL mode always writes
the -wal file, so when that file kept its inode, size and mtime, nothing was
committed and the generation last read still holds. One os.stat costs about
1 µs. Without a -wal file (a database not in WAL mode) nothing is cached.

The catch is the clock: file times move in kernel ticks (a few ms), and once
the WAL restarts from its beginning a commit may leave the size unchanged. A
commit in the same tick as the mtime we saw would then look like no change.
So the stat result is trusted only if, when the generation was read, that
mtime was already older than SETTLED: any later commit then gets a later
mtime. While files are young (a write just happened) every call reads the
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
        self._read = read_generation
        self._seen = None
        self._value = None

    def get(self):
        try:
            st = os.stat(self._wal)
        except (OSError, TypeError):
            self._seen = None
            return self._read()
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return self._value
        # Stat before reading, so what we remember is never newer than the
        # generation it stands for.
        value = self._read()
        self._value = value
        self._seen = seen if time.time_ns() - seen[2] > SETTLED_NS else None
        return value
