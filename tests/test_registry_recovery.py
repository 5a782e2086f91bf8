"""registry/recovery.py: start-up recovery removes only its own garbage.

Real data directories, real sqlite, real files. Every refusal is checked to
leave every byte of the data directory as it was.
"""
import hashlib
import io
import json
import os
import sqlite3

import pytest

from registry import recovery
from registry.errors import StartRefused
from registry.paths import DataDir
from registry.served import has_served, record_serving
from registry.storage import PackageStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(store, app, version, data):
    return store.put(app, version, "amd64", io.BytesIO(data), len(data), sha(data),
                     {"name": app}, "ab" * 32)


def snapshot(root):
    """Every file under root (but sqlite's shared-memory index) and its bytes."""
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.endswith("-shm"):
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    found[os.path.relpath(path, root)] = f.read()
    return found


def listed(store):
    return sorted((p["name"], p["version"]) for a in store.list() for p in a["versions"])


@pytest.fixture
def datadir(tmp_path):
    return DataDir(tmp_path / "data")


@pytest.fixture
def served(datadir):
    """A data directory that has served three packages, closed."""
    with PackageStore(datadir) as store:
        for i in range(3):
            put(store, "game", i, b"package %d" % i)
    record_serving(datadir, "f" * 64)
    return datadir


def refused(datadir, match):
    before = snapshot(datadir.root)
    with pytest.raises(StartRefused, match=match) as info:
        PackageStore(datadir)
    assert snapshot(datadir.root) == before
    assert "\n" not in info.value.message
    return info.value.message


# -- a fresh or empty registry starts ------------------------------------------------

def test_a_fresh_data_directory_starts(datadir):
    assert not has_served(datadir)
    with PackageStore(datadir) as store:
        assert store.list() == []


def test_an_empty_registry_that_has_served_starts_again(datadir):
    with PackageStore(datadir) as store:
        put(store, "game", 0, b"x")
        store.delete_application("game")
    record_serving(datadir, "f" * 64)
    with PackageStore(datadir) as store:
        assert store.list() == []
    assert not datadir.quarantine_dir.exists()


# -- the index vanished ------------------------------------------------------------

@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_lost_index_with_blobs_refuses_and_touches_nothing(served, how):
    if how == "deleted":
        served.packages_db.unlink()
    else:
        served.packages_db.write_bytes(b"")
    message = refused(served, "index was lost")
    assert str(served.packages_db) in message and "3 package file(s)" in message
    assert "--recover" in message


def test_a_lost_index_without_blobs_on_a_served_directory_refuses(datadir):
    with PackageStore(datadir):
        pass
    record_serving(datadir, "f" * 64)
    datadir.packages_db.unlink()
    refused(datadir, "has served")


def test_a_lost_index_refuses_even_before_state_json_existed(served):
    served.state_file.unlink()      # a data directory from before state.json
    served.packages_db.unlink()
    refused(served, "index was lost")


def test_a_garbage_index_refuses(served):
    served.packages_db.write_bytes(b"not sqlite at all" * 100)
    refused(served, "is damaged")


def test_force_sets_a_lost_index_and_its_blobs_aside(served):
    blobs = {p.name: p.read_bytes() for p in served.blobs_dir.glob("*/*")}
    served.packages_db.write_bytes(b"")
    with PackageStore(served, recover=True) as store:
        assert store.list() == []
        put(store, "fresh", 0, b"new")
    [quarantine] = served.quarantine_dir.iterdir()
    assert (quarantine / "packages.db").read_bytes() == b""
    assert {p.name: p.read_bytes() for p in (quarantine / "blobs").iterdir()} == blobs


# -- the blob directory vanished ---------------------------------------------------------

def test_a_lost_blob_directory_refuses_and_its_return_restores_everything(served, tmp_path):
    moved = tmp_path / "blobs-elsewhere"
    os.rename(served.root / "blobs", moved)
    message = refused(served, "lists 3 package")
    assert "blob directory" in message
    assert not (served.root / "blobs").exists()     # not recreated either
    os.rename(moved, served.root / "blobs")
    with PackageStore(served) as store:
        assert listed(store) == [("game", 0), ("game", 1), ("game", 2)]


def test_force_sets_the_rows_of_a_lost_blob_directory_aside(served, tmp_path):
    os.rename(served.root / "blobs", tmp_path / "gone")
    with PackageStore(served, recover=True) as store:
        assert store.list() == []
    [quarantine] = served.quarantine_dir.iterdir()
    rows = json.loads((quarantine / "rows.json").read_text())
    assert sorted((r["name"], r["version"]) for r in rows) == [
        ("game", 0), ("game", 1), ("game", 2)]


# -- orphans and broken rows ------------------------------------------------------------

def _stray(datadir, data):
    path = datadir.blob_path(sha(data))
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_handful_of_strays_are_set_aside_not_deleted(served):
    strays = [_stray(served, b"stray %d" % i) for i in range(recovery.HANDFUL)]
    with PackageStore(served) as store:
        assert listed(store) == [("game", 0), ("game", 1), ("game", 2)]
    [quarantine] = served.quarantine_dir.iterdir()
    for path in strays:
        assert not path.exists()
        assert (quarantine / "blobs" / path.name).exists()


def test_more_than_a_handful_of_strays_refuses(served):
    for i in range(recovery.HANDFUL + 1):
        _stray(served, b"stray %d" % i)
    message = refused(served, "more than the")
    assert f"{recovery.HANDFUL + 1} blob(s)" in message


def test_more_than_a_handful_of_broken_rows_refuses(datadir):
    with PackageStore(datadir) as store:
        for i in range(recovery.HANDFUL + 1):
            put(store, "game", i, b"package %d" % i)
    for path in datadir.blobs_dir.glob("*/*"):
        path.write_bytes(b"x")
    message = refused(datadir, "more than the")
    assert f"{recovery.HANDFUL + 1} package(s)" in message


def test_a_staging_file_is_kept_when_the_start_is_refused(served):
    (served.staging_dir / "upload-x").write_bytes(b"half")
    served.packages_db.unlink()
    refused(served, "index was lost")
    assert (served.staging_dir / "upload-x").exists()


# -- what a crash leaves is removed ---------------------------------------------------------

def _journal(datadir, digest):
    conn = sqlite3.connect(datadir.packages_db)
    with conn:
        conn.execute("INSERT INTO pending VALUES (?)", (digest,))
    conn.close()


def test_a_blob_committed_without_its_row_is_removed(served):
    """What a crash between step 2's rename and its row leaves: the digest in
    the pending journal, the blob in place, no row."""
    path = _stray(served, b"interrupted upload")
    _journal(served, path.name)
    with PackageStore(served) as store:
        assert listed(store) == [("game", 0), ("game", 1), ("game", 2)]
        assert store.recover()["blobs"] == 0     # the journal was cleared
    assert not path.exists()
    assert not served.quarantine_dir.exists()


def test_a_blob_whose_row_was_deleted_is_removed(served):
    """What a crash between a delete's commit and its unlink leaves."""
    conn = sqlite3.connect(served.packages_db)
    with conn:
        conn.execute("DELETE FROM packages WHERE version = 1")
        conn.execute("INSERT INTO pending VALUES (?)", (sha(b"package 1"),))
    conn.close()
    with PackageStore(served) as store:
        assert listed(store) == [("game", 0), ("game", 2)]
    assert not served.blob_path(sha(b"package 1")).exists()
    assert not served.quarantine_dir.exists()


def test_deletes_and_uploads_leave_the_journal_empty(served):
    with PackageStore(served) as store:
        store.delete_package("game", 0, "amd64")
        store.delete_application("game")
        put(store, "other", 0, b"other")
    conn = sqlite3.connect(served.packages_db)
    assert conn.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)
    conn.close()


def test_many_journaled_leftovers_are_not_strays(served):
    # A crash proves at most one leftover per upload in flight, but the rule
    # is the proof, not the count: journaled blobs never count as strays.
    for i in range(recovery.HANDFUL + 3):
        _journal(served, _stray(served, b"left %d" % i).name)
    with PackageStore(served) as store:
        assert len(listed(store)) == 3
    assert not served.quarantine_dir.exists()
