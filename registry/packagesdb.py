"""packages.db: the package table, its rows, and the connections that reach it.

One row per package, (name, version, architecture) its key; tags and the
manifest are JSON text. A counters table holds the generation, bumped by every
write transaction that changed a row: the listing cache (and the server's
ETag) is keyed on it. The pending table journals the blobs being committed
or deleted, so that start-up recovery can tell its own leftovers from loss.

Each thread has its own connection in WAL mode, so readers are never blocked
by the one short write transaction. Transactions are explicit; registry/storage.py
decides what goes in them and serialises the writers.
"""

import contextlib
import json
import sqlite3
import threading
import time

from registry.errors import ApiError

__all__ = ["PackagesDB", "COLUMNS", "SELECT_GENERATION", "package_of_row"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS packages (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        architecture TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL,
        publisher TEXT NOT NULL,
        tags TEXT NOT NULL,
        manifest TEXT NOT NULL,
        PRIMARY KEY (name, version, architecture)
    ) WITHOUT ROWID""",
    # Deleting asks "does any other row still use these bytes?".
    "CREATE INDEX IF NOT EXISTS packages_by_sha256 ON packages (sha256)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    # Digests of blobs being committed or deleted: a blob that no row names
    # is provably a crash's leftover (and removed at start) only if its
    # digest is here; any other such blob is set aside (registry/recovery.py).
    "CREATE TABLE IF NOT EXISTS pending (sha256 TEXT PRIMARY KEY) WITHOUT ROWID",
)
COLUMNS = "name, version, architecture, size, sha256, created_at, publisher, tags, manifest"
SELECT_GENERATION = "SELECT value FROM counters WHERE name = 'generation'"


def package_of_row(row) -> dict:
    """A row of COLUMNS as the API's package body (a fresh dict: callers may keep it)."""
    name, version, arch, size, sha256, created_at, publisher, tags, manifest = row
    return {"name": name, "version": version, "architecture": arch, "size": size,
            "sha256": sha256, "created_at": created_at, "publisher": publisher,
            "tags": json.loads(tags), "manifest": json.loads(manifest)}


class PackagesDB:
    """Per-thread connections to one packages.db; nothing is opened until used."""

    def __init__(self, path):
        self.path = path
        self._local = threading.local()
        self._conns = []
        self._conns_lock = threading.Lock()
        self._closed = False

    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise ApiError.of("internal", "package store is closed")
            # Autocommit mode: transactions are explicit BEGIN/COMMIT below.
            # check_same_thread=False only so close() can close every thread's
            # connection; each one is still used by its own thread alone.
            conn = sqlite3.connect(self.path, timeout=30,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a package acknowledged as published survives power loss.
            conn.execute("PRAGMA synchronous=FULL")
            with self._conns_lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self, journal=False):
        """One write transaction; bumps the generation if it changed any row.

        ``journal=True`` is for the pending table alone: no generation bump
        (no listing changed) and no fsync at commit. Losing such a commit to
        a power cut is safe: recovery then sets the blob aside instead of
        removing it. The next durable commit syncs it anyway (WAL order).
        The caller serialises writers (PackageStore's write lock).
        """
        conn = self.conn()
        if journal:
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            yield conn
            if conn.total_changes != before and not journal:
                conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'generation'")
            conn.execute("COMMIT")
        except BaseException:
            # sqlite may already have rolled back by itself (disk full).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            if journal:
                conn.execute("PRAGMA synchronous=FULL")

    def create_schema(self):
        """Create the tables if they are missing. The caller serialises writers."""
        with self.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            # Start the counter at the creation time in microseconds, not 0:
            # if the data directory is wiped and recreated, generations (and
            # so ETags that clients hold) still never repeat.
            conn.execute("INSERT OR IGNORE INTO counters VALUES ('generation', ?)",
                         (time.time_ns() // 1000,))

    def close(self):
        """Close every thread's connection; any later use raises ApiError."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
