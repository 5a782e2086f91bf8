"""registry/paths.py, registry/blobs.py and registry/storage.py.

Everything runs against a real data directory: real sqlite, real files, a
real subprocess killed mid-upload, a real (tiny) tmpfs for a full disk.
"""
import hashlib
import io
import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import threading
import tracemalloc

import pytest

from registry.blobs import CHUNK_SIZE
from registry.errors import ApiError
from registry.paths import DataDir, default_data_dir
from registry.storage import PackageStore
from regserver import reaping
from tmpfs import mounted_tmpfs

ROOT = pathlib.Path(__file__).resolve().parent.parent
PUBLISHER = "ab" * 32
PACKAGE_KEYS = {"name", "version", "architecture", "size", "sha256", "created_at",
                "publisher", "tags", "manifest"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(store, app, version, arch, data, tags=(), stream=None, length=None, digest=None):
    manifest = {"name": app, "version": version, "tags": list(tags)}
    return store.put(app, version, arch, stream or io.BytesIO(data),
                     len(data) if length is None else length,
                     digest or sha(data), manifest, PUBLISHER)


def staging(store):
    return sorted(os.listdir(store.datadir.staging_dir))


def blobs(store):
    return sorted(p.name for p in store.datadir.blobs_dir.glob("*/*"))


def names_and_versions(apps):
    return [(a["name"], [(p["version"], p["architecture"]) for p in a["versions"]])
            for a in apps]


@pytest.fixture
def datadir(tmp_path):
    return DataDir(tmp_path / "data")


@pytest.fixture
def store(datadir):
    with PackageStore(datadir) as s:
        yield s


class BlockingStream:
    """Gives ``head`` then blocks until released, then gives the rest."""

    def __init__(self, data, head):
        self._data = io.BytesIO(data)
        self._head = head
        self.blocked = threading.Event()
        self.release = threading.Event()

    def read(self, n):
        pos = self._data.tell()
        if pos >= self._head:
            self.blocked.set()
            self.release.wait()
        return self._data.read(min(n, self._head - pos) if pos < self._head else n)


# -- paths ---------------------------------------------------------------------

def test_layout_matches_the_picture(tmp_path):
    d = DataDir(tmp_path / "d")
    root = tmp_path / "d"
    assert d.server_cert == root / "certs" / "server.crt"
    assert d.server_key == root / "certs" / "server.key"
    assert d.trust_db == root / "trust.db"
    assert d.packages_db == root / "packages.db"
    assert d.staging_dir == root / "staging"
    digest = sha(b"x")
    assert d.blob_path(digest) == root / "blobs" / "sha256" / digest[:2] / digest


def test_ensure_creates_private_directories_and_is_idempotent(tmp_path):
    d = DataDir(tmp_path / "parent" / "d").ensure()
    DataDir(d.root).ensure()
    for path in (d.root, d.certs_dir, d.root / "blobs", d.blobs_dir, d.staging_dir):
        assert path.is_dir()
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


@pytest.mark.parametrize("bad", ["", "../" * 20 + "etc/passwd", "A" * 64, sha(b"x")[:63],
                                 sha(b"x") + "0", None])
def test_blob_path_refuses_anything_but_a_digest(tmp_path, bad):
    with pytest.raises(ValueError):
        DataDir(tmp_path).blob_path(bad)


@pytest.mark.parametrize("env, expected", [
    ({"AAR_DATA_DIR": "/a", "SNAP_COMMON": "/s", "HOME": "/h"}, "/a"),
    ({"AAR_DATA_DIR": "", "SNAP_COMMON": "/s", "HOME": "/h"}, "/s"),
    ({"SNAP_COMMON": "/var/snap/aar/common"}, "/var/snap/aar/common"),
    ({"XDG_DATA_HOME": "/x", "HOME": "/h"}, "/x/aar"),
    ({"XDG_DATA_HOME": "", "HOME": "/h"}, "/h/.local/share/aar"),
    ({"HOME": "/h"}, "/h/.local/share/aar"),
])
def test_default_data_dir(env, expected):
    assert default_data_dir(env, euid=1000) == pathlib.Path(expected)


def test_root_defaults_to_a_system_path():
    # sudo drops the caller's variables: root's default is where a service looks.
    assert default_data_dir({"HOME": "/root"}, euid=0) == pathlib.Path("/var/lib/aar")
    assert default_data_dir({"SNAP_COMMON": "/s", "HOME": "/root"}, euid=0) == pathlib.Path("/s")


def test_snap_puts_the_server_certificate_where_the_guide_says():
    d = DataDir(default_data_dir({"SNAP_COMMON": "/var/snap/aar/common"}))
    assert str(d.server_cert) == "/var/snap/aar/common/certs/server.crt"


# -- put and get ---------------------------------------------------------------

def test_put_then_get(store):
    data = b"package bytes" * 1000
    created, package = put(store, "game", 3, "amd64", data, tags=["a", "b"])
    assert created is True
    assert set(package) == PACKAGE_KEYS
    assert package["name"] == "game" and package["version"] == 3
    assert package["architecture"] == "amd64"
    assert package["size"] == len(data) and package["sha256"] == sha(data)
    assert package["publisher"] == PUBLISHER
    assert package["tags"] == ["a", "b"]
    assert package["manifest"] == {"name": "game", "version": 3, "tags": ["a", "b"]}
    assert package["created_at"].endswith("Z") and len(package["created_at"]) == 20
    assert store.get("game", 3, "amd64") == package
    assert store.get("game", 4, "amd64") is None
    assert store.blob_path(sha(data)).read_bytes() == data
    assert staging(store) == []


def test_version_given_as_decimal_text_is_stored_as_a_number(store):
    created, package = put(store, "game", "7", "arm64", b"x")
    assert package["version"] == 7
    assert store.get("game", 7, "arm64") is not None


def test_body_spanning_many_chunks(store):
    data = os.urandom(3 * CHUNK_SIZE + 12345)
    asked = []

    class Recording(io.BytesIO):
        def read(self, n=-1):
            asked.append(n)
            return super().read(n)

    put(store, "big", 0, "amd64", data, stream=Recording(data))
    assert store.blob_path(sha(data)).read_bytes() == data
    assert max(asked) == CHUNK_SIZE and all(n > 0 for n in asked)


def test_memory_stays_flat_whatever_the_size(store):
    block = os.urandom(CHUNK_SIZE)
    count = 48
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(block)

    class Repeating:
        # Hands out the same block: the stream itself allocates nothing.
        sent = 0

        def read(self, n):
            assert n == CHUNK_SIZE
            self.sent += 1
            return block

    tracemalloc.start()
    try:
        store.put("huge", 0, "amd64", Repeating(), count * CHUNK_SIZE,
                  digest.hexdigest(), {}, PUBLISHER)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * CHUNK_SIZE, f"peak {peak} bytes for a {count} MiB upload"


@pytest.mark.parametrize("field, value", [
    ("app", "../etc"), ("app", ""), ("app", 5), ("version", -1), ("version", "1.0"),
    ("version", True), ("arch", "AMD64"), ("arch", "amd/64"), ("length", -1),
    ("length", "5"), ("sha256", "0" * 63), ("sha256", "z" * 64),
    ("manifest", ["not", "a", "dict"]), ("manifest", {"tags": "a,b"}),
    ("manifest", {"tags": [1]}),
])
def test_bad_arguments_are_refused_before_reading(store, field, value):
    args = {"app": "game", "version": 1, "arch": "amd64", "length": 1,
            "sha256": sha(b"x"), "manifest": {}}
    args[field] = value
    stream = io.BytesIO(b"x")
    with pytest.raises(ApiError) as info:
        store.put(args["app"], args["version"], args["arch"], stream, args["length"],
                  args["sha256"], args["manifest"], PUBLISHER)
    assert info.value.status == 400
    assert stream.tell() == 0
    assert store.list() == []


def test_uppercase_digest_is_accepted(store):
    created, package = put(store, "game", 1, "amd64", b"x", digest=sha(b"x").upper())
    assert created and package["sha256"] == sha(b"x")


def test_same_package_again_is_a_no_op_without_reading_the_body(store):
    data = b"same bytes"
    put(store, "game", 1, "amd64", data)
    before = store.generation()
    stream = io.BytesIO(data)
    created, package = put(store, "game", 1, "amd64", data, stream=stream)
    assert created is False
    assert package == store.get("game", 1, "amd64")
    assert stream.tell() == 0
    assert store.generation() == before


def test_different_bytes_for_a_published_package_conflict(store):
    put(store, "game", 1, "amd64", b"first")
    with pytest.raises(ApiError) as info:
        put(store, "game", 1, "amd64", b"second")
    assert (info.value.status, info.value.code) == (409, "conflict")
    assert store.blob_path(sha(b"first")).read_bytes() == b"first"
    assert blobs(store) == [sha(b"first")]


def test_short_body_is_a_size_mismatch_and_leaves_nothing(store):
    data = b"x" * 1000
    with pytest.raises(ApiError) as info:
        put(store, "game", 1, "amd64", data[:999], length=1000, digest=sha(data))
    assert (info.value.status, info.value.code) == (422, "size_mismatch")
    assert store.list() == [] and staging(store) == [] and blobs(store) == []


def test_long_body_is_read_only_up_to_length(store):
    data, extra = b"x" * 1000, b"NEXT REQUEST"
    stream = io.BytesIO(data + extra)
    created, package = put(store, "game", 1, "amd64", data, stream=stream)
    assert created and package["size"] == 1000
    assert stream.tell() == 1000
    assert stream.read() == extra


def test_digest_mismatch_leaves_nothing(store):
    with pytest.raises(ApiError) as info:
        put(store, "game", 1, "amd64", b"actual bytes", digest=sha(b"claimed bytes"))
    assert (info.value.status, info.value.code) == (422, "digest_mismatch")
    assert store.list() == [] and store.get("game", 1, "amd64") is None
    assert staging(store) == [] and blobs(store) == []


def test_stream_errors_propagate_and_leave_nothing(store):
    class Broken:
        calls = 0

        def read(self, n):
            self.calls += 1
            if self.calls > 1:
                raise ConnectionResetError("peer went away")
            return b"x" * 10

    with pytest.raises(ConnectionResetError):
        put(store, "game", 1, "amd64", b"x" * 100, stream=Broken())
    assert store.list() == [] and staging(store) == [] and blobs(store) == []


# -- listing -------------------------------------------------------------------

@pytest.fixture
def catalogue(store):
    put(store, "zeta", 0, "amd64", b"z0", tags=["games"])
    put(store, "alpha", 2, "arm64", b"a2a", tags=["tools"])
    put(store, "alpha", 2, "amd64", b"a2", tags=["tools", "games"])
    put(store, "alpha", 10, "amd64", b"a10", tags=[])
    put(store, "alpha", 1, "amd64", b"a1", tags=["beta"])
    put(store, "mid", 0, "arm64", b"m0", tags=["tools"])
    return store


def test_list_sorts_applications_by_name_and_versions_by_version_then_arch(catalogue):
    apps = catalogue.list()
    assert names_and_versions(apps) == [
        ("alpha", [(1, "amd64"), (2, "amd64"), (2, "arm64"), (10, "amd64")]),
        ("mid", [(0, "arm64")]),
        ("zeta", [(0, "amd64")]),
    ]
    assert set(apps[0]) == {"name", "versions"}
    for app in apps:
        for package in app["versions"]:
            assert package == catalogue.get(package["name"], package["version"],
                                            package["architecture"])


def test_list_by_architecture_omits_applications_left_empty(catalogue):
    assert names_and_versions(catalogue.list(architecture="arm64")) == [
        ("alpha", [(2, "arm64")]), ("mid", [(0, "arm64")])]
    assert catalogue.list(architecture="riscv64") == []


@pytest.mark.parametrize("tags, expected", [
    (["games"], [("alpha", [(2, "amd64")]), ("zeta", [(0, "amd64")])]),
    (["beta", "tools"], [("alpha", [(1, "amd64"), (2, "amd64"), (2, "arm64")]),
                         ("mid", [(0, "arm64")])]),
    ("beta,tools", [("alpha", [(1, "amd64"), (2, "amd64"), (2, "arm64")]),
                    ("mid", [(0, "arm64")])]),
    (["nobody"], []),
    ([""], None),
    ((), None),
])
def test_list_by_tags_keeps_packages_with_any_of_them(catalogue, tags, expected):
    everything = names_and_versions(catalogue.list())
    assert names_and_versions(catalogue.list(tags=tags)) == (
        everything if expected is None else expected)


def test_list_by_architecture_and_tags(catalogue):
    assert names_and_versions(catalogue.list(architecture="amd64", tags=["tools"])) == [
        ("alpha", [(2, "amd64")])]


def test_repeated_listing_is_served_from_the_cache_until_a_write(catalogue):
    first = catalogue.list(tags=["tools"])
    assert catalogue.list(tags=("tools",)) is first
    assert catalogue.list(tags=["tools", "tools"]) is first
    put(catalogue, "new", 0, "amd64", b"n", tags=["tools"])
    second = catalogue.list(tags=["tools"])
    assert second is not first
    assert "new" in [a["name"] for a in second]


def test_application(catalogue):
    app = catalogue.application("alpha")
    assert app["name"] == "alpha"
    assert [(p["version"], p["architecture"]) for p in app["versions"]] == [
        (1, "amd64"), (2, "amd64"), (2, "arm64"), (10, "amd64")]
    assert catalogue.application("nothing") is None


# -- deleting ------------------------------------------------------------------

def test_delete_package(catalogue):
    digest = catalogue.get("alpha", 10, "amd64")["sha256"]
    assert catalogue.delete_package("alpha", 10, "amd64") is True
    assert catalogue.get("alpha", 10, "amd64") is None
    assert not catalogue.blob_path(digest).exists()
    assert catalogue.delete_package("alpha", 10, "amd64") is False
    assert catalogue.delete_package("zeta", 0, "amd64") is True
    assert "zeta" not in [a["name"] for a in catalogue.list()]
    assert catalogue.application("zeta") is None


def test_delete_application(catalogue):
    digests = [p["sha256"] for p in catalogue.application("alpha")["versions"]]
    assert catalogue.delete_application("alpha") == 4
    assert catalogue.application("alpha") is None
    assert not any(catalogue.blob_path(d).exists() for d in digests)
    assert [a["name"] for a in catalogue.list()] == ["mid", "zeta"]
    assert catalogue.delete_application("alpha") == 0


def test_blob_shared_by_two_packages_survives_one_delete(store):
    data = b"identical bytes"
    put(store, "one", 1, "amd64", data)
    put(store, "two", 1, "arm64", data)
    assert blobs(store) == [sha(data)]
    assert store.delete_package("one", 1, "amd64")
    assert store.blob_path(sha(data)).read_bytes() == data
    assert store.delete_application("two") == 1
    assert blobs(store) == []


# -- generation ----------------------------------------------------------------

def test_generation_changes_on_every_write_and_persists(datadir):
    seen = []
    with PackageStore(datadir) as store:
        seen.append(store.generation())
        put(store, "game", 1, "amd64", b"1")
        seen.append(store.generation())
        put(store, "game", 2, "amd64", b"2")
        seen.append(store.generation())
        put(store, "game", 2, "amd64", b"2")            # no-op: no write
        store.delete_package("game", 9, "amd64")        # nothing to delete
        store.delete_application("nothing")
        assert store.generation() == seen[-1]
        store.delete_package("game", 1, "amd64")
        seen.append(store.generation())
    with PackageStore(datadir) as store:
        assert store.generation() == seen[-1]
        store.delete_application("game")
        seen.append(store.generation())
    assert seen == sorted(set(seen)), seen


def test_generation_does_not_restart_when_the_data_directory_is_recreated(tmp_path):
    with PackageStore(tmp_path / "first") as store:
        put(store, "game", 1, "amd64", b"1")
        old = store.generation()
    with PackageStore(tmp_path / "second") as store:
        assert store.generation() != old


# -- crashes and recovery --------------------------------------------------------

def test_recover_after_a_simulated_crash(datadir):
    with PackageStore(datadir) as store:
        put(store, "kept", 1, "amd64", b"kept")
        put(store, "lost", 1, "amd64", b"lost")
    # What a crash can leave, plus a blob gone behind our back.
    (datadir.staging_dir / "upload-leftover").write_bytes(b"half an upload")
    orphan = datadir.blob_path(sha(b"orphan"))
    orphan.parent.mkdir(mode=0o700, exist_ok=True)
    orphan.write_bytes(b"orphan")
    datadir.blob_path(sha(b"lost")).unlink()
    stranger = datadir.blobs_dir / "README"
    stranger.write_text("not ours")

    with PackageStore(datadir) as store:
        assert names_and_versions(store.list()) == [("kept", [(1, "amd64")])]
        assert staging(store) == []
        assert not orphan.exists()
        assert stranger.exists()
        assert store.blob_path(sha(b"kept")).read_bytes() == b"kept"
        assert store.recover() == {"staging": 0, "blobs": 0, "set_aside_blobs": 0,
                                   "set_aside_rows": 0}
    # Neither the orphan nor the lost package's row is a crash's doing: both
    # were set aside, not deleted.
    [quarantine] = (datadir.root / "quarantine").iterdir()
    assert (quarantine / "blobs" / sha(b"orphan")).read_bytes() == b"orphan"
    [row] = json.loads((quarantine / "rows.json").read_text())
    assert (row["name"], row["sha256"]) == ("lost", sha(b"lost"))


def test_recover_reports_what_it_removed(datadir, caplog):
    with PackageStore(datadir) as store:
        put(store, "game", 1, "amd64", b"bytes")
    datadir.blob_path(sha(b"bytes")).write_bytes(b"truncated")
    (datadir.staging_dir / "upload-x").write_bytes(b"x")
    with caplog.at_level("INFO", logger="aar.storage"):
        with PackageStore(datadir) as store:
            assert store.list() == []
    messages = [r.getMessage() for r in caplog.records if r.name == "aar.storage"]
    assert any("upload-x" in m for m in messages)
    assert any("set game 1 amd64 aside" in m and sha(b"bytes") in m for m in messages)
    [quarantine] = (datadir.root / "quarantine").iterdir()
    assert (quarantine / "blobs" / sha(b"bytes")).read_bytes() == b"truncated"


_CHILD = """
import os, sys
sys.path.insert(0, {root!r})
from registry.storage import PackageStore

class Blocking:
    calls = 0
    def read(self, n):
        self.calls += 1
        if self.calls == 2:
            # The first chunk is in the staging file: tell the parent.
            sys.stdout.write("ready\\n")
            sys.stdout.flush()
        return os.read(0, n)   # blocks: the parent never sends the rest

store = PackageStore(sys.argv[1])
store.put("game", 2, "amd64", Blocking(), 10 * 1024 * 1024, "0" * 64, {{}}, "")
"""


def test_process_killed_mid_upload_leaves_nothing_listed(datadir):
    with PackageStore(datadir) as store:
        put(store, "game", 1, "amd64", b"committed")
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(root=str(ROOT)),
                              str(datadir.root)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    with reaping(child):
        child.stdin.write(b"x" * 65536)
        child.stdin.flush()
        assert child.stdout.readline() == b"ready\n"
        assert len(os.listdir(datadir.staging_dir)) == 1
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    with PackageStore(datadir) as store:
        assert names_and_versions(store.list()) == [("game", [(1, "amd64")])]
        assert staging(store) == []
        assert blobs(store) == [sha(b"committed")]


def test_a_second_store_on_the_same_directory_is_refused(datadir):
    with PackageStore(datadir):
        with pytest.raises(ApiError, match="in use"):
            PackageStore(datadir)
    with PackageStore(datadir) as store:
        assert store.list() == []


# -- a full disk -----------------------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs, or a skip where mounting is not allowed."""
    with mounted_tmpfs(tmp_path, "1m") as mnt:
        yield mnt


@pytest.mark.parametrize("chunks", [2, 12])   # written inline; by the writer thread
def test_disk_full_is_insufficient_storage_and_leaves_nothing(tiny_fs, chunks):
    with PackageStore(tiny_fs / "data") as store:
        data = os.urandom(chunks * CHUNK_SIZE)
        with pytest.raises(ApiError) as info:
            put(store, "game", 1, "amd64", data)
        assert (info.value.status, info.value.code) == (507, "insufficient_storage")
        assert store.list() == [] and staging(store) == [] and blobs(store) == []
        # The space came back: a package that fits still goes in.
        created, _ = put(store, "game", 1, "amd64", b"small")
        assert created


# -- threads ---------------------------------------------------------------------

def test_concurrent_puts_from_threads(store):
    errors, results = [], []
    barrier = threading.Barrier(12)

    def work(app, version, data):
        barrier.wait()
        try:
            results.append((app, version, put(store, app, version, "amd64", data)[0]))
        except ApiError as exc:
            errors.append((app, version, exc.code))

    jobs = [(f"app{i}", 0, f"bytes {i}".encode()) for i in range(6)]
    jobs += [("same", 0, b"same bytes")] * 4           # one wins, three no-ops
    jobs += [("race", 0, b"left"), ("race", 0, b"right")]  # one wins, one 409
    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(r for r in results if r[0].startswith("app")) == [
        (f"app{i}", 0, True) for i in range(6)]
    assert sorted(r[2] for r in results if r[0] == "same") == [False, False, False, True]
    assert [r[2] for r in results if r[0] == "race"] == [True]
    assert errors == [("race", 0, "conflict")]
    assert len(store.list()) == 8
    assert staging(store) == []
    listed = {p["sha256"] for a in store.list() for p in a["versions"]}
    assert set(blobs(store)) == listed


def test_reads_and_other_writes_do_not_wait_for_an_upload_in_flight(store):
    put(store, "listed", 0, "amd64", b"listed")
    data = b"slow upload" * 10000
    stream = BlockingStream(data, head=1000)
    outcome = []
    uploader = threading.Thread(
        target=lambda: outcome.append(put(store, "slow", 0, "amd64", data, stream=stream)))
    uploader.start()
    try:
        assert stream.blocked.wait(timeout=60)
        # The upload is stalled mid-body: everything else still answers.
        assert [a["name"] for a in store.list()] == ["listed"]
        assert store.get("listed", 0, "amd64") is not None
        assert store.application("slow") is None
        created, _ = put(store, "other", 0, "amd64", b"other")
        assert created
        assert store.delete_package("other", 0, "amd64")
        assert len(staging(store)) == 1
    finally:
        stream.release.set()
        uploader.join()
    assert outcome and outcome[0][0] is True
    assert [a["name"] for a in store.list()] == ["listed", "slow"]
    assert staging(store) == []
