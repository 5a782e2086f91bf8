"""An exact, cheap "has this sqlite database changed?" for the loop thread.

Asking sqlite for a generation on every request (`PRAGMA data_version`, a
query) costs about 5 µs and a GIL hand-off; even an fstat costs a system call
and about 1 µs. In WAL mode every commit rewrites the header of the
wal-index, the first bytes of the `-shm` file that every connection maps
(mxFrame, the salts and a checksum chain: no two commits leave it equal). So
StatGate maps those bytes read-only too: while they are what they were when
the generation was last read, nothing was committed since, and the value
read then still holds. A look is a 48-byte comparison, no system call.

Exactness: sqlite writes copy 0 of the header last, before the commit
returns, through shared memory, so once `aar trust revoke` has returned any
later look sees the new bytes. The bytes are taken *before* the generation is
read, so what is remembered is never newer than the generation it stands for.

The -shm file cannot change under the mapping while this process has the
database open: sqlite recreates or truncates it only when no connection has
it open, and the process asking (the server) keeps its own connection. The
mapping is made only after a first read of the generation, so that this
process's connection is open and the file initialised. Closing any descriptor
of the -shm file drops this process's POSIX locks on it, sqlite's included:
`close()` must come after the database's connections in this process are
closed (RegistryServer.server_close, after the stores).

Without a -shm file (a database not in WAL mode, or an object store's
store, whose "path" is no local file) nothing is cached: every get() reads
the generation.
"""
import mmap
import os

__all__ = ["StatGate"]

_HEADER = 48                  # one copy of the wal-index header (WalIndexHdr)


class StatGate:
    """`get()` returns read_generation()'s value, reading it only when needed."""

    def __init__(self, path, read_generation):
        path = os.fspath(path) if path is not None else ""
        self._shm = path + "-shm" if path and "://" not in path else None
        self._fd = None
        self._map = None
        self._read = read_generation
        self._seen = None
        self._value = None

    def get(self):
        header = self._map
        if header is None:
            value = self._value = self._read()
            self._seen = None
            self._open()
            return value
        seen = header[:_HEADER]
        if seen == self._seen:
            return self._value
        value = self._value = self._read()
        self._seen = seen
        return value

    def _open(self):
        if self._shm is None or self._fd is not None:
            return
        try:
            fd = os.open(self._shm, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return                        # not (yet) in WAL mode, or not local
        try:
            if os.fstat(fd).st_size >= _HEADER:
                self._map = mmap.mmap(fd, _HEADER, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            pass
        # Kept open even when nothing was mapped: closing it now would drop
        # sqlite's locks (see the module's docstring). A later get() does not
        # try again; the generation is then read every time.
        self._fd = fd

    def close(self):
        """Release the mapping; only after this process closed the database."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
