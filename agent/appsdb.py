"""apps.db: the node's application database, its schema and its transactions.

AppStore (appstore.py) decides what may change; this module only keeps the
sqlite3 file: made 0600 before sqlite3 touches it (the manifests are the
operator's business), opened in WAL mode with full fsync, migrated forward
on open, and every sqlite3 failure turned into a one-line StoreError that
names the file. One connection serves every thread of the agent behind a
lock; other processes are kept apart by sqlite's own file locks.
"""
import contextlib
import json
import os
import sqlite3
import threading

from .errors import StoreError

__all__ = ["AppsDB", "MIGRATIONS", "SELECT_VERSIONS", "version_record",
           "NEWER_SCHEMA", "DATABASE_ERROR"]

NEWER_SCHEMA = ("{path} has schema version {found}, newer than this program "
                "knows ({known}): upgrade ams-sync")
DATABASE_ERROR = "application database {path}: {error}"

# Each entry takes the schema from its index to index + 1, in one
# transaction; PRAGMA user_version is the schema version. Append, never edit:
# a node upgrades by running the entries it has not run yet.
MIGRATIONS = [
    (
        """CREATE TABLE applications (
            name TEXT PRIMARY KEY,
            origin TEXT NOT NULL CHECK (origin IN ('local', 'pulled')),
            next_version INTEGER NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE versions (
            name TEXT NOT NULL REFERENCES applications(name) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            architecture TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            manifest TEXT NOT NULL,
            tags TEXT NOT NULL,
            published INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            PRIMARY KEY (name, version))""",
        "CREATE INDEX versions_by_sha256 ON versions(sha256)",
    ),
]

# A version's row with its application's origin: what version_record() reads.
SELECT_VERSIONS = """SELECT v.*, a.origin FROM versions v JOIN applications a USING (name)"""


def version_record(row) -> dict:
    """The dict AppStore hands out for one SELECT_VERSIONS row."""
    return {
        "name": row["name"], "version": row["version"],
        "architecture": row["architecture"], "sha256": row["sha256"],
        "size": row["size"], "manifest": json.loads(row["manifest"]),
        "tags": json.loads(row["tags"]), "published": bool(row["published"]),
        "origin": row["origin"], "immutable": row["origin"] == "pulled",
        "created_at": row["created_at"],
    }


class AppsDB:
    """The open apps.db at path, migrated to the newest schema."""

    def __init__(self, path):
        self.path = path = str(path)
        self._lock = threading.RLock()
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as error:
            raise StoreError(DATABASE_ERROR.format(path=path, error=error)) from None
        try:
            self._db.row_factory = sqlite3.Row
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
                self._db.execute("PRAGMA " + pragma)
            self._migrate()
        except BaseException as error:
            self._db.close()
            if isinstance(error, sqlite3.Error):
                raise StoreError(DATABASE_ERROR.format(path=path, error=error)) from None
            raise

    def close(self):
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction; BEGIN IMMEDIATE so that read-then-write
        sequences (next version number) cannot interleave across processes.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                raise StoreError(DATABASE_ERROR.format(path=self.path, error=error)) from None

    def query(self, sql, args=()):
        """All rows of one read."""
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as error:
                raise StoreError(DATABASE_ERROR.format(path=self.path, error=error)) from None

    def _migrate(self):
        with self.transaction() as db:
            found = db.execute("PRAGMA user_version").fetchone()[0]
            if found > len(MIGRATIONS):
                raise StoreError(NEWER_SCHEMA.format(path=self.path, found=found,
                                                     known=len(MIGRATIONS)))
            for statements in MIGRATIONS[found:]:
                for statement in statements:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
