"""Rows 7-9, the figures of the one-loop server core (issue 8), against a
fresh aar filled with 100 applications (`Bench.aar_w`):

  7  the listing of those 100 applications, against nginx serving its bytes;
  8  1,000 agents each holding a `wait` request: the server's memory (Pss) and CPU
     while nothing changes (nginx holding 1,000 idle kept-alive TLS
     connections, for scale), and the time from a publish to the last
     agent's whole listing answer;
  9  the slow-connection attack: a trusted client's latency, each request on
     a new connection, while idle, dripping and silent trusted peers hold
     connections (slowpeers.py), against nginx under the same attack.

Each row function takes the Bench (run.py) and the Row to fill in.
"""
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

import benchlib as bl
import drivers
import requestrows
import tlsconns
from report import Row, log
from waiters import Waiters

APPS = 100
AGENTS = 1000
ATTACK = dict(idle=200, drippers=500, silent=40)
PACE = 0.1              # seconds from one of the trusted client's requests to the next


def listing_100(b, row):
    """Row 7: keep-alive GET /1.0/applications of 100 applications."""
    aar, nginx = b.aar_w, b.need("nginx")
    requestrows.fill_apps(b, aar, APPS)
    if b.old_r is not None:
        requestrows.fill_apps(b, b.old_r, APPS)
    status, _, body = bl.Http(aar.port, b.client).request("GET", "/1.0/applications")
    if status != 200:
        raise RuntimeError(f"aar GET /1.0/applications answered {status}")
    apps = json.loads(body)["metadata"]
    best = requestrows.keepalive_vs_nginx(b, row, nginx, "/1.0/applications", body,
                                          "applications-100.json", b.p["list100_requests"],
                                          aar=aar, old=b.old_r,
                                          one=requestrows.single(b, "aar_w_one", APPS))
    row.notes += [f"{len(apps)} applications, {len(body):,} bytes per listing"] + \
        requestrows.cpu_notes(best, ["aar", "nginx"])


def _memory_mib(pids):
    """Proportional set size (Pss) summed over pids, in MiB: pages that
    processes share (forked workers, nginx's master and workers) count once in
    all, not once per process as VmRSS would count them. VmRSS where the
    kernel has no smaps_rollup."""
    total = 0
    for pid in pids:
        for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
            try:
                with open(path) as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith(key))
                break
            except (OSError, StopIteration):
                continue
    return total / 1024


def _idle(pids, seconds):
    """(server CPU ms over `seconds` of doing nothing, memory (Pss) MiB at the end)."""
    cpu = drivers.proc_cpu(pids)
    time.sleep(seconds)
    return (drivers.proc_cpu(pids) - cpu) * 1000, _memory_mib(pids)


def waiting_agents(b, row):
    """Row 8: 1,000 held wait requests; idle cost, then a publish."""
    aar = b.aar_w
    requestrows.fill_apps(b, aar, APPS)
    http = bl.Http(aar.port, b.client)
    path = f"/1.0/applications?architecture={b.arch}"
    status, hdrs, body = http.request("GET", path)
    if status != 200 or not hdrs.get("etag"):
        raise RuntimeError(f"aar GET {path} answered {status} without an ETag")
    idle_s = b.p["idle"]
    rss_before = _memory_mib(aar.pids())
    w = Waiters(aar.port, b.client, path + "&wait=60", hdrs["etag"], AGENTS)
    try:
        opened = w.ready()
        log(f"  {opened['ready']} agents hold a wait request ({opened['failed']} failed)")
        cpu_ms, rss = _idle(aar.pids(), idle_s)
        name = f"bench-wait-{int(time.time())}"
        pkg, manifest = bl.small_package(name, 0, tags=["bench"])
        published = time.time()
        aar.put(http, name, 0, b.arch, pkg, hashlib.sha256(pkg).hexdigest(), manifest)
        w.wait_done(30)
    finally:
        got = w.finish()
        http.close()
    before = [a for a in got["answers"] if a[1] < published]
    after = [a[1] - published for a in got["answers"] if a[1] >= published and a[0] == 200]
    ref_rss = ref_cpu = None
    if b.nginx:
        b.nginx.put_file("status.json", b'{"status":"ok"}\n')
        n = Waiters(b.nginx.port, b.client, "/status.json", None, AGENTS)
        try:
            n_opened = n.ready()
            n.wait_done(30)
            ref_cpu, ref_rss = _idle(b.nginx.pids(), idle_s)
        finally:
            n.finish()
        log(f"  nginx: {n_opened['ready']} idle kept-alive connections")
    row.aar, row.ref, row.ref_name = rss, ref_rss, "nginx" if ref_rss else ""
    row.ratio = ref_rss / rss if ref_rss else None
    cpu = Row("", f"  server CPU while idle, {idle_s:g} s", "ms", None)
    cpu.aar, cpu.ref, cpu.ref_name = cpu_ms, ref_cpu, "nginx" if ref_cpu is not None else ""
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    if ref_cpu is not None:
        cpu.ratio = max(ref_cpu, tick) / max(cpu_ms, tick)
    late = Row("", "  publish -> last agent's whole answer", "s", None)
    late.ref_text = "-"
    late.target_text = "< 2"
    if len(after) == opened["ready"] and after:
        late.aar = max(after)
        late.target_text += "  ok" if late.aar < 2 else "  MISS"
        late.notes.append(f"median {statistics.median(after):.2f} s; the PUT of the "
                          f"new package is included")
    else:
        late.aar_text = f"{len(after)} of {opened['ready']} answered"
        late.target_text += "  MISS"
    row.sub += [cpu, late]
    statuses = {}
    for status, _ in before:
        statuses[status] = statuses.get(status, 0) + 1
    row.notes.append(f"{opened['ready']} of {AGENTS} agents held `GET {path}&wait=60` with "
                     f"If-None-Match ({opened['failed']} could not connect), "
                     f"{len(body):,}-byte listing; aar memory (Pss) before them {rss_before:.1f} MiB")
    if before:
        row.notes.append(f"answered before the publish, so not held: {len(before)} "
                         f"({', '.join(f'{k} x{v}' for k, v in sorted(statuses.items()))})")
    if got["unanswered"] or got["closed"]:
        closed = ", ".join(f"{why} x{n}" for why, n in sorted(got["closed"].items()))
        row.notes.append(f"no answer: {got['unanswered']}; connection ended without a "
                         f"whole answer: {sum(got['closed'].values())} ({closed or '-'})")
    if b.nginx:
        row.notes.append("nginx column: the same number of mutual-TLS connections kept "
                         "alive after one small request each (nginx has no held request)")


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _under_attack(b, port, path, label):
    """Open the attack on port, then time the trusted client's requests."""
    args = [sys.executable, str(bl.REPO / "bench" / "slowpeers.py"), str(port),
            "--cert", str(b.client.cert), "--key", str(b.client.key),
            "--seconds", str(int(b.p["attack_cap"] * 3 + 120))]
    for kind, n in ATTACK.items():
        args += [f"--{kind}", str(n)]
    peers = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        opened = json.loads(peers.stdout.readline() or "{}")
        log(f"  {label} under attack: {opened}")
        ctx = tlsconns.context(b.client.cert, b.client.key)
        times, answered = [], 0
        end = time.monotonic() + b.p["attack_cap"]
        while len(times) < b.p["attack_requests"] and time.monotonic() < end:
            # Paced, so the attack lasts through the server's handshake and
            # idle timeouts instead of a second of fast requests.
            slot = time.monotonic() + PACE
            status, took = tlsconns.timed_request(ctx, port, path, b.p["attack_timeout"])
            answered += status == 200
            times.append(took * 1000 if status == 200 else float("inf"))
            time.sleep(max(0.0, slot - time.monotonic()))
        peers.stdin.close()
        final = json.loads(peers.stdout.readline() or "{}")
    finally:
        if peers.poll() is None:
            peers.kill()
        peers.wait()
    return times, answered, opened, final


def slow_attack(b, row):
    """Row 9: p50/p99 of a trusted client while slow peers hold connections."""
    aar, nginx = b.aar_w, b.need("nginx")
    status, _, body = bl.Http(aar.port, b.client).request("GET", "/1.0/status")
    nginx.put_file("status.json", body)
    figures = {}
    for label, port, path in (("aar", aar.port, "/1.0/status"),
                              ("nginx", nginx.port, "/status.json")):
        figures[label] = _under_attack(b, port, path, label)
    (a_t, a_ok, a_open, a_end), (n_t, n_ok, n_open, _) = figures["aar"], figures["nginx"]

    def show(ms):
        return "none" if ms == float("inf") else f"{ms:.1f}"

    for r, q in ((row, 0.99), (Row("", "  p50", "ms", None), 0.5)):
        a, n = _percentile(a_t, q), _percentile(n_t, q)
        r.aar_text, r.ref_text, r.ref_name = show(a), f"nginx {show(n)}", "nginx"
        r.aar, r.ref = a, n
        r.ratio = (n / a) if a not in (0, float("inf")) and n != float("inf") else 0.0
        if r is not row:
            row.sub.append(r)
    row.notes += [
        f"each request on a new mTLS connection, {b.p['attack_timeout']:g} s timeout, one "
        f"each {PACE:g} s, at most {b.p['attack_requests']} in {b.p['attack_cap']:g} s; ratio = nginx / aar "
        f"(>= 0.5: within 2x nginx); an unanswered request counts as 'none'",
        f"answered: aar {a_ok} of {len(a_t)}, nginx {n_ok} of {len(n_t)}",
        f"peers open on aar: {a_open.get('idle')} idle, {a_open.get('drippers')} dripping "
        f"a ClientHello (1 byte/s, no certificate), {a_open.get('silent')} trusted silent; "
        f"on nginx: {n_open.get('idle')}/{n_open.get('drippers')}/{n_open.get('silent')}; "
        f"drippers aar closed (and were replaced): {a_end.get('hung_up', '?')}",
    ]
