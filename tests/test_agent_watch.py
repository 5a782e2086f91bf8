"""Held listing requests between pull cycles (agent/watch.py): a change is
pulled at once, a registry that ignores `wait` or a proxy that cuts it costs
no busy loop, and stopping or `config set` ends a held request.

The real programs run as subprocesses: `python -m ams_sync run` against
tests/fakeregistry.ListingRegistry, and against a real `aar serve`.
"""
import contextlib
import http.client
import signal
import subprocess
import sys
import time

import pytest

from agent import loop as loop_mod
from agent import watch as watch_mod
from agentnodes import Node, nodes, registry  # noqa: F401 (fixtures)
from fakeregistry import ListingRegistry
from regserver import ROOT, ProcessServer, client_context, stop_process

WAIT = 90       # a hang guard, never a measurement


def poll(predicate, what, timeout=WAIT):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


@contextlib.contextmanager
def fake(registry, mode, node):  # noqa: F811
    """A ListingRegistry with the real registry's certificate, node pointed at it."""
    srv = ListingRegistry(registry.data.server_cert, registry.data.server_key, mode)
    node.ok("config", "set", "registry.url", srv.url)
    try:
        yield srv
    finally:
        srv.stop()


class Running:
    """`python -m ams_sync run` on a node's data directory, output in a file."""

    def __init__(self, node, tmp_path, *args):
        self.log = open(tmp_path / f"run-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ams_sync", "--data-dir", str(node.root), "run", *args],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, signum=signal.SIGTERM):
        """Signal it; its exit code (the process is gone afterwards either way)."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signum)
            return self.proc.wait(WAIT)
        finally:
            stop_process(self.proc, timeout=1)


@pytest.fixture
def running(tmp_path):
    started = []

    def start(node, *args):
        started.append(Running(node, tmp_path, *args))
        return started[-1]

    yield start
    for run in started:
        stop_process(run.proc, timeout=10)
        run.log.close()


# -- against the fake ---------------------------------------------------------------------

def test_a_change_starts_a_cycle_at_once(tmp_path, registry, nodes, running):  # noqa: F811
    _, cli = nodes
    cli.ok("config", "set", "registry.update_interval", "1h")
    with fake(registry, "hold", cli) as srv:
        run = running(cli)
        poll(lambda: srv.held == 1, "a held request")
        assert len(srv.cycles()) == 1                 # the first cycle, then the wait
        srv.change()
        poll(lambda: len(srv.cycles()) == 2, "a second cycle after the change")
        second = srv.cycles()[1]
        assert second[2].get("If-None-Match") == srv.etag   # the listing the wait brought
        poll(lambda: srv.held == 1, "held again after the cycle")
        assert run.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_ends_run_while_a_request_is_held(tmp_path, registry, nodes, running,  # noqa: F811
                                               signum):
    _, cli = nodes
    cli.ok("config", "set", "registry.update_interval", "1h")
    with fake(registry, "forever", cli) as srv:
        run = running(cli)
        poll(lambda: srv.held == 1, "a held request")
        code = run.stop(signum)
        output = run.output()
    assert code == 0, output
    assert loop_mod.STOPPING.format(signal=signum.name) in output
    assert loop_mod.STOP_LATE not in output            # the worker ended by itself
    assert output.rstrip().endswith(loop_mod.STOPPED)


def test_config_set_cuts_a_held_request_short(tmp_path, registry, nodes, running):  # noqa: F811
    _, cli = nodes
    cli.ok("config", "set", "registry.update_interval", "1h")
    with fake(registry, "forever", cli) as srv:
        run = running(cli)
        poll(lambda: srv.held == 1, "a held request")
        cli.ok("config", "set", "registry.filter", "arcade")
        # The fake would hold the request until the test ends: only the
        # agent breaking it lets the cycle with the new filter run.
        poll(lambda: any("tags=arcade" in r[1] for r in srv.cycles()), "a cycle with the filter")
        assert run.stop() == 0


@pytest.mark.parametrize("mode, said", [
    ("ignore", "does not hold listing requests"),
    ("refuse", "refused to wait for changes: registry"),
])
def test_a_registry_without_wait_is_asked_once_per_interval(tmp_path, registry,  # noqa: F811
                                                            nodes, running, mode, said):
    _, cli = nodes
    cli.ok("config", "set", "registry.update_interval", "4s")
    with fake(registry, mode, cli) as srv:
        run = running(cli)
        poll(lambda: len(srv.cycles()) >= 4, "four cycles")
        cycles, waits = len(srv.cycles()), len(srv.waits())
        assert run.stop() == 0
        output = run.output()
    # One held request tried after each cycle, answered at once, then a
    # plain sleep to the next cycle: never a request loop. Said once.
    assert 1 <= waits <= cycles, (cycles, waits)
    assert output.count(said) == 1, output


@pytest.mark.parametrize("mode", ["fail"])
def test_a_proxy_that_cuts_held_requests_backs_off(tmp_path, registry, nodes, running,  # noqa: F811
                                                   mode):
    _, cli = nodes
    cli.ok("config", "set", "registry.update_interval", "12s")
    with fake(registry, mode, cli) as srv:
        run = running(cli)
        poll(lambda: len(srv.cycles()) >= 2, "two cycles")
        assert run.stop() == 0
        cycles, waits = len(srv.cycles()), len(srv.waits())
        output = run.output()
    failed = [line for line in output.splitlines() if "waiting for changes failed" in line]
    assert waits >= 2 and "502" in failed[0], output
    # each failure is logged once, with the backoff it waits; the cycles go on
    # (the stop may come between the fake's 502 and the agent's line for it:
    # the last request counted may be the one not logged)
    assert waits - 1 <= len(failed) <= waits, output
    # backoff from 5 s doubling, capped by the time to the next cycle: a few
    # requests per interval, not a loop
    assert waits <= 5 * cycles, (cycles, waits)
    assert "cycle failed" not in output


# -- end to end: a real `aar serve` ------------------------------------------------------

class _Served:
    """What agentnodes.Node.register needs of a registry, for `aar serve`."""

    def __init__(self, server):
        from registry.paths import DataDir
        self.data = DataDir(server.datadir)
        self.port, self.fingerprint = server.port, server.fingerprint


def _holds_requests(port, node):
    """Does the registry hold a listing request with wait= (a 304 only after
    the time asked)? An older registry answers at once."""
    context = client_context(None)
    context.load_cert_chain(str(node.root / "registry" / "client.crt"),
                            str(node.root / "registry" / "client.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        conn.request("GET", "/1.0/applications")
        resp = conn.getresponse()
        resp.read()
        etag = resp.getheader("ETag")
        started = time.monotonic()
        conn.request("GET", "/1.0/applications?wait=3", headers={"If-None-Match": etag})
        resp = conn.getresponse()
        resp.read()
        return resp.status == 304 and time.monotonic() - started >= 2
    finally:
        conn.close()


def test_a_published_version_reaches_a_pull_node_without_waiting_the_interval(
        tmp_path, running):
    server = ProcessServer(tmp_path / "aar")
    try:
        served = _Served(server)
        pub = Node(tmp_path / "ams-pub").register(served, "push", "publisher")
        cli = Node(tmp_path / "ams-cli").register(served, "pull", "client")
        if not _holds_requests(server.port, cli):
            pytest.skip("this registry answers wait= at once (its server core lacks "
                        "held requests): nothing to propagate early")
        cli.ok("config", "set", "registry.update_interval", "1h")
        run = running(cli, "--log-level", "debug")
        # the first cycle is over when the request is held
        holding = watch_mod.HOLDING.split("{")[0]
        poll(lambda: holding in run.output(), "a held request")
        pub.add_app(tmp_path, "game")
        pub.ok("sync")
        # The interval is an hour: only the held request brings it.
        poll(lambda: "game" in cli.apps(), "game on the pull node")
        assert cli.apps()["game"]["origin"] == "pulled"
        assert run.stop() == 0
    finally:
        server.stop()
    assert watch_mod.NO_WAIT.split("{")[0] not in run.output()
