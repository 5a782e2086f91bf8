"""agent.fetch: the pull pipeline (concurrent downloads, imports beside them)
against a stand-in client and a real AppStore: failures stay with their
package, a FATAL error starts nothing new, and stopping leaves nothing behind."""
import hashlib
import io
import os
import threading
import zipfile

import pytest

from agent import fetch
from agent.appstore import AppStore
from agent.errors import Cancelled, NotTrusted, TransferError
from agent.fetch import Fetcher, Job
from agent.sync import Sync

WAIT = 30      # a hang guard, never a measurement


def package_bytes(name, filler=b""):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("manifest.yaml", f"name: {name}\ntags: [casual]\n")
        archive.writestr("app.apk", filler or name.encode() * 1000)
    return buf.getvalue()


class Registry:
    """What the stand-in clients serve: name -> bytes, and how to behave."""

    def __init__(self, names):
        self.data = {name: package_bytes(name) for name in names}
        self.behave = {}                 # name -> behave(client, dest, data, stop)
        self.lock = threading.Lock()
        self.clients = []

    def job(self, name, version=0):
        data = self.data[name]
        return Job((name, version, "amd64"),
                   {"name": name, "version": version, "architecture": "amd64",
                    "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                    "publisher": "", "tags": ["casual"], "manifest": {"name": name}})

    def listing(self):
        return [{"name": name, "versions": [self.job(name).pkg]} for name in sorted(self.data)]


class FakeClient:
    """Stands in for RegistryClient: download() writes the registry's bytes
    into dest, or does what registry.behave says for that name."""

    url, fingerprint, timeout = "https://registry.test", "f" * 64, 30.0

    def __init__(self, registry):
        self.registry = registry
        self.aborted = threading.Event()
        self.closed = False
        self.downloads = []
        self.clones = []
        with registry.lock:
            registry.clients.append(self)

    def clone(self):
        twin = FakeClient(self.registry)
        self.clones.append(twin)
        return twin

    def abort(self):
        self.aborted.set()
        for twin in self.clones:
            twin.abort()

    def close(self):
        self.closed = True

    def list(self, architecture=None, tags=(), etag=None, wait=None, stop=None):
        return "etag", self.registry.listing()

    def download(self, app, version, arch, dest, sha256, size, progress=None,
                 deadline=None, stop=None, durable=True):
        assert durable is False          # the importer makes it durable
        self.downloads.append(app)
        data = self.registry.data[app]
        try:
            behave = self.registry.behave.get(app)
            if behave is not None:
                behave(self, dest, data, stop)
            else:
                with open(dest, "wb") as out:
                    out.write(data)
            if progress is not None:
                progress(size, size)
        except BaseException:
            os.unlink(dest)
            raise


@pytest.fixture
def store(tmp_path):
    with AppStore(tmp_path / "node") as s:
        yield s


def staged(store):
    return os.listdir(store.dirs.staging_dir)


def blobs(store):
    return sorted(f for _, _, files in os.walk(store.dirs.blobs_dir) for f in files)


def fetch_threads():
    return [t for t in threading.enumerate() if t.name == "ams-sync-fetch"]


def test_downloads_run_side_by_side_and_all_import(store):
    names = ["alpha", "bravo", "charlie", "delta", "echo"]
    registry = Registry(names)
    together = threading.Barrier(3, timeout=WAIT)

    def concurrent(client, dest, data, stop):
        together.wait()                  # passes only with three downloads under way
        with open(dest, "wb") as out:
            out.write(data)
    for name in names[:3]:
        registry.behave[name] = concurrent
    client = FakeClient(registry)
    shown = []
    fetcher = Fetcher(client, store, downloaders=3,
                      progress=lambda what, done, total: shown.append((what, done, total)))
    jobs = [registry.job(name) for name in names]
    assert fetcher.run(jobs) is True
    assert all(job.done and job.error is None for job in jobs)
    assert sorted(app["name"] for app in store.list()) == names
    for app in store.list():
        [version] = app["versions"]
        assert store.blob_path(version["sha256"]).read_bytes() == registry.data[app["name"]]
        assert app["immutable"] and version["published"]
    assert len(registry.clients) == 3                       # the client and two clones
    assert all(twin.closed for twin in client.clones) and not client.closed
    assert staged(store) == [] and fetch_threads() == []
    # one progress line for the whole run, ending at its total
    total = sum(len(data) for data in registry.data.values())
    assert {what for what, _, _ in shown} == {"5 packages"} and shown[-1][1:] == (total, total)


def test_a_download_failing_midway_spares_the_others(store):
    registry = Registry(["alpha", "bravo", "charlie", "delta"])

    def cut(client, dest, data, stop):
        with open(dest, "wb") as out:
            out.write(data[:len(data) // 2])
        raise TransferError("download of bravo/0/amd64 failed after 4 attempts: cut")
    registry.behave["bravo"] = cut
    jobs = [registry.job(name) for name in sorted(registry.data)]
    assert Fetcher(FakeClient(registry), store).run(jobs) is True
    outcome = {job.key[0]: (job.done, job.error) for job in jobs}
    assert outcome.pop("bravo") == (False, "download of bravo/0/amd64 failed after 4 attempts: cut")
    assert all(done and error is None for done, error in outcome.values())
    assert sorted(app["name"] for app in store.list()) == ["alpha", "charlie", "delta"]
    assert blobs(store) == sorted(job.pkg["sha256"] for job in jobs if job.done)
    assert staged(store) == []


def test_a_package_failing_its_import_spares_the_others(store):
    registry = Registry(["alpha", "bravo", "charlie"])
    registry.data["bravo"] = b"PK\x03\x04 not really a zip"     # right sha256, bad archive
    jobs = [registry.job(name) for name in sorted(registry.data)]
    Fetcher(FakeClient(registry), store).run(jobs)
    assert [job.done for job in jobs] == [True, False, True]
    assert "not a valid .zip" in jobs[1].error
    assert sorted(app["name"] for app in store.list()) == ["alpha", "charlie"]
    assert staged(store) == [] and len(blobs(store)) == 2


def test_a_fatal_error_starts_no_new_download(store):
    registry = Registry(["alpha", "bravo", "charlie"])

    def refused(client, dest, data, stop):
        raise NotTrusted("the registry refused this node's certificate")
    registry.behave["alpha"] = refused
    client = FakeClient(registry)
    jobs = [registry.job(name) for name in sorted(registry.data)]
    assert Fetcher(client, store, downloaders=1).run(jobs) is False
    assert client.downloads == ["alpha"]
    assert jobs[0].error == "the registry refused this node's certificate"
    assert not any(job.done or job.error for job in jobs[1:])
    assert store.list() == [] and staged(store) == []


def _hanging(started, count):
    """A behave() that writes half, then blocks until its client is aborted."""
    lock = threading.Lock()

    def hang(client, dest, data, stop):
        with open(dest, "wb") as out:
            out.write(data[:len(data) // 2])
        with lock:
            started.append(dest)
            if len(started) == count:
                started.all.set()
        assert client.aborted.wait(WAIT)
        if stop is not None and stop.is_set():
            raise Cancelled("transfer stopped")
        raise TransferError("connection broken")
    return hang


class Started(list):
    def __init__(self):
        super().__init__()
        self.all = threading.Event()


def test_stop_during_concurrent_downloads_ends_everything_and_cleans_staging(store):
    names = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    registry = Registry(names)
    started = Started()
    for name in names:
        registry.behave[name] = _hanging(started, 3)
    client, stop, outcome = FakeClient(registry), threading.Event(), []

    def cycle():
        try:
            outcome.append(Fetcher(client, store, stop=stop, downloaders=3).run(
                [registry.job(name) for name in names]))
        except BaseException as error:
            outcome.append(error)
    worker = threading.Thread(target=cycle)
    worker.start()
    assert started.all.wait(WAIT)
    assert len(staged(store)) == 3                     # three downloads, mid-way
    stop.set()                                         # what Loop.stop() does
    client.abort()
    worker.join(WAIT)
    assert not worker.is_alive() and fetch_threads() == []
    assert isinstance(outcome[0], Cancelled)
    assert len(client.downloads) + sum(len(t.downloads) for t in client.clones) == 3
    assert staged(store) == [] and store.list() == [] and blobs(store) == []


@pytest.mark.parametrize("importers", [1, 2])
def test_an_interrupted_caller_stops_the_other_threads(store, monkeypatch, importers):
    names = ["alpha", "bravo", "charlie", "delta"]
    registry = Registry(names)
    started = Started()
    for name in names[1:]:
        registry.behave[name] = _hanging(started, 2)
    real = store.import_package

    def interrupted(*args, **kwargs):
        assert started.all.wait(WAIT)                  # the others are under way
        raise KeyboardInterrupt
    monkeypatch.setattr(store, "import_package", interrupted)
    client = FakeClient(registry)
    # No stop event, as in `ams-sync sync`; with one importer the interrupt
    # is the calling thread's own, with two it may come from the other one.
    with pytest.raises(KeyboardInterrupt):
        Fetcher(client, store, downloaders=3, importers=importers).run(
            [registry.job(name) for name in names])
    assert client.aborted.is_set() and fetch_threads() == []
    monkeypatch.setattr(store, "import_package", real)
    assert staged(store) == [] and store.list() == []


def test_the_summary_reads_in_listing_order(store):
    names = ["alpha", "bravo", "charlie", "delta", "echo"]
    registry = Registry(names)
    release = threading.Event()

    def late(client, dest, data, stop):
        assert release.wait(WAIT)
        with open(dest, "wb") as out:
            out.write(data)

    def broken(client, dest, data, stop):
        raise TransferError("download of delta/0/amd64 failed")

    def first(client, dest, data, stop):
        with open(dest, "wb") as out:
            out.write(data)
        release.set()                    # alpha ends last of all
    registry.behave.update(alpha=late, delta=broken, echo=first)
    summary = Sync(FakeClient(registry), store, own_fingerprint="e" * 64,
                   architecture="amd64").pull()
    assert summary.pulled == ["alpha/0/amd64", "bravo/0/amd64", "charlie/0/amd64",
                              "echo/0/amd64"]
    assert summary.failed == ["download of delta/0/amd64 failed"]
    assert staged(store) == []


def test_the_defaults_keep_a_few_downloads_and_imports_going():
    assert fetch.DOWNLOADERS >= 2 and fetch.IMPORTERS >= 1 and fetch.LEAD >= 1
