"""Start-up recovery of the package store: remove only provable garbage.

A crash can leave exactly two kinds of debris (registry/storage.py orders its
writes so): files under staging/, and a blob that no row names but whose
digest is in the pending journal (a crash between the blob's rename and its
row, or between a row's delete and its blob's unlink). Those are removed.

Anything else is not a crash's doing: a blob no row names and no journal
entry explains, a row whose blob is missing or has the wrong size, an index
that vanished, a blob directory that vanished. Recovery never deletes those.
A handful of stray blobs and broken rows are set aside in
quarantine/<timestamp>/ (rows as JSON) and the start goes on; more than that,
or a whole index or blob directory gone, stops the start with StartRefused
before anything is touched. ``force`` (``aar serve --recover``) is the
operator saying "set it all aside and start": even then nothing is deleted.
"""

import json
import logging
import os
import sqlite3
import time

import cas
from registry.errors import StartRefused
from registry.packagesdb import COLUMNS, package_of_row
from registry.served import has_served

__all__ = ["HANDFUL", "check_files", "journal_unused", "recover", "Quarantine"]

log = logging.getLogger("aar.storage")

# Strays and broken rows set aside without asking; more stops the start.
HANDFUL = 5

INDEX_LOST = ("{db} is {state} but {blobs} holds {n} package file(s): the package "
              "index was lost. Restore packages.db from a backup and start again, or "
              "run `aar serve --recover` to set the files aside under {q} and start "
              "with an empty index (publishers then push their packages again)")
INDEX_LOST_SERVED = ("{db} is {state} on a data directory that has served: restore "
                     "packages.db from a backup and start again, or run `aar serve "
                     "--recover` to start with an empty index")
INDEX_DAMAGED = ("{db} is damaged ({error}): restore packages.db from a backup and "
                 "start again, or run `aar serve --recover` to set it aside under {q} "
                 "and start with an empty index")
INDEX_UNREADABLE = "cannot read {db}: {error}"
BLOBS_LOST = ("{blobs} is missing but packages.db lists {n} package(s): restore the "
              "blob directory (or mount its filesystem) and start again, or run "
              "`aar serve --recover` to set the rows aside under {q} and start "
              "without them")
TOO_MANY = ("recovery found {strays} blob(s) that no package names and {broken} "
            "package(s) whose blob is missing or the wrong size, more than the "
            "{handful} it sets aside on its own; nothing was changed. Were "
            "packages.db and blobs/ restored from different backups? Fix that and "
            "start again, or run `aar serve --recover` to set them aside under {q}")


class Quarantine:
    """quarantine/<UTC timestamp>/ of one start, made on first use."""

    def __init__(self, datadir):
        self.datadir = datadir
        self._dir = None

    @property
    def path(self):
        if self._dir is None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            base = self.datadir.quarantine_dir / stamp
            cas.make_private_dirs(self.datadir.root, self.datadir.quarantine_dir)
            for n in range(1000):
                candidate = base if n == 0 else base.with_name(f"{stamp}-{n}")
                try:
                    candidate.mkdir(mode=0o700)
                except FileExistsError:
                    continue
                self._dir = candidate
                break
            else:
                raise StartRefused(f"cannot make a directory under {base.parent}")
            cas.fsync_dir(self.datadir.quarantine_dir)
        return self._dir

    def move(self, source, *name):
        """Move ``source`` to <quarantine>/<name...> (same filesystem: a rename)."""
        target = self.path.joinpath(*name)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(source, target)
        cas.fsync_dir(target.parent)
        return target

    def write_rows(self, packages):
        """Keep set-aside rows as rows.json (the API's package bodies)."""
        target = self.path / "rows.json"
        with open(target, "w", encoding="utf-8") as f:
            json.dump(packages, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        cas.fsync_dir(self.path)
        return target


def _db_state(path):
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    return "empty (0 bytes)" if size == 0 else None


def _count_blob_files(datadir) -> int:
    count = 0
    for _dirpath, _dirs, files in os.walk(datadir.blobs_dir):
        count += len(files)
    return count


def _count_rows(path) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                                 " AND name = 'packages'").fetchone()
        return conn.execute("SELECT COUNT(*) FROM packages").fetchone()[0] if has_table else 0
    finally:
        conn.close()


def _set_aside_db(datadir, quarantine):
    for suffix in ("", "-wal", "-shm"):
        path = datadir.packages_db.with_name(datadir.packages_db.name + suffix)
        if path.exists():
            target = quarantine.move(path, path.name)
            log.warning("recovery: set %s aside as %s", path, target)


def journal_unused(conn, digests) -> list:
    """In a deleting transaction: the digests no row uses any more, journaled
    as pending, so that a crash before their unlink leaves provable garbage."""
    unused = [d for d in digests if conn.execute(
        "SELECT 1 FROM packages WHERE sha256 = ? LIMIT 1", (d,)).fetchone() is None]
    conn.executemany("INSERT OR IGNORE INTO pending VALUES (?)", [(d,) for d in unused])
    return unused


def check_files(datadir, quarantine, force=False):
    """Before the store creates or opens anything: is the index or the blob
    directory gone? Raises StartRefused; with ``force`` sets the lost
    index's files aside instead (the blobs follow in ``recover``)."""
    db, q = datadir.packages_db, datadir.quarantine_dir / "<timestamp>"
    state = _db_state(db)
    if state is not None:
        found = _count_blob_files(datadir)
        if not found and not has_served(datadir):
            return                  # a fresh data directory
        if not force:
            if found:
                raise StartRefused(INDEX_LOST.format(db=db, state=state, n=found,
                                                     blobs=datadir.blobs_dir, q=q))
            raise StartRefused(INDEX_LOST_SERVED.format(db=db, state=state))
        _set_aside_db(datadir, quarantine)
        return
    try:
        rows = _count_rows(db)
    except sqlite3.OperationalError as exc:     # locked, unreadable: not damage
        raise StartRefused(INDEX_UNREADABLE.format(db=db, error=exc)) from None
    except sqlite3.DatabaseError as exc:        # not a database, malformed
        if not force:
            raise StartRefused(INDEX_DAMAGED.format(db=db, error=exc, q=q)) from None
        _set_aside_db(datadir, quarantine)
        return
    if rows and not datadir.blobs_dir.is_dir() and not force:
        raise StartRefused(BLOBS_LOST.format(blobs=datadir.blobs_dir, n=rows, q=q))


def recover(db, blobs, datadir, quarantine, force=False) -> dict:
    """Repair what a crash left; set aside (up to HANDFUL, or all with
    ``force``) what it cannot explain. The caller holds the write lock and
    no upload is in flight. Returns counts of what was done."""
    counts = {"staging": 0, "blobs": 0, "set_aside_blobs": 0, "set_aside_rows": 0}
    on_disk = blobs.scan()
    conn = db.conn()
    rows = conn.execute(f"SELECT {COLUMNS} FROM packages").fetchall()
    pending = {r[0] for r in conn.execute("SELECT sha256 FROM pending")}
    named = {row[4] for row in rows}
    leftovers = sorted(d for d in on_disk.keys() - named if d in pending)
    strays = sorted(d for d in on_disk.keys() - named if d not in pending)
    broken = [row for row in rows if on_disk.get(row[4]) != row[3]]
    if len(strays) + len(broken) > HANDFUL and not force:
        raise StartRefused(TOO_MANY.format(strays=len(strays), broken=len(broken),
                                           handful=HANDFUL,
                                           q=datadir.quarantine_dir / "<timestamp>"))

    # Only now that the start will go on: staging files are ours by definition.
    for name in blobs.clear_staging():
        counts["staging"] += 1
        log.warning("recovery: removed interrupted upload %s", name)
    for sha256 in leftovers:
        blobs.remove(sha256)
        counts["blobs"] += 1
        log.warning("recovery: removed blob %s: an interrupted upload or delete", sha256)

    for sha256 in strays:
        target = quarantine.move(blobs.path(sha256), "blobs", sha256)
        counts["set_aside_blobs"] += 1
        log.error("recovery: set blob %s aside as %s: no package names it", sha256, target)
    if broken:
        # The rows are written down before they leave the index.
        where = quarantine.write_rows([package_of_row(row) for row in broken])
        wrong_size = sorted({row[4] for row in broken if row[4] in on_disk})
        with db.transaction() as tx:
            for row in broken:
                tx.execute("DELETE FROM packages WHERE name = ? AND version = ?"
                           " AND architecture = ?", row[:3])
                log.error("recovery: set %s %s %s aside in %s: its blob %s is missing "
                          "or not %d bytes", row[0], row[1], row[2], where, row[4], row[3])
        for sha256 in wrong_size:
            if conn.execute("SELECT 1 FROM packages WHERE sha256 = ? LIMIT 1",
                          (sha256,)).fetchone() is None:
                quarantine.move(blobs.path(sha256), "blobs", sha256)
        counts["set_aside_rows"] = len(broken)
    if pending:
        with db.transaction(journal=True) as tx:
            tx.execute("DELETE FROM pending")
    return counts
