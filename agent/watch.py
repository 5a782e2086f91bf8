"""Between pull cycles, wait for the registry's listing to change.

A pull node that only looked every registry.update_interval would see a new
version up to an hour late. Instead, after a cycle the loop holds a listing
request with `If-None-Match: <the listing's ETag>` and `wait=SECONDS`
(DESIGN.md "Waiting for changes"); the registry answers it as soon as the
listing differs, and the next cycle starts at once. Each request asks for at
most MAX_WAIT seconds and never past the next cycle, so the interval keeps
its meaning.

What the held request must survive:
- a registry that does not know `wait` answers 304 at once. A 304 that came
  in well under the time asked says so; the loop then sleeps out the
  interval (and tries again after the next cycle: the registry may have
  been upgraded), never asking again and again;
- a proxy that cuts held requests (connection closed, timeout, 5xx): each
  failure waits a backoff (loop.backoff, capped by the time to the next
  cycle) and says so once in the log; when the backoff reaches the interval,
  the node is back to syncing on the interval;
- stopping: Loop.stop breaks the connection (RegistryClient.abort) and the
  held request ends at once;
- `config set`: a helper thread looks at config.json every second while a
  request is held, and breaks the connection when the file changed, so the
  next cycle uses the new settings as soon as it would without waiting.

Held requests cost the node nothing while idle: the worker thread sleeps in
recv(), the helper wakes once a second for one stat() call.
"""
import logging
import threading
import time

from trust.errors import TrustError

from .errors import AgentError, Cancelled, RegistryUnavailable

__all__ = ["Watcher", "MAX_WAIT", "NO_WAIT", "WAIT_FAILED", "WAIT_REFUSED", "HOLDING"]

NO_WAIT = ("the registry {url} does not hold listing requests (it answered wait={asked} "
           "in {took:.1f}s): syncing every registry.update_interval")
WAIT_FAILED = ("waiting for changes failed: {error}; trying again in {delay:.0f}s "
               "(cycles still run every registry.update_interval)")
HOLDING = "waiting up to {seconds}s for the registry's listing to change"
WAIT_REFUSED = ("the registry {url} refused to wait for changes: {error}; "
                "syncing every registry.update_interval")

MAX_WAIT = 60           # the longest a registry holds a request (DESIGN.md)
_MIN_WAIT = 2           # closer than this to the next cycle, just sleep
_EARLY = 0.5            # a 304 in under this share of the time asked: wait ignored
_SPACING = 1.0          # at most one held request a second, whatever the answers
_CONFIG_POLL = 1.0      # seconds between looks at config.json while a request is held

log = logging.getLogger("ams_sync.watch")


class _Either:
    """is_set() of two events, for the client's stop= argument."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def is_set(self):
        return self.first.is_set() or self.second.is_set()


class Watcher:
    """The waits of one Loop; `failures` and `supported` outlive a cycle.

    sleep(seconds) -> True if cut short (stop, config changed), else False.
    backoff(failures, ceiling) -> seconds (loop.backoff).
    """

    def __init__(self, config, stop_event, sleep, backoff, clock=time.monotonic):
        self.config, self.stop_event = config, stop_event
        self.sleep, self.backoff, self.clock = sleep, backoff, clock
        self.failures = 0           # failed held requests in a row
        self.supported = None       # does the registry hold requests? None: not known
        self._refused = None        # the last refusal logged
        self._last = None           # when the last held request was sent

    def until(self, end, sync, tags):
        """Return when a cycle is due: the listing changed, config.json
        changed, the stop event is set, or time.monotonic() reached end."""
        while not self.stop_event.is_set():
            left = end - self.clock()
            if left < _MIN_WAIT:
                self.sleep(max(0.0, left))
                return
            if self._last is not None and self.clock() - self._last < _SPACING:
                if self.sleep(_SPACING - (self.clock() - self._last)):
                    return
                continue
            seconds = int(min(MAX_WAIT, left))
            log.debug(HOLDING.format(seconds=seconds))
            self._last = started = self.clock()
            changed = threading.Event()
            try:
                result = self._held(sync, tags, seconds, changed)
            except Cancelled:
                return
            except (AgentError, TrustError, OSError) as error:
                if self.stop_event.is_set() or changed.is_set():
                    return
                if not isinstance(error, (RegistryUnavailable, TrustError, OSError)):
                    # Refused (4xx), or an answer we cannot use: the registry
                    # will not wait for us before the next cycle.
                    message = WAIT_REFUSED.format(url=sync.client.url, error=error)
                    # said once; the same refusal after every cycle is no news
                    log.log(logging.DEBUG if message == self._refused else logging.WARNING,
                            message)
                    self._refused = message
                    self.sleep(max(0.0, end - self.clock()))
                    return
                self.failures += 1
                delay = min(self.backoff(self.failures, left), end - self.clock())
                log.warning(WAIT_FAILED.format(error=error,
                                               delay=max(0.0, delay)))
                if self.sleep(max(0.0, delay)):
                    return
                continue
            if changed.is_set() or result is None:
                # settings changed under the request: cycle now. No listing
                # to compare with: nothing to wait for until the next cycle.
                if result is None:
                    self.sleep(max(0.0, end - self.clock()))
                return
            self.failures = 0
            if result:
                return
            took = self.clock() - started
            if took < seconds * _EARLY:
                if self.supported is not False:
                    log.info(NO_WAIT.format(url=sync.client.url, asked=seconds, took=took))
                self.supported = False
                self.sleep(max(0.0, end - self.clock()))
                return
            self.supported = True

    def _held(self, sync, tags, seconds, changed):
        """sync.watch(...) with the config.json helper thread around it."""
        done = threading.Event()

        def watch_config():
            while not done.wait(_CONFIG_POLL):
                if self.config.changed():
                    changed.set()
                    sync.client.abort()
                    return

        helper = threading.Thread(target=watch_config, name="ams-sync-config-watch",
                                  daemon=True)
        helper.start()
        try:
            return sync.watch(tags, seconds, stop=_Either(self.stop_event, changed))
        finally:
            done.set()
            helper.join()
