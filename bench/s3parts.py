"""The parts bench/s3rows.py is built of: an `aar serve` replica process on
a bucket (or on local storage), its storage settings, a bucket laid out with
1,000 packages as replicas write them, and the plain HTTP reads and timings
the rows make.
"""
import concurrent.futures
import hashlib
import http.client
import json
import os
import pathlib
import sys
import time
import urllib.parse

import benchlib as bl
from drivers import proc_cpu

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 1 << 20


def read_all(resp):
    n = 0
    while True:
        chunk = resp.read(MiB)
        if not chunk:
            return n
        n += len(chunk)


def get_url(url):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    conn.request("GET", u.path + "?" + u.query)
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    n = read_all(resp)
    conn.close()
    return n


def timed(fn, rounds):
    best = None
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best = took if best is None else min(best, took)
    return best


class Registry:
    def __init__(self, work, name, cert_from, conf=None, repo=REPO):
        self.repo = repo
        self.data = work / name
        (self.data / "certs").mkdir(parents=True)
        for f in ("server.crt", "server.key"):
            (self.data / "certs" / f).write_bytes((cert_from / f).read_bytes())
        os.chmod(self.data / "certs" / "server.key", 0o600)
        if conf:
            (self.data / "conf").mkdir()
            (self.data / "conf" / "main.yaml").write_text(conf)
        self.port = bl.free_port()
        self.proc = None

    def trust(self, client):
        bl.run([sys.executable, str(REPO / "aar.py"), "trust", "add", "-p", "--init",
                "--data-dir", str(self.data), str(client.cert)])

    def start(self, client):
        self.proc = bl.spawn([sys.executable, str(self.repo / "aar.py"), "serve",
                              "--data-dir", str(self.data),
                              "--listen", f"127.0.0.1:{self.port}"],
                             log=str(self.data) + ".log", cwd=str(self.repo))
        bl.wait_https(self.port, client, "/1.0/status", self.proc, timeout=60)

    def conn(self, client):
        # An upload's body goes out 1 MiB per write, as aar's own publisher
        # (agent/transfer.py) sends it; http.client's default of 8 KiB writes
        # cost this client 1.8 s of CPU per GiB instead of 0.85 s (on the CPUs
        # the replica and the store share) and sent 8 KiB TLS records.
        return http.client.HTTPSConnection("127.0.0.1", self.port,
                                           context=bl.client_context(client), timeout=300,
                                           blocksize=MiB)


def conf_for(swift, bucket, redirect):
    return (f"storage:\n  s3:\n    endpoint: {swift.endpoint}\n    region: {swift.region}\n"
            f"    bucket: {bucket}\n    access-key: \"{swift.access_key}\"\n"
            f"    secret-access-key: \"{swift.secret_key}\"\n"
            f"    redirect: {'true' if redirect else 'false'}\n")


def listing_rate(reg, client, requests=2000, conns=4):
    """(req/s, the server's CPU seconds per request) of GET /1.0/applications."""
    def worker(n):
        c = reg.conn(client)
        for _ in range(n):
            c.request("GET", "/1.0/applications")
            resp = c.getresponse()
            resp.read()
            assert resp.status == 200
        c.close()
    worker(20)                                   # warm the caches
    cpu = proc_cpu([reg.proc.pid])
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(conns) as pool:
        list(pool.map(worker, [requests // conns] * conns))
    took = time.perf_counter() - start
    return requests / took, (proc_cpu([reg.proc.pid]) - cpu) / requests


def fill_bucket(swift, bucket, count):
    """1,000 packages laid out in the bucket as replicas write them."""
    from objstore import sigv4
    from objstore.client import Endpoint, S3Client
    client = S3Client(Endpoint(swift.endpoint, swift.region, bucket),
                      sigv4.Credentials(swift.access_key, swift.secret_key, swift.region))
    blob = b"x" * 1000
    sha = hashlib.sha256(blob).hexdigest()
    client.put(f"blobs/sha256/{sha}", blob)

    def one(i):
        name = f"app-{i:04d}"
        record = {"name": name, "version": 1, "architecture": "amd64", "size": len(blob),
                  "sha256": sha, "created_at": "2026-11-30T00:00:00Z", "publisher": "",
                  "tags": ["bench"], "manifest": bl.manifest(name, 1, ["bench"])}
        client.put(f"claims/{name}/1/amd64/{sha}.bench", b"")
        client.put(f"packages/{name}/1/amd64/{sha}.json", json.dumps(record).encode())
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))
    return blob
