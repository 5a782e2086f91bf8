"""A sqlite3-backed MutableMapping of bytes to bytes, to sit under shelve.

The file format is exactly CPython 3.13's dbm.sqlite3 (one table
`Dict(key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)`), so `shelve.open()` on
3.13 reads our trust store and we read one it wrote. dbm.sqlite3 itself is not
used, because:

- it exists only from 3.13, and we run on 3.10 to 3.13;
- it offers no transaction, so "refuse if present or revoked, else set" cannot
  be made atomic between the CLI and the running server (two processes);
- its connection is bound to one thread, while the server reads from workers;
- it exposes nothing that tells a reader cheaply that another process wrote.

So this mapping adds: WAL (readers never block the writer, and a crash leaves
the last committed state), a long busy timeout instead of "database is
locked" errors, a thread lock around one shared connection,
`transaction()` (BEGIN IMMEDIATE: the write lock is taken up front, so a
check-then-set inside it cannot interleave with another process's), and
`data_version()`, a number that changes whenever anyone commits.
Every sqlite3 failure becomes a one-line StoreError naming the file.
"""
import contextlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import MutableMapping

from .errors import Damaged, StoreError

__all__ = ["SqliteMapping", "DEFAULT_TIMEOUT", "DAMAGED"]

DEFAULT_TIMEOUT = 30.0
DAMAGED = ("trust store {path} is damaged (integrity check: {detail}): restore "
           "it from a backup")

# The statements of CPython 3.13's Lib/dbm/sqlite3.py, byte for byte where it
# matters: the CASTs make str and bytes keys the same BLOB.
_BUILD_TABLE = """
  CREATE TABLE IF NOT EXISTS Dict (
    key BLOB UNIQUE NOT NULL,
    value BLOB NOT NULL
  )
"""
_GET_SIZE = "SELECT COUNT (key) FROM Dict"
_LOOKUP_KEY = "SELECT value FROM Dict WHERE key = CAST(? AS BLOB)"
_STORE_KV = "REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))"
_DELETE_KEY = "DELETE FROM Dict WHERE key = CAST(? AS BLOB)"
_ITER_KEYS = "SELECT key FROM Dict"
_ITEMS = "SELECT key, value FROM Dict"


class SqliteMapping(MutableMapping):
    """bytes|str keys -> bytes values in one sqlite3 file (mode 0600)."""

    def __init__(self, path, timeout=DEFAULT_TIMEOUT):
        self.path = os.fspath(path)
        self._timeout = timeout
        self._lock = threading.RLock()
        self._depth = 0            # nesting of transaction() in the owning thread
        self._writes = 0           # our own committed writes
        self._seen_version = None  # last PRAGMA data_version we saw
        self._generation = 0
        self._create_private()
        try:
            # isolation_level=None: sqlite3 never opens transactions behind
            # our back (Python 3.10/3.11 lack the autocommit= parameter).
            self._cx = sqlite3.connect(self.path, timeout=timeout,
                                       isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as error:
            raise self._error(error) from None
        try:
            self._setup()
        except BaseException:
            self._cx.close()
            raise

    def _create_private(self):
        # Create the file 0600 before sqlite sees it: sqlite would create it
        # with the umask's mode. The -wal and -shm files need no help: sqlite
        # gives them the database file's permissions.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise StoreError(f"cannot open trust store {self.path}: "
                             f"{error.strerror or error}") from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise StoreError(f"cannot open trust store {self.path}: not a file")
            if mode & 0o077:
                # An existing file readable by others: tighten it, if ours.
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o600)
        finally:
            os.close(fd)

    def _setup(self):
        # Switching to WAL and creating the table both need the write lock;
        # when several processes open a new file at once, some may be told
        # "locked" without waiting, so retry until the timeout.
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                with self._lock:
                    self._cx.execute("PRAGMA journal_mode = wal")
                    # FULL: a trust change the CLI reported done survives a
                    # power cut, not just a crash; writes here are rare.
                    self._cx.execute("PRAGMA synchronous = full")
                    self._cx.execute(_BUILD_TABLE)
                    self._seen_version = self._pragma_version()
                return
            except sqlite3.OperationalError as error:
                if not _is_busy(error) or time.monotonic() > deadline:
                    raise self._error(error) from None
                time.sleep(0.05)
            except sqlite3.DatabaseError as error:   # not a database, malformed
                raise Damaged(DAMAGED.format(path=self.path, detail=error)) from None
            except sqlite3.Error as error:
                raise self._error(error) from None

    def _error(self, error) -> StoreError:
        return StoreError(f"trust store {self.path} is unusable: {error}")

    def _execute(self, sql, params=(), write=False):
        with self._lock:
            if self._cx is None:
                raise StoreError(f"trust store {self.path} is closed")
            try:
                rows = self._cx.execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise self._error(error) from None
            if write:
                self._writes += 1
            return rows

    def execute(self, sql, params=(), write=False) -> list:
        """One statement of the caller's own (another table in this file)."""
        return self._execute(sql, params, write)

    @contextlib.contextmanager
    def transaction(self):
        """Hold the database's write lock for the block; commit at its end,
        roll back if it raises. Nested use joins the outer transaction."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._depth = 0
                with contextlib.suppress(StoreError):
                    self._execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                self._execute("COMMIT", write=True)
            except StoreError:
                # A failed COMMIT leaves the transaction open; end it so the
                # connection stays usable and holds no lock.
                with contextlib.suppress(StoreError):
                    self._execute("ROLLBACK")
                raise

    def check_integrity(self):
        """StoreError naming the first problem unless sqlite's integrity_check
        passes (the whole file is read: a trust store is small)."""
        with self._lock:
            try:
                rows = self._cx.execute("PRAGMA integrity_check").fetchall()
            except sqlite3.DatabaseError as error:
                rows = [(str(error),)]
        if [tuple(row) for row in rows] != [("ok",)]:
            detail = "; ".join(str(row[0]) for row in rows[:3])
            raise Damaged(DAMAGED.format(path=self.path, detail=detail))

    def data_version(self) -> int:
        """A number that changes after any commit: ours or another
        connection's (in this process or another). One cheap PRAGMA."""
        with self._lock:
            if self._cx is None:
                raise StoreError(f"trust store {self.path} is closed")
            try:
                version = self._pragma_version()
            except sqlite3.Error as error:
                raise self._error(error) from None
            # data_version only moves for other connections' commits, so our
            # own writes are counted separately and folded in here.
            if version != self._seen_version or self._writes:
                self._seen_version = version
                self._writes = 0
                self._generation += 1
            return self._generation

    def _pragma_version(self) -> int:
        return self._cx.execute("PRAGMA data_version").fetchone()[0]

    def __getitem__(self, key):
        rows = self._execute(_LOOKUP_KEY, (_key(key),))
        if not rows:
            raise KeyError(key)
        return rows[0][0]

    def __setitem__(self, key, value):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"values must be bytes, not {type(value).__name__}")
        self._execute(_STORE_KV, (_key(key), bytes(value)), write=True)

    def __delitem__(self, key):
        with self._lock:
            # Check and delete under one lock so KeyError is truthful.
            if not self._execute(_LOOKUP_KEY, (_key(key),)):
                raise KeyError(key)
            self._execute(_DELETE_KEY, (_key(key),), write=True)

    def __contains__(self, key):
        try:
            key = _key(key)
        except TypeError:
            return False
        return bool(self._execute(_LOOKUP_KEY, (key,)))

    def __iter__(self):
        # Read all keys first: a generator holding a cursor would keep the
        # lock (or a read snapshot) for as long as the caller dawdles.
        return iter([row[0] for row in self._execute(_ITER_KEYS)])

    def snapshot(self) -> list:
        """Every (key, value) pair, read in one statement (one consistent view)."""
        return [(row[0], row[1]) for row in self._execute(_ITEMS)]

    def __len__(self):
        return self._execute(_GET_SIZE)[0][0]

    def sync(self):
        """Nothing to do: every write is committed when it returns."""

    def close(self):
        with self._lock:
            if self._cx is not None:
                self._cx.close()
                self._cx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _key(key) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"keys must be bytes or str, not {type(key).__name__}")


def _is_busy(error) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text
