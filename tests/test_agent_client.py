"""RegistryClient against the real registry over mutual TLS, and against
registries that misbehave (tests/fakeregistry.py)."""
import hashlib
import json
import os
import socket
import threading
import time

import pytest

from agent import failures
from agent import transfer
from agent.client import RegistryClient
from agent.errors import (BadResponse, Cancelled, Forbidden, IntegrityError, NotTrusted,
                          PinError, RegistryConflict, RegistryUnavailable, StoreError,
                          TransferError, TransferTimeout)
from fakeregistry import CuttingProxy, FakeRegistry
from regserver import access, free_port, registry  # noqa: F401 (fixtures)

MiB = 1 << 20


def connect(srv, pair, url=None, **kw):
    return RegistryClient(url or f"https://127.0.0.1:{srv.port}", srv.fingerprint,
                          pair.cert, pair.key, **kw)


def package(tmp_path, size, name="pkg.bin", seed=b"x"):
    data = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    path = tmp_path / name
    path.write_bytes(data)
    return path, data, hashlib.sha256(data).hexdigest()


def publish(srv, certs, tmp_path, app="game", version=0, arch="amd64", size=3 * MiB + 7,
            tags=("casual",)):
    path, data, sha = package(tmp_path, size, f"{app}-{version}.bin", seed=app.encode())
    with connect(srv, certs.publisher) as c:
        assert c.upload(app, version, arch, path, sha, {"name": app, "tags": list(tags)})
    return data, sha


# -- the happy path --------------------------------------------------------------

def test_info_names_the_callers_role(registry, certs):
    with connect(registry, certs.client) as c:
        info = c.info()
    assert info["role"] == "client"
    assert info["server_fingerprint"] == registry.fingerprint


def test_upload_list_download_round_trip(registry, certs, tmp_path):
    path, data, sha = package(tmp_path, 2 * MiB + 3)
    sent = []
    with connect(registry, certs.publisher) as pub:
        assert pub.upload("game", 0, "amd64", path, sha, {"name": "game", "tags": ["a"]},
                          progress=lambda done, total: sent.append((done, total))) is True
        fp = pub.info()["fingerprint"]
    assert sent[-1] == (len(data), len(data))
    with connect(registry, certs.client) as c:
        etag, apps = c.list("amd64")
        assert etag
        [pkg] = apps[0]["versions"]
        assert (pkg["sha256"], pkg["size"], pkg["publisher"]) == (sha, len(data), fp)
        got = []
        dest = tmp_path / "dest"
        c.download("game", 0, "amd64", dest, sha, len(data),
                   progress=lambda done, total: got.append(done))
    assert dest.read_bytes() == data
    # 1 MiB at a time, never more.
    steps = [b - a for a, b in zip([0] + got, got)]
    assert max(steps) <= transfer.CHUNK and got[-1] == len(data)


def test_same_bytes_again_is_a_no_op_and_other_bytes_conflict(registry, certs, tmp_path):
    path, data, sha = package(tmp_path, 3 * MiB)
    other, _, other_sha = package(tmp_path, 3 * MiB, "other.bin", seed=b"y")
    with connect(registry, certs.publisher) as c:
        assert c.upload("game", 0, "amd64", path, sha, {}) is True
        # The registry answers before reading the body; the answer still counts.
        assert c.upload("game", 0, "amd64", path, sha, {}) is False
        with pytest.raises(RegistryConflict) as err:
            c.upload("game", 0, "amd64", other, other_sha, {})
        assert str(err.value) == failures.CONFLICT.format(what="game/0/amd64")


def test_unchanged_listing_costs_one_request_answered_304(registry, certs, tmp_path, access):
    publish(registry, certs, tmp_path)
    with connect(registry, certs.client) as c:
        etag, apps = c.list("amd64", ["casual"])
        access.clear()
        assert c.list("amd64", ["casual"], etag=etag) == (etag, None)
    assert len(access) == 1 and '" 304 ' in access[0]


def test_listing_filters_by_architecture_and_tags(registry, certs, tmp_path):
    publish(registry, certs, tmp_path, "game", tags=("casual",))
    publish(registry, certs, tmp_path, "chess", tags=("board",))
    publish(registry, certs, tmp_path, "chess", arch="arm64", tags=("board",))
    with connect(registry, certs.client) as c:
        assert [a["name"] for a in c.list("amd64")[1]] == ["chess", "game"]
        assert [a["name"] for a in c.list("amd64", ["board"])[1]] == ["chess"]
        [chess] = c.list("arm64")[1]
        assert [v["architecture"] for v in chess["versions"]] == ["arm64"]


def test_one_keepalive_connection_serves_every_request(registry, certs, access):
    with connect(registry, certs.client) as c:
        for _ in range(5):
            c.list("amd64")
    peers = {line.split()[0] for line in access}
    assert len(access) == 5 and len(peers) == 1


def test_a_dropped_keepalive_connection_is_retried_once(certs, registry):
    def answer(handler):
        body = json.dumps({"type": "sync", "metadata": []}).encode()
        FakeRegistry.send(handler, 200, body)
        handler.close_connection = True       # gone, without saying so
    fake = FakeRegistry(registry.data.server_cert, registry.data.server_key, answer)
    try:
        with connect(registry, certs.client, url=fake.url) as c:
            for _ in range(3):
                assert c.list()[1] == []
        assert len(fake.requests) == 3
    finally:
        fake.stop()


# -- refusals ----------------------------------------------------------------------

def test_a_client_certificate_cannot_write(registry, certs, tmp_path):
    publish(registry, certs, tmp_path)
    for size in (10, 3 * MiB):   # small, and larger than the socket buffers
        path, _, sha = package(tmp_path, size)
        with connect(registry, certs.client) as c:
            with pytest.raises(Forbidden) as err:
                c.upload("game", 1, "amd64", path, sha, {})
            assert str(err.value) == failures.READ_ONLY
    with connect(registry, certs.client) as c:
        with pytest.raises(Forbidden, match="aar trust add --publisher"):
            c.delete("game", 0, "amd64")


def test_wrong_fingerprint_sends_nothing(registry, certs, tmp_path, access):
    wrong = hashlib.sha256(b"another registry").hexdigest()
    path, _, sha = package(tmp_path, 100)
    c = RegistryClient(f"https://127.0.0.1:{registry.port}", wrong, certs.publisher.cert,
                       certs.publisher.key)
    calls = [lambda: c.list("amd64"), lambda: c.delete("game", 0, "amd64"),
             lambda: c.upload("game", 0, "amd64", path, sha, {})]
    for call in calls:
        with pytest.raises(PinError) as err:
            call()
        assert str(err.value) == failures.PIN_MISMATCH.format(
            expected=wrong, actual=registry.fingerprint)
    assert access == []


def test_an_untrusted_certificate_is_refused(registry, certs):
    with connect(registry, certs.stranger) as c:
        with pytest.raises(NotTrusted, match="aar trust add"):
            c.list()


def test_connection_refused_is_unavailable(certs, registry):
    c = RegistryClient(f"https://127.0.0.1:{free_port()}", registry.fingerprint,
                       certs.client.cert, certs.client.key)
    with pytest.raises(RegistryUnavailable, match="connection refused"):
        c.list()


def test_a_silent_server_times_out_as_unavailable(registry, certs):
    with socket.create_server(("127.0.0.1", 0)) as silent:   # never answers, never accepts
        c = RegistryClient(f"https://127.0.0.1:{silent.getsockname()[1]}", registry.fingerprint,
                           certs.client.cert, certs.client.key, timeout=0.3)
        with pytest.raises(RegistryUnavailable, match="no answer within 0.3s"):
            c.list()


def test_server_errors_are_unavailable(registry, certs):
    def answer(handler):
        FakeRegistry.send(handler, 500, b'{"type":"error","error":"disk on fire",'
                                        b'"error_code":500}', close=True)
    fake = FakeRegistry(registry.data.server_cert, registry.data.server_key, answer)
    try:
        with connect(registry, certs.client, url=fake.url) as c:
            with pytest.raises(RegistryUnavailable, match="500: disk on fire"):
                c.list("amd64")
    finally:
        fake.stop()


GOOD = {"name": "game", "version": 0, "architecture": "amd64", "size": 5,
        "sha256": "a" * 64, "publisher": "b" * 64, "tags": ["casual"], "manifest": {}}


def _listing(**change):
    pkg = dict(GOOD, **change)
    for key in [k for k, v in change.items() if v is _DROP]:
        del pkg[key]
    return json.dumps({"type": "sync", "metadata": [{"name": "game", "versions": [pkg]}]})


_DROP = object()
MALFORMED = {
    "not json": "{",
    "cut short": _listing()[:-7],
    "error envelope": '{"type":"error","error":"x","error_code":500}',
    "metadata not a list": '{"type":"sync","metadata":{}}',
    "no versions": '{"type":"sync","metadata":[{"name":"game"}]}',
    "missing sha256": _listing(sha256=_DROP),
    "bad sha256": _listing(sha256="zz"),
    "missing size": _listing(size=_DROP),
    "negative size": _listing(size=-1),
    "version as text": _listing(version="0"),
    "missing publisher": _listing(publisher=_DROP),
    "other architecture": _listing(architecture="arm64"),
    "tags outside the filter": _listing(tags=["board"]),
    "bad name": _listing().replace('"name": "game", "versions"', '"name": "../x", "versions"'),
    "listed twice": json.dumps({"type": "sync", "metadata": [
        {"name": "game", "versions": [GOOD, GOOD]}]}),
}


def test_malformed_listings_are_refused(registry, certs):
    body = {}

    def answer(handler):
        FakeRegistry.send(handler, 200, body["text"].encode(), [("ETag", '"e"')])
    fake = FakeRegistry(registry.data.server_cert, registry.data.server_key, answer)
    try:
        with connect(registry, certs.client, url=fake.url) as c:
            body["text"] = _listing()
            assert c.list("amd64", ["casual"])[1][0]["versions"][0]["sha256"] == "a" * 64
            for case, text in MALFORMED.items():
                body["text"] = text
                with pytest.raises(BadResponse, match="malformed"):
                    c.list("amd64", ["casual"])
                    pytest.fail(case)
    finally:
        fake.stop()


# -- downloads that go wrong -----------------------------------------------------------

@pytest.mark.parametrize("stall", [False, True], ids=["cut", "stalled"])
def test_a_broken_download_resumes_with_range(registry, certs, tmp_path, access, stall):
    # Stalled: the first connection stops in the middle of a TLS record and
    # stays open, so the read times out with part of a record taken; the
    # resumed download must still be the package, byte for byte.
    data, sha = publish(registry, certs, tmp_path)
    proxy = CuttingProxy(registry.port, cut_after=MiB + 12345, stall=stall, cuts=1)
    try:
        with connect(registry, certs.client, url=proxy.url,
                     **({"timeout": 0.5} if stall else {})) as c:
            c.download("game", 0, "amd64", tmp_path / "dest", sha, len(data))
    finally:
        proxy.stop()
    assert (tmp_path / "dest").read_bytes() == data
    assert proxy.connections == 2
    assert any('" 206 ' in line for line in access)


def test_a_download_broken_every_time_fails_and_leaves_nothing(registry, certs, tmp_path):
    data, sha = publish(registry, certs, tmp_path)
    # Every attempt moves a quarter MiB: resuming cannot make up 3 MiB.
    proxy = CuttingProxy(registry.port, cut_after=MiB // 4)
    try:
        with connect(registry, certs.client, url=proxy.url) as c:
            with pytest.raises(TransferError, match="attempts"):
                c.download("game", 0, "amd64", tmp_path / "dest", sha, len(data))
    finally:
        proxy.stop()
    assert not (tmp_path / "dest").exists()
    assert proxy.connections == transfer.RESUME_ATTEMPTS


def test_declared_size_and_sha256_are_enforced(registry, certs, tmp_path):
    data, sha = publish(registry, certs, tmp_path)
    dest = tmp_path / "dest"
    with connect(registry, certs.client) as c:
        with pytest.raises(TransferError) as err:
            c.download("game", 0, "amd64", dest, sha, len(data) - 1)
        assert str(err.value) == transfer.TOO_LARGE.format(what="game/0/amd64",
                                                            size=len(data) - 1)
        assert not dest.exists()
        with pytest.raises(IntegrityError, match="differs from the registry's"):
            c.download("game", 0, "amd64", dest, "0" * 64, len(data))
        assert not dest.exists()


def test_a_stalled_download_times_out(registry, certs, tmp_path):
    data, sha = publish(registry, certs, tmp_path)
    proxy = CuttingProxy(registry.port, cut_after=MiB, stall=True)
    try:
        with connect(registry, certs.client, url=proxy.url, timeout=0.3) as c:
            with pytest.raises(TransferTimeout):
                c.download("game", 0, "amd64", tmp_path / "dest", sha, len(data),
                           deadline=time.monotonic() + 1.5)
    finally:
        proxy.stop()
    assert not (tmp_path / "dest").exists()


def _stop_stalled_download(downloader, aborter, proxy, tmp_path, sha, size):
    """Start downloader.download through a stalling proxy, then, once the
    proxy has cut it, set the stop event and aborter.abort(). Returns the
    worker thread and what the download raised."""
    stop = threading.Event()
    outcome = []

    def download():
        try:
            downloader.download("game", 0, "amd64", tmp_path / "dest", sha, size, stop=stop)
        except BaseException as error:
            outcome.append(error)
    worker = threading.Thread(target=download)
    try:
        worker.start()
        assert proxy.cut.wait(30)
        stop.set()
        aborter.abort()
        worker.join(30)
    finally:
        proxy.stop()
    return worker, outcome


def test_stop_ends_a_blocked_download_at_once(registry, certs, tmp_path):
    data, sha = publish(registry, certs, tmp_path)
    proxy = CuttingProxy(registry.port, cut_after=MiB, stall=True)
    c = connect(registry, certs.client, url=proxy.url, timeout=600)
    worker, outcome = _stop_stalled_download(c, c, proxy, tmp_path, sha, len(data))
    assert not worker.is_alive()
    assert isinstance(outcome[0], Cancelled)
    assert not os.path.exists(tmp_path / "dest")


def test_a_clone_has_its_own_connection_and_follows_abort(registry, certs, tmp_path, access):
    data, sha = publish(registry, certs, tmp_path)
    proxy = CuttingProxy(registry.port, cut_after=MiB, stall=True)
    parent = connect(registry, certs.client, url=proxy.url, timeout=600)
    twin = parent.clone()
    assert twin._context is parent._context            # the key is read once
    try:
        # parent.abort() is what Loop.stop() reaches.
        worker, outcome = _stop_stalled_download(twin, parent, proxy, tmp_path, sha,
                                                 len(data))
    finally:
        twin.close()
        parent.close()
    assert not worker.is_alive()
    assert isinstance(outcome[0], Cancelled)
    assert not os.path.exists(tmp_path / "dest")
    relay = CuttingProxy(registry.port)
    try:
        with connect(registry, certs.client, url=relay.url) as c, c.clone() as other:
            for _ in range(2):
                c.info()
                other.info()
    finally:
        relay.stop()
    assert relay.connections == 2                      # one kept alive by each


def test_a_file_that_cannot_be_written_ends_the_download_at_once(registry, certs, tmp_path,
                                                                 monkeypatch):
    data, sha = publish(registry, certs, tmp_path)
    proxy = CuttingProxy(registry.port)

    def full(fd, data, offset):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(transfer.os, "pwrite", full)
    try:
        with connect(registry, certs.client, url=proxy.url) as c:
            with pytest.raises(StoreError) as error:
                c.download("game", 0, "amd64", tmp_path / "dest", sha, len(data))
    finally:
        proxy.stop()
    assert str(error.value) == transfer.UNWRITABLE.format(
        what="game/0/amd64", path=tmp_path / "dest", reason="No space left on device")
    assert proxy.connections == 1                      # not retried as a broken link
    assert not (tmp_path / "dest").exists()
