"""`ams-sync run`: a sync cycle every registry.update_interval, until stopped.

The cycles run on a worker thread; the main thread only waits for a signal.
SIGTERM or SIGINT sets the stop event and breaks the registry connection
(RegistryClient.abort), so a transfer blocked in a read wakes at once, sees
the event and gives up; its staging file is removed on the way out
(AppStore.staging_file). The worker then ends, normally well within a second.

Each cycle starts by reloading config.json (one stat when it did not change),
so `config set` takes effect on a running loop; between cycles the loop
looks at the file every second and starts a cycle early when it changed.
After a failed cycle the next one comes sooner, after a jittered exponential
backoff that never exceeds the interval. After a good pull cycle the loop
does not just sleep: it holds a listing request that the registry answers
when the listing changes (watch.py), and cycles again at once.
"""
import logging
import random
import signal
import sys
import threading
import time

from cli.progress import StatusLine
from trust.errors import TrustError
from version import VERSION

from . import config as config_mod
from .appstore import AppStore
from .errors import AgentError, Cancelled
from .sync import Listing, Sync, connect
from .watch import Watcher

__all__ = ["Loop", "TerminalProgress", "backoff", "run", "STOP_GRACE", "BACKOFF_BASE",
           "STARTED", "STOPPING", "STOPPED", "STOP_LATE", "CYCLE_FAILED", "MANUAL",
           "UNCONFIGURED"]

STARTED = "ams-sync {version} running: data directory {root}"
STOPPING = "stopping (signal {signal})"
STOPPED = "stopped"
STOP_LATE = "stopped while a store operation was still running"
CYCLE_FAILED = "cycle failed: {error}"
MANUAL = "registry.mode is manual: nothing to do until `registry push|pull APP`"
UNCONFIGURED = ("waiting for {keys} to be set (ams-sync config set …); nothing to do "
                "until then")

BACKOFF_BASE = 5.0      # seconds before the first retry after a failure
STOP_GRACE = 1.5        # how long the main thread waits for the worker to end
_CONFIG_POLL = 1.0      # seconds between looks at config.json while waiting
# Past the registry's idle timeout a kept connection is dead anyway; close it.
_KEEP_ALIVE_UNDER = 30.0

log = logging.getLogger("ams_sync.loop")


def backoff(failures, interval, rand=random.random) -> float:
    """Seconds to wait after `failures` failed cycles in a row (>= 1)."""
    ceiling = min(interval, BACKOFF_BASE * 2 ** min(failures - 1, 30))
    # Half fixed, half random: nodes that failed together do not retry together.
    return ceiling * (0.5 + rand() / 2)


class TerminalProgress:
    """Transfer progress on one terminal line, only for transfers that last."""

    def __init__(self, stream, after=1.0, every=0.25, clock=time.monotonic):
        self.stream, self.after, self.every, self.clock = stream, after, every, clock
        self._what = self._start = self._last = None
        self._shown = False
        # The phases after a transfer (verifying, importing) on a status line.
        self._status = StatusLine(stream, clock=clock)
        self.phase, self.clear = self._status.show, self._status.clear

    def __call__(self, what, done, total):
        now = self.clock()
        if what != self._what:
            self._what, self._start, self._last, self._shown = what, now, None, False
        end = done >= total
        if now - self._start < self.after and not (end and self._shown):
            return
        if not end and self._last is not None and now - self._last < self.every:
            return
        self._last, self._shown = now, True
        percent = 100 * done // total if total else 100
        self.stream.write(f"\r{what}: {done / 2**20:.1f}/{total / 2**20:.1f} MiB ({percent}%)")
        if end:
            self.stream.write("\n")
        self.stream.flush()


class Loop:
    """The cycles of one data directory; run() is the worker thread's body."""

    def __init__(self, dirs, *, architecture=None, progress=None, timeout=30.0,
                 stop=None, on_cycle=None):
        self.dirs = dirs
        self.architecture = architecture
        self.progress = progress
        self.timeout = timeout
        self.stop_event = stop if stop is not None else threading.Event()
        self.on_cycle = on_cycle        # on_cycle(summary or None), for tests and logs
        self.config = config_mod.Config(dirs.config)
        self.listing = Listing()        # in memory: the ETag lives as long as the loop
        self.cycles = 0
        self.failures = 0               # failed cycles in a row
        self.watcher = Watcher(self.config, self.stop_event, self._sleep, backoff)
        self._client = self._client_key = self._own = self._store = None
        self._last_failure = None       # what the previous cycle failed with
        self.idle_reason = self._logged_idle = None   # why cycles do nothing

    def stop(self):
        """Ask the loop to end; safe from a signal handler or another thread."""
        self.stop_event.set()
        client = self._client
        if client is not None:
            client.abort()

    def _client_for(self):
        key = (self.config.url, self.config.fingerprint)
        if self._client is None or key != self._client_key:
            if self._client is not None:
                self._client.close()
            self._client, self._own = connect(self.dirs, self.config, self.timeout)
            self._client_key = key
        return self._client

    def _sync(self, store):
        return Sync(self._client_for(), store, own_fingerprint=self._own,
                    architecture=self.architecture, listing=self.listing,
                    stop=self.stop_event, progress=self.progress)

    def cycle(self, store):
        """One cycle with the current settings; the summary, or None in manual
        mode or before the node is configured (self.idle_reason says which)."""
        self.config.reload()
        mode = self.config.mode
        missing = [key for key, value in (("registry.url", self.config.url),
                                          ("registry.fingerprint", self.config.fingerprint))
                   if not value]
        if mode == "manual" or missing:
            # A node installed but not yet configured waits quietly: the
            # loop wakes when config.json changes.
            self.idle_reason = MANUAL if mode == "manual" else UNCONFIGURED.format(
                keys=" and ".join(missing))
            return None
        self.idle_reason = None
        return self._sync(store).cycle(mode, self.config.filter)

    def _interval(self):
        try:
            return self.config.update_interval
        except ValueError:
            return config_mod.MIN_INTERVAL

    def run(self):
        """Cycle until the stop event is set."""
        failures = self.failures = 0
        store = self._store = AppStore(self.dirs.root)
        try:
            while not self.stop_event.is_set():
                summary, failed = None, False
                try:
                    summary = self.cycle(store)
                except Cancelled:
                    break
                except (AgentError, TrustError, OSError) as error:
                    if self.stop_event.is_set():
                        break
                    failed = True
                    message = CYCLE_FAILED.format(error=error)
                    log.log(self._failure_level(message, failures + 1, logging.ERROR),
                            message)
                else:
                    failed = summary is not None and not summary.ok
                    self._report(summary, failures + 1 if failed else 0)
                    if not failed:
                        self._last_failure = None
                self.cycles += 1
                if self.on_cycle is not None:
                    self.on_cycle(summary)
                failures = self.failures = failures + 1 if failed else 0
                interval = self._interval()
                self._wait(backoff(failures, interval) if failures else interval)
        finally:
            if self._client is not None:
                self._client.close()
            store.close()

    def _failure_level(self, what, failures, level):
        """level for a new failure; DEBUG for the same one again, except after
        1, 2, 4, 8 … failures in a row: an unreachable registry is logged
        once per doubling of its outage, not at every retry."""
        repeated = what == self._last_failure
        self._last_failure = what
        if repeated and failures & (failures - 1):
            return logging.DEBUG
        return level

    def _report(self, summary, failures=0):
        if summary is None:
            if self.idle_reason != self._logged_idle:
                log.info(self.idle_reason)      # once, not every interval
            self._logged_idle = self.idle_reason
            return
        self._logged_idle = None
        # A cycle that changed nothing is the common case: debug, not a line
        # in the journal every interval.
        level = (self._failure_level(repr(summary.failed), failures, logging.WARNING)
                 if summary.failed else logging.DEBUG if summary.idle else logging.INFO)
        log.log(level, "%s", summary)
        for message in summary.failed:
            log.log(level, "  %s", message)

    def _wait(self, seconds):
        """Until the next cycle: after a good pull cycle, held listing requests
        (watch.py) that end early when the listing changes; else a sleep."""
        end = time.monotonic() + seconds
        if (not self.failures and self._client is not None and self.config.mode == "pull"
                and self.listing.etag is not None):
            try:
                self.watcher.until(end, self._sync(self._store), self.config.filter)
                return
            except (AgentError, TrustError, OSError) as error:   # not a registry answer
                log.error(CYCLE_FAILED.format(error=error))
        self._sleep(end - time.monotonic())

    def _sleep(self, seconds):
        """Sleep; True when stop or a change of config.json cut it short.

        A connection kept past the registry's idle timeout is dead anyway:
        a long sleep closes it first.
        """
        if seconds >= _KEEP_ALIVE_UNDER and self._client is not None:
            self._client.close()
        end = time.monotonic() + seconds
        while not self.stop_event.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            if self.stop_event.wait(min(left, _CONFIG_POLL)):
                return True
            if self.config.changed():
                return True
        return True


def run(dirs, err=None, observer=None, **kwargs) -> int:
    """Run the loop on a worker thread until SIGTERM or SIGINT; 0 when stopped.

    observer.watch(loop), if given, is called before the first cycle
    (agent/cyclemetrics.py). Must be called from the main thread (signal
    handlers live there).
    """
    err = err if err is not None else sys.stderr
    if "progress" not in kwargs and hasattr(err, "isatty") and err.isatty():
        kwargs["progress"] = TerminalProgress(err)
    loop = Loop(dirs, **kwargs)
    if observer is not None:
        observer.watch(loop)
    errors = []

    def body():
        try:
            loop.run()
        except BaseException as error:   # reported by the main thread
            errors.append(error)
            loop.stop_event.set()

    def on_signal(number, frame):
        log.info(STOPPING.format(signal=signal.Signals(number).name))
        loop.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    worker = threading.Thread(target=body, name="ams-sync-loop", daemon=True)
    try:
        log.info(STARTED.format(version=VERSION, root=dirs.root))
        worker.start()
        # join() with a timeout returns to Python now and then, so the
        # signal handler runs promptly.
        while worker.is_alive() and not loop.stop_event.is_set():
            worker.join(0.5)
        worker.join(STOP_GRACE)
        if worker.is_alive():
            # Stuck outside a transfer (a slow disk, say): exit anyway; what
            # it leaves in staging/ is cleared when the store is next opened.
            log.warning(STOP_LATE)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if errors:
        raise errors[0]
    log.info(STOPPED)
    return 0
