"""Both charms end to end, configured by nothing but their relation data.

Each charm's own databag is handed to the other as its remote unit's data,
the way Juju carries it; `aar serve` runs with the aar charm's data directory
on loopback, and a publisher node pushes a package that a client node then
pulls, both set up by the ams-sync charm alone.
"""
import dataclasses
import subprocess

from charmtools import (load_charm, machine, ops_testing as testing,  # noqa: F401
                        programs, wait_for_port)
from regserver import stop_process
from test_zipapp import free_port

AarCharm = load_charm("aar", "AarCharm")
AmsSyncCharm = load_charm("ams-sync", "AmsSyncCharm")


def agent(*argv):
    return subprocess.run(["ams-sync", *argv], capture_output=True, text=True, check=True).stdout


class Side:
    """One unit: its context and the state carried from hook to hook."""

    def __init__(self, charm, state):
        self.ctx = testing.Context(charm)
        self.state = state

    def feed(self, endpoint, remote_app, remote_data, event="relation_changed"):
        """Hand the remote unit's databag over and run the hook; returns this
        unit's own databag on that relation."""
        known = [r for r in self.state.relations if r.endpoint == endpoint]
        relation = known[0] if known else testing.Relation(endpoint, remote_app_name=remote_app)
        fed = dataclasses.replace(relation, remote_units_data={0: dict(remote_data)})
        others = {r for r in self.state.relations if r.id != relation.id}
        self.state = dataclasses.replace(self.state, relations=others | {fed})
        self.state = self.ctx.run(getattr(self.ctx.on, event)(fed, remote_unit=0), self.state)
        return dict(self.state.get_relation(relation.id).local_unit_data)


def test_publisher_pushes_and_client_pulls_configured_by_the_charms(machine, monkeypatch, tmp_path):
    port = free_port()
    registry = Side(AarCharm, testing.State(config={"port": port, "location": "127.0.0.1"}))
    registry.state = registry.ctx.run(registry.ctx.on.config_changed(), registry.state)
    log = open(tmp_path / "serve.log", "w")
    # The service the charm would start, on loopback: same data directory.
    server = subprocess.Popen(["aar", "serve", "--listen", f"127.0.0.1:{port}"],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_for_port(port, server)
        nodes = {}
        for name, endpoint, aar_endpoint in (("publisher", "registry-publisher", "publisher"),
                                             ("client", "registry-client", "client")):
            monkeypatch.setenv("AMS_SYNC_DATA_DIR", str(tmp_path / name))
            node = Side(AmsSyncCharm, testing.State(config={"update_interval": "30s"}))
            mine = node.feed(endpoint, "aar", {}, event="relation_joined")
            theirs = registry.feed(aar_endpoint, f"ams-{name}", mine)
            node.feed(endpoint, "aar", theirs)
            assert node.state.unit_status.name == "active", node.state.unit_status
            nodes[name] = node
        assert registry.state.unit_status == testing.ActiveStatus(
            f"serving https://127.0.0.1:{port}: trusts 1 client(s), 1 publisher(s)")

        monkeypatch.setenv("AMS_SYNC_DATA_DIR", str(tmp_path / "publisher"))
        shown = agent("config", "show")
        assert f'registry.url: "https://127.0.0.1:{port}"' in shown
        assert 'registry.mode: "push"' in shown
        game = tmp_path / "game"
        game.mkdir()
        (game / "manifest.yaml").write_text("name: game\nversion: 1.0\ntags: [arcade]\n")
        (game / "app.apk").write_bytes(b"an android package" * 1000)
        agent("application", "create", str(game))
        agent("application", "publish", "game", "0")
        agent("sync")  # one cycle of the loop the charm's service runs

        monkeypatch.setenv("AMS_SYNC_DATA_DIR", str(tmp_path / "client"))
        assert 'registry.mode: "pull"' in agent("config", "show")
        assert "game" not in agent("application", "list")
        agent("sync")
        assert "game" in agent("application", "list")
    finally:
        stop_process(server, timeout=15)
        log.close()
