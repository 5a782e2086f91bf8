"""Run the agent (`ams_sync.main(argv)`) in this process and count the HTTP
requests and TCP connections it makes, for the no-change-cycle figure.

    python3 bench/agentprobe.py COUNTS.json -- sync

Counting hooks http.client.HTTPConnection.putrequest (every request of an
http.client-based client, RegistryClient included) and socket.socket.connect.
The caller times the process and reads its CPU time with os.wait4, so the
figures include interpreter start-up, exactly like `python -m ams_sync sync`.
"""
import http.client
import json
import os
import socket
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    out, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: agentprobe.py COUNTS.json -- ARGS..."
    counts = {"requests": 0, "connects": 0, "methods": {}}

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
    counts["statuses"] = {}

    connect = socket.socket.connect

    def counting_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            counts["connects"] += 1
        return connect(self, address)

    socket.socket.connect = counting_connect

    sys.path.insert(0, REPO)
    sys.argv = ["ams_sync", *argv]
    import ams_sync
    rc = 1
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
