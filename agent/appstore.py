"""The node's applications: versions in sqlite3, package bytes in blobs/.

An application is a name with versions 0, 1, 2, … (never reused, even after
a version is deleted); each version has one architecture and one package,
stored content-addressed under blobs/sha256/ (layout in paths.py). Local
applications come from `create()`; pulled ones from `import_package()`,
called by the sync engine. Pulled applications are immutable: publishing,
revoking or deleting them needs force=True, and they never get local versions.

Adding a version is crash-safe in three steps: the bytes are written under
staging/ and fsynced, renamed into blobs/, and only then is the version
inserted in one sqlite transaction. A killed process therefore leaves at most
an unreferenced file, never a listed version without its bytes; recover()
(run on open) deletes such files. Writers hold apps.lock shared for the whole
sequence and cleanup takes it exclusively (blobs.py), so cleanup never
removes the file of a write in progress, in this process or another.

The package checks themselves (paths, links, manifest) live in package.py,
the making of the staged file in staging.py, and apps.db itself (schema,
migrations, transactions) in appsdb.py.
"""
import datetime
import json

import names

from . import package, staging
from .appsdb import SELECT_VERSIONS, AppsDB, version_record
from .blobs import Blobs
from .errors import Conflict, Immutable, IntegrityError, NotFound, PackageError, StoreError
from .paths import DataDir, is_sha256

__all__ = [
    "AppStore", "ORIGINS",
    "APP_NOT_FOUND", "VERSION_NOT_FOUND", "IMMUTABLE", "PULLED_NO_CREATE",
    "LOCAL_NO_IMPORT", "VERSION_CONFLICT", "CHECKSUM_MISMATCH", "NAME_MISMATCH",
]

ORIGINS = ("local", "pulled")

APP_NOT_FOUND = "no application {name}"
VERSION_NOT_FOUND = "application {name} has no version {version}"
IMMUTABLE = ("application {name} was pulled from the registry and is immutable: "
             "use --force to {action} it anyway")
PULLED_NO_CREATE = ("application {name} was pulled from the registry: its new "
                    "versions come from the registry only")
LOCAL_NO_IMPORT = "application {name} exists locally: a pulled version cannot join it"
VERSION_CONFLICT = ("application {name} version {version} already exists with "
                    "other content (sha256 {sha256})")
CHECKSUM_MISMATCH = ("package of {name} version {version} does not match its "
                     "sha256: expected {expected}, got {actual}")
NAME_MISMATCH = "the package's manifest names {found}, expected {name}"
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check(check, value):
    try:
        return check(value)
    except ValueError as error:
        raise StoreError(str(error)) from None


class AppStore:
    """The application store of one data directory (see the module docstring)."""

    def __init__(self, data_dir):
        self.dirs = DataDir(data_dir).ensure()
        self._blobs = Blobs(self.dirs)
        self._db = AppsDB(self.dirs.apps_db)
        try:
            self.recover()
        except BaseException:
            self._db.close()
            raise

    def close(self):
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _application(self, db, name):
        return db.execute("SELECT * FROM applications WHERE name = ?", (name,)).fetchone()

    def _writable(self, name, version, force, action):
        """The version's record, if the caller may change it; raise otherwise."""
        record = self.get(name, version) if version is not None else None
        app = self.show(name)
        if app["immutable"] and not force:
            raise Immutable(IMMUTABLE.format(name=name, action=action))
        return record or app

    # Reading

    def get(self, name, version) -> dict:
        """One version's record; NotFound if there is none."""
        rows = self._db.query(SELECT_VERSIONS + " WHERE name = ? AND version = ?", (name, version))
        if not rows:
            self.show(name)  # NotFound for the application, if that is what is missing
            raise NotFound(VERSION_NOT_FOUND.format(name=name, version=version))
        return version_record(rows[0])

    def versions(self, name=None, published=None) -> list:
        """Version records sorted by (name, version); optionally filtered."""
        sql, args = SELECT_VERSIONS + " WHERE 1", []
        if name is not None:
            sql, args = sql + " AND name = ?", args + [name]
        if published is not None:
            sql, args = sql + " AND published = ?", args + [int(bool(published))]
        return [version_record(row) for row in self._db.query(sql + " ORDER BY name, version", args)]

    def list(self) -> list:
        """Every application with its versions, sorted by name."""
        by_name = {}
        for record in self.versions():
            by_name.setdefault(record["name"], []).append(record)
        return [self._app(app, by_name.get(app["name"], []))
                for app in self._db.query("SELECT * FROM applications ORDER BY name")]

    def index(self) -> list:
        """list() with only what a sync cycle compares: each application's
        name and origin, its versions' version, architecture and sha256."""
        apps = []
        for row in self._db.query("SELECT a.name, a.origin, v.version, v.architecture, v.sha256"
                               " FROM applications a LEFT JOIN versions v USING (name)"
                               " ORDER BY a.name, v.version"):
            if not apps or apps[-1]["name"] != row["name"]:
                apps.append({"name": row["name"], "origin": row["origin"], "versions": []})
            if row["version"] is not None:
                apps[-1]["versions"].append({"version": row["version"], "sha256": row["sha256"],
                                             "architecture": row["architecture"]})
        return apps

    def show(self, name) -> dict:
        """One application with its versions; NotFound if there is none."""
        apps = self._db.query("SELECT * FROM applications WHERE name = ?", (name,))
        if not apps:
            raise NotFound(APP_NOT_FOUND.format(name=name))
        return self._app(apps[0], self.versions(name))

    @staticmethod
    def _app(row, versions) -> dict:
        return {"name": row["name"], "origin": row["origin"],
                "immutable": row["origin"] == "pulled", "created_at": row["created_at"],
                "versions": versions}

    def blob_path(self, sha256):
        """The file holding the package with this sha256."""
        return self._blobs.path(sha256)

    # Adding

    def create(self, path, architecture=None, progress=None) -> dict:
        """Add a package (directory, .zip or .tar.bz2) as the next version of
        the application its manifest names; return the new version's record.
        progress(phase, done=None, total=None) hears every phase (staging.stage,
        package.inspect, then "importing").
        """
        arch = _check(names.check_arch, architecture or names.host_architecture())
        with self._blobs.writing():
            staged, sha256, size = staging.stage(path, self.dirs.staging_dir,
                                                 progress=progress)
            try:
                manifest = package.inspect(staged, progress)
                if progress is not None:
                    progress("importing")
                name = manifest["name"]
                existing = self._db.query("SELECT origin FROM applications WHERE name = ?",
                                       (name,))
                if existing and existing[0]["origin"] == "pulled":
                    raise Immutable(PULLED_NO_CREATE.format(name=name))
                self._blobs.commit(staged, sha256)
            except BaseException:
                self._blobs.discard(staged)
                raise
            with self._db.transaction() as db:
                app = self._application(db, name)
                if app is not None and app["origin"] == "pulled":
                    raise Immutable(PULLED_NO_CREATE.format(name=name))
                version = app["next_version"] if app is not None else 0
                self._insert(db, app, name, version, arch, sha256, size, manifest,
                             "local", published=False)
        return self.get(name, version)

    def import_package(self, name, version, architecture, src_path, sha256,
                       manifest=None, origin="pulled", verified=False, progress=None) -> dict:
        """Add a downloaded package as version `version` of `name`.

        The bytes are checked against sha256 while they are copied and the
        package is inspected like a local one. manifest (the registry's copy)
        is stored if given, else the package's own. Pulled versions are
        published (usable) at once. Importing the same bytes again is a no-op.

        verified=True: the caller wrote src_path, a staging_file(), and
        checked its sha256 on the way (a download does), so it is not read
        again for the digest. It has no effect on any other file.
        """
        name = _check(names.check_app_name, name)
        version = _check(names.check_version, version)
        architecture = _check(names.check_arch, architecture)
        if not is_sha256(sha256) or origin not in ORIGINS:
            raise StoreError(f"bad sha256 {sha256!r} or origin {origin!r}")
        with self._blobs.writing():
            if self._known(name, version, sha256, origin):
                return self.get(name, version)
            staged, actual, size = staging.stage(src_path, self.dirs.staging_dir,
                                                 archive_only=True,
                                                 known_sha256=sha256 if verified else None,
                                                 progress=progress)
            try:
                if actual != sha256:
                    raise IntegrityError(CHECKSUM_MISMATCH.format(
                        name=name, version=version, expected=sha256, actual=actual))
                found = package.inspect(staged, progress)
                if progress is not None:
                    progress("importing")
                if found["name"] != name:
                    raise PackageError(NAME_MISMATCH.format(found=repr(found["name"]),
                                                            name=repr(name)))
                self._blobs.commit(staged, sha256)
            except BaseException:
                self._blobs.discard(staged)
                raise
            with self._db.transaction() as db:
                app = self._application(db, name)
                if not self._known(name, version, sha256, origin):
                    self._insert(db, app, name, version, architecture, sha256, size,
                                 manifest if manifest is not None else found, origin,
                                 published=(origin == "pulled"))
        return self.get(name, version)

    def _known(self, name, version, sha256, origin) -> bool:
        """True if this exact version is stored; raise if it cannot be added."""
        rows = self._db.query(SELECT_VERSIONS + " WHERE name = ? AND version = ?", (name, version))
        apps = self._db.query("SELECT origin FROM applications WHERE name = ?", (name,))
        if apps and apps[0]["origin"] != origin:
            raise Conflict(LOCAL_NO_IMPORT.format(name=name) if origin == "pulled"
                           else PULLED_NO_CREATE.format(name=name))
        if rows and rows[0]["sha256"] != sha256:
            raise Conflict(VERSION_CONFLICT.format(name=name, version=version,
                                                   sha256=rows[0]["sha256"]))
        return bool(rows)

    def _insert(self, db, app, name, version, arch, sha256, size, manifest, origin,
                published):
        now = _now()
        if app is None:
            db.execute("INSERT INTO applications (name, origin, next_version, created_at)"
                       " VALUES (?, ?, ?, ?)", (name, origin, version + 1, now))
        else:
            db.execute("UPDATE applications SET next_version = max(next_version, ?)"
                       " WHERE name = ?", (version + 1, name))
        tags = manifest.get("tags") or []
        db.execute("INSERT INTO versions (name, version, architecture, sha256, size,"
                   " manifest, tags, published, created_at)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (name, version, arch, sha256, size, json.dumps(manifest),
                    json.dumps(tags), int(published), now))

    def staging_file(self):
        """A context manager: a new empty file under staging/ for a download
        (then given to import_package), removed on exit (Blobs.staging_file)."""
        return self._blobs.staging_file()

    # Changing

    def publish(self, name, version, force=False) -> dict:
        """Mark a version published (usable, and pushed in push mode)."""
        return self._set_published(name, version, True, force, "publish")

    def revoke(self, name, version, force=False) -> dict:
        """Unpublish a version."""
        return self._set_published(name, version, False, force, "revoke")

    def _set_published(self, name, version, value, force, action):
        self._writable(name, version, force, action)
        with self._db.transaction() as db:
            db.execute("UPDATE versions SET published = ? WHERE name = ? AND version = ?",
                       (int(value), name, version))
        return self.get(name, version)

    def delete_version(self, name, version, force=False) -> dict:
        """Delete one version (its number is never given out again)."""
        record = self._writable(name, version, force, "delete")
        with self._db.transaction() as db:
            db.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, version))
        self._collect()
        return record

    def delete(self, name, force=False) -> dict:
        """Delete an application and all its versions; return what was deleted."""
        app = self._writable(name, None, force, "delete")
        with self._db.transaction() as db:
            db.execute("DELETE FROM applications WHERE name = ?", (name,))
        self._collect()
        return app

    # Cleaning up

    def recover(self):
        """Delete leftovers of interrupted writes: staging files and blobs no
        version refers to. Skipped while another writer holds apps.lock.
        """
        self._collect(staging=True)

    def _collect(self, staging=False):
        self._blobs.collect(
            lambda: [row[0] for row in self._db.query("SELECT DISTINCT sha256 FROM versions")],
            staging=staging)
