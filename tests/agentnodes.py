"""AMS nodes for the tests: data directories driven through ams_sync.main,
registered with a real registry the way the operator guide does it by hand.

Fixtures (a test module imports the ones it uses): `registry`, a ThreadServer
that trusts no one until nodes register, and `nodes`, a publisher node in
push mode and a client node in pull mode, both registered with it.
"""
import hashlib
import io
import json
import os
import zipfile

import pytest

import aar
import ams_sync
from agent.appstore import AppStore
from regserver import Pipe, ThreadServer
from trust import certs as certs_mod

__all__ = ["Result", "Node", "aar_cli", "registry", "nodes"]


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"Result({self.code}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def registry(tmp_path):
    srv = ThreadServer(tmp_path / "aar")
    yield srv
    srv.stop()


def aar_cli(registry, *argv, stdin=b""):
    """`aar …` in-process against the registry's data directory."""
    out, err = io.StringIO(), io.StringIO()
    code = aar.main([*argv, "--data-dir", str(registry.data.root)], stdin=Pipe(stdin),
                    stdout=out, stderr=err)
    return Result(code, out.getvalue(), err.getvalue())


class Node:
    """One AMS node: a data directory driven through ams_sync.main."""

    def __init__(self, root):
        self.root = root

    def __call__(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        code = ams_sync.main(["--data-dir", str(self.root), *argv], stdin=io.StringIO(),
                             stdout=out, stderr=err)
        return Result(code, out.getvalue(), err.getvalue())

    def ok(self, *argv):
        result = self(*argv)
        assert result.code == 0, result
        return result

    def register(self, registry, mode, role):
        """The seed's "Register clients manually", step by step."""
        server_crt = registry.data.server_cert           # .../certs/server.crt
        fp = self.ok("config", "trust", "add", str(server_crt)).out.strip()
        listed = json.loads(self.ok("config", "trust", "list", "--format", "json").out)
        assert [row["fingerprint"] for row in listed] == [fp] == [registry.fingerprint]
        self.ok("config", "set", "registry.url", f"https://127.0.0.1:{registry.port}")
        self.ok("config", "set", "registry.fingerprint", fp)
        self.ok("config", "set", "registry.update_interval", "5m")
        self.ok("config", "set", "registry.mode", mode)
        client_crt = self.root / "registry" / "client.crt"
        if role == "publisher":
            added = aar_cli(registry, "trust", "add", "--publisher", str(client_crt))
        else:
            added = aar_cli(registry, "trust", "add", stdin=client_crt.read_bytes())
        assert added.code == 0, added
        return self

    @property
    def fingerprint(self):
        return certs_mod.load_certificate(self.root / "registry" / "client.crt").fingerprint

    def apps(self):
        with AppStore(self.root) as store:
            return {app["name"]: app for app in store.list()}

    def blob(self, sha256):
        with AppStore(self.root) as store:
            return store.blob_path(sha256).read_bytes()

    def staging(self):
        return sorted(os.listdir(self.root / "staging"))

    def add_app(self, tmp_path, name, tags=("casual",), size=4096, publish=True):
        """A .zip package (stored, so its size is what we ask) created and published."""
        path = tmp_path / f"{name}-{len(os.listdir(tmp_path))}.zip"
        seed = hashlib.sha256(path.name.encode()).digest()
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("manifest.yaml", f"name: {name}\ntags: [{', '.join(tags)}]\n")
            archive.writestr("app.apk", (seed * (size // 32 + 1))[:size])
        created = self.ok("application", "create", str(path)).out
        version = int(created.split(" version ")[1].split()[0])
        if publish:
            self.ok("application", "publish", name, str(version))
        return version


def race_to_join(roots, token_of):
    """Nodes at roots (certificates made first) run `registry join` at once,
    node i with token_of(i); their Nodes and Results."""
    import threading
    from agent.paths import DataDir
    nodes = [Node(root) for root in roots]
    for node in nodes:                     # certificates made before the start line
        node.root.mkdir()
        DataDir(node.root).client_certificate()
    results = [None] * len(nodes)
    start = threading.Barrier(len(nodes))

    def go(i):
        start.wait()
        results[i] = nodes[i]("registry", "join", token_of(i))
    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return nodes, results


@pytest.fixture
def nodes(tmp_path, registry):
    """(publisher, client) nodes, both registered with the registry."""
    pub = Node(tmp_path / "ams-pub").register(registry, "push", "publisher")
    cli = Node(tmp_path / "ams-cli").register(registry, "pull", "client")
    return pub, cli
