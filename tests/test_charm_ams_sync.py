"""The ams-sync charm (deployed as `ams`) in ops.testing, driving the real
`ams-sync` from the built zipapp against a temporary data directory.

What it did is read back as the seed's hint says an operator checks it:
`ams-sync config show` (and `config trust list`), plus the unit's databags,
its status and the service commands it ran.
"""
import dataclasses
import hashlib
import json
import ssl
import subprocess

import pytest

from charmtools import (load_charm, machine, ops_testing as testing,  # noqa: F401
                        programs, registry_certs)

AmsSyncCharm = load_charm("ams-sync", "AmsSyncCharm")


def settings():
    out = subprocess.run(["ams-sync", "config", "show", "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def trusted_registries():
    out = subprocess.run(["ams-sync", "config", "trust", "list", "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    return [record["fingerprint"] for record in json.loads(out)]


def der_fp(pem):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def relation_of(state, relation):
    return state.get_relation(relation.id)


def with_units(state, relation, units):
    new = dataclasses.replace(relation_of(state, relation), remote_units_data=units)
    return dataclasses.replace(state, relations={r for r in state.relations if r.id != relation.id} | {new})


@pytest.fixture
def ctx():
    return testing.Context(AmsSyncCharm)


@pytest.fixture
def aar_data(registry_certs):
    """What an aar unit writes: its certificate, DER fingerprint, address, port."""
    pem = (registry_certs / "server.crt").read_text()
    return {"certificate": pem, "fingerprint": der_fp(pem), "ip": "10.1.2.3", "port": "3000"}


def stored(kind="zipapp", configured=False):
    return testing.StoredState(owner_path="AmsSyncCharm", name="_stored",
                               content={"kind": kind, "configured": configured})


def relate(ctx, endpoint, aar_data, state=None, **config):
    relation = testing.Relation(endpoint, remote_app_name="aar", remote_units_data={0: aar_data})
    state = state or testing.State(config=config, stored_states={stored()})
    state = dataclasses.replace(state, relations=set(state.relations) | {relation})
    return ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state), relation


# -- install, config, upgrade ------------------------------------------------------

def test_install_from_the_zipapp_resource(machine, programs, ctx):
    zipapp = (programs / "ams-sync").resolve()
    state = testing.State(resources={testing.Resource(name="ams-sync", path=zipapp)})
    out = ctx.run(ctx.on.install(), state)
    installed = machine.prefix / "usr/local/lib/ams/aar.pyz"
    assert installed.read_bytes() == zipapp.read_bytes()
    link = machine.prefix / "usr/local/bin/ams-sync"
    assert link.is_symlink() and link.resolve() == installed
    # Not related yet: nothing to sync, so no service started.
    assert machine.calls() == []
    assert out.unit_status == testing.BlockedStatus(
        "not registered: juju add-relation aar:client ams:registry-client "
        "(or aar:publisher ams:registry-publisher)")


def test_install_from_the_snap_resource_makes_the_alias(machine, ctx, tmp_path):
    snap = tmp_path / "ams.snap"
    snap.write_bytes(b"hsqs" + bytes(60))
    ctx.run(ctx.on.install(), testing.State(resources={testing.Resource(name="ams-sync", path=snap)}))
    assert machine.calls() == [f"snap install --dangerous {snap}", "snap alias ams.ams-sync ams-sync"]


def test_config_sets_interval_and_filter(machine, ctx):
    # Set by hand before the charm was told anything: left alone.
    subprocess.run(["ams-sync", "config", "set", "registry.update_interval", "10m"],
                   check=True, capture_output=True)
    ctx.run(ctx.on.config_changed(), testing.State())
    assert settings()["registry.update_interval"] == "10m"
    out = ctx.run(ctx.on.config_changed(),
                  testing.State(config={"update_interval": "5m", "filter": "arcade, demo"}))
    shown = settings()
    assert (shown["registry.update_interval"], shown["registry.filter"]) == ("5m", "arcade,demo")
    # Back to empty after the charm set them: the agent's defaults.
    ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config={}))
    shown = settings()
    assert (shown["registry.update_interval"], shown["registry.filter"]) == ("1h", "")


def test_a_bad_interval_blocks_with_the_agents_own_message(machine, ctx):
    out = ctx.run(ctx.on.config_changed(), testing.State(config={"update_interval": "soon"}))
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(
        "ams-sync config set failed: invalid registry.update_interval")


def test_upgrade_installs_the_new_resource_and_restarts_a_running_loop(machine, programs, ctx, aar_data):
    out, _ = relate(ctx, "registry-client", aar_data)
    zipapp = (programs / "ams-sync").resolve()
    state = dataclasses.replace(out, resources={testing.Resource(name="ams-sync", path=zipapp)})
    ctx.run(ctx.on.upgrade_charm(), state)
    assert (machine.prefix / "usr/local/lib/ams/aar.pyz").read_bytes() == zipapp.read_bytes()
    assert machine.calls()[-1] == "systemctl restart ams-sync.service"


# -- relations -----------------------------------------------------------------------

def test_registry_client_configures_a_pulling_node(machine, ctx, aar_data):
    out, relation = relate(ctx, "registry-client", aar_data, update_interval="5m")
    assert settings() == {"registry.url": "https://10.1.2.3:3000",
                          "registry.fingerprint": aar_data["fingerprint"],
                          "registry.mode": "pull", "registry.update_interval": "5m",
                          "registry.filter": ""}
    assert trusted_registries() == [aar_data["fingerprint"]]
    mine = relation_of(out, relation).local_unit_data
    client_crt = (machine.ams_data / "registry/client.crt").read_text()
    assert der_fp(mine["certificate"]) == der_fp(client_crt)
    assert mine["mode"] == "client"
    unit = (machine.prefix / "etc/systemd/system/ams-sync.service").read_text()
    assert f"ExecStart={machine.prefix}/usr/local/bin/ams-sync run" in unit
    assert f"Environment=AMS_SYNC_DATA_DIR={machine.ams_data}" in unit
    assert machine.calls() == ["systemctl daemon-reload", "systemctl enable ams-sync.service",
                               "systemctl restart ams-sync.service"]
    assert out.unit_status == testing.ActiveStatus(
        "pulling from https://10.1.2.3:3000 every 5m as a client")


def test_registry_publisher_configures_a_pushing_node(machine, ctx, aar_data):
    out, relation = relate(ctx, "registry-publisher", aar_data)
    assert settings()["registry.mode"] == "push"
    assert relation_of(out, relation).local_unit_data["mode"] == "publisher"
    assert out.unit_status == testing.ActiveStatus(
        "pushing to https://10.1.2.3:3000 every 1h as a publisher")


def test_joined_before_the_registry_wrote_its_data_waits(machine, ctx):
    relation = testing.Relation("registry-client", remote_app_name="aar", remote_units_data={0: {}})
    out = ctx.run(ctx.on.relation_joined(relation, remote_unit=0),
                  testing.State(relations={relation}, stored_states={stored()}))
    assert out.unit_status == testing.WaitingStatus("waiting for aar to send its certificate and address")
    assert settings()["registry.url"] == ""
    # Its own half is sent at once: the registry can trust it meanwhile.
    assert relation_of(out, relation).local_unit_data["mode"] == "client"
    assert machine.calls() == []


def test_ipv6_registry_address_is_bracketed(machine, ctx, aar_data):
    relate(ctx, "registry-client", dict(aar_data, ip="2001:db8::5"))
    assert settings()["registry.url"] == "https://[2001:db8::5]:3000"


def test_a_pem_fingerprint_from_the_real_aar_charm_is_not_pinned(machine, ctx, aar_data):
    """The real AAR charm publishes SHA-256 of the PEM text; pinning it would
    refuse the registry forever, so the certificate's own is pinned."""
    wrong = hashlib.sha256(aar_data["certificate"].encode()).hexdigest()
    relate(ctx, "registry-client", dict(aar_data, fingerprint=wrong))
    assert settings()["registry.fingerprint"] == aar_data["fingerprint"] != wrong


def test_the_registry_moving_is_followed(machine, ctx, aar_data):
    out, relation = relate(ctx, "registry-client", aar_data)
    calls = len(machine.calls())
    state = with_units(out, relation, {0: dict(aar_data, ip="10.9.9.9", port="3443")})
    out = ctx.run(ctx.on.relation_changed(relation_of(state, relation), remote_unit=0), state)
    assert settings()["registry.url"] == "https://10.9.9.9:3443"
    assert machine.calls()[calls:] == ["systemctl daemon-reload", "systemctl enable ams-sync.service",
                                       "systemctl restart ams-sync.service"]
    # Nothing changed: the running loop is left alone.
    calls = len(machine.calls())
    ctx.run(ctx.on.relation_changed(relation_of(out, relation), remote_unit=0), out)
    assert len(machine.calls()) == calls


def test_both_endpoints_at_once_blocks(machine, ctx, aar_data):
    out, client = relate(ctx, "registry-client", aar_data)
    out, publisher = relate(ctx, "registry-publisher", aar_data, state=out)
    assert out.unit_status == testing.BlockedStatus(
        "related on both registry-client and registry-publisher: a node is a client or a "
        "publisher, never both; remove one (juju remove-relation ams:registry-publisher aar)")
    # Left as it was: still a client, and nothing sent on the second relation.
    assert settings()["registry.mode"] == "pull"
    assert "certificate" not in relation_of(out, publisher).local_unit_data

    # Removing the client relation makes it a publisher.
    state = dataclasses.replace(out, relations={relation_of(out, client), relation_of(out, publisher)})
    out = ctx.run(ctx.on.relation_broken(relation_of(state, client)), state)
    assert settings()["registry.mode"] == "push"
    assert out.unit_status.message.startswith("pushing to")


def test_departed_registry_unit_clears_and_stops(machine, ctx, aar_data):
    out, relation = relate(ctx, "registry-client", aar_data)
    state = with_units(out, relation, {})
    out = ctx.run(ctx.on.relation_departed(relation_of(state, relation), remote_unit=0,
                                           departing_unit=0), state)
    assert settings()["registry.url"] == ""
    assert machine.calls()[-1] == "systemctl disable --now ams-sync.service"
    assert out.unit_status == testing.WaitingStatus("waiting for aar to send its certificate and address")


def test_broken_clears_the_settings_stops_syncing_and_keeps_the_applications(machine, ctx, aar_data, tmp_path):
    out, relation = relate(ctx, "registry-client", aar_data, filter="arcade")
    game = tmp_path / "game"
    game.mkdir()
    (game / "manifest.yaml").write_text("name: game\nversion: 1.0\n")
    subprocess.run(["ams-sync", "application", "create", str(game)], check=True, capture_output=True)

    out = ctx.run(ctx.on.relation_broken(relation_of(out, relation)), out)
    shown = settings()
    assert (shown["registry.url"], shown["registry.fingerprint"], shown["registry.mode"]) == ("", "", "pull")
    assert shown["registry.filter"] == "arcade"  # the operator's config stays
    assert machine.calls()[-1] == "systemctl disable --now ams-sync.service"
    listed = subprocess.run(["ams-sync", "application", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert "game" in listed
    assert out.unit_status.name == "blocked" and out.unit_status.message.startswith("not registered")

    # A later relation configures it again and starts the loop.
    out, _ = relate(ctx, "registry-publisher", aar_data, state=dataclasses.replace(out, relations=set()))
    assert settings()["registry.mode"] == "push"
    assert machine.calls()[-1] == "systemctl restart ams-sync.service"


def test_two_registry_units_pin_the_first(machine, ctx, aar_data, registry_certs):
    relation = testing.Relation("registry-client", remote_app_name="aar",
                                remote_units_data={1: dict(aar_data, ip="10.0.0.2"),
                                                   0: dict(aar_data, ip="10.0.0.1")})
    ctx.run(ctx.on.relation_changed(relation, remote_unit=1),
            testing.State(relations={relation}, stored_states={stored()}))
    assert settings()["registry.url"] == "https://10.0.0.1:3000"


def test_unusable_registry_data_blocks_with_the_reason(machine, ctx, aar_data):
    out, _ = relate(ctx, "registry-client", dict(aar_data, port="http"))
    assert out.unit_status == testing.BlockedStatus("aar/0 sent unusable data: port: 'http' is not a port number")
    assert settings()["registry.url"] == ""


def test_remove_stops_the_loop_and_keeps_the_settings(machine, ctx, aar_data):
    out, _ = relate(ctx, "registry-client", aar_data)
    ctx.run(ctx.on.remove(), out)
    assert machine.calls()[-1] == "systemctl disable --now ams-sync.service"
    assert settings()["registry.url"] == "https://10.1.2.3:3000"
