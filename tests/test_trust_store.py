"""trust/store.py and trust/sqlmap.py: the trust store's rules, its file, and
its behaviour with many processes at once (the CLI writes while the server
reads)."""
import os
import pathlib
import re
import shelve
import shutil
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

from certs import make_cert
from trust.certs import load_certificate
from trust.errors import (AlreadyExists, Ambiguous, NotFound, Revoked, StoreError,
                          TrustError)
from trust.sqlmap import SqliteMapping
from trust.store import Record, TrustStore

ROOT = pathlib.Path(__file__).resolve().parent.parent
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
WRITERS = 20


@pytest.fixture
def store(tmp_path):
    with TrustStore(tmp_path / "data" / "trust.db") as opened:
        yield opened


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """WRITERS distinct certificates, one per concurrent writer."""
    directory = tmp_path_factory.mktemp("many")
    return [make_cert(directory, f"writer{i}") for i in range(WRITERS)]


def _cert(pair):
    return load_certificate(pair.cert)


def _fake(fingerprint, role="client", revoked_at=None):
    # A record as the store writes it, for fingerprints no real cert has.
    return {"pem": "", "role": role, "name": "fake", "added_at": "2026-01-01T00:00:00Z",
            "not_after": "2027-01-01T00:00:00Z", "revoked_at": revoked_at}


def _run(code, *args, wait=True):
    """Run a snippet in a fresh interpreter with the project importable."""
    program = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(code)
    process = subprocess.Popen([sys.executable, "-c", program, *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


ADD = """
    from trust.certs import load_certificate
    from trust.store import TrustStore
    store = TrustStore(sys.argv[1])
    try:
        store.add(load_certificate(sys.argv[2]), sys.argv[3])
        print("added")
    except Exception as error:
        print(type(error).__name__)
    store.close()
"""


# The rules ------------------------------------------------------------------

def test_add_get_and_list(store, certs):
    cert = _cert(certs.client)
    record = store.add(cert, "client")
    assert isinstance(record, Record)
    assert (record.fingerprint, record.role, record.name, record.revoked_at) == \
        (cert.fingerprint, "client", "client", None)
    assert record.pem == cert.pem and not record.revoked
    assert STAMP.fullmatch(record.added_at)
    assert record.not_after == cert.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert store.get(cert.fingerprint) == record
    assert store.get(cert.fingerprint.upper()) == record
    assert store.records() == [record]
    assert store.trusted() == {cert.fingerprint: record}
    assert record.to_dict() == {
        "fingerprint": cert.fingerprint, "pem": cert.pem, "role": "client",
        "name": "client", "added_at": record.added_at, "not_after": record.not_after,
        "revoked_at": None}


def test_get_unknown_is_none(store, certs):
    assert store.get(_cert(certs.stranger).fingerprint) is None


def test_roles(store, certs):
    assert store.add(_cert(certs.publisher), "publisher").role == "publisher"
    for role in ("admin", "", None, "Client"):
        with pytest.raises(ValueError, match="'client' or 'publisher'"):
            store.add(_cert(certs.client), role)
    assert len(store.records()) == 1


def test_add_twice_is_already_exists(store, certs):
    store.add(_cert(certs.client), "client")
    with pytest.raises(AlreadyExists, match="already trusted as client"):
        store.add(_cert(certs.client), "publisher")
    assert store.get(_cert(certs.client).fingerprint).role == "client"


def test_resolve(store, certs):
    fingerprint = store.add(_cert(certs.client), "client").fingerprint
    for given in (fingerprint, fingerprint[:12], fingerprint[:40].upper(),
                  ":".join(fingerprint[i:i + 2] for i in range(0, 24, 2))):
        assert store.resolve(given) == fingerprint
    with pytest.raises(NotFound, match="starting"):
        store.resolve(_cert(certs.stranger).fingerprint[:12])
    with pytest.raises(NotFound):
        store.resolve(_cert(certs.stranger).fingerprint)
    with pytest.raises(ValueError):
        store.resolve(fingerprint[:11])


def test_ambiguous_prefix(tmp_path):
    path = tmp_path / "trust.db"
    base = "abcdef012345"
    with shelve.Shelf(SqliteMapping(path)) as shelf:
        shelf[base + "0" * 52] = _fake(base + "0" * 52)
        shelf[base + "1" * 52] = _fake(base + "1" * 52)
    with TrustStore(path) as store:
        with pytest.raises(Ambiguous, match="2 certificates"):
            store.resolve(base)
        with pytest.raises(Ambiguous):
            store.remove(base)
        assert store.resolve(base + "1") == base + "1" * 52


def test_remove(store, certs):
    fingerprint = store.add(_cert(certs.client), "client").fingerprint
    removed = store.remove(fingerprint[:12])
    assert removed.fingerprint == fingerprint
    assert store.records(revoked=True) == [] and store.get(fingerprint) is None
    with pytest.raises(NotFound):
        store.remove(fingerprint)
    # Removal is not revocation: the certificate can come back.
    store.add(_cert(certs.client), "client")


def test_revoke_is_final(store, certs):
    fingerprint = store.add(_cert(certs.client), "client").fingerprint
    store.add(_cert(certs.publisher), "publisher")
    revoked = store.revoke(fingerprint[:16])
    assert revoked.revoked and STAMP.fullmatch(revoked.revoked_at)
    assert store.get(fingerprint) == revoked
    assert [r.fingerprint for r in store.records()] == [_cert(certs.publisher).fingerprint]
    assert {r.fingerprint for r in store.records(revoked=True)} == \
        {fingerprint, _cert(certs.publisher).fingerprint}
    assert fingerprint not in store.trusted()
    with pytest.raises(Revoked, match="cannot be trusted again"):
        store.add(_cert(certs.client), "client")
    with pytest.raises(Revoked, match="stay in the trust store"):
        store.remove(fingerprint)
    with pytest.raises(Revoked, match="already revoked"):
        store.revoke(fingerprint)
    assert store.get(fingerprint) == revoked


def test_errors_are_one_family():
    for error in (AlreadyExists, Ambiguous, NotFound, Revoked):
        assert issubclass(error, StoreError) and issubclass(error, TrustError)


def test_add_needs_a_certificate(store, certs):
    with pytest.raises(TypeError):
        store.add(certs.client.pem, "client")


def test_closed_store(tmp_path):
    store = TrustStore(tmp_path / "trust.db")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.records()


# The file -------------------------------------------------------------------

def test_file_mode_and_directory(tmp_path, certs):
    old = os.umask(0o022)
    try:
        path = tmp_path / "a" / "b" / "trust.db"
        with TrustStore(path) as store:
            store.add(_cert(certs.client), "client")
            for name in ("trust.db", "trust.db-wal", "trust.db-shm"):
                if (path.parent / name).exists():
                    assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
    finally:
        os.umask(old)


def test_loose_mode_is_tightened(tmp_path):
    path = tmp_path / "trust.db"
    with TrustStore(path):
        pass
    path.chmod(0o644)
    with TrustStore(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_persistence_across_reopen(tmp_path, certs):
    path = tmp_path / "trust.db"
    with TrustStore(path) as store:
        added = store.add(_cert(certs.client), "client")
        revoked = store.revoke(store.add(_cert(certs.publisher), "publisher").fingerprint)
    with TrustStore(path) as store:
        assert store.get(added.fingerprint) == added
        assert store.get(revoked.fingerprint) == revoked


def test_schema_is_dbm_sqlite3(tmp_path):
    import sqlite3
    path = tmp_path / "trust.db"
    TrustStore(path).close()
    with sqlite3.connect(path) as connection:
        (sql,) = connection.execute(
            "SELECT sql FROM sqlite_master WHERE type='table'").fetchone()
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    connection.close()
    assert " ".join(sql.split()) == \
        "CREATE TABLE Dict ( key BLOB UNIQUE NOT NULL, value BLOB NOT NULL )"
    assert mode == "wal"


READ_WITH_DBM = """
    import dbm, shelve
    assert dbm.whichdb(sys.argv[1]) == "dbm.sqlite3", dbm.whichdb(sys.argv[1])
    with shelve.open(sys.argv[1], "r") as shelf:
        for key in sorted(shelf):
            print(key, shelf[key]["role"], shelf[key]["revoked_at"] is not None)
"""


def _python313():
    if sys.version_info >= (3, 13):
        return sys.executable
    found = shutil.which("python3.13")
    if found and subprocess.run([found, "-c", "import dbm.sqlite3"],
                                capture_output=True).returncode == 0:
        return found
    return None


@pytest.mark.skipif(_python313() is None, reason="needs Python 3.13 (dbm.sqlite3)")
def test_file_reads_with_dbm_sqlite3(tmp_path, certs):
    path = tmp_path / "trust.db"
    with TrustStore(path) as store:
        client = store.add(_cert(certs.client), "client").fingerprint
        publisher = store.add(_cert(certs.publisher), "publisher").fingerprint
        store.revoke(client)
    program = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(READ_WITH_DBM)
    result = subprocess.run([_python313(), "-c", program, str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(
        [f"{client} client True", f"{publisher} publisher False"])


def test_corrupt_file_names_the_path(tmp_path):
    path = tmp_path / "trust.db"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(StoreError, match=re.escape(str(path))):
        TrustStore(path)


def test_damaged_record_names_the_path(tmp_path, certs):
    path = tmp_path / "trust.db"
    with TrustStore(path) as store:
        fingerprint = store.add(_cert(certs.client), "client").fingerprint
    with SqliteMapping(path) as mapping:
        mapping[fingerprint] = b"\x80\x05garbage"
    with TrustStore(path) as store:
        with pytest.raises(StoreError, match=re.escape(str(path))):
            store.records()
        with pytest.raises(StoreError, match="damaged"):
            store.get(fingerprint)


def test_unexpected_record_shape(tmp_path):
    path = tmp_path / "trust.db"
    fingerprint = "ab" * 32
    with shelve.Shelf(SqliteMapping(path)) as shelf:
        shelf[fingerprint] = {"role": "client"}
    with TrustStore(path) as store:
        with pytest.raises(StoreError, match="unexpected shape"):
            store.trusted()


def test_unreadable_place(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="file"):
        TrustStore(tmp_path / "file" / "trust.db")
    with pytest.raises(StoreError, match="directory|not a file"):
        TrustStore(tmp_path)


# The mapping ----------------------------------------------------------------

def test_mapping_basics(tmp_path):
    with SqliteMapping(tmp_path / "m.db") as mapping:
        mapping["a"] = b"1"
        mapping[b"b"] = bytearray(b"2")
        assert mapping[b"a"] == b"1" and mapping["b"] == b"2"
        assert "a" in mapping and b"b" in mapping and "c" not in mapping and 5 not in mapping
        assert sorted(mapping) == [b"a", b"b"] and len(mapping) == 2
        del mapping["a"]
        with pytest.raises(KeyError):
            del mapping["a"]
        with pytest.raises(KeyError):
            mapping["a"]
        with pytest.raises(TypeError):
            mapping["c"] = "text"
        assert mapping.snapshot() == [(b"b", b"2")]


def test_transaction_rolls_back(tmp_path):
    with SqliteMapping(tmp_path / "m.db") as mapping:
        mapping["kept"] = b"1"
        with pytest.raises(RuntimeError):
            with mapping.transaction():
                mapping["lost"] = b"2"
                del mapping["kept"]
                raise RuntimeError
        assert dict(mapping.snapshot()) == {b"kept": b"1"}
        with mapping.transaction():
            with mapping.transaction():  # nested: joins the outer one
                mapping["inner"] = b"3"
        assert b"inner" in mapping


# Change detection -------------------------------------------------------------

def test_generation_changes_with_our_writes(store, certs):
    first = store.generation()
    assert store.generation() == first
    fingerprint = store.add(_cert(certs.client), "client").fingerprint
    second = store.generation()
    assert second != first and store.generation() == second
    store.revoke(fingerprint)
    assert store.generation() != second


def test_generation_changes_after_another_process_writes(tmp_path, certs):
    path = tmp_path / "trust.db"
    with TrustStore(path) as store:
        before = store.generation()
        assert _run(ADD, path, certs.client.cert, "client").strip() == "added"
        after = store.generation()
        assert after != before
        assert _cert(certs.client).fingerprint in store.trusted()
        # And a second connection in this process counts as "another" too.
        with TrustStore(path) as other:
            other.add(_cert(certs.publisher), "publisher")
        assert store.generation() != after


# Concurrency ------------------------------------------------------------------

READER = """
    import os
    from trust.store import TrustStore
    store = TrustStore(sys.argv[1])
    seen, generations = 0, set()
    while not os.path.exists(sys.argv[2]):
        records = store.records()
        for record in records:
            assert record.role == "client" and record.pem.startswith("-----BEGIN")
        seen = max(seen, len(records))
        generations.add(store.generation())
    print(len(store.records()), seen, len(generations))
"""


def test_concurrent_writers_and_a_reader(tmp_path, many):
    path = tmp_path / "trust.db"
    stop = tmp_path / "stop"
    TrustStore(path).close()  # the reader needs the file to exist
    reader = _run(READER, path, stop, wait=False)
    writers = [_run(ADD, path, pair.cert, "client", wait=False) for pair in many]
    results = [writer.communicate(timeout=300) for writer in writers]
    stop.touch()
    out, err = reader.communicate(timeout=300)
    for writer, (wout, werr) in zip(writers, results):
        assert writer.returncode == 0 and wout.strip() == "added", werr
    assert reader.returncode == 0, err
    final, _, generations = map(int, out.split())
    assert final == WRITERS and generations >= 1
    with TrustStore(path) as store:
        records = store.trusted()
    assert set(records) == {_cert(pair).fingerprint for pair in many}
    for pair in many:
        record = records[_cert(pair).fingerprint]
        assert record.pem == _cert(pair).pem and record.name == pair.cert.stem


def test_same_certificate_added_by_many_processes_at_once(tmp_path, certs):
    path = tmp_path / "trust.db"
    racers = [_run(ADD, path, certs.client.cert, "client", wait=False) for _ in range(8)]
    outcomes = []
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err
        outcomes.append(out.strip())
    assert sorted(outcomes) == ["AlreadyExists"] * 7 + ["added"]


def test_threads_share_one_store(store, many):
    errors = []

    def work(pair):
        try:
            store.add(_cert(pair), "client")
            store.records()
            store.generation()
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(pair,)) for pair in many[:10]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(store.trusted()) == 10
