"""Join tokens: `aar trust token …` and `ams-sync registry join TOKEN`, over real TLS.

End to end with real processes (aar serve, aar and ams-sync as subprocesses)
for both roles; the refusals, the race and the pin in-process against a real
server in a thread, with the agent driven through ams_sync.main.
"""
import hashlib
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading

import pytest

from agentnodes import Node, aar_cli, race_to_join
from regserver import ROOT, Client, ProcessServer, ThreadServer, client_context, free_port
from registry import join as join_mod
from trust import certs as certs_mod
from trust.tokens import Token, Tokens


def _run(program, *argv, check=True):
    result = subprocess.run([sys.executable, str(ROOT / program), *map(str, argv)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={k: v for k, v in os.environ.items() if k != "SNAP"})
    if check:
        assert result.returncode == 0, result
    return result


@pytest.fixture
def registry(tmp_path):
    srv = ThreadServer(tmp_path / "aar")
    yield srv
    srv.stop()


def _token(registry, *flags):
    result = aar_cli(registry, "trust", "token", "add", "--address",
                     f"127.0.0.1:{registry.port}", *flags)
    assert result.code == 0, result
    return result.out.strip()


def _trusted(registry):
    return {r.fingerprint: r for r in registry.trust.records(revoked=True)}


def _audit(registry):
    path = registry.data.audit_log
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the happy path, with real processes ------------------------------------------------

def test_join_end_to_end_for_both_roles(tmp_path):
    data = tmp_path / "aar"
    server = ProcessServer(data)
    try:
        tokens = {}
        for role in ("publisher", "client"):
            tokens[role] = _run("aar.py", "trust", "token", "add", "--role", role,
                                "--name", f"node-{role}", "--address",
                                f"127.0.0.1:{server.port}", "--data-dir", data).stdout
            assert tokens[role].count("\n") == 1 and tokens[role].startswith("aar1.")
        pub, cli = tmp_path / "pub", tmp_path / "cli"
        out = _run("ams_sync.py", "--data-dir", pub, "registry", "join",
                   tokens["publisher"].strip()).stdout
        assert "as publisher (node-publisher)" in out and "push" in out
        out = _run("ams_sync.py", "--data-dir", cli, "registry", "join",
                   tokens["client"].strip()).stdout
        assert "as client (node-client)" in out and "pull" in out

        # Configured as the manual steps would: url, fingerprint, mode, trust.
        for node, mode in ((pub, "push"), (cli, "pull")):
            shown = json.loads(_run("ams_sync.py", "--data-dir", node, "config", "show",
                                    "--format", "json").stdout)
            assert shown["registry.url"] == f"https://127.0.0.1:{server.port}"
            assert shown["registry.fingerprint"] == server.fingerprint
            assert shown["registry.mode"] == mode
            trusted = json.loads(_run("ams_sync.py", "--data-dir", node, "config", "trust",
                                      "list", "--format", "json").stdout)
            assert [t["fingerprint"] for t in trusted] == [server.fingerprint]
        listed = json.loads(_run("aar.py", "trust", "list", "--format", "json",
                                 "--data-dir", data).stdout)
        assert {(r["name"], r["role"]) for r in listed} == {
            ("node-publisher", "publisher"), ("node-client", "client")}

        # No other step, no restart: a package goes from one node to the other.
        package = tmp_path / "game.zip"
        import zipfile
        with zipfile.ZipFile(package, "w") as archive:
            archive.writestr("manifest.yaml", "name: game\n")
            archive.writestr("app.apk", os.urandom(5000))
        _run("ams_sync.py", "--data-dir", pub, "application", "create", package)
        _run("ams_sync.py", "--data-dir", pub, "application", "publish", "game", "0")
        assert "1 pushed" in _run("ams_sync.py", "--data-dir", pub, "sync").stdout
        assert "1 pulled" in _run("ams_sync.py", "--data-dir", cli, "sync").stdout

        states = json.loads(_run("aar.py", "trust", "token", "list", "--format", "json",
                                 "--data-dir", data).stdout)
        assert [t["state"] for t in states] == ["used", "used"]
    finally:
        server.stop()


# -- refusals -------------------------------------------------------------------------------

def _join(tmp_path, token, name="node"):
    return Node(tmp_path / name)("registry", "join", token)


def _refused(registry, result, before):
    assert result.code == 1, result
    assert "refused the join" in result.err
    assert _trusted(registry) == before


def test_wrong_secret_is_refused_and_changes_nothing(registry, tmp_path):
    token = Token.decode(_token(registry))
    forged = Token(token.urls, token.fingerprint, token.id, "x" * 43).encode()
    before = _trusted(registry)
    _refused(registry, _join(tmp_path, forged), before)
    assert [t["state"] for t in Tokens(registry.trust).list()] == ["valid"]
    refusal = [r for r in _audit(registry) if r["event"] == "refusal"]
    assert len(refusal) == 1 and "wrong secret" in refusal[0]["reason"]
    assert not (tmp_path / "node" / "config.json").exists()
    # The real token still works afterwards.
    assert _join(tmp_path, token.encode(), "other").code == 0


def test_unknown_token_is_refused(registry, tmp_path):
    token = Token.decode(_token(registry))
    forged = Token(token.urls, token.fingerprint, "0" * 12, token.secret).encode()
    before = _trusted(registry)
    _refused(registry, _join(tmp_path, forged), before)


def test_expired_token_is_refused(registry, tmp_path):
    good = Token.decode(_token(registry))
    row, secret = Tokens(registry.trust).create("client", -1)   # expired a second ago
    expired = Token(good.urls, good.fingerprint, row["id"], secret).encode()
    before = _trusted(registry)
    _refused(registry, _join(tmp_path, expired), before)
    assert any("expired" in r.get("reason", "") for r in _audit(registry))


def test_removed_token_is_refused(registry, tmp_path):
    token = _token(registry)
    token_id = Token.decode(token).id
    removed = aar_cli(registry, "trust", "token", "remove", token_id)
    assert removed.code == 0 and token_id in removed.out
    assert Tokens(registry.trust).list() == []
    before = _trusted(registry)
    _refused(registry, _join(tmp_path, token), before)


def test_token_replayed_after_success_is_refused(registry, tmp_path):
    token = _token(registry, "--role", "publisher")
    first = _join(tmp_path, token, "first")
    assert first.code == 0, first
    before = _trusted(registry)
    assert len(before) == 1
    _refused(registry, _join(tmp_path, token, "second"), before)
    # Also by the very node that used it.
    _refused(registry, _join(tmp_path, token, "first"), before)


def test_not_a_token(registry, tmp_path):
    result = _join(tmp_path, "hello")
    assert result.code == 1 and "not a join token" in result.err


def test_two_nodes_racing_for_one_token_one_wins(registry, tmp_path):
    token = _token(registry)
    nodes, results = race_to_join([tmp_path / f"n{i}" for i in range(6)], lambda i: token)
    assert sorted(r.code for r in results) == [0] + [1] * (len(nodes) - 1)
    assert len(_trusted(registry)) == 1
    winner = nodes[[r.code for r in results].index(0)]
    assert list(_trusted(registry)) == [winner.fingerprint]
    uses = [r for r in _audit(registry) if r["event"] == "token.use"]
    assert len(uses) == 1 and uses[0]["fingerprint"] == winner.fingerprint


def test_guessing_is_rate_limited_per_address(registry, tmp_path):
    token = Token.decode(_token(registry))
    forged = Token(token.urls, token.fingerprint, token.id, "guess").encode()
    limit = registry.server.join_gate._per_address
    for i in range(limit):
        assert "invalid join token" in _join(tmp_path, forged, f"g{i}").err
    # Now even the right secret waits: the address has used its credit.
    result = _join(tmp_path, token.encode(), "late")
    assert result.code == 1 and "too many failed join attempts" in result.err
    assert _trusted(registry) == {}
    reasons = [r["code"] for r in _audit(registry) if r["event"] == "refusal"]
    assert reasons == ["token"] * limit + ["rate_limited"]


def test_rate_limit_buckets_refill_and_count_globally():
    now = [0.0]
    gate = join_mod.Gate(per_address=2, overall=3, window=60.0, clock=lambda: now[0])
    gate.failed("10.0.0.1:1")
    gate.failed("10.0.0.1:2")
    assert not gate.allowed("10.0.0.1:3")      # per address, any port
    assert gate.allowed("10.0.0.2:1")
    gate.failed("10.0.0.2:1")
    assert not gate.allowed("10.0.0.3:1")      # the global bucket is empty
    now[0] += 30.0                             # half a window: 1.5 global credits back
    assert gate.allowed("10.0.0.1:4")


# -- the pin ------------------------------------------------------------------------------

class _Recorder:
    """A TLS server with another certificate that records what reaches it."""

    def __init__(self, pair):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(pair.cert), str(pair.key))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        raw, _ = self.sock.accept()
        with raw:
            raw.settimeout(20)
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    self.handshakes += 1
                    while True:
                        data = tls.recv(65536)
                        if not data:
                            break
                        self.received += data
            except (OSError, ssl.SSLError):
                pass

    def stop(self):
        self.sock.close()
        self.thread.join(20)


def test_a_registry_with_another_fingerprint_gets_no_byte(registry, certs, tmp_path):
    real = Token.decode(_token(registry))
    imposter = _Recorder(certs.server)
    try:
        token = Token((f"https://127.0.0.1:{imposter.port}",), real.fingerprint, real.id,
                      real.secret).encode()
        result = _join(tmp_path, token)
        imposter.thread.join(20)
        assert result.code == 1 and "nothing was sent" in result.err
        assert imposter.handshakes == 1       # it got as far as the handshake…
        assert imposter.received == b""       # …and not one byte after it
        assert not (tmp_path / "node" / "config.json").exists()
    finally:
        imposter.stop()
    assert [t["state"] for t in Tokens(registry.trust).list()] == ["valid"]


def test_a_later_address_is_tried_when_the_first_is_down(registry, tmp_path):
    good = Token.decode(_token(registry))
    token = Token((f"https://127.0.0.1:{free_port()}",) + good.urls, good.fingerprint,
                  good.id, good.secret).encode()
    assert _join(tmp_path, token).code == 0


# -- what a caller without a certificate can reach ------------------------------------------

def test_certificate_less_callers_reach_the_join_endpoint_only(registry, certs):
    caller = Client(registry.port, None)
    body = json.dumps({"token": "x", "secret": "y", "certificate": certs.client.pem})
    status, answer, _ = caller.json("POST", "/1.0/join", body,
                                    {"Content-Type": "application/json"})
    assert status == 403 and "invalid join token" in answer["error"]
    for method, path in (("GET", "/1.0"), ("GET", "/1.0/applications"),
                         ("POST", "/1.0/applications"), ("GET", "/1.0/join")):
        ctx = client_context(None)
        with socket.create_connection(("127.0.0.1", registry.port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
                            "Content-Length: 0\r\n\r\n".encode())
                try:
                    answer = tls.recv(100)
                except (ssl.SSLError, ConnectionError):
                    answer = b""
        assert answer == b"", (method, path)   # closed unanswered
    refusals = [r for r in _audit(registry) if r.get("code") == "no_certificate"]
    assert len(refusals) == 4


def test_an_untrusted_certificate_cannot_join_either(registry, certs):
    # A caller presenting a certificate the registry does not know is refused
    # in the handshake, join endpoint or not.
    caller = Client(registry.port, certs.stranger)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        caller.json("POST", "/1.0/join", b"{}")


def test_token_add_needs_a_server_certificate(tmp_path):
    result = _run("aar.py", "trust", "token", "add", "--data-dir", tmp_path / "empty",
                  check=False)
    assert result.returncode == 1 and "no registry has run on data directory" in result.stderr


def test_token_list_shows_states_without_secrets(registry, tmp_path):
    token = Token.decode(_token(registry, "--name", "edge-7", "--ttl", "30m"))
    listed = json.loads(aar_cli(registry, "trust", "token", "list", "--format",
                                "json").out)
    assert [(t["id"], t["name"], t["state"], t["role"]) for t in listed] == [
        (token.id, "edge-7", "valid", "client")]
    with sqlite3.connect(registry.data.trust_db) as db:
        rows = db.execute("SELECT * FROM JoinTokens").fetchall()
    stored = repr(rows)
    assert token.secret not in stored
    assert hashlib.sha256(token.secret.encode()).hexdigest() in stored


@pytest.mark.parametrize("argv, message", [
    (["--role", "admin"], "invalid choice"),
    (["--ttl", "soon"], "invalid duration"),
    (["--address", "host:http"], "bad address"),
])
def test_token_add_usage_errors(registry, argv, message):
    result = aar_cli(registry, "trust", "token", "add", *argv)
    assert result.code == 2 and message in result.err


def test_certificate_of_a_joined_node_is_named_in_the_store(registry, tmp_path):
    token = _token(registry, "--name", "rack-3")
    node = Node(tmp_path / "node")
    assert node("registry", "join", token).code == 0
    record = _trusted(registry)[node.fingerprint]
    assert (record.name, record.role) == ("rack-3", "client")
    assert certs_mod.load_certificate(node.root / "registry" / "client.crt").fingerprint \
        == record.fingerprint


def test_token_addresses_default_to_the_configured_listen(registry):
    conf = registry.data.root / "conf"
    conf.mkdir(exist_ok=True)
    (conf / "main.yaml").write_text("listen: 192.0.2.7:4443\n")
    token = Token.decode(aar_cli(registry, "trust", "token", "add").out.strip())
    assert token.urls == ("https://192.0.2.7:4443",)
    (conf / "main.yaml").write_text("listen: 0.0.0.0:4443\n")
    token = Token.decode(aar_cli(registry, "trust", "token", "add").out.strip())
    assert token.urls and all(u.endswith(":4443") for u in token.urls)
    assert token.fingerprint == registry.fingerprint
