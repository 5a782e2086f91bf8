"""PackageStore: package metadata in sqlite3 over content-addressed blobs.

A package's bytes live once under blobs/sha256/ (files: registry/blobs.py,
layout: registry/paths.py); its metadata is one row of packages.db
(registry/packagesdb.py). The order of operations is what makes a crash
harmless at any instant:

  1. stream the body into staging/ (no lock held, no transaction open),
     hashing and counting as it goes; check size and sha256; fsync;
  2. under the write lock: rename into blobs/ and fsync the directory,
     then insert the row in one short transaction.

A crash in 1 leaves a staging file; a crash in 2 leaves a blob no row names,
whose digest step 2 first journals in the pending table. Deleting goes the
other way: the row goes and the digest is journaled in one transaction, then
the blob is unlinked. ``recover()`` (registry/recovery.py), run at every open,
removes those leftovers and nothing it cannot prove is one: so nothing of an
interrupted upload is ever listed, a row is never committed before its blob
is durable, and a lost index or blob directory stops the start instead of
being "repaired" into an empty registry.

Readers use their own per-thread sqlite connection in WAL mode, so they are
never blocked by an upload (it streams outside any transaction) nor by the
short write transaction. Every write transaction bumps a persisted generation
counter; the listing cache (and the server's ETag) is keyed on it.
"""

import collections
import json
import logging
import sqlite3
import threading
import time

from cas import unlink_quiet
from registry import recovery
from registry.blobs import CHUNK_SIZE, BlobFiles, WriteLock
from registry.errors import ApiError, full_is_507, is_full
from registry.incoming import pump
from registry.packagerules import check_upload, same_or_conflict
from registry.packagesdb import COLUMNS, SELECT_GENERATION, PackagesDB, package_of_row
from registry.paths import DataDir

__all__ = ["PackageStore", "Incoming"]

log = logging.getLogger("aar.storage")

_LIST_CACHE_SIZE = 8

class PackageStore:
    """Packages of one data directory. Thread-safe; one per process and directory."""

    def __init__(self, datadir, recover=False, *, read_only=False, attach=False):
        """Open (creating on a fresh directory) and recover; ``recover=True``
        sets aside whatever recovery would otherwise refuse to start with.
        Raises StartRefused (nothing changed) or ApiError (directory in use).
        read_only: only read, beside the server that owns the directory
        (`aar application list`): no lock, no schema, no recovery, no writes.
        attach: a worker process of `aar serve --processes N`, whose parent
        opened the directory (checked, recovered, locked: keep_lock()) just
        before forking it: reads and writes, but none of that again (recovery
        would remove a sibling's uploads in flight)."""
        self.datadir = datadir if isinstance(datadir, DataDir) else DataDir(datadir)
        self.read_only = read_only
        if read_only:
            self._db = PackagesDB(self.datadir.packages_db)
            self._cache, self._cache_lock = collections.OrderedDict(), threading.Lock()
            self._blobs = None
            return
        # Before ensure(): it would recreate a vanished blobs/ directory.
        # One quarantine directory per start, made only if something goes there.
        self._quarantine = recovery.Quarantine(self.datadir)
        if not attach:
            recovery.check_files(self.datadir, self._quarantine, force=recover)
            self.datadir.ensure()
        self._db = PackagesDB(self.datadir.packages_db)
        # Serialises the commit step (rename + row) against deletes, so a
        # blob is never unlinked between "it exists" and "a row names it",
        # in this process and in its sibling worker processes.
        self._write_lock = WriteLock(self.datadir.blobs_dir)
        self._cache = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._blobs = BlobFiles(self.datadir)
        if attach:
            return
        try:
            self._blobs.lock()
            with self._write_lock:
                self._db.create_schema()
            self.recover(force=recover)
        except BaseException:
            self.close()
            raise

    # -- lifetime ---------------------------------------------------------

    def close(self):
        """Close every thread's connection and release the data directory."""
        self._db.close()
        if self._blobs is not None:
            self._blobs.unlock()
            self._write_lock.close()

    def keep_lock(self) -> int:
        """The descriptor that claims the data directory, kept open past
        close(): `aar serve --processes N` closes the store before forking its
        workers, which inherit the claim (flock belongs to the open file, so
        it holds while any of them lives)."""
        return self._blobs.hand_over_lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading ----------------------------------------------------------

    def generation(self) -> int:
        """A number that changes with every committed write, never repeating."""
        return self._db.conn().execute(SELECT_GENERATION).fetchone()[0]

    def totals(self) -> tuple:
        """(packages, bytes) stored, bytes counted per package (for the metrics)."""
        count, size = self._db.conn().execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM packages").fetchone()
        return count, size

    def get(self, app, version, arch) -> dict | None:
        """One package's body, or None."""
        row = self._db.conn().execute(
            f"SELECT {COLUMNS} FROM packages"
            " WHERE name = ? AND version = ? AND architecture = ?",
            (app, version, arch)).fetchone()
        return None if row is None else package_of_row(row)

    def application(self, app) -> dict | None:
        """``{"name", "versions": [package, ...]}`` sorted by (version, arch), or None."""
        rows = self._db.conn().execute(
            f"SELECT {COLUMNS} FROM packages WHERE name = ?"
            " ORDER BY version, architecture", (app,)).fetchall()
        if not rows:
            return None
        return {"name": app, "versions": [package_of_row(row) for row in rows]}

    def blob_path(self, sha256):
        """The path of the blob with this digest (it may have been deleted since)."""
        try:
            return self.datadir.blob_path(sha256)
        except ValueError as exc:
            raise ApiError.of("bad_request", str(exc)) from None

    def redirect_url(self, pkg):
        """Local bytes are served by the registry itself: never a redirect."""
        return None

    def open_blob(self, pkg, start, end):
        """The package's bytes as an open file positioned at ``start``."""
        path = self.blob_path(pkg["sha256"])
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            log.error("blob of %s/%s/%s missing at %s", pkg["name"], pkg["version"],
                      pkg["architecture"], path)
            raise ApiError.of("internal", "package data missing on the server") from None
        f.seek(start)
        return f

    def list(self, architecture=None, tags=()) -> list:
        """Applications sorted by name, each with its versions (see the API).

        ``architecture`` keeps that architecture's packages; ``tags`` keeps
        packages carrying at least one of them; applications left with no
        package are omitted. The result is shared with later callers through
        the cache: treat it as read-only.
        """
        if isinstance(tags, str):
            tags = tags.split(",")
        wanted = tuple(sorted({t for t in tags if t}))
        key = (self.generation(), architecture, wanted)
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        generation, apps = self._query_list(architecture, frozenset(wanted))
        with self._cache_lock:
            # Older generations can never be asked for again: drop them now.
            for old in [k for k in self._cache if k[0] < generation]:
                del self._cache[old]
            self._cache[(generation, architecture, wanted)] = apps
            while len(self._cache) > _LIST_CACHE_SIZE:
                self._cache.popitem(last=False)
        return apps

    def _query_list(self, architecture, wanted):
        conn = self._db.conn()
        sql = f"SELECT {COLUMNS} FROM packages"
        args = ()
        if architecture is not None:
            sql += " WHERE architecture = ?"
            args = (architecture,)
        sql += " ORDER BY name, version, architecture"
        # One read transaction: the generation and the rows come from the same
        # snapshot, so a result is never cached under a generation it lacks.
        conn.execute("BEGIN")
        try:
            generation = conn.execute(SELECT_GENERATION).fetchone()[0]
            rows = conn.execute(sql, args).fetchall()
        finally:
            conn.execute("COMMIT")
        apps = []
        current = None
        for row in rows:
            # Tags first: a filtered-out row never pays for its manifest.
            tags = json.loads(row[7])
            if wanted and wanted.isdisjoint(tags):
                continue
            if current is None or current["name"] != row[0]:
                current = {"name": row[0], "versions": []}
                apps.append(current)
            current["versions"].append({
                "name": row[0], "version": row[1], "architecture": row[2],
                "size": row[3], "sha256": row[4], "created_at": row[5],
                "publisher": row[6], "tags": tags, "manifest": json.loads(row[8])})
        return generation, apps

    # -- writing ----------------------------------------------------------

    def put(self, app, version, arch, stream, length, sha256, manifest=None,
            publisher="") -> tuple:
        """Store a package read from ``stream``; return ``(created, package)``.

        Reads exactly ``length`` bytes with ``stream.read(n)``, never more.
        When the answer is known up front (the same package is already
        published: a no-op; different bytes: conflict) it returns or raises
        before reading anything; the caller then drains or closes the body.
        Raises ApiError: bad_request, conflict, size_mismatch,
        digest_mismatch, insufficient_storage. Errors raised by the stream
        itself (a client's socket) propagate unchanged. Nothing of a failed
        upload remains.
        """
        return pump(self.receive(app, version, arch, length, sha256, manifest, publisher),
                    stream, length)

    def receive(self, app, version, arch, length, sha256, manifest=None,
                publisher=""):
        """put() for a caller that pushes the body: ``(created, package)`` when
        the answer needs no body, else an Incoming (registry/incoming.py). Its
        calls may block (disk): the server makes them in its worker pool."""
        self._check_writable()
        version, sha256, tags, manifest = check_upload(
            app, version, arch, length, sha256, manifest)
        existing = self.get(app, version, arch)
        if existing is not None:
            return False, same_or_conflict(existing, sha256, length)
        return Incoming(self, (app, version, arch, length, sha256, tags, manifest,
                               publisher))

    def _commit(self, staged, app, version, arch, length, sha256, tags, manifest,
                publisher):
        """Step 2 of the module's docstring, for a checked staging file."""
        try:
            with self._write_lock:
                # Another thread may have committed this package while we streamed.
                existing = self.get(app, version, arch)
                if existing is not None:
                    return False, same_or_conflict(existing, sha256, length)
                with self._db.transaction(journal=True) as conn:
                    conn.execute("INSERT OR IGNORE INTO pending VALUES (?)", (sha256,))
                self._blobs.commit(staged, sha256)
                staged = None
                created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                row = (app, version, arch, length, sha256, created_at, publisher,
                       json.dumps(tags), json.dumps(manifest))
                try:
                    with self._db.transaction() as conn:
                        conn.execute(f"INSERT INTO packages ({COLUMNS})"
                                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                        conn.execute("DELETE FROM pending WHERE sha256 = ?", (sha256,))
                except BaseException:
                    self._drop_blob_if_unused(sha256)
                    raise
        finally:
            if staged is not None:
                unlink_quiet(staged)
        # Debug: the handler logs the upload once, with who sent it.
        log.debug("stored %s %s %s: %d bytes, sha256 %s, publisher %s",
                 app, version, arch, length, sha256, publisher or "-")
        return True, package_of_row(row)

    def _check_writable(self):
        if self.read_only:
            raise ApiError.of("internal", "package store opened read-only")

    def _drop_blob_if_unused(self, sha256):
        # Caller holds _write_lock, so no put can start using the blob meanwhile.
        used = self._db.conn().execute("SELECT 1 FROM packages WHERE sha256 = ? LIMIT 1",
                                       (sha256,)).fetchone()
        if used is None and self._blobs.remove(sha256):
            log.info("removed blob %s: no package uses it", sha256)

    def _remove_unused(self, digests):
        """After the deleting commit: unlink the blobs, then their journal
        entries. The delete is done by then; a full disk only leaves the
        entries for the next start's recovery."""
        for sha256 in digests:
            if self._blobs.remove(sha256):
                log.info("removed blob %s: no package uses it", sha256)
        if digests:
            try:
                with self._db.transaction(journal=True) as conn:
                    conn.executemany("DELETE FROM pending WHERE sha256 = ?",
                                     [(d,) for d in digests])
            except sqlite3.Error as exc:
                if not is_full(exc):
                    raise
                log.warning("no space left to clear the pending journal: %s", exc)

    def delete_package(self, app, version, arch) -> bool:
        """Delete one package; False when there was none.
        Raises ApiError insufficient_storage when the disk is full."""
        self._check_writable()
        with self._write_lock, full_is_507(log, f"deleting {app} {version} {arch}"):
            with self._db.transaction() as conn:
                row = conn.execute(
                    "SELECT sha256 FROM packages"
                    " WHERE name = ? AND version = ? AND architecture = ?",
                    (app, version, arch)).fetchone()
                if row is None:
                    return False
                conn.execute("DELETE FROM packages"
                             " WHERE name = ? AND version = ? AND architecture = ?",
                             (app, version, arch))
                unused = recovery.journal_unused(conn, [row[0]])
            log.debug("deleted %s %s %s", app, version, arch)
            self._remove_unused(unused)
        return True

    def delete_application(self, app) -> int:
        """Delete every package of ``app``; return how many there were.
        Raises ApiError insufficient_storage when the disk is full."""
        self._check_writable()
        with self._write_lock, full_is_507(log, f"deleting application {app}"):
            with self._db.transaction() as conn:
                digests = [r[0] for r in conn.execute(
                    "SELECT DISTINCT sha256 FROM packages WHERE name = ?", (app,))]
                count = conn.execute("DELETE FROM packages WHERE name = ?",
                                     (app,)).rowcount
                unused = recovery.journal_unused(conn, digests)
            if count:
                log.debug("deleted application %s: %d package(s)", app, count)
            self._remove_unused(unused)
        return count

    # -- recovery ---------------------------------------------------------

    def recover(self, force=False) -> dict:
        """Remove a crash's leftovers, set aside what no crash explains (see
        registry/recovery.py); return counts of what was done. Raises
        StartRefused, changing nothing, when that is more than a handful and
        not ``force``. Must not run while uploads are in flight (it would
        remove their staging files)."""
        self._check_writable()
        with self._write_lock:
            return recovery.recover(self._db, self._blobs, self.datadir,
                                    self._quarantine, force=force)


class Incoming:
    """A package whose body is pushed in chunks (registry/incoming.py) into a
    Staging file, then committed. A full disk is insufficient_storage; any
    failure leaves nothing behind."""

    part = CHUNK_SIZE
    lanes = 2                             # one writes while the other syncs

    def __init__(self, store, row):
        self.row = row                    # _commit's arguments after the file
        app, version, arch = row[:3]
        self.what = f"storing {app} {version} {arch}"
        self.received = 0
        self._store = store
        self._staging = store._blobs.staging(*row[3:5])

    def digest(self, chunk):
        self._staging.update(chunk)

    def write(self, number, offset, chunk):
        with full_is_507(log, self.what):
            self._staging.write(offset, chunk)

    def finish(self) -> tuple:
        with full_is_507(log, self.what):
            return self._store._commit(self._staging.finish(), *self.row)

    def abort(self):
        self._staging.abort()
