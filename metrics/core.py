"""Counters, gauges and histograms, rendered in Prometheus' text format.

    registry = Metrics()
    requests = registry.counter("aar_requests_total", "Requests answered",
                                ("route", "method", "code"))
    requests.labels("/1.0/status", "GET", "200").inc()
    registry.render()   -> bytes in the text exposition format 0.0.4

Updates are on the request path, so they are plain attribute arithmetic
under the GIL, with no lock: a child is looked up in a dict by its label
tuple and bumped in place. CPython may in theory switch threads inside an
`+=` and lose one increment of a busy counter; that costs a scrape an
unnoticeable undercount, never a decrease, and a lock per request would cost
every request. Creating a child (first use of a label set) takes a lock.

Gauges whose truth lives elsewhere (packages stored, trusted certificates)
take a `collect` callback, run only when somebody scrapes.
"""
import bisect
import logging
import math
import threading

__all__ = ["Metrics", "DURATION_BUCKETS", "CONTENT_TYPE", "tally"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

log = logging.getLogger("metrics")


def _number(value) -> str:
    if value == math.inf:
        return "+Inf"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names, values, extra=()) -> str:
    pairs = list(zip(names, values)) + list(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in pairs) + "}"


class _Value:
    """One counter or gauge child."""

    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def inc(self, amount=1):
        self.value += amount

    def dec(self, amount=1):
        self.value -= amount

    def set(self, value):
        self.value = value


class _Buckets:
    """One histogram child: per-bucket counts (not cumulative until rendered)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


def tally(counter, histogram, total, other=None):
    """`record(value, amount, more=0)`: counter.inc(), histogram.observe(value),
    total.inc(amount) and other.inc(more), children all, in one call. The
    method calls cost about as much again as the arithmetic; this is for the
    busiest paths (a request's line of the metrics, registry/events.py)."""
    bounds, counts, bucket = histogram.bounds, histogram.counts, bisect.bisect_left

    def record(value, amount, more=0):
        counter.value += 1
        counts[bucket(bounds, value)] += 1
        histogram.sum += value
        total.value += amount
        if more:
            other.value += more
    return record


class _Family:
    def __init__(self, kind, name, help_text, labelnames, make, collect=None):
        self.kind, self.name, self.help = kind, name, help_text
        self.labelnames = tuple(labelnames)
        self._make = make
        self._children = {}
        self._lock = threading.Lock()
        self.collect = collect
        if not self.labelnames:
            self._children[()] = make()

    def labels(self, *values):
        """The child for these label values (created on first use)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            with self._lock:
                child = self._children.setdefault(tuple(str(v) for v in values),
                                                  self._make())
                self._children.setdefault(values, child)
        return child

    # The family without labels is its own single child.
    def inc(self, amount=1):
        self._children[()].inc(amount)

    def dec(self, amount=1):
        self._children[()].dec(amount)

    def set(self, value):
        self._children[()].set(value)

    def observe(self, value):
        self._children[()].observe(value)

    @property
    def value(self):
        return self._children[()].value

    def _items(self):
        if self.collect is not None:
            # {label values tuple: value}, computed now.
            return sorted(self.collect().items())
        seen, items = set(), []
        for key, child in list(self._children.items()):
            norm = tuple(str(v) for v in key)
            if norm not in seen:
                seen.add(norm)
                items.append((norm, child))
        return sorted(items, key=lambda item: item[0])

    def render(self, out):
        out.append(f"# HELP {self.name} {self.help}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for key, child in self._items():
            if self.kind == "histogram":
                cumulative = 0
                counts = list(child.counts)
                for bound, count in zip(child.bounds + (math.inf,), counts):
                    cumulative += count
                    # le as the official clients write it: 1.0, 0.25, +Inf.
                    le = (("le", "+Inf" if bound == math.inf else repr(float(bound))),)
                    out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} "
                               f"{cumulative}")
                out.append(f"{self.name}_sum{_labels(self.labelnames, key)} "
                           f"{_number(child.sum)}")
                out.append(f"{self.name}_count{_labels(self.labelnames, key)} {cumulative}")
            else:
                value = child if self.collect is not None else child.value
                out.append(f"{self.name}{_labels(self.labelnames, key)} {_number(value)}")


class Metrics:
    """A set of metric families, rendered together."""

    def __init__(self):
        self._families = {}

    def _add(self, family):
        if family.name in self._families:
            raise ValueError(f"metric {family.name} defined twice")
        self._families[family.name] = family
        return family

    def counter(self, name, help_text, labelnames=()):
        return self._add(_Family("counter", name, help_text, labelnames, _Value))

    def gauge(self, name, help_text, labelnames=(), collect=None):
        return self._add(_Family("gauge", name, help_text, labelnames, _Value, collect))

    def histogram(self, name, help_text, labelnames=(), buckets=DURATION_BUCKETS):
        bounds = tuple(sorted(buckets))
        return self._add(_Family("histogram", name, help_text, labelnames,
                                 lambda: _Buckets(bounds)))

    def snapshot(self) -> list:
        """Every family's values now, as plain data (JSON): what a worker
        process of `aar serve --processes N` hands its parent, which sums
        them (metrics/combined.py). A gauge computed at scrape time from a
        shared store is marked "shared": the same in every process."""
        out = []
        for family in self._families.values():
            try:
                items = family._items()
            except Exception as error:  # as in render(): the rest still counts
                log.warning("metric %s not collected: %s", family.name, error)
                continue
            entry = {"name": family.name, "kind": family.kind, "help": family.help,
                     "labels": list(family.labelnames),
                     "shared": family.collect is not None, "items": []}
            for key, child in items:
                if family.kind == "histogram":
                    entry["buckets"] = list(child.bounds)
                    value = [list(child.counts), child.sum]
                else:
                    value = child if family.collect is not None else child.value
                entry["items"].append([list(key), value])
            out.append(entry)
        return out

    def render(self) -> bytes:
        out = []
        for family in self._families.values():
            try:
                family.render(out)
            except Exception as error:  # a failing collector must not hide the rest
                log.warning("metric %s not collected: %s", family.name, error)
        return ("\n".join(out) + "\n").encode()
