"""`ams-sync run --metrics-listen ADDR:PORT`: what the loop's cycles did, for Prometheus.

    ams_sync_cycles_total{outcome="ok|failed|manual"}    cycles run
    ams_sync_last_cycle_timestamp_seconds                 when the last cycle ended
    ams_sync_last_cycle_success                           1 ok (or manual), 0 failed
    ams_sync_last_cycle_duration_seconds                  how long it took
    ams_sync_cycle_duration_seconds                       histogram of all cycles
    ams_sync_versions_total{action="pushed|pulled|removed"}
    ams_sync_transferred_bytes_total{direction="sent|received"}
    ams_sync_consecutive_failures                         failed cycles in a row

GET /healthz answers 503 while the last cycle failed, with its error.

watch(loop) wraps the loop's cycle() on that one instance: the loop itself
needs to know nothing about metrics.
"""
import logging
import time

from metrics.core import Metrics

__all__ = ["CycleMetrics"]

log = logging.getLogger("ams_sync.metrics")


class CycleMetrics:
    """The agent's metrics, fed by one Loop's cycles."""

    def __init__(self):
        m = self.metrics = Metrics()
        self._cycles = m.counter("ams_sync_cycles_total", "Sync cycles run, by outcome",
                                 ("outcome",))
        self._last_time = m.gauge("ams_sync_last_cycle_timestamp_seconds",
                                  "Unix time the last cycle ended")
        self._last_ok = m.gauge("ams_sync_last_cycle_success",
                                "1 if the last cycle succeeded, 0 if it failed")
        self._last_duration = m.gauge("ams_sync_last_cycle_duration_seconds",
                                      "Duration of the last cycle")
        self._durations = m.histogram("ams_sync_cycle_duration_seconds",
                                      "Duration of sync cycles")
        self._versions = m.counter("ams_sync_versions_total", "Versions pushed, pulled "
                                   "or removed", ("action",))
        self._bytes = m.counter("ams_sync_transferred_bytes_total", "Package bytes "
                                "uploaded (sent) and downloaded (received)", ("direction",))
        self._failures = m.gauge("ams_sync_consecutive_failures",
                                 "Failed cycles in a row (0 after a good one)")
        for outcome in ("ok", "failed", "manual"):
            self._cycles.labels(outcome)
        for action in ("pushed", "pulled", "removed"):
            self._versions.labels(action)
        for direction in ("sent", "received"):
            self._bytes.labels(direction)
        self.problem = ""

    def health(self) -> str:
        return self.problem

    def watch(self, loop):
        """Measure every cycle of this loop."""
        inner = loop.cycle

        def cycle(store):
            started = time.monotonic()
            try:
                summary = inner(store)
            except BaseException as error:
                self._done(started, None, store, error)
                raise
            self._done(started, summary, store, None)
            return summary
        loop.cycle = cycle

    def _done(self, started, summary, store, error):
        seconds = time.monotonic() - started
        if error is None and summary is None:
            outcome = "manual"
        elif error is None and summary.ok:
            outcome = "ok"
        else:
            outcome = "failed"
        self._cycles.labels(outcome).inc()
        self._last_time.set(time.time())
        self._last_duration.set(seconds)
        self._durations.observe(seconds)
        self._last_ok.set(0 if outcome == "failed" else 1)
        if outcome == "failed":
            self._failures.inc()
            reason = error if error is not None else "; ".join(summary.failed)
            self.problem = f"last sync cycle failed: {reason}"
        else:
            self._failures.set(0)
            self.problem = ""
        if summary is None:
            return
        for action in ("pushed", "pulled", "removed"):
            self._versions.labels(action).inc(len(getattr(summary, action)))
        self._bytes.labels("sent").inc(_size(store, summary.pushed))
        self._bytes.labels("received").inc(_size(store, summary.pulled))


def _size(store, items):
    """Bytes of the "app/version/arch" items, as the node's store holds them."""
    total = 0
    for item in items:
        name, version, arch = item.rsplit("/", 2)
        try:
            versions = store.show(name)["versions"]
        except Exception as error:    # gone since: count nothing, say so
            log.debug("no size for %s: %s", item, error)
            continue
        total += sum(v["size"] for v in versions
                     if str(v["version"]) == version and v["architecture"] == arch)
    return total
