"""The aar charm in ops.testing, driving the real `aar` from the built zipapp.

Each test is a sequence of Juju events against a unit whose registry data
directory is a temporary one; what the charm did is read back the way an
operator would see it: `aar trust list`, the unit's databags, its status,
the service files and the systemctl/snap commands it ran.
"""
import dataclasses
import hashlib
import json
import os
import ssl
import subprocess

import pytest

from certs import make_cert
from charmtools import (load_charm, machine, ops_testing as testing,  # noqa: F401
                        programs, ready, registry_certs)

AarCharm = load_charm("aar", "AarCharm")
import aar_interface  # noqa: E402  (importable once the charm's src/ is on sys.path)

SERVING = "serving https://192.0.2.0:3000: trusts {} client(s), {} publisher(s)"


def trust_list(revoked=False):
    argv = ["aar", "trust", "list", "--format", "json"] + (["--revoked"] if revoked else [])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return {record["fingerprint"]: record["role"] for record in json.loads(out)}


def der_fp(cert):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.pem)).hexdigest()


def node(cert, mode):
    return {"certificate": cert.pem, "mode": mode}


def relation_of(state, relation):
    return state.get_relation(relation.id)


def with_units(state, relation, units):
    """state with relation's remote units replaced (units join, leave, change data)."""
    new = dataclasses.replace(relation_of(state, relation), remote_units_data=units)
    others = {r for r in state.relations if r.id != relation.id}
    return dataclasses.replace(state, relations=others | {new})


def without(state, relation):
    return dataclasses.replace(state, relations={r for r in state.relations if r.id != relation.id})


@pytest.fixture
def nodes(tmp_path):
    return [make_cert(tmp_path / "nodes", f"ams-{i}") for i in range(4)]


@pytest.fixture
def ctx():
    return testing.Context(AarCharm)


# -- install, config, upgrade ------------------------------------------------------

def test_install_from_the_zipapp_resource(machine, programs, ctx):
    zipapp = (programs / "aar").resolve()
    state = testing.State(resources={testing.Resource(name="aar", path=zipapp)})
    out = ctx.run(ctx.on.install(), state)

    installed = machine.prefix / "usr/local/lib/aar/aar.pyz"
    assert installed.read_bytes() == zipapp.read_bytes()
    assert os.access(installed, os.X_OK)
    assert (machine.prefix / "usr/local/bin/aar").resolve() == installed
    unit = (machine.prefix / "etc/systemd/system/aar.service").read_text()
    assert f"ExecStart={machine.prefix}/usr/local/bin/aar serve\n" in unit
    assert f"Environment=AAR_DATA_DIR={machine.aar_data}" in unit
    assert machine.calls() == ["systemctl daemon-reload", "systemctl enable aar.service",
                               "systemctl restart aar.service"]
    assert out.opened_ports == {testing.TCPPort(3000)}
    assert subprocess.run(["aar", "config", "get", "listen"], capture_output=True, text=True,
                          check=True).stdout == "0.0.0.0:3000\n"
    # The service has not made its certificate yet (nothing runs systemd here).
    assert out.unit_status == testing.WaitingStatus(
        "waiting for the registry's first start to create certs/server.crt")


def test_install_from_the_snap_resource(machine, ctx, tmp_path):
    snap = tmp_path / "aar.snap"
    snap.write_bytes(b"hsqs" + bytes(60))  # a squashfs header: what snaps are
    state = testing.State(resources={testing.Resource(name="aar", path=snap)})
    ctx.run(ctx.on.install(), state)
    assert machine.calls() == [f"snap install --dangerous {snap}",
                               "snap start --enable aar.daemon", "snap restart aar.daemon"]
    assert not (machine.prefix / "etc/systemd/system/aar.service").exists()


def test_install_without_a_resource_says_how_to_attach_it(machine, ctx, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no aar anywhere
    empty = tmp_path / "empty"  # what Juju hands out before anything is attached
    empty.write_bytes(b"")
    out = ctx.run(ctx.on.install(), testing.State(resources={testing.Resource(name="aar", path=empty)}))
    assert out.unit_status == testing.BlockedStatus(
        "attach the registry: juju attach-resource aar aar=./aar.snap (or the zipapp aar.pyz)")
    assert machine.calls() == []


def test_a_resource_that_is_neither_is_refused(machine, ctx, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a program")
    out = ctx.run(ctx.on.install(), testing.State(resources={testing.Resource(name="aar", path=junk)}))
    assert out.unit_status.name == "blocked"
    assert "neither a snap nor the zipapp" in out.unit_status.message
    assert machine.calls() == []


def stored(kind):
    return testing.StoredState(owner_path="AarCharm", name="_stored",
                               content={"kind": kind, "added": {}})


def test_config_changed_moves_the_port_and_keeps_the_operators_settings(ready, ctx, nodes):
    conf = ready.aar_data / "conf/main.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text("listen: 0.0.0.0:3000\nmetrics: 127.0.0.1:9300\n")
    relation = testing.Relation("client", remote_app_name="ams", remote_units_data={0: node(nodes[0], "client")})
    state = testing.State(config={"port": 3443}, relations={relation}, stored_states={stored("zipapp")})
    out = ctx.run(ctx.on.config_changed(), state)

    assert conf.read_text() == 'listen: "0.0.0.0:3443"\nmetrics: 127.0.0.1:9300\n'
    assert ready.calls()[-1] == "systemctl restart aar.service"
    assert out.opened_ports == {testing.TCPPort(3443)}
    assert relation_of(out, relation).local_unit_data["port"] == "3443"
    assert out.unit_status == testing.ActiveStatus(
        "serving https://192.0.2.0:3443: trusts 1 client(s), 0 publisher(s)")

    # The same config again: nothing to restart.
    calls = len(ready.calls())
    ctx.run(ctx.on.config_changed(), out)
    assert len(ready.calls()) == calls


def test_metrics_address_is_set_and_removed(ready, ctx):
    state = testing.State(config={"metrics": "127.0.0.1:9300"}, stored_states={stored("zipapp")})
    out = ctx.run(ctx.on.config_changed(), state)
    conf = ready.aar_data / "conf/main.yaml"
    assert 'metrics: "127.0.0.1:9300"' in conf.read_text()
    assert ready.calls()[-1] == "systemctl restart aar.service"
    out = ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config={"metrics": ""}))
    assert "metrics" not in conf.read_text()


def test_a_bad_metrics_address_blocks_with_aars_message(ready, ctx):
    out = ctx.run(ctx.on.config_changed(), testing.State(config={"metrics": "everywhere"}))
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith("cannot configure or start the registry: aar config set failed")


def test_processes_are_set_changed_and_removed(ready, ctx):
    conf = ready.aar_data / "conf/main.yaml"
    out = ctx.run(ctx.on.config_changed(),
                  testing.State(config={"processes": "2"}, stored_states={stored("zipapp")}))
    assert 'processes: "2"' in conf.read_text()
    assert ready.calls()[-1] == "systemctl restart aar.service"
    assert out.unit_status.name == "active"
    out = ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config={"processes": "auto"}))
    assert 'processes: "auto"' in conf.read_text()
    calls = len(ready.calls())
    out = ctx.run(ctx.on.config_changed(), out)                 # unchanged: no restart
    assert len(ready.calls()) == calls
    out = ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config={"processes": ""}))
    assert "processes" not in conf.read_text()
    assert ready.calls()[-1] == "systemctl restart aar.service"


def test_processes_written_by_hand_stay_until_the_charm_is_told_some(ready, ctx):
    conf = ready.aar_data / "conf/main.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text("processes: 3\n")
    ctx.run(ctx.on.config_changed(), testing.State(stored_states={stored("zipapp")}))
    assert "processes: 3\n" in conf.read_text()


@pytest.mark.parametrize("value", ["0", "two", "1025"])
def test_a_bad_process_count_blocks_with_aars_message(ready, ctx, value):
    out = ctx.run(ctx.on.config_changed(), testing.State(config={"processes": value}))
    assert out.unit_status.name == "blocked"
    message = out.unit_status.message
    assert message.startswith("cannot configure or start the registry: aar config set failed")
    assert message.endswith(f"invalid process count {value!r}: give a number from 1 to 1024")
    conf = ready.aar_data / "conf/main.yaml"
    assert not conf.exists() or "processes" not in conf.read_text()


def test_processes_with_a_bucket_block_and_write_nothing(ready, ctx):
    out = ctx.run(ctx.on.config_changed(), testing.State(
        config={"processes": "2", "s3-bucket": "aar", "s3-access-key": "A",
                "s3-secret-key": "S"}, stored_states={stored("zipapp")}))
    assert out.unit_status == testing.BlockedStatus(
        "cannot configure or start the registry: aar config set failed: "
        "processes above 1 needs the data directory's own storage; with storage.s3, "
        "run more replicas on the bucket")
    assert not (ready.aar_data / "conf/main.yaml").exists() and ready.calls() == []


def test_remove_stops_the_service_and_keeps_the_data(ready, ctx, nodes):
    relation = testing.Relation("client", remote_app_name="ams", remote_units_data={0: node(nodes[0], "client")})
    state = ctx.run(ctx.on.relation_changed(relation, remote_unit=0),
                    testing.State(relations={relation}, stored_states={stored("zipapp")}))
    ctx.run(ctx.on.remove(), state)
    assert ready.calls()[-1] == "systemctl disable --now aar.service"
    assert trust_list() == {der_fp(nodes[0]): "client"}


def test_a_bad_port_blocks(ready, ctx):
    out = ctx.run(ctx.on.config_changed(), testing.State(config={"port": 70000}))
    assert out.unit_status == testing.BlockedStatus("port 70000 is not a port number (1-65535)")


def test_upgrade_installs_the_new_resource_and_restarts(ready, programs, ctx, tmp_path):
    zipapp = (programs / "aar").resolve()
    newer = tmp_path / "newer.pyz"
    newer.write_bytes(zipapp.read_bytes())
    state = testing.State(resources={testing.Resource(name="aar", path=newer)},
                          stored_states={stored("zipapp")})
    out = ctx.run(ctx.on.upgrade_charm(), state)
    assert (ready.prefix / "usr/local/lib/aar/aar.pyz").read_bytes() == zipapp.read_bytes()
    assert ready.calls()[-1] == "systemctl restart aar.service"
    assert out.unit_status == testing.ActiveStatus(SERVING.format(0, 0))


# -- relations -----------------------------------------------------------------------

def test_joined_publishes_certificate_der_fingerprint_address_and_port(ready, ctx, registry_certs):
    relation = testing.Relation("client")
    out = ctx.run(ctx.on.relation_joined(relation, remote_unit=0),
                  testing.State(relations={relation}))
    data = relation_of(out, relation).local_unit_data
    pem = (registry_certs / "server.crt").read_text()
    assert ssl.PEM_cert_to_DER_cert(data["certificate"]) == ssl.PEM_cert_to_DER_cert(pem)
    assert data["fingerprint"] == hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
    assert (data["ip"], data["port"]) == ("192.0.2.0", "3000")


def test_fault_fingerprint_is_over_the_der_not_the_pem(ready, ctx, registry_certs):
    """The real charm hashed the PEM text: no program's pin ever matched it."""
    relation = testing.Relation("publisher")
    out = ctx.run(ctx.on.relation_joined(relation, remote_unit=0),
                  testing.State(relations={relation}))
    data = relation_of(out, relation).local_unit_data
    pem = (registry_certs / "server.crt").read_text()
    assert data["fingerprint"] != hashlib.sha256(pem.encode()).hexdigest()
    served = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256",
                             "-in", str(registry_certs / "server.crt")],
                            capture_output=True, text=True, check=True).stdout
    assert data["fingerprint"] == served.split("=")[1].strip().replace(":", "").lower()
    assert len(data["fingerprint"]) == 64


def test_location_is_published_instead_of_the_bind_address(ready, ctx):
    relation = testing.Relation("client")
    out = ctx.run(ctx.on.relation_joined(relation, remote_unit=0),
                  testing.State(relations={relation}, config={"location": "2001:db8::7"}))
    assert relation_of(out, relation).local_unit_data["ip"] == "2001:db8::7"
    assert out.unit_status.message.startswith("serving https://[2001:db8::7]:3000")


def test_fault_client_units_are_trusted(ready, ctx, nodes):
    """The real charm only ever ran `aar trust add` for publishers."""
    relation = testing.Relation("client", remote_app_name="ams", remote_units_data={0: node(nodes[0], "client")})
    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations={relation}))
    assert trust_list() == {der_fp(nodes[0]): "client"}
    assert out.unit_status == testing.ActiveStatus(SERVING.format(1, 0))


def test_publisher_unit_is_trusted_as_publisher(ready, ctx, nodes):
    relation = testing.Relation("publisher", remote_units_data={0: node(nodes[0], "publisher")})
    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations={relation}))
    assert trust_list() == {der_fp(nodes[0]): "publisher"}
    assert out.unit_status == testing.ActiveStatus(SERVING.format(0, 1))


def test_the_real_ams_charms_quoting_is_understood(ready, ctx, nodes):
    """The real AMS charm JSON-quotes its mode and may escape the newlines."""
    data = {"certificate": json.dumps(nodes[0].pem)[1:-1], "mode": '"client"'}
    relation = testing.Relation("client", remote_app_name="ams", remote_units_data={0: data})
    ctx.run(ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations={relation}))
    assert trust_list() == {der_fp(nodes[0]): "client"}


def test_a_unit_without_its_data_yet_is_waited_for(ready, ctx):
    relation = testing.Relation("client", remote_app_name="ams", remote_units_data={0: {}})
    out = ctx.run(ctx.on.relation_joined(relation, remote_unit=0), testing.State(relations={relation}))
    assert trust_list() == {}
    assert out.unit_status == testing.ActiveStatus(SERVING.format(0, 0))


def two_of_each(ctx, nodes):
    client = testing.Relation("client", remote_app_name="ams",
                              remote_units_data={0: node(nodes[0], "client"),
                                                 1: node(nodes[1], "client")})
    publisher = testing.Relation("publisher", remote_app_name="ams-pub",
                                 remote_units_data={0: node(nodes[2], "publisher"),
                                                    1: node(nodes[3], "publisher")})
    state = testing.State(relations={client, publisher})
    state = ctx.run(ctx.on.relation_changed(relation_of(state, client), remote_unit=1), state)
    state = ctx.run(ctx.on.relation_changed(relation_of(state, publisher), remote_unit=1), state)
    return state, client, publisher


def test_two_units_of_each_role(ready, ctx, nodes):
    out, _, _ = two_of_each(ctx, nodes)
    assert trust_list() == {der_fp(nodes[0]): "client", der_fp(nodes[1]): "client",
                            der_fp(nodes[2]): "publisher", der_fp(nodes[3]): "publisher"}
    assert out.unit_status == testing.ActiveStatus(SERVING.format(2, 2))


def test_fault_a_change_on_one_role_keeps_the_other(ready, ctx, nodes, tmp_path):
    """The real charm wiped both roles' certificates on every relation change."""
    state, client, publisher = two_of_each(ctx, nodes)
    newcomer = make_cert(tmp_path / "nodes", "ams-new")
    units = dict(relation_of(state, client).remote_units_data)
    units[2] = node(newcomer, "client")
    state = with_units(state, client, units)
    out = ctx.run(ctx.on.relation_joined(relation_of(state, client), remote_unit=2), state)
    assert trust_list() == {der_fp(nodes[0]): "client", der_fp(nodes[1]): "client",
                            der_fp(newcomer): "client",
                            der_fp(nodes[2]): "publisher", der_fp(nodes[3]): "publisher"}
    assert out.unit_status == testing.ActiveStatus(SERVING.format(3, 2))


def test_departed_unit_is_removed_even_when_its_data_is_gone(ready, ctx, nodes):
    state, client, publisher = two_of_each(ctx, nodes)
    # Juju no longer shows the departing unit, nor its data.
    state = with_units(state, client, {0: node(nodes[0], "client")})
    out = ctx.run(ctx.on.relation_departed(relation_of(state, client), remote_unit=1, departing_unit=1), state)
    assert trust_list() == {der_fp(nodes[0]): "client",
                            der_fp(nodes[2]): "publisher", der_fp(nodes[3]): "publisher"}
    # Removed, not revoked: the node may be related again.
    assert trust_list(revoked=True) == {}
    assert out.unit_status == testing.ActiveStatus(SERVING.format(1, 2))

    state = with_units(out, publisher, {1: node(nodes[3], "publisher")})
    out = ctx.run(ctx.on.relation_departed(relation_of(state, publisher), remote_unit=0, departing_unit=0), state)
    assert trust_list() == {der_fp(nodes[0]): "client", der_fp(nodes[3]): "publisher"}


def test_broken_relation_removes_its_units_only(ready, ctx, nodes):
    state, client, publisher = two_of_each(ctx, nodes)
    state = with_units(state, client, {})
    out = ctx.run(ctx.on.relation_broken(relation_of(state, client)), state)
    assert trust_list() == {der_fp(nodes[2]): "publisher", der_fp(nodes[3]): "publisher"}
    state = without(with_units(out, publisher, {}), client)
    out = ctx.run(ctx.on.relation_broken(relation_of(state, publisher)), state)
    assert trust_list() == {}
    assert out.unit_status == testing.ActiveStatus(SERVING.format(0, 0))


def test_mode_mismatch_blocks_names_the_unit_and_is_not_trusted(ready, ctx, nodes):
    relation = testing.Relation("client", remote_app_name="ams",
                                remote_units_data={0: node(nodes[0], "client"),
                                                   1: node(nodes[1], "publisher")})
    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=1), testing.State(relations={relation}))
    assert out.unit_status == testing.BlockedStatus(
        "ams/1 asks to be a publisher on aar:client: relate it to aar:publisher instead; not trusted")
    assert trust_list() == {der_fp(nodes[0]): "client"}


def test_a_unit_changing_role(ready, ctx, nodes):
    """ams/0 moves from client to publisher: while it is on both it keeps what
    it had; once the client relation is gone it is a publisher."""
    client = testing.Relation("client", remote_app_name="ams",
                              remote_units_data={0: node(nodes[0], "client")})
    state = ctx.run(ctx.on.relation_changed(client, remote_unit=0), testing.State(relations={client}))
    assert trust_list() == {der_fp(nodes[0]): "client"}

    publisher = testing.Relation("publisher", remote_app_name="ams",
                                 remote_units_data={0: node(nodes[0], "publisher")})
    state = dataclasses.replace(state, relations=set(state.relations) | {publisher})
    out = ctx.run(ctx.on.relation_changed(relation_of(state, publisher), remote_unit=0), state)
    assert out.unit_status == testing.BlockedStatus(
        "ams/0's certificate is related as both client and publisher; trust left as it was")
    assert trust_list() == {der_fp(nodes[0]): "client"}

    state = with_units(out, client, {})
    out = ctx.run(ctx.on.relation_broken(relation_of(state, client)), state)
    assert trust_list() == {der_fp(nodes[0]): "publisher"}
    assert out.unit_status == testing.ActiveStatus(SERVING.format(0, 1))


def test_a_unit_switching_its_mode_on_the_same_relation_loses_its_trust(ready, ctx, nodes):
    relation = testing.Relation("client", remote_app_name="ams",
                                remote_units_data={0: node(nodes[0], "client")})
    state = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations={relation}))
    state = with_units(state, relation, {0: node(nodes[0], "publisher")})
    out = ctx.run(ctx.on.relation_changed(relation_of(state, relation), remote_unit=0), state)
    assert trust_list() == {}
    assert out.unit_status.name == "blocked" and "ams/0 asks to be a publisher" in out.unit_status.message


def test_certificates_trusted_by_hand_are_left_to_the_operator(ready, ctx, nodes):
    subprocess.run(["aar", "trust", "add", str(nodes[0].cert)], check=True, capture_output=True)
    subprocess.run(["aar", "trust", "add", str(nodes[1].cert)], check=True, capture_output=True)
    relation = testing.Relation("publisher", remote_app_name="ams",
                                remote_units_data={0: node(nodes[0], "publisher")})
    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations={relation}))
    short = der_fp(nodes[0])[:12]
    assert out.unit_status == testing.BlockedStatus(
        f"ams/0's certificate {short} is already trusted as client by hand: "
        f"`aar trust remove {short}` lets the relation trust it as publisher")

    # Same role as by hand: adopted for now, and left in place when the unit goes.
    client = testing.Relation("client", remote_app_name="ams2",
                              remote_units_data={0: node(nodes[1], "client")})
    state = testing.State(relations={client})
    state = ctx.run(ctx.on.relation_changed(relation_of(state, client), remote_unit=0), state)
    state = with_units(state, client, {})
    ctx.run(ctx.on.relation_departed(relation_of(state, client), remote_unit=0, departing_unit=0), state)
    assert trust_list() == {der_fp(nodes[0]): "client", der_fp(nodes[1]): "client"}


def test_a_revoked_certificate_is_not_trusted_again(ready, ctx, nodes):
    subprocess.run(["aar", "trust", "add", str(nodes[0].cert)], check=True, capture_output=True)
    subprocess.run(["aar", "trust", "revoke", "--yes", der_fp(nodes[0])], check=True, capture_output=True)
    relation = testing.Relation("client", remote_app_name="ams", remote_units_data={0: node(nodes[0], "client")})
    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations={relation}))
    assert out.unit_status == testing.BlockedStatus(
        f"ams/0's certificate {der_fp(nodes[0])[:12]} is revoked: the node needs a new certificate")
    assert trust_list() == {}


def test_bad_certificate_data_blocks_with_the_reason(ready, ctx):
    relation = testing.Relation("client", remote_app_name="ams", remote_units_data={0: {"certificate": "hello", "mode": "client"}})
    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations={relation}))
    assert out.unit_status == testing.BlockedStatus(
        "ams/0 sent unusable data: certificate: expected exactly one PEM certificate, found 0")


def test_before_the_first_start_it_trusts_waits_and_comes_back(machine, ctx, nodes):
    relation = testing.Relation("client", remote_app_name="ams", remote_units_data={0: node(nodes[0], "client")})
    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), testing.State(relations={relation}))
    assert trust_list() == {der_fp(nodes[0]): "client"}
    assert out.unit_status == testing.WaitingStatus(
        "waiting for the registry's first start to create certs/server.crt")
    assert len(out.deferred) == 1
    assert "certificate" not in relation_of(out, relation).local_unit_data


def test_the_interface_module_is_the_same_in_both_charms():
    from charmtools import CHARMS
    for name in ("aar_interface.py", "workload.py"):
        assert (CHARMS / "aar/src" / name).read_text() == (CHARMS / "ams-sync/src" / name).read_text(), name


def test_registry_url_brackets_ipv6():
    assert aar_interface.registry_url("2001:db8::1", 3000) == "https://[2001:db8::1]:3000"
    assert aar_interface.registry_url("10.0.0.2", 3000) == "https://10.0.0.2:3000"
    assert aar_interface.registry_url("aar.example.net", 443) == "https://aar.example.net:443"
