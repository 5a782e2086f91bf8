"""The `run` loop: backoff, progress, settings picked up while running, and
stopping (in-process, and a real `python -m ams_sync run` sent SIGTERM/SIGINT)."""
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from agent import loop as loop_mod
from agent.loop import Loop, TerminalProgress, backoff
from agent.paths import DataDir
from agentnodes import nodes, registry  # noqa: F401 (fixtures)
from fakeregistry import CuttingProxy
from regserver import ROOT, access, free_port  # noqa: F401 (fixture)

MiB = 1 << 20
WAIT = 60      # a hang guard, never a measurement


# -- pure parts ----------------------------------------------------------------------------

def test_backoff_grows_with_jitter_and_never_exceeds_the_interval():
    for interval in (1.0, 30.0, 300.0, 3600.0):
        previous_ceiling = 0
        for failures in range(1, 40):
            low = backoff(failures, interval, rand=lambda: 0.0)
            high = backoff(failures, interval, rand=lambda: 1.0)
            ceiling = min(interval, loop_mod.BACKOFF_BASE * 2 ** (failures - 1))
            assert (low, high) == (ceiling / 2, ceiling), (interval, failures)
            assert previous_ceiling <= ceiling <= interval
            previous_ceiling = ceiling


def test_progress_shows_only_lasting_transfers_on_one_line():
    now = [0.0]
    out = io.StringIO()
    show = TerminalProgress(out, clock=lambda: now[0])
    show("quick/0/amd64", MiB, MiB)
    assert out.getvalue() == ""
    for step in range(1, 5):
        now[0] += 0.5
        show("slow/0/amd64", step * MiB, 4 * MiB)
    text = out.getvalue()
    assert text.startswith("\rslow/0/amd64: ") and text.endswith("4.0/4.0 MiB (100%)\n")
    assert text.count("\n") == 1


# -- the loop in this process --------------------------------------------------------------

class Recorder:
    """Starts a Loop on a thread; summaries arrive on a queue."""

    def __init__(self, root, **kwargs):
        self.summaries = queue.Queue()
        self.loop = Loop(DataDir(root), on_cycle=self.summaries.put, **kwargs)
        self.errors = []
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        try:
            self.loop.run()
        except BaseException as error:
            self.errors.append(error)

    def next(self):
        return self.summaries.get(timeout=WAIT)

    def stop(self):
        self.loop.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive() and not self.errors


def test_a_running_loop_follows_config_set(tmp_path, registry, nodes, access):  # noqa: F811
    pub, cli = nodes
    pub.add_app(tmp_path, "game")
    pub.ok("sync")
    cli.ok("config", "set", "registry.mode", "manual")
    running = Recorder(cli.root)
    try:
        assert running.next() is None                      # manual: nothing at all
        cli.ok("config", "set", "registry.mode", "pull")   # seen within a second
        summary = running.next()
        assert [s.split("/")[0] for s in summary.pulled] == ["game"]
        assert "game" in cli.apps()
        access.clear()
        cli.ok("config", "set", "registry.filter", "casual")
        summary = running.next()
        assert summary.ok and not summary.pulled
        access.clear()
        cli.ok("config", "set", "registry.update_interval", "6m")
        summary = running.next()                           # same question as before:
        assert summary.unchanged                           # the remembered ETag, a 304
        # (between cycles the loop also holds listing requests, `wait=`: watch.py)
        cycle = [line for line in access if "wait=" not in line]
        assert len(cycle) == 1 and '" 304 ' in cycle[0]
    finally:
        running.stop()


class Waits(Loop):
    """A Loop that records how long it would wait, and stops after `cycles`."""

    def __init__(self, *args, cycles, **kwargs):
        super().__init__(*args, **kwargs)
        self.waits, self.limit = [], cycles

    def _wait(self, seconds):
        self.waits.append(seconds)
        if len(self.waits) >= self.limit:
            self.stop_event.set()


def test_failed_cycles_back_off_then_the_interval_returns(tmp_path, registry, nodes):  # noqa: F811
    pub, cli = nodes
    cli.ok("config", "set", "registry.url", f"https://127.0.0.1:{free_port()}")
    failing = Waits(DataDir(cli.root), cycles=6)
    failing.run()
    ceilings = [min(300.0, loop_mod.BACKOFF_BASE * 2 ** n) for n in range(6)]
    assert all(c / 2 <= w <= c for w, c in zip(failing.waits, ceilings)), failing.waits
    cli.ok("config", "set", "registry.url", f"https://127.0.0.1:{registry.port}")
    healthy = Waits(DataDir(cli.root), cycles=2)
    healthy.run()
    assert healthy.waits == [300.0, 300.0]


def test_stop_abandons_a_download_and_cleans_staging(tmp_path, registry, nodes):  # noqa: F811
    pub, cli = nodes
    pub.add_app(tmp_path, "game", size=3 * MiB)
    pub.ok("sync")
    proxy = CuttingProxy(registry.port, cut_after=MiB, stall=True)
    try:
        cli.ok("config", "set", "registry.url", proxy.url)
        running = Recorder(cli.root)
        assert proxy.cut.wait(WAIT)
        assert len(cli.staging()) == 1                  # the download, mid-way
        running.stop()
    finally:
        proxy.stop()
    assert cli.staging() == []
    assert "game" not in cli.apps()


def test_stop_during_concurrent_downloads_ends_them_all_and_cleans_staging(tmp_path, registry,  # noqa: F811
                                                                         nodes):
    pub, cli = nodes
    for name in ("alpha", "bravo", "charlie", "delta"):
        pub.add_app(tmp_path, name, size=3 * MiB)
    pub.ok("sync")
    proxy = CuttingProxy(registry.port, cut_after=MiB, stall=True)
    try:
        cli.ok("config", "set", "registry.url", proxy.url)
        running = Recorder(cli.root)
        deadline = time.monotonic() + WAIT
        while len(cli.staging()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(cli.staging()) == 3 and proxy.cut.wait(WAIT)   # three under way
        running.stop()
    finally:
        proxy.stop()
    assert cli.staging() == [] and cli.apps() == {}
    assert not any(t.name == "ams-sync-fetch" for t in threading.enumerate())


# -- the real program ---------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_on_signal_mid_download_with_staging_clean(tmp_path, registry, nodes,  # noqa: F811
                                                              signum):
    pub, cli = nodes
    pub.add_app(tmp_path, "game", size=3 * MiB)
    pub.ok("sync")
    proxy = CuttingProxy(registry.port, cut_after=MiB, stall=True)
    log = open(tmp_path / "run.log", "w+")
    try:
        cli.ok("config", "set", "registry.url", proxy.url)
        proc = subprocess.Popen([sys.executable, "-m", "ams_sync", "--data-dir", str(cli.root),
                                 "run"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            assert proxy.cut.wait(WAIT)                  # the transfer hangs mid-body
            assert len(cli.staging()) == 1
            started = time.monotonic()
            proc.send_signal(signum)
            code = proc.wait(WAIT)
            elapsed = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        proxy.stop()
    log.seek(0)
    output = log.read()
    assert code == 0, output
    assert loop_mod.STOPPING.format(signal=signum.name) in output
    assert loop_mod.STOP_LATE not in output            # the worker ended by itself
    assert output.rstrip().endswith(loop_mod.STOPPED)
    assert cli.staging() == [] and "game" not in cli.apps()
    print(f"stopped {elapsed:.2f}s after {signum.name}")
