"""Run the agent in this process and count the HTTP requests and TCP
connections it makes, for the no-change-cycle figures (row 6b).

    python3 bench/agentprobe.py COUNTS.json -- sync
    python3 bench/agentprobe.py COUNTS.json --loop

`-- ARGS` runs `ams_sync.main(ARGS)` once: the caller times the process and
reads its CPU time with os.wait4, so that figure includes interpreter
start-up and imports, exactly like `python -m ams_sync sync`.

`--loop` is the long-running agent's case (`ams-sync run`): it builds the
loop's objects once (agent.loop.Loop, its AppStore), runs one cycle to warm
them (that cycle lists in full: the loop keeps its ETag in memory only), then
measures a second cycle with nothing new: time.process_time() and wall time
around it, and its own requests and connections. Both cycles' figures go to
COUNTS.json under "loop".

Counting hooks http.client.HTTPConnection.putrequest (every request of an
http.client-based client, RegistryClient included) and socket.socket.connect.
"""
import http.client
import json
import os
import socket
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _count(counts):
    """Install the counting hooks; they add to counts."""
    put = http.client.HTTPConnection.putrequest

    def putrequest(self, method, url, *a, **kw):
        counts["requests"] += 1
        path = url.split("?")[0]
        # package downloads are counted together, other requests by their URL
        key = f"{method} {'…/package' if path.endswith('/package') else url}"
        counts["methods"][key] = counts["methods"].get(key, 0) + 1
        return put(self, method, url, *a, **kw)

    http.client.HTTPConnection.putrequest = putrequest

    begin = http.client.HTTPResponse.begin

    def counting_begin(self):
        begin(self)
        key = str(self.status)
        counts["statuses"][key] = counts["statuses"].get(key, 0) + 1

    http.client.HTTPResponse.begin = counting_begin

    connect = socket.socket.connect

    def counting_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            counts["connects"] += 1
        return connect(self, address)

    socket.socket.connect = counting_connect


def _fresh():
    return {"requests": 0, "connects": 0, "methods": {}, "statuses": {}}


def _loop(counts):
    """Two cycles of one Loop; the second, with nothing new, is measured."""
    from agent.appstore import AppStore
    from agent.loop import Loop
    from agent.paths import DataDir, default_data_dir

    loop = Loop(DataDir(default_data_dir()))
    store = AppStore(loop.dirs.root)
    cycles = []
    try:
        for _ in range(2):
            before = dict(counts, methods=dict(counts["methods"]),
                          statuses=dict(counts["statuses"]))
            wall, cpu = time.perf_counter(), time.process_time()
            summary = loop.cycle(store)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            cycles.append({
                "cpu": cpu, "wall": wall, "summary": str(summary),
                "ok": summary is not None and summary.ok,
                "unchanged": summary is not None and summary.unchanged,
                "requests": counts["requests"] - before["requests"],
                "connects": counts["connects"] - before["connects"],
                "methods": {k: v - before["methods"].get(k, 0)
                            for k, v in counts["methods"].items()
                            if v - before["methods"].get(k, 0)},
                "statuses": {k: v - before["statuses"].get(k, 0)
                             for k, v in counts["statuses"].items()
                             if v - before["statuses"].get(k, 0)},
            })
    finally:
        if loop._client is not None:
            loop._client.close()
        store.close()
    counts["loop"] = {"warm": cycles[0], "measured": cycles[1]}
    return 0 if all(c["ok"] for c in cycles) else 1


def main():
    out, mode, *argv = sys.argv[1:]
    assert mode in ("--", "--loop"), "usage: agentprobe.py COUNTS.json (-- ARGS... | --loop)"
    counts = _fresh()
    _count(counts)
    sys.path.insert(0, REPO)
    rc = 1
    try:
        if mode == "--loop":
            rc = _loop(counts)
        else:
            sys.argv = ["ams_sync", *argv]
            import ams_sync
            try:
                rc = ams_sync.main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        with open(out, "w") as f:
            json.dump(counts, f)
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
