"""agent.appstore: versions, immutability of pulled apps, crash safety."""
import fcntl
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile

import pytest

import names
from agent import appsdb, appstore
from agent.appstore import AppStore
from agent.errors import (Conflict, Immutable, IntegrityError, ManifestError, NotFound,
                          PackageError, StoreError)
from regserver import reaping
from test_agent_package import (MANIFEST, make_dir, make_tar, make_zip, tar_entry,
                                tar_file, zip_link)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def store(tmp_path):
    with AppStore(tmp_path / "data") as s:
        yield s


def files_under(root):
    """Every file below root, relative: what 'the store is unchanged' compares."""
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs
                  if not f.startswith("apps.db"))


def snapshot(store):
    return store.list(), files_under(store.dirs.root)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# -- create ------------------------------------------------------------------------------

def test_create_from_dir_zip_and_tar_gives_versions_0_1_2(store, tmp_path):
    made = [make_dir(tmp_path / "pkg"), make_zip(tmp_path / "game.zip"),
            make_tar(tmp_path / "game.tar.bz2")]
    records = [store.create(path) for path in made]
    assert [r["version"] for r in records] == [0, 1, 2]
    first = records[0]
    assert first["name"] == "game" and first["architecture"] == names.host_architecture()
    assert first["tags"] == ["arcade"] and first["manifest"]["name"] == "game"
    assert (first["published"], first["origin"], first["immutable"]) == (False, "local", False)
    assert first["created_at"].endswith("Z")
    for record, path in zip(records[1:], made[1:]):
        # Archives are stored byte for byte as given.
        assert record["sha256"] == sha(path) and record["size"] == path.stat().st_size
        assert sha(store.blob_path(record["sha256"])) == record["sha256"]
    assert [a["name"] for a in store.list()] == ["game"]
    assert [v["version"] for v in store.show("game")["versions"]] == [0, 1, 2]
    assert os.listdir(store.dirs.staging_dir) == []


def test_create_with_architecture(store, tmp_path):
    record = store.create(make_zip(tmp_path / "g.zip"), architecture="arm64")
    assert record["architecture"] == "arm64"
    with pytest.raises(StoreError):
        store.create(make_zip(tmp_path / "g.zip"), architecture="ARM 64")


def test_same_bytes_share_one_blob(store, tmp_path):
    path = make_zip(tmp_path / "g.zip")
    a, b = store.create(path), store.create(path)
    assert a["sha256"] == b["sha256"]
    assert len(files_under(store.dirs.blobs_dir)) == 1
    store.delete_version("game", 0)
    assert store.blob_path(a["sha256"]).exists()  # version 1 still uses it
    store.delete_version("game", 1)
    assert not store.blob_path(a["sha256"]).exists()


def test_two_applications(store, tmp_path):
    store.create(make_dir(tmp_path / "a", name="zeta"))
    store.create(make_dir(tmp_path / "b", name="alpha"))
    assert [a["name"] for a in store.list()] == ["alpha", "zeta"]
    assert store.show("zeta")["versions"][0]["version"] == 0


@pytest.mark.parametrize("build, error", [
    (lambda t: make_zip(t / "p.zip", [("manifest.yaml", MANIFEST), ("../evil", b"x")]),
     PackageError),
    (lambda t: make_tar(t / "p.tar.bz2", [tar_file("manifest.yaml", MANIFEST),
                                          tar_entry("l", tarfile.SYMTYPE, "/etc/passwd")]), PackageError),
    (lambda t: make_zip(t / "p.zip", [("manifest.yaml", MANIFEST), zip_link("l", "../..")]),
     PackageError),
    (lambda t: make_zip(t / "p.zip", [("app.apk", b"x")]), PackageError),
    (lambda t: make_zip(t / "p.zip", [("manifest.yaml", b"name: bad name\n")]), ManifestError),
    (lambda t: make_zip(t / "p.zip", [("manifest.yaml", b"name: a\n" + b"#" * 70000)]),
     ManifestError),
    (lambda t: (t / "p.txt").write_bytes(b"x") and t / "p.txt", PackageError),
])
def test_refusals_leave_the_store_unchanged(store, tmp_path, build, error):
    store.create(make_zip(tmp_path / "good.zip"))
    before = snapshot(store)
    with pytest.raises(error):
        store.create(build(tmp_path))
    assert snapshot(store) == before
    assert os.listdir(store.dirs.staging_dir) == []


def test_directory_with_link_out_is_refused(store, tmp_path):
    pkg = make_dir(tmp_path / "pkg")
    os.symlink("/etc", pkg / "etc")
    before = snapshot(store)
    with pytest.raises(PackageError):
        store.create(pkg)
    assert snapshot(store) == before


# -- reading and changing ----------------------------------------------------------------

def test_not_found(store, tmp_path):
    with pytest.raises(NotFound) as info:
        store.show("nope")
    assert str(info.value) == appstore.APP_NOT_FOUND.format(name="nope")
    store.create(make_zip(tmp_path / "g.zip"))
    with pytest.raises(NotFound) as info:
        store.get("game", 5)
    assert str(info.value) == appstore.VERSION_NOT_FOUND.format(name="game", version=5)
    for call in (lambda: store.publish("game", 5), lambda: store.revoke("nope", 0),
                 lambda: store.delete("nope"), lambda: store.delete_version("game", 9)):
        with pytest.raises(NotFound):
            call()


def test_publish_and_revoke(store, tmp_path):
    store.create(make_zip(tmp_path / "g.zip"))
    store.create(make_zip(tmp_path / "g.zip"))
    assert store.publish("game", 1)["published"] is True
    assert store.publish("game", 1)["published"] is True  # idempotent
    assert [v["version"] for v in store.versions(published=True)] == [1]
    assert [v["version"] for v in store.versions(published=False)] == [0]
    assert store.revoke("game", 1)["published"] is False
    assert store.versions(published=True) == []


def test_version_numbers_are_never_reused(store, tmp_path):
    path = make_zip(tmp_path / "g.zip")
    for _ in range(3):
        store.create(path)
    store.delete_version("game", 2)
    store.delete_version("game", 0)
    assert store.create(path)["version"] == 3
    assert [v["version"] for v in store.versions("game")] == [1, 3]


def test_delete(store, tmp_path):
    store.create(make_zip(tmp_path / "g.zip"))
    deleted = store.delete("game")
    assert deleted["name"] == "game" and len(deleted["versions"]) == 1
    assert store.list() == []
    assert files_under(store.dirs.blobs_dir) == []


# -- pulled applications -----------------------------------------------------------------

def _import(store, tmp_path, version=0, name="game", origin="pulled", data=None):
    path = tmp_path / f"download-{version}.zip"
    if data is None:
        make_zip(path, [("manifest.yaml", f"name: {name}\nversion: {version}\n".encode())])
    else:
        path.write_bytes(data)
    return store.import_package(name, version, "amd64", path, sha(path), origin=origin)


def test_import_package(store, tmp_path):
    record = _import(store, tmp_path, version=4)
    assert (record["version"], record["origin"], record["immutable"], record["published"]) == \
        (4, "pulled", True, True)
    assert record["manifest"] == {"name": "game", "version": 4, "tags": []}
    assert (tmp_path / "download-4.zip").exists()  # the source is copied, not moved
    # Importing the same version again is a no-op.
    assert _import(store, tmp_path, version=4) == record
    assert store.show("game")["immutable"] is True


def test_import_stores_the_given_manifest(store, tmp_path):
    path = make_zip(tmp_path / "d.zip")
    record = store.import_package("game", 0, "amd64", path, sha(path),
                                  manifest={"name": "game", "extra": "from the registry"})
    assert record["manifest"]["extra"] == "from the registry"


def test_pulled_applications_are_immutable(store, tmp_path):
    _import(store, tmp_path, version=0)
    _import(store, tmp_path, version=1)
    before = snapshot(store)
    for action, call in (("publish", lambda f: store.publish("game", 0, force=f)),
                         ("revoke", lambda f: store.revoke("game", 0, force=f)),
                         ("delete", lambda f: store.delete_version("game", 0, force=f)),
                         ("delete", lambda f: store.delete("game", force=f))):
        with pytest.raises(Immutable) as info:
            call(False)
        assert str(info.value) == appstore.IMMUTABLE.format(name="game", action=action)
    assert snapshot(store) == before
    with pytest.raises(Immutable) as info:
        store.create(make_zip(tmp_path / "local.zip"))
    assert str(info.value) == appstore.PULLED_NO_CREATE.format(name="game")
    assert snapshot(store) == before
    # With force, all of it works.
    assert store.revoke("game", 0, force=True)["published"] is False
    assert store.publish("game", 0, force=True)["published"] is True
    store.delete_version("game", 0, force=True)
    store.delete("game", force=True)
    assert store.list() == []


def test_import_refusals(store, tmp_path):
    store.create(make_dir(tmp_path / "local", name="mine"))
    _import(store, tmp_path, version=0)
    before = snapshot(store)
    with pytest.raises(Conflict) as info:
        _import(store, tmp_path, name="mine")
    assert str(info.value) == appstore.LOCAL_NO_IMPORT.format(name="mine")
    # Same version, other bytes.
    other = tmp_path / "other.zip"
    make_zip(other, [("manifest.yaml", b"name: game\n"), ("x", b"other")])
    with pytest.raises(Conflict):
        store.import_package("game", 0, "amd64", other, sha(other))
    # Bytes that do not match the announced sha256.
    with pytest.raises(IntegrityError) as info:
        store.import_package("game", 7, "amd64", other, "0" * 64)
    assert str(info.value) == appstore.CHECKSUM_MISMATCH.format(
        name="game", version=7, expected="0" * 64, actual=sha(other))
    # A package whose manifest names another application.
    wrong = make_zip(tmp_path / "wrong.zip", [("manifest.yaml", b"name: other\n")])
    with pytest.raises(PackageError) as info:
        store.import_package("game", 8, "amd64", wrong, sha(wrong))
    assert str(info.value) == appstore.NAME_MISMATCH.format(found="'other'", name="'game'")
    # An unsafe package, even with the right sha256.
    evil = make_zip(tmp_path / "evil.zip", [("manifest.yaml", b"name: game\n"), ("../x", b"")])
    with pytest.raises(PackageError):
        store.import_package("game", 9, "amd64", evil, sha(evil))
    for bad in (("bad name", 0, "amd64"), ("game", -1, "amd64"), ("game", 0, "AMD 64")):
        with pytest.raises(StoreError):
            store.import_package(*bad, other, sha(other))
    assert snapshot(store) == before
    assert os.listdir(store.dirs.staging_dir) == []


def test_import_grows_the_next_local_number(store, tmp_path):
    _import(store, tmp_path, version=5, origin="local")
    assert store.create(make_zip(tmp_path / "g.zip"))["version"] == 6


# -- schema and recovery -----------------------------------------------------------------

def test_schema_version_and_migrations(tmp_path, monkeypatch):
    AppStore(tmp_path / "d").close()
    db = sqlite3.connect(tmp_path / "d" / "apps.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(appsdb.MIGRATIONS)
    db.close()
    monkeypatch.setattr(appsdb, "MIGRATIONS", appsdb.MIGRATIONS + [
        ("ALTER TABLE versions ADD COLUMN pushed_to_registry INTEGER NOT NULL DEFAULT 0",)])
    AppStore(tmp_path / "d").close()
    db = sqlite3.connect(tmp_path / "d" / "apps.db")
    columns = [row[1] for row in db.execute("PRAGMA table_info(versions)")]
    assert "pushed_to_registry" in columns
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(appsdb.MIGRATIONS)
    db.close()


def test_newer_schema_is_refused(tmp_path):
    AppStore(tmp_path / "d").close()
    db = sqlite3.connect(tmp_path / "d" / "apps.db")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError) as info:
        AppStore(tmp_path / "d")
    assert "newer than this program knows" in str(info.value)


def test_files_are_private(store):
    assert oct(os.stat(store.dirs.apps_db).st_mode & 0o777) == "0o600"
    assert oct(os.stat(store.dirs.root).st_mode & 0o777) == "0o700"


def test_recover_removes_leftovers(tmp_path):
    data = tmp_path / "data"
    with AppStore(data) as s:
        kept = s.create(make_zip(tmp_path / "g.zip"))
        orphan = s.dirs.blob_path("ab" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    (data / "staging" / "x.part").write_bytes(b"half")
    with AppStore(data) as s:
        assert not orphan.exists() and os.listdir(s.dirs.staging_dir) == []
        assert s.blob_path(kept["sha256"]).exists()
        assert s.get("game", 0) == kept


def test_recover_waits_for_live_writers(tmp_path):
    # Another process is mid-import (it holds apps.lock shared): its staging
    # file must survive a store opened meanwhile.
    AppStore(tmp_path / "data").close()
    (tmp_path / "data" / "staging" / "busy.part").write_bytes(b"in flight")
    fd = os.open(tmp_path / "data" / "apps.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        AppStore(tmp_path / "data").close()
        assert os.listdir(tmp_path / "data" / "staging") == ["busy.part"]
    finally:
        os.close(fd)
    AppStore(tmp_path / "data").close()
    assert os.listdir(tmp_path / "data" / "staging") == []


# -- SIGKILL in the middle of an import --------------------------------------------------

# The child stops at one point of the import, says "ready" and waits to be
# killed: no sleeps or timing in the test, the kill lands exactly there.
CHILD = r"""
import sys
from agent import appstore, blobs, staging
point, data, src, sha256 = sys.argv[1:5]

def stop(*args, **kwargs):
    print("ready", flush=True)
    sys.stdin.read()

if point == "copy":
    def half_written(source, out, progress=None):
        out.write(b"BZh9" + bytes(1000))
        out.flush()
        stop()
    staging._copy = staging._pack = half_written
elif point == "commit":
    blobs.Blobs.commit = stop
elif point == "insert":
    appstore.AppStore._insert = stop
store = appstore.AppStore(data)
if src.endswith("/pkg"):
    store.create(src)
else:
    store.import_package("game", 0, "amd64", src, sha256)
"""


@pytest.mark.parametrize("point", ["copy", "commit", "insert"])
@pytest.mark.parametrize("source", ["import", "create"])
def test_sigkill_during_import_leaves_nothing_visible(tmp_path, point, source):
    data = tmp_path / "data"
    AppStore(data).close()
    if source == "import":
        src = make_zip(tmp_path / "dl.zip", [("manifest.yaml", b"name: game\n"),
                                             ("app.apk", os.urandom(4000))])
    else:
        src = make_dir(tmp_path / "pkg")
    child = subprocess.Popen([sys.executable, "-c", CHILD, point, str(data), str(src),
                              sha(src) if source == "import" else "-"],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    with reaping(child):
        assert child.stdout.readline() == b"ready\n"
        left = os.listdir(data / "staging") + files_under(data / "blobs")
        assert left, "the child should have written something by now"
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    # Nothing is visible, even before any cleanup ...
    db = sqlite3.connect(data / "apps.db")
    assert db.execute("SELECT count(*) FROM versions").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM applications").fetchone()[0] == 0
    db.close()
    # ... and opening the store clears the leftovers.
    with AppStore(data) as s:
        assert s.list() == []
        assert os.listdir(s.dirs.staging_dir) == []
        assert files_under(s.dirs.blobs_dir) == []
        # The store works afterwards: the same import now succeeds.
        if source == "import":
            assert s.import_package("game", 0, "amd64", src, sha(src))["version"] == 0
        else:
            assert s.create(src)["version"] == 0


# -- downloads through staging_file --------------------------------------------------------

def test_staging_file_is_used_in_place_and_cleaned_up(store, tmp_path):
    source = make_zip(tmp_path / "dl.zip")
    with store.staging_file() as staged:
        with open(staged, "wb") as out:
            out.write(source.read_bytes())
        # A store opened meanwhile (another command) leaves the download alone.
        AppStore(store.dirs.root).close()
        assert os.path.exists(staged)
        record = store.import_package("game", 0, "amd64", staged, sha(source))
        assert not os.path.exists(staged)  # renamed into blobs/, not copied
    assert sha(store.blob_path(record["sha256"])) == sha(source)
    assert os.listdir(store.dirs.staging_dir) == []


def test_staging_file_with_bad_bytes(store, tmp_path):
    with store.staging_file() as staged:
        with open(staged, "wb") as out:
            out.write(b"not the package")
        with pytest.raises(IntegrityError):
            store.import_package("game", 0, "amd64", staged, "0" * 64)
    assert os.listdir(store.dirs.staging_dir) == []
    assert store.list() == [] and files_under(store.dirs.blobs_dir) == []


def test_a_verified_download_is_not_read_again_for_its_digest(store, tmp_path, monkeypatch):
    from agent import staging
    source = make_zip(tmp_path / "dl.zip")
    read = []
    real = staging._digest
    monkeypatch.setattr(staging, "_digest", lambda file: read.append(file) or real(file))
    with store.staging_file() as staged:
        with open(staged, "wb") as out:
            out.write(source.read_bytes())
        record = store.import_package("game", 0, "amd64", staged, sha(source), verified=True)
    assert read == []                              # the download's hash is the check
    assert record["size"] == source.stat().st_size
    assert sha(store.blob_path(record["sha256"])) == sha(source)
    assert os.listdir(store.dirs.staging_dir) == []


def test_verified_means_nothing_for_a_file_outside_staging(store, tmp_path):
    # Only a staging_file() the caller filled and hashed may skip the check.
    other = make_zip(tmp_path / "other.zip")
    with pytest.raises(IntegrityError):
        store.import_package("game", 0, "amd64", other, "0" * 64, verified=True)
    assert store.list() == [] and files_under(store.dirs.blobs_dir) == []
    assert os.listdir(store.dirs.staging_dir) == []


def test_index_is_list_without_the_manifests(store, tmp_path):
    store.create(make_zip(tmp_path / "local.zip"))
    _import(store, tmp_path, version=0, name="chess")
    _import(store, tmp_path, version=3, name="chess")
    store.delete_version("game", 0)                    # an application with no version left
    assert store.index() == [
        {"name": app["name"], "origin": app["origin"],
         "versions": [{k: v[k] for k in ("version", "architecture", "sha256")}
                      for v in app["versions"]]}
        for app in store.list()]
    assert [len(app["versions"]) for app in store.index()] == [2, 0]


def test_staging_file_removed_on_error(store):
    with pytest.raises(RuntimeError):
        with store.staging_file() as staged:
            raise RuntimeError("download failed")
    assert not os.path.exists(staged)


def test_damaged_database(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "apps.db").write_bytes(b"garbage" * 200)
    with pytest.raises(StoreError) as info:
        AppStore(tmp_path / "d")
    assert str(info.value).startswith(appsdb.DATABASE_ERROR.format(
        path=tmp_path / "d" / "apps.db", error=""))
