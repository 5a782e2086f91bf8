"""Sync cycles end to end: a real registry on loopback, agents as separate data
directories registered the way the operator guide does it by hand, driven
through ams_sync.main([...]) and, once, a real `python -m ams_sync`."""
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

from agent import failures
from agent import commands, sync
from agentnodes import Node, nodes, registry  # noqa: F401 (fixtures)
from fakeregistry import CuttingProxy, FakeRegistry
from regserver import ROOT, Client, access  # noqa: F401 (fixture)
from trust import certs as certs_mod

MiB = 1 << 20


def listed(registry):
    return {(p["name"], p["version"]) for app in registry.packages.list() for p in app["versions"]}


# -- the operator guide, start to finish ---------------------------------------------------

def test_manual_registration_push_pull_and_delete(tmp_path, registry, nodes):
    pub, cli = nodes
    pkgs = tmp_path / "pkgs"
    pkgs.mkdir()
    pub.add_app(pkgs, "game", size=300_000)
    pub.add_app(pkgs, "game", publish=False)                  # version 1: not published
    pub.add_app(pkgs, "draft", publish=False)

    result = pub.ok("sync")
    assert result.out.splitlines()[0] == str(sync.Summary("push", pushed=["x"]))
    assert listed(registry) == {("game", 0)}
    [pushed] = registry.packages.application("game")["versions"]
    assert pushed["publisher"] == pub.fingerprint

    # The client pulls with a real `python -m ams_sync` process.
    proc = subprocess.run([sys.executable, "-m", "ams_sync", "--data-dir", str(cli.root), "sync"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pulled game/0/" in proc.stdout
    game = cli.apps()["game"]
    assert game["origin"] == "pulled" and game["immutable"]
    [version] = game["versions"]
    assert version["published"] and version["sha256"] == pushed["sha256"]
    assert cli.blob(version["sha256"]) == pub.blob(version["sha256"])
    assert "draft" not in cli.apps()
    refused = cli("application", "delete", "game")
    assert refused.code == 1 and "immutable" in refused.err

    pub.ok("application", "delete", "game")
    assert "removed game/0/" in pub.ok("sync").out
    assert listed(registry) == set()
    assert "removed game/0/" in cli.ok("sync").out
    assert "game" not in cli.apps()
    assert pub.staging() == cli.staging() == []


def test_unpublishing_removes_only_what_this_publisher_pushed(tmp_path, registry, nodes, certs):
    pub, cli = nodes
    registry.trust_cert(certs.publisher, "publisher")
    other = Client(registry.port, certs.publisher)
    assert other.upload("theirs", 0, "amd64", b"not ours")[0] == 201
    pub.add_app(tmp_path, "game")
    pub.ok("sync")
    assert listed(registry) == {("game", 0), ("theirs", 0)}
    pub.ok("application", "revoke", "game", "0")
    assert "removed game/0/" in pub.ok("sync").out
    assert listed(registry) == {("theirs", 0)}
    assert "game" in pub.apps()                                # still here, unpublished


def test_filter_by_tags(tmp_path, registry, nodes):
    pub, cli = nodes
    pub.add_app(tmp_path, "game", tags=("casual",))
    pub.add_app(tmp_path, "chess", tags=("board", "classic"))
    pub.ok("sync")
    cli.ok("config", "set", "registry.filter", "board")
    cli.ok("sync")
    assert set(cli.apps()) == {"chess"}
    cli.ok("config", "set", "registry.filter", "casual")
    out = cli.ok("sync").out
    assert "pulled game/0/" in out and "removed chess/0/" in out
    assert set(cli.apps()) == {"game"}
    cli.ok("config", "set", "registry.filter", "")
    cli.ok("sync")
    assert set(cli.apps()) == {"game", "chess"}


def test_unchanged_registry_costs_one_request_answered_304(tmp_path, registry, nodes, access):
    pub, cli = nodes
    pub.add_app(tmp_path, "game")
    pub.ok("sync")
    pub.ok("sync")          # the listing changed with the upload: a full one, once
    cli.ok("sync")
    for node in (pub, cli):
        access.clear()
        result = node.ok("sync")
        assert "registry unchanged" in result.out
        assert len(access) == 1 and '"GET /1.0/applications?architecture=' in access[0]
        assert '" 304 ' in access[0]


def test_a_new_local_version_is_pushed_even_when_the_registry_is_unchanged(tmp_path, nodes,
                                                                           registry):
    pub, _ = nodes
    pub.add_app(tmp_path, "game")
    pub.ok("sync")
    pub.ok("sync")                          # 304 from here on
    pub.add_app(tmp_path, "game")
    assert "pushed game/1/" in pub.ok("sync").out
    assert listed(registry) == {("game", 0), ("game", 1)}


# -- refusals and failures: nothing deleted, nothing half-imported ---------------------

def test_a_client_role_pushing_gets_a_clear_error(tmp_path, registry):
    node = Node(tmp_path / "ams").register(registry, "push", "client")
    node.add_app(tmp_path, "game")
    result = node("sync")
    assert result.code == 1
    assert failures.READ_ONLY in result.err
    assert listed(registry) == set()


def test_wrong_fingerprint_is_refused_and_nothing_changes(tmp_path, registry, nodes, certs,
                                                          access):
    pub, cli = nodes
    pub.add_app(tmp_path, "game")
    pub.ok("sync")
    cli.ok("sync")
    pub.ok("application", "delete", "game")
    wrong = certs_mod.load_certificate(certs.stranger.cert).fingerprint
    for node in (pub, cli):
        node.ok("config", "set", "registry.fingerprint", wrong)
        access.clear()
        result = node("sync")
        assert result.code == 1
        assert failures.PIN_MISMATCH.format(expected=wrong, actual=registry.fingerprint) \
            in result.err
        assert access == []                                    # not one request
    assert listed(registry) == {("game", 0)}
    assert "game" in cli.apps()


def _fake(registry, answer):
    return FakeRegistry(registry.data.server_cert, registry.data.server_key, answer)


BROKEN_ANSWERS = {
    "500": lambda h: FakeRegistry.send(h, 500, b'{"type":"error","error":"boom",'
                                               b'"error_code":500}', close=True),
    "missing field": lambda h: FakeRegistry.send(h, 200, json.dumps(
        {"type": "sync", "metadata": [{"name": "other", "versions": [{"name": "other"}]}]}
    ).encode()),
    "not json": lambda h: FakeRegistry.send(h, 200, b"<html>proxy error</html>"),
    "cut short": lambda h: FakeRegistry.send(h, 200, b'{"type":"sync","metadata":[',
                                             length=4000, close=True),
}


def test_a_failed_listing_deletes_nothing_and_the_next_cycle_completes(tmp_path, registry,
                                                                       nodes):
    pub, cli = nodes
    pub.add_app(tmp_path, "game")
    pub.add_app(tmp_path, "chess")
    pub.ok("sync")
    cli.ok("sync")
    pub.ok("application", "revoke", "chess", "0")   # chess would go from the client
    pub.ok("sync")
    real_url = f"https://127.0.0.1:{registry.port}"
    for case, answer in BROKEN_ANSWERS.items():
        fake = _fake(registry, answer)
        try:
            for node in (pub, cli):
                node.ok("config", "set", "registry.url", fake.url)
                result = node("sync")
                assert result.code == 1, case
                assert result.err.strip(), case
        finally:
            fake.stop()
        assert {m for m, _, _, _ in fake.requests} == {"GET"}, case   # no write, no delete
        assert set(cli.apps()) == {"game", "chess"}, case
    registry.stop()                                     # the registry is down
    result = cli("sync")
    assert result.code == 1 and "unavailable" in result.err
    assert set(cli.apps()) == {"game", "chess"} and cli.staging() == []


def test_registry_back_after_an_outage(tmp_path, registry, nodes):
    pub, cli = nodes
    pub.add_app(tmp_path, "game")
    pub.ok("sync")
    fake = _fake(registry, BROKEN_ANSWERS["500"])
    try:
        cli.ok("config", "set", "registry.url", fake.url)
        assert cli("sync").code == 1
    finally:
        fake.stop()
    cli.ok("config", "set", "registry.url", f"https://127.0.0.1:{registry.port}")
    assert "pulled game/0/" in cli.ok("sync").out


def test_a_download_cut_midway_imports_nothing_then_completes(tmp_path, registry, nodes):
    pub, cli = nodes
    pub.add_app(tmp_path, "game", size=3 * MiB)
    pub.ok("sync")
    proxy = CuttingProxy(registry.port, cut_after=MiB // 2)
    try:
        cli.ok("config", "set", "registry.url", proxy.url)
        result = cli("sync")
        assert result.code == 1
        assert "download of game/0/" in result.err and "attempts" in result.err
        assert "game" not in cli.apps()
        assert cli.staging() == []
        assert not any(files for _, _, files in os.walk(cli.root / "blobs"))
        proxy.cut_after = None                          # the link heals
        result = cli.ok("sync")
        assert "pulled game/0/" in result.out
    finally:
        proxy.stop()
    [version] = cli.apps()["game"]["versions"]
    assert cli.blob(version["sha256"]) == pub.blob(version["sha256"])


# -- manual mode and inspection ----------------------------------------------------------

def test_manual_mode_push_pull_and_list(tmp_path, registry, nodes, access):
    pub, cli = nodes
    for node in (pub, cli):
        node.ok("config", "set", "registry.mode", "manual")
    pub.add_app(tmp_path, "game")
    pub.add_app(tmp_path, "chess")
    access.clear()
    assert pub.ok("sync").out.strip() == commands.MANUAL_SYNC
    assert access == []
    assert "pushed game/0/" in pub.ok("registry", "push", "game").out
    assert listed(registry) == {("game", 0)}

    table = cli.ok("registry", "list").out
    assert "| game " in table and "chess" not in table
    rows = json.loads(cli.ok("registry", "list", "--format", "json").out)
    assert [(r["name"], r["version"], r["publisher"]) for r in rows] == \
        [("game", 0, pub.fingerprint)]
    assert 'name: "game"' in cli.ok("registry", "list", "--format", "yaml").out

    assert "pulled game/0/" in cli.ok("registry", "pull", "game").out
    missing = cli("registry", "pull", "chess")
    assert missing.code == 1
    assert sync.NOT_IN_REGISTRY.format(name="chess", arch="amd64").split(" for ")[0] \
        in missing.err
    nothing = pub("registry", "push", "nope")
    assert nothing.code == 1 and "publish" in nothing.err


def test_unconfigured_node_says_what_to_set(tmp_path):
    node = Node(tmp_path / "ams")
    result = node("sync")
    assert result.code == 1
    assert sync.NOT_CONFIGURED.format(key="registry.url") in result.err


# -- what the registry says goes, for pulled applications only --------------------------

def _zip_bytes(name, payload):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("manifest.yaml", f"name: {name}\ntags: [casual]\n")
        archive.writestr("app.apk", payload)
    return buf.getvalue()


def test_a_version_pushed_again_with_other_bytes_replaces_the_pulled_one(tmp_path, registry,
                                                                         nodes):
    from certs import CertPair
    pub, cli = nodes
    pub.add_app(tmp_path, "game")
    pub.ok("sync")
    cli.ok("sync")
    writer = Client(registry.port, CertPair(pub.root / "registry" / "client.crt",
                                            pub.root / "registry" / "client.key"))
    arch = next(iter(cli.apps()["game"]["versions"]))["architecture"]
    assert writer.json("DELETE", f"/1.0/applications/game/0/{arch}")[0] == 200
    new = _zip_bytes("game", b"version zero, rebuilt")
    assert writer.upload("game", 0, arch, new, manifest={"name": "game",
                                                         "tags": ["casual"]})[0] == 201
    assert "pulled game/0/" in cli.ok("sync").out
    [version] = cli.apps()["game"]["versions"]
    assert version["sha256"] == hashlib.sha256(new).hexdigest()
    assert cli.blob(version["sha256"]) == new


def test_a_local_application_is_never_replaced_by_a_pulled_one(tmp_path, registry, nodes):
    pub, cli = nodes
    pub.add_app(tmp_path, "game")
    pub.ok("sync")
    cli.add_app(tmp_path, "game", publish=False)
    before = cli.apps()["game"]
    result = cli("sync")
    assert result.code == 1
    assert sync.LOCAL_NAME.format(name="game") in result.err
    assert cli.apps()["game"] == before


def test_a_concurrent_pull_with_one_bad_package_imports_the_others(tmp_path, registry, nodes):
    pub, cli = nodes
    names = ["alpha", "bravo", "charlie", "delta", "echo"]
    for name in names:
        pub.add_app(tmp_path, name, size=MiB)
    pub.ok("sync")
    # The registry's copy of bravo goes bad on its disk: same size, other bytes.
    [bad] = [p for app in registry.packages.list() for p in app["versions"]
             if p["name"] == "bravo"]
    blob = registry.packages.blob_path(bad["sha256"])
    os.chmod(blob, 0o600)
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    result = cli("sync")
    assert result.code == 1
    assert "download of bravo/0/" in result.err and "differs from the registry's" in result.err
    assert result.out.count("  pulled ") == 4
    assert sorted(cli.apps()) == ["alpha", "charlie", "delta", "echo"]
    for app in cli.apps().values():
        [version] = app["versions"]
        assert cli.blob(version["sha256"]) == pub.blob(version["sha256"])
    assert cli.staging() == []
    kept = sorted(f for _, _, files in os.walk(cli.root / "blobs") for f in files)
    assert kept == sorted(v["sha256"] for a in cli.apps().values() for v in a["versions"])
