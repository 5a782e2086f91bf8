"""One scrape for several processes: the sum of their metrics snapshots.

`aar serve --processes N` runs N worker processes, each with its own
counters (metrics/core.py). The parent asks each for `Metrics.snapshot()`
when it is scraped and answers with what this module makes of them:

* counters and histograms: the sum over the processes;
* gauges: the sum too (connections open, uploads in progress), except the
  "shared" ones computed from a store every process reads (packages,
  trusted certificates), which are taken from the first snapshot;
* `retired`: what processes that have exited had counted at their last
  scrape, counters and histograms only, so that a sum never goes down
  from one scrape to the next when a worker is replaced.
"""
from .core import Metrics

__all__ = ["combine", "retire", "to_metrics"]


def combine(snapshots, retired=None) -> list:
    """The snapshot that sums `snapshots` (and `retired`'s counts)."""
    families = {}                 # name -> entry, in first-seen order
    sums = {}                     # name -> {label tuple: value}
    for snap in ([retired] if retired else []) + list(snapshots):
        is_retired = snap is retired
        for entry in snap:
            name, kind = entry["name"], entry["kind"]
            if is_retired and kind == "gauge":
                continue
            if name not in families:
                families[name] = {k: v for k, v in entry.items() if k != "items"}
                sums[name] = {}
            elif entry["shared"]:
                if sums[name]:
                    continue      # the first process's view of a shared store
            values = sums[name]
            for labels, value in entry["items"]:
                key = tuple(labels)
                values[key] = _add(values.get(key), value, kind)
    out = []
    for name, entry in families.items():
        entry = dict(entry)
        entry["items"] = [[list(key), value] for key, value in sums[name].items()]
        out.append(entry)
    return out


def retire(retired, snapshot) -> list:
    """`retired` with an exited process's last counts added."""
    return [entry for entry in combine([snapshot], retired) if entry["kind"] != "gauge"]


def _add(total, value, kind):
    if total is None:
        return [list(value[0]), value[1]] if kind == "histogram" else value
    if kind == "histogram":
        counts = [a + b for a, b in zip(total[0], value[0])]
        return [counts, total[1] + value[1]]
    return total + value


def to_metrics(snapshot) -> Metrics:
    """A Metrics holding `snapshot`'s values, to render()."""
    metrics = Metrics()
    for entry in snapshot:
        name, kind, labels = entry["name"], entry["kind"], entry["labels"]
        if kind == "histogram":
            family = metrics.histogram(name, entry["help"], labels,
                                       buckets=entry.get("buckets") or (1.0,))
        elif kind == "counter":
            family = metrics.counter(name, entry["help"], labels)
        else:
            family = metrics.gauge(name, entry["help"], labels)
        for key, value in entry["items"]:
            child = family.labels(*key)
            if kind == "histogram":
                child.counts[:] = value[0]
                child.sum = value[1]
            else:
                child.value = value
    return metrics
