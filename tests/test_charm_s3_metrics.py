"""The charms' options for S3 storage (aar) and agent metrics (ams-sync), in
ops.testing with the real `aar` and `ams-sync` from the built zipapp.

The aar charm's S3 options reach conf/main.yaml through `aar config set`, and
are proven by what the real programs then do with that file: `aar trust`
writes the relation's trust into a bucket of the test Swift. The ams-sync
charm's metrics-listen is proven by starting the systemd unit's ExecStart as
written and scraping the agent it runs.
"""
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import ssl
import subprocess
import urllib.request

import pytest

from certs import make_cert
from charmtools import (load_charm, machine, ops_testing as testing,  # noqa: F401
                        programs, ready, registry_certs, wait_for_port)
from regserver import free_port, stop_process

AarCharm = load_charm("aar", "AarCharm")
AmsSyncCharm = load_charm("ams-sync", "AmsSyncCharm")

SERVING = "serving https://192.0.2.0:3000: trusts {} client(s), {} publisher(s)"


def der_fp(pem):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def aar_get(key):
    return subprocess.run(["aar", "config", "get", key], capture_output=True, text=True,
                          check=True).stdout.strip()


def aar_stored():
    return testing.StoredState(owner_path="AarCharm", name="_stored",
                               content={"kind": "zipapp", "added": {}})


def s3_options(swift, bucket, **more):
    return dict({"s3-endpoint": swift.endpoint, "s3-region": swift.region, "s3-bucket": bucket,
                 "s3-prefix": "registry/", "s3-access-key": swift.access_key,
                 "s3-secret-key": swift.secret_key}, **more)


# -- aar: S3 storage ----------------------------------------------------------------

def test_s3_options_put_the_registry_in_the_bucket(ready, swift, bucket, certs, tmp_path):
    ctx = testing.Context(AarCharm)
    node = make_cert(tmp_path / "nodes", "ams-0")
    relation = testing.Relation("client", remote_app_name="ams",
                                remote_units_data={0: {"certificate": node.pem, "mode": "client"}})
    config = s3_options(swift, bucket, **{"s3-redirect": False, "s3-ca": certs.server.pem})
    out = ctx.run(ctx.on.config_changed(),
                  testing.State(config=config, relations={relation}, stored_states={aar_stored()}))

    assert out.unit_status == testing.ActiveStatus(
        SERVING.format(1, 0) + f"; storage s3://{bucket}")
    conf = ready.aar_data / "conf/main.yaml"
    assert conf.stat().st_mode & 0o777 == 0o600          # it holds the secret key
    assert [aar_get("storage.s3." + key) for key in ("endpoint", "bucket", "prefix", "redirect")] \
        == [swift.endpoint, bucket, "registry/", "false"]
    assert aar_get("storage.s3.secret-access-key") == swift.secret_key
    ca_file = aar_get("storage.s3.ca-file")
    assert open(ca_file).read().strip() == certs.server.pem.strip()
    assert ready.calls()[-1] == "systemctl restart aar.service"
    # The relation's node is trusted in the bucket: another replica's data
    # directory (the same main.yaml and certificate, nothing else) sees it.
    assert not (ready.aar_data / "trust.db").exists()
    replica = tmp_path / "replica"
    shutil.copytree(ready.aar_data / "certs", replica / "certs")
    (replica / "conf").mkdir()
    shutil.copy(conf, replica / "conf/main.yaml")
    listed = subprocess.run(["aar", "trust", "list", "--format", "json", "--data-dir", replica],
                            capture_output=True, text=True, check=True).stdout
    assert {r["fingerprint"]: r["role"] for r in json.loads(listed)} == {der_fp(node.pem): "client"}

    # The same options again: nothing to restart.
    calls = len(ready.calls())
    out = ctx.run(ctx.on.config_changed(), out)
    assert len(ready.calls()) == calls

    # s3-bucket emptied: the charm's section and CA file go, the registry restarts.
    out = ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config={"s3-bucket": ""}))
    assert "storage" not in conf.read_text() and not os.path.exists(ca_file)
    assert aar_get("storage.s3.bucket") == ""
    assert ready.calls()[-1] == "systemctl restart aar.service"


def test_s3_without_credentials_blocks_with_aars_message(ready, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    ctx = testing.Context(AarCharm)
    out = ctx.run(ctx.on.config_changed(), testing.State(
        config={"s3-bucket": "aar", "s3-endpoint": "http://127.0.0.1:9"},
        stored_states={aar_stored()}))
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(
        "cannot configure or start the registry: aar config set failed:")
    assert "storage.s3 needs access-key and secret-access-key" in out.unit_status.message
    # Nothing half-written: the file has no storage section, and nothing restarted.
    assert aar_get("storage.s3.bucket") == ""
    assert ready.calls() == []


def test_a_storage_section_written_by_hand_is_left_alone(machine):
    conf = machine.aar_data / "conf/main.yaml"
    conf.parent.mkdir(parents=True)
    by_hand = ("# mine\nstorage:\n  s3:\n    bucket: kept   # by hand\n"
               "    access-key: A\n    secret-access-key: S\n")
    conf.write_text(by_hand)
    ctx = testing.Context(AarCharm)
    ctx.run(ctx.on.config_changed(), testing.State(stored_states={aar_stored()}))
    assert conf.read_text() == 'listen: "0.0.0.0:3000"\n' + by_hand


def test_a_bad_s3_ca_blocks(ready):
    ctx = testing.Context(AarCharm)
    out = ctx.run(ctx.on.config_changed(), testing.State(
        config={"s3-bucket": "aar", "s3-access-key": "A", "s3-secret-key": "S",
                "s3-ca": "not a certificate"}, stored_states={aar_stored()}))
    assert out.unit_status == testing.BlockedStatus(
        "cannot configure or start the registry: s3-ca is not a PEM certificate "
        "(-----BEGIN CERTIFICATE-----)")
    assert aar_get("storage.s3.bucket") == ""


# -- ams-sync: metrics-listen -----------------------------------------------------------

def ams_relate(ctx, state, aar_data):
    relation = testing.Relation("registry-client", remote_app_name="aar",
                                remote_units_data={0: aar_data})
    state = dataclasses.replace(state, relations=set(state.relations) | {relation})
    return ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state)


@pytest.fixture
def loopback_registry(registry_certs):
    """An aar unit's databag naming a loopback port where nothing listens."""
    pem = (registry_certs / "server.crt").read_text()
    return {"certificate": pem, "fingerprint": der_fp(pem), "ip": "127.0.0.1",
            "port": str(free_port())}


def exec_start(machine):
    unit = (machine.prefix / "etc/systemd/system/ams-sync.service").read_text()
    return next(line for line in unit.splitlines() if line.startswith("ExecStart="))[10:]


def test_metrics_listen_runs_the_agent_with_its_metrics(machine, programs, loopback_registry):
    ctx = testing.Context(AmsSyncCharm)
    port = free_port()
    zipapp = (programs / "ams-sync").resolve()
    out = ctx.run(ctx.on.install(), testing.State(
        config={"metrics-listen": f"127.0.0.1:{port}"},
        resources={testing.Resource(name="ams-sync", path=zipapp)}))
    out = ams_relate(ctx, out, loopback_registry)
    assert out.unit_status.name == "active"
    command = exec_start(machine)
    assert command == (f"{machine.prefix}/usr/local/bin/ams-sync run "
                       f"--metrics-listen 127.0.0.1:{port}")

    # The unit's command, run as systemd would: the installed agent serves metrics.
    log = open(machine.root / "agent.log", "w+")
    agent = subprocess.Popen(shlex.split(command), stdin=subprocess.DEVNULL,
                             stdout=log, stderr=log)
    try:
        wait_for_port(port, agent)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert "ams_sync_cycles_total" in answer.read().decode()
    finally:
        stop_process(agent, timeout=15)
        log.close()

    # Emptied: a plain `run` again, and a restart to take it.
    calls = len(machine.calls())
    out = ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config={}))
    assert exec_start(machine) == f"{machine.prefix}/usr/local/bin/ams-sync run"
    assert machine.calls()[calls:][-1] == "systemctl restart ams-sync.service"
    # Unchanged: left running.
    calls = len(machine.calls())
    ctx.run(ctx.on.config_changed(), out)
    assert len(machine.calls()) == calls


@pytest.mark.parametrize("kind, value, message", [
    ("zipapp", "everywhere",
     "metrics-listen 'everywhere' is not ADDR:PORT (e.g. 127.0.0.1:9310 or [::1]:9310)"),
    ("snap", "127.0.0.1:9310",
     "metrics-listen needs the zipapp resource: the ams snap's sync service runs "
     "`ams-sync run` without options; unset it or attach aar.pyz"),
])
def test_metrics_listen_it_cannot_use_blocks(machine, loopback_registry, kind, value, message):
    ctx = testing.Context(AmsSyncCharm)
    stored = testing.StoredState(owner_path="AmsSyncCharm", name="_stored",
                                 content={"kind": kind, "configured": False})
    out = ams_relate(ctx, testing.State(config={"metrics-listen": value},
                                        stored_states={stored}), loopback_registry)
    assert out.unit_status == testing.BlockedStatus(message)
    assert machine.calls() == []
