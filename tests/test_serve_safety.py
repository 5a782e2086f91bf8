"""`aar serve` on a data directory that lost something: refuse in one line,
touch nothing, and offer the deliberate way out. Real `aar serve`
subprocesses, real certificates, a real tmpfs for the full disk."""
import hashlib
import os
import pathlib
import subprocess

import pytest

import aar
from registry.startup import IDENTITY_PRESENT, TRUST_LOST
from regserver import Client, Pipe, ProcessServer, ThreadServer, aar as run_aar
from tmpfs import mounted_tmpfs


def snapshot(root):
    """Every file under root and its bytes (but sqlite's shared-memory
    index, and the server logs the tests write beside it)."""
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.endswith("-shm"):
                path = os.path.join(dirpath, name)
                found[os.path.relpath(path, root)] = pathlib.Path(path).read_bytes()
    return found


def refused(data, *extra, needle):
    """`aar serve` exits 1 with one line naming the problem; no byte changed."""
    before = snapshot(data)
    done = run_aar("serve", "--listen", "127.0.0.1:0", *extra, data_dir=data)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert needle in lines[0], lines[0]
    assert snapshot(data) == before
    return lines[0]


def add_publisher(data, certs):
    code = aar.main(["trust", "add", "--init", "-p", str(certs.publisher.cert), "--data-dir",
                     str(data)], stdin=Pipe(), stdout=open(os.devnull, "w"))
    assert code == 0


def upload(client, app, version, payload):
    status, body, _ = client.upload(app, version, "amd64", payload, {"name": app})
    assert status == 201, body


@pytest.fixture
def served(tmp_path, certs):
    """A data directory an `aar serve` has served two packages from."""
    data = tmp_path / "data"
    add_publisher(data, certs)
    server = ProcessServer(data)
    try:
        client = server.client(certs.publisher)
        upload(client, "game", 0, b"zero")
        upload(client, "game", 1, b"one")
        client.close()
    finally:
        server.stop()
    return data


def listing(server, certs):
    client = server.client(certs.publisher)
    try:
        status, body, _ = client.json("GET", "/1.0/applications")
        assert status == 200
        return [(p["name"], p["version"]) for a in body["metadata"] for p in a["versions"]]
    finally:
        client.close()


# -- the package index and the blob directory ---------------------------------------------

@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_lost_index_stops_serve_until_recover_is_asked_for(served, certs, how):
    db = served / "packages.db"
    db.unlink() if how == "deleted" else db.write_bytes(b"")
    line = refused(served, needle="index was lost")
    assert "--recover" in line
    server = ProcessServer(served, extra=["--recover"])
    try:
        assert listing(server, certs) == []
    finally:
        server.stop()
    [quarantine] = (served / "quarantine").iterdir()
    kept = {p.read_bytes() for p in (quarantine / "blobs").iterdir()}
    assert kept == {b"zero", b"one"}


def test_a_missing_blob_directory_stops_serve_and_its_return_restores_all(served, certs,
                                                                         tmp_path):
    os.rename(served / "blobs", tmp_path / "away")
    refused(served, needle="is missing but packages.db lists 2 package(s)")
    os.rename(tmp_path / "away", served / "blobs")
    server = ProcessServer(served)
    try:
        assert listing(server, certs) == [("game", 0), ("game", 1)]
    finally:
        server.stop()


# -- the trust store -------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_lost_trust_store_is_refused_by_serve_and_trust(served, certs, how):
    trust = served / "trust.db"
    trust.unlink() if how == "deleted" else trust.write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        pathlib.Path(f"{trust}{suffix}").unlink(missing_ok=True)
    state = "missing" if how == "deleted" else "empty (0 bytes)"
    expected = "Error: " + TRUST_LOST.format(path=trust, state=state)
    assert refused(served, needle="trust store") == expected
    before = snapshot(served)
    for argv in (["trust", "list"], ["trust", "add", str(certs.client.cert)]):
        done = run_aar(*argv, data_dir=served)
        assert done.returncode == 1 and done.stderr.strip() == expected, done.stderr
    assert snapshot(served) == before
    # The way out is deliberate: --recover starts with an empty trust store.
    server = ProcessServer(served, extra=["--recover"])
    server.stop()
    assert run_aar("trust", "add", str(certs.client.cert), data_dir=served).returncode == 0


def test_a_trust_store_with_a_garbage_last_page_is_refused(served):
    trust = served / "trust.db"
    # Every change is in the database file once the last connection closed;
    # then the last page (the key index) is overwritten.
    assert not pathlib.Path(f"{trust}-wal").exists() or \
        pathlib.Path(f"{trust}-wal").stat().st_size == 0
    size = trust.stat().st_size
    with open(trust, "r+b") as f:
        f.seek(size - 4096)
        f.write(os.urandom(4096))
    line = refused(served, needle="is damaged (integrity check")
    assert str(trust) in line
    done = run_aar("trust", "list", data_dir=served)
    assert done.returncode == 1 and "is damaged" in done.stderr


def test_a_fresh_data_directory_starts_and_trust_add_before_it_works(tmp_path, certs):
    data = tmp_path / "data"
    add_publisher(data, certs)          # the data directory does not exist before this
    server = ProcessServer(data)
    try:
        assert listing(server, certs) == []
    finally:
        server.stop()
    assert (data / "state.json").exists()
    server = ProcessServer(data)        # and it starts again, empty but legitimate
    server.stop()


# -- the server's identity -----------------------------------------------------------------

@pytest.mark.parametrize("lost", [["server.key"], ["server.key", "server.crt"]])
def test_a_lost_server_key_is_refused_until_a_new_identity_is_asked_for(served, lost):
    old = (served / "certs" / "server.crt").read_bytes()
    for name in lost:
        (served / "certs" / name).unlink()
    line = refused(served, needle="--new-identity")
    assert "would change the server fingerprint" in line
    assert str(served / "certs" / "server.key") in line
    server = ProcessServer(served, extra=["--new-identity"])
    try:
        assert (served / "certs" / "server.crt").read_bytes() != old
        assert "Created the registry's server certificate" in server.output()
    finally:
        server.stop()
    if "server.crt" not in lost:
        [quarantine] = (served / "quarantine").iterdir()
        assert (quarantine / "certs" / "server.crt").read_bytes() == old


def test_new_identity_with_both_files_present_changes_nothing(served):
    line = refused(served, "--new-identity", needle="are both present")
    assert line == "Error: " + IDENTITY_PRESENT.format(
        key=served / "certs" / "server.key", cert=served / "certs" / "server.crt")


def test_a_garbage_server_certificate_is_named(served):
    cert = served / "certs" / "server.crt"
    cert.write_bytes(b"garbage")
    line = refused(served, needle=str(cert))
    assert "PEM" in line or "certificate" in line


def test_the_server_certificate_is_a_leaf_for_tls_servers(tmp_path, certs):
    data = tmp_path / "data"
    add_publisher(data, certs)
    server = ProcessServer(data)
    try:
        # The agent's way in: pinned by fingerprint over the leaf certificate.
        client = server.client(certs.publisher)
        status, body, _ = client.json("GET", "/1.0")
        assert status == 200
        assert body["metadata"]["server_fingerprint"] == server.fingerprint
        client.close()
    finally:
        server.stop()
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in",
                           str(data / "certs" / "server.crt")],
                          capture_output=True, text=True, check=True).stdout
    constraints = text.split("X509v3 Basic Constraints: critical")[1].split("\n")[1]
    assert constraints.strip() == "CA:FALSE"
    usage = text.split("X509v3 Extended Key Usage:")[1].split("\n")[1]
    assert usage.strip() == "TLS Web Server Authentication"


# -- a full disk ---------------------------------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path):
    """A 2 MiB tmpfs, or a skip where mounting is not allowed."""
    with mounted_tmpfs(tmp_path, "2m") as mnt:
        yield mnt


def fill(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28          # ENOSPC: the disk is 100% full
    finally:
        os.close(fd)


def test_delete_on_a_full_disk_is_507_and_the_server_keeps_serving(tiny_fs, certs, caplog):
    caplog.set_level("INFO")
    srv = ThreadServer(tiny_fs / "data")
    try:
        srv.trust_cert(certs.publisher, "publisher")
        client = srv.client(certs.publisher)
        for version in range(3):
            upload(client, "game", version, os.urandom(20000))
        fill(tiny_fs / "filler")
        status, body, _ = client.json("DELETE", "/1.0/applications/game/0/amd64")
        assert status == 507, body
        assert body["error"] == "insufficient storage on the registry"
        status, body, _ = client.json("DELETE", "/1.0/applications/game")
        assert status == 507, body
        # The same connection still gets answers, and nothing was lost.
        status, body, _ = client.json("GET", "/1.0/applications/game")
        assert status == 200 and len(body["metadata"]["versions"]) == 3
        (tiny_fs / "filler").unlink()
        status, body, _ = client.json("DELETE", "/1.0/applications/game/0/amd64")
        assert status == 200, body
        client.close()
    finally:
        srv.stop()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
