"""ams-sync in an operator's daily use: config get, sync --dry-run, quiet cycles,
the client certificate renewed by command, one behaviour with `aar`."""
import io
import logging
import signal
import subprocess
import sys

import pytest

import ams_sync
from agent import sync
from agent.loop import Loop
from agent.paths import DataDir
from agentnodes import Node, nodes, registry  # noqa: F401 (fixtures)
from regserver import ROOT, stop_process
from test_aar_cli import Tty
from trust import certs as certs_mod


def test_config_get_prints_one_value(tmp_path):
    node = Node(tmp_path / "n")
    node.ok("config", "set", "registry.url", "https://10.0.0.5:3000")
    assert node.ok("config", "get", "registry.url").out == "https://10.0.0.5:3000\n"
    assert node.ok("config", "get", "registry.mode").out == "pull\n"     # the default
    result = node("config", "get", "registry.nope")
    assert result.code == 2 and "unknown setting" in result.err


def test_trust_add_behaves_as_aar_does(tmp_path, certs):
    node = Node(tmp_path / "n")
    out, err = io.StringIO(), io.StringIO()
    code = ams_sync.main(["--data-dir", str(node.root), "config", "trust", "add"],
                         stdin=Tty(), stdout=out, stderr=err)
    assert code == 2 and ams_sync.NO_INPUT in err.getvalue()
    fp = certs_mod.load_certificate(certs.server.cert).fingerprint
    node.ok("config", "trust", "add", str(certs.server.cert))
    again = node.ok("config", "trust", "add", str(certs.server.cert))
    assert again.out == fp + "\n" and "already trusted" in again.err


def test_client_cert_renew_keeps_the_old_pair_and_says_what_next(tmp_path):
    node = Node(tmp_path / "n")
    shown = node.ok("config", "client-cert", "show").out
    old = node.fingerprint
    assert shown.startswith(old + "\n")
    result = node.ok("config", "client-cert", "renew")
    new = node.fingerprint
    assert new != old and new in result.out
    assert "aar trust add" in result.out and f"aar trust remove {old[:12]}" in result.out
    kept = sorted(p.name for p in (node.root / "registry").iterdir())
    assert len(kept) == 4 and [n for n in kept if n.endswith(".old")]
    old_cert = [p for p in (node.root / "registry").glob("client.crt.*.old")][0]
    assert certs_mod.load_certificate(old_cert).fingerprint == old


def test_sync_dry_run_prints_the_plan_and_changes_nothing(tmp_path, registry, nodes):  # noqa: F811
    pub, cli = nodes
    pub.add_app(tmp_path, "game")
    plan = pub.ok("sync", "--dry-run").out
    assert plan.splitlines()[0].startswith("push (dry run): would push 1")
    assert "  would push game/0/" in plan
    assert registry.packages.list() == []
    assert pub.ok("sync").out.startswith("push: 1 pushed")
    plan = cli.ok("sync", "--dry-run").out
    assert "  would pull game/0/" in plan and cli.apps() == {}
    assert not (cli.root / "sync-state.json").exists()
    cli.ok("sync")
    pub.ok("application", "revoke", "game", "0")
    plan = pub.ok("sync", "--dry-run").out
    assert "  would remove game/0/" in plan
    assert [a["name"] for a in registry.packages.list()] == ["game"]


def test_summary_says_unchanged_only_when_nothing_happened():
    assert "registry unchanged" in str(sync.Summary("pull", unchanged=True))
    busy = str(sync.Summary("push", pushed=["game/1/amd64"], unchanged=True))
    assert busy == "push: 1 pushed, 0 pulled, 0 removed, 0 failed"


def test_quiet_cycles_log_at_debug_and_repeated_failures_at_doublings(tmp_path, caplog):
    loop = Loop(DataDir(tmp_path))
    caplog.set_level(logging.DEBUG, logger="ams_sync")
    loop._report(sync.Summary("pull", unchanged=True))
    loop._report(sync.Summary("pull", pulled=["game/0/amd64"]))
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.DEBUG, logging.INFO]
    caplog.clear()
    for failures in range(1, 10):
        loop._report(sync.Summary("pull", failed=["registry unavailable"]), failures)
    loud = [r for r in caplog.records if r.levelno == logging.WARNING
            and r.getMessage().startswith("pull:")]
    assert len(loud) == 4                          # after failures 1, 2, 4 and 8


@pytest.mark.parametrize("level", ["info", "warning"])
def test_run_log_level(tmp_path, level):
    # An unreachable registry: the first cycle fails with a WARNING, whatever the level.
    import socket
    closed = socket.socket()             # bound, never listening: connections are refused
    closed.bind(("127.0.0.1", 0))
    node = Node(tmp_path / "n")
    node.ok("config", "set", "registry.url", f"https://127.0.0.1:{closed.getsockname()[1]}")
    node.ok("config", "set", "registry.fingerprint", "ab" * 32)
    proc = subprocess.Popen([sys.executable, "-m", "ams_sync", "--data-dir", str(node.root),
                             "run", "--log-level", level], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        # The cycle's summary and the reason ("unavailable") are two WARNING lines:
        # interrupt only once the second has been written.
        while not seen or "unavailable" not in seen[-1]:
            seen.append(proc.stderr.readline())
            assert seen[-1], "ams-sync run ended early"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        seen.append(proc.stderr.read())     # what readline() buffered, and the rest
    finally:
        stop_process(proc, timeout=10)
        proc.stderr.close()
        closed.close()
    text = "".join(seen)
    assert ("INFO" in text) == (level == "info")       # "running", "stopped"
    assert "unavailable" in text


def test_help_completion_and_did_you_mean(tmp_path):
    node = Node(tmp_path / "n")
    assert node.ok("help", "config", "set").out == node.ok("config", "set", "--help").out
    assert "Examples:" in node.ok("config", "set", "--help").out
    script = node.ok("completion", "bash").out
    probe = script + ('\nCOMP_WORDS=(ams-sync config cl); COMP_CWORD=2; _ams_sync; '
                      'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["client-cert"]
    assert "complete -c ams-sync" in node.ok("completion", "fish").out
    result = node("confg", "show")
    assert result.code == 2 and "Did you mean 'config'?" in result.err


# -- messages ------------------------------------------------------------------------------

def test_plain_http_is_told_the_registry_speaks_https(tmp_path):
    import http.server
    import threading
    node = Node(tmp_path / "n")
    result = node("config", "set", "registry.url", "http://127.0.0.1:3000")
    assert result.code == 2 and "speaks HTTPS" in result.err
    # A plain-HTTP server where the registry should be.
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        node.ok("config", "set", "registry.url", f"https://127.0.0.1:{server.server_port}")
        node.ok("config", "set", "registry.fingerprint", "ab" * 32)
        result = node("registry", "list")
        assert result.code == 1 and "speaks HTTPS" in result.err, result
    finally:
        server.shutdown()
        server.server_close()


def test_a_manifest_in_a_folder_is_named(tmp_path):
    import zipfile
    from agent import package
    archive = tmp_path / "game.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("game/manifest.yaml", "name: game\n")
        zf.writestr("game/app.apk", b"apk")
    node = Node(tmp_path / "n")
    result = node("application", "create", str(archive))
    assert result.code == 1
    assert package.NESTED_MANIFEST.format(found="game/manifest.yaml", folder="game") in result.err


def test_an_unconfigured_node_waits_quietly(tmp_path, caplog):
    from agent import loop as loop_mod
    from test_agent_loop import Recorder
    caplog.set_level(logging.DEBUG, logger="ams_sync")
    node = Node(tmp_path / "n")
    running = Recorder(node.root)
    try:
        assert running.next() is None
        assert running.loop.idle_reason == loop_mod.UNCONFIGURED.format(
            keys="registry.url and registry.fingerprint")
        node.ok("config", "set", "registry.url", "https://127.0.0.1:9")   # wakes the loop
        assert running.next() is None
        assert "waiting for registry.fingerprint" in running.loop.idle_reason
    finally:
        running.stop()
    said = [r for r in caplog.records if "waiting for" in r.getMessage()]
    assert len(said) == 2 and not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- progress where people wait ---------------------------------------------------------------

def _run_on_tty(node, *argv):
    out, err = io.StringIO(), Tty()
    code = ams_sync.main(["--data-dir", str(node.root), *argv], stdin=io.StringIO(),
                         stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_create_shows_every_phase_on_a_terminal_only(tmp_path):
    import os
    source = tmp_path / "game"
    source.mkdir()
    (source / "manifest.yaml").write_text("name: game\n")
    (source / "app.apk").write_bytes(os.urandom(3_000_000))
    node = Node(tmp_path / "n")
    code, out, err = _run_on_tty(node, "application", "create", str(source))
    assert code == 0 and out.startswith("Created application game version 0")
    for phase in ("compressing", "hashing", "verifying", "importing"):
        assert f"game: {phase}" in err, phase
    assert "3.0 MB" in err and "3000000" not in err
    assert err.endswith("\r\033[K")              # the line is gone once done
    # Not a terminal: nothing at all.
    result = node("application", "create", str(source))
    assert result.code == 0 and result.err == ""


def test_pull_says_it_verifies_and_imports_after_the_download(tmp_path, registry, nodes):  # noqa: F811
    pub, cli = nodes
    pub.add_app(tmp_path, "game", size=200_000)
    pub.ok("sync")
    code, out, err = _run_on_tty(cli, "sync")
    assert code == 0 and "pulled game/0/" in out
    assert "game/0/" in err and ": verifying" in err and ": importing" in err
