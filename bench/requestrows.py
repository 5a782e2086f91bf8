"""The rows against the aar instance filled with 1,000 applications: many
small requests (rows 1-3) and the agent's no-change cycle (row 6b).

Each row function takes the Bench (run.py) and the Row to fill in; it raises
benchlib.Unavailable when a server it needs is missing. Rows 1-3 measure aar
and the reference with the same driver, alternating rounds, best of each.
"""
import hashlib
import json
import shutil
import time

import benchlib as bl
import drivers
from aarproc import Aar
from agentnode import Agent
from report import Row, log

ONE = "aar --processes 1"
INLINE = "aar --processes 1 --handshake-threads 0"


def single(b, attr, apps=0):
    """aar as one process (`attr`: "aar_one" beside b.aar_a, "aar_w_one"
    beside b.aar_w), started on first use and filled with `apps`
    applications, for the sub-row that keeps the one-process figure; None
    when the row's aar is one process anyway, or this one cannot start."""
    if b.o.processes == 1:
        return None
    srv = getattr(b, attr)
    if srv is None:
        try:
            srv = b.start_aar(attr.replace("_", "-"), 1)
        except bl.Unavailable as e:
            log(f"{ONE} unavailable: {e}")
            return None
        setattr(b, attr, srv)
    fill_apps(b, srv, apps)
    return srv


def one_subrow(row, best, unit):
    """The sub-row of aar as one process, against the row's reference."""
    r = best.get(ONE)
    if r is None:
        return
    sub = Row("", f"  {ONE} ({unit})", "", None)
    sub.aar, sub.ref, sub.ref_name = r["rate"], row.ref, row.ref_name
    sub.ratio = sub.aar / sub.ref
    sub.notes.append(f"one process, as before --processes; server CPU us/request "
                     f"{r['server_us'] or 0:.0f}")
    row.sub.append(sub)


def best_rate(b, mode, targets, requests):
    """targets: [(name, port, path, pids)]; alternating rounds, best of each."""
    conns = b.o.conns
    best = {}
    for name, port, path, pids in targets:   # warm-up, not counted
        drivers.rate(mode, port, b.client, path, requests=max(conns, requests // 10),
                     conns=conns, cap=2.0, driver=b.o.driver)
    for rnd in range(b.p["rounds"]):
        order = targets if rnd % 2 == 0 else list(reversed(targets))
        for name, port, path, pids in order:
            r = drivers.rate(mode, port, b.client, path, requests=requests, conns=conns,
                             cap=b.p["cap"], server_pids=pids(), driver=b.o.driver)
            if r["bad"]:
                log(f"  {name}: {r['bad']} failed requests {r['statuses']}")
            log(f"  {name} {mode} {path}: {r['rate']:.0f}/s ({r['ok']} in {r['seconds']:.2f}s,"
                f" server {r['server_us'] or 0:.0f} us/req, client {r['client_us']:.0f} us/req)")
            if name not in best or r["rate"] > best[name]["rate"]:
                best[name] = r
    return best


def cpu_notes(best, names):
    """Notes on CPU per request, and on a reference the client held back."""
    notes = []
    parts = []
    for n in names:
        r = best.get(n)
        if r and r.get("server_us") is not None:
            parts.append(f"{n} {r['server_us']:.0f}")
    if parts:
        notes.append("server CPU us/request: " + ", ".join(parts) +
                     "; client CPU us/request: " +
                     ", ".join(f"{n} {best[n]['client_us']:.0f}" for n in names if n in best))
    for n in names:
        r = best.get(n)
        if r and r.get("server_us") is not None:
            srv_cores = r["server_us"] * r["rate"] / 1e6
            cli_cores = r["client_us"] * r["rate"] / 1e6
            if n != "aar" and cli_cores > srv_cores:
                notes.append(f"{n} run: the client used more CPU ({cli_cores:.2f} cores) "
                             f"than {n} ({srv_cores:.2f}), so {n}'s rate is a lower "
                             f"bound; the per-CPU-second line is client-neutral")
    return notes


def cpu_subrow(row, best, ref):
    """Client-neutral companion figure: server CPU per request, as requests
    per server CPU-second, so the ratio reads like the row's ratio."""
    a, r = best["aar"].get("server_us"), best[ref].get("server_us")
    if not a or not r:
        return
    sub = Row("", "  per server CPU-second", "req/cpu-s", None)
    sub.aar, sub.ref, sub.ref_name = 1e6 / a, 1e6 / r, ref
    sub.ratio = r / a
    row.sub.append(sub)


def keepalive_vs_nginx(b, row, nginx, path, body, filename, requests, aar=None, old=None,
                       one=None):
    """aar's path against nginx serving the same body as a static file, on
    kept-alive connections; fills in the row's figures and returns the best
    result of each server. aar: the instance to measure (default b.aar_a);
    old: the --baseline aar to measure in the same rounds, as a sub-row;
    one: aar as one process (single()), likewise."""
    aar = aar or b.aar_a
    nginx.put_file(filename, body)
    targets = [("aar", aar.port, path, aar.pids),
               ("nginx", nginx.port, "/" + filename, nginx.pids)]
    if old is not None:
        targets.append(("old", old.port, path, old.pids))
    if one is not None:
        targets.append((ONE, one.port, path, one.pids))
    best = best_rate(b, "keepalive", targets, requests)
    row.aar, row.ref, row.ref_name = best["aar"]["rate"], best["nginx"]["rate"], "nginx"
    row.ratio = row.aar / row.ref
    cpu_subrow(row, best, row.ref_name)
    one_subrow(row, best, "req/s")
    if old is not None:
        new_r, old_r = best["aar"], best["old"]
        row.sub.append(b.baseline.sub_row(
            "req/s", new_r["rate"], old_r["rate"],
            f"server CPU us/request: new {new_r['server_us']:.1f}, {b.baseline.short} "
            f"{old_r['server_us']:.1f}; client CPU us/request: new "
            f"{new_r['client_us']:.1f}, {b.baseline.short} {old_r['client_us']:.1f}"))
    return best


def small_json(b, row):
    """Row 1: keep-alive GET /1.0/status."""
    aar, nginx = b.aar_a, b.need("nginx")
    status, _, body = bl.Http(aar.port, b.client).request("GET", "/1.0/status")
    if status != 200:
        raise RuntimeError(f"aar GET /1.0/status answered {status}")
    best = keepalive_vs_nginx(b, row, nginx, "/1.0/status", body, "status.json",
                              b.p["small_requests"], old=b.old_r, one=single(b, "aar_one"))
    row.notes += [f"{len(body)}-byte JSON body; {b.o.conns} keep-alive connections, "
                  f"driver {b.o.driver}"] + cpu_notes(best, ["aar", "nginx"])


def listing(b, row):
    """Row 2: the listing of the 1,000 applications."""
    aar, nginx = b.aar_a, b.need("nginx")
    fill_apps(b, aar, b.p["apps"])
    status, hdrs, body = bl.Http(aar.port, b.client).request("GET", "/1.0/applications")
    if status != 200:
        raise RuntimeError(f"aar GET /1.0/applications answered {status}")
    apps = json.loads(body)["metadata"]
    if len(apps) < b.p["apps"]:
        raise RuntimeError(f"aar lists {len(apps)} applications, expected {b.p['apps']}")
    best = keepalive_vs_nginx(b, row, nginx, "/1.0/applications", body, "applications.json",
                              b.p["list_requests"],
                              one=single(b, "aar_one", b.p["apps"]))
    row.notes += [f"{len(apps)} applications, {len(body):,} bytes per listing"] + \
        cpu_notes(best, ["aar", "nginx"])


def fill_apps(b, aar, n):
    """Publish small applications on aar until it holds n of them."""
    if getattr(aar, "filled", 0) >= n:
        return
    t = time.monotonic()
    http = bl.Http(aar.port, b.client)
    for i in range(getattr(aar, "filled", 0), n):
        name = f"bench-app-{i:04d}"
        body, m = bl.small_package(name, 0, tags=["bench", f"group{i % 10}"])
        aar.put(http, name, 0, b.arch, body, hashlib.sha256(body).hexdigest(), m)
    http.close()
    aar.filled = n
    log(f"filled aar with {n} applications in {time.monotonic() - t:.1f}s")


def new_connections(b, row):
    """Row 3: a fresh mutual-TLS connection per request, against every reference."""
    aar = b.aar_a
    targets = [("aar", aar.port, "/1.0/status", aar.pids)]
    missing = []
    if b.nginx:
        b.nginx.put_file("status.json", bl.Http(aar.port, b.client).request(
            "GET", "/1.0/status")[2])
        targets.append(("nginx", b.nginx.port, "/status.json", b.nginx.pids))
    else:
        missing.append("nginx")
    if b.registry:
        targets.append(("docker-registry", b.registry.port, "/v2/",
                        lambda: [b.registry.proc.pid]))
    else:
        missing.append("docker-registry")
    if len(targets) == 1:
        raise bl.Unavailable("no reference server: " + "; ".join(
            b.na.get(m, m) for m in missing))
    # aar as one process (the figure before --processes), and one process
    # with every handshake step on its loop thread (no TLS threads), in the
    # same rounds: what the processes and the TLS threads give or cost here.
    one = single(b, "aar_one")
    if one is not None:
        targets.append((ONE, one.port, "/1.0/status", one.pids))
    inline = Aar(b.work, b.server, b.client, label="aar-inline",
                 extra=("--processes", "1", "--handshake-threads", "0"))
    try:
        inline.start()
        targets.append((INLINE, inline.port, "/1.0/status", inline.pids))
    except bl.Unavailable as e:
        log(f"{INLINE} unavailable: {e}")
    try:
        best = best_rate(b, "newconn", targets, b.p["newconn_requests"])
    finally:
        inline.stop()
        shutil.rmtree(inline.dir, ignore_errors=True)
    inline_best = best.pop(INLINE, None)
    one_best = {ONE: best.pop(ONE)} if ONE in best else {}
    refs = sorted((n for n in best if n != "aar"), key=lambda n: -best[n]["rate"])
    row.aar = best["aar"]["rate"]
    row.ref_name, row.ref = refs[0], best[refs[0]]["rate"]
    row.ratio = row.aar / row.ref
    cpu_subrow(row, best, row.ref_name)
    for other in refs[1:]:
        sub = Row("", f"  vs {other}", "", None)
        sub.aar, sub.ref, sub.ref_name = row.aar, best[other]["rate"], other
        sub.ratio = row.aar / sub.ref
        row.sub.append(sub)
    for m in missing:
        sub = Row("", f"  vs {m}", "", None)
        sub.na = b.na.get(m, "not started")
        row.sub.append(sub)
    one_subrow(row, one_best, "conn/s")
    if inline_best is not None:
        sub = Row("", f"  {INLINE} (conn/s)", "", None)
        sub.aar, sub.ref, sub.ref_name = inline_best["rate"], row.ref, row.ref_name
        sub.ratio = sub.aar / sub.ref
        sub.notes.append(f"one process, every handshake step on its loop thread; server "
                         f"CPU us/request "
                         f"{inline_best['server_us'] or 0:.0f}")
        row.sub.append(sub)
    row.notes += [f"one request per connection, full handshake (no session resumption), "
                  f"{b.o.conns} concurrent clients, driver {b.o.driver}"] + \
        cpu_notes(best, [n for n, *_ in targets])


def no_change_cycle(b, row):
    """Row 6b: a second agent `sync` with nothing new, and the same cycle in a
    running agent."""
    aar = b.aar_a
    fill_apps(b, aar, b.p["apps"])
    agent = Agent(b.work / "agent-nochange", aar)
    agent.setup()
    t = time.monotonic()
    first = agent.sync(timeout=max(300, b.p["apps"]))
    log(f"agent first pull of {b.p['apps']} apps: {first['wall']:.1f}s wall, "
        f"{first['cpu']:.1f}s CPU, {first.get('requests', '?')} requests")
    pulled = agent.count_apps("bench-app-")
    if pulled is not None and pulled < b.p["apps"]:
        raise RuntimeError(f"the first cycle pulled {pulled} of {b.p['apps']} apps")
    second = agent.sync(timeout=120)
    base = agent.baseline_cpu()
    looped = agent.loop_cycle(timeout=120)
    loop = looped.get("loop", {}).get("measured")
    row.aar_text = (f"{second.get('requests', '?')} req, "
                    f"{second['cpu'] * 1000:.0f} ms CPU")
    row.aar = second["cpu"] * 1000
    row.ref_text = "-"
    sub = Row("", "  the cycle inside a running agent", "", None)
    sub.target_text = "< 50 ms CPU"
    if loop:
        sub.aar = loop["cpu"] * 1000
        sub.aar_text = f"{loop['requests']} req, {loop['cpu'] * 1000:.1f} ms CPU"
        sub.ref_text = "-"
    else:
        sub.na = looped.get("error", "no figures")
    row.sub.append(sub)
    calls = ", ".join(f"{k} x{v}" for k, v in second.get("methods", {}).items())
    codes = ", ".join(f"{k} x{v}" for k, v in second.get("statuses", {}).items())
    row.notes.append(f"second `sync`, nothing new: {second.get('requests', '?')} request(s) "
                     f"over {second.get('connects', '?')} connection(s) ({calls}; answered "
                     f"{codes}), {second['cpu'] * 1000:.0f} ms CPU with interpreter "
                     f"start-up, {second['wall'] * 1000:.0f} ms wall; "
                     f"`ams_sync --version` alone: {base * 1000:.0f} ms CPU")
    if loop:
        calls = ", ".join(f"{k} x{v}" for k, v in loop["methods"].items())
        codes = ", ".join(f"{k} x{v}" for k, v in loop["statuses"].items())
        sub.notes.append(
            f"`run`'s case: the loop's objects built once, one cycle to warm, the second "
            f"measured with time.process_time(): {loop['requests']} request(s) over "
            f"{loop['connects']} connection(s) ({calls}; answered {codes}), "
            f"{loop['wall'] * 1000:.1f} ms wall")
    row.notes.append(f"first cycle pulled {pulled if pulled is not None else '?'} apps in "
                     f"{first['wall']:.1f} s wall, {first['cpu']:.1f} s CPU, "
                     f"{first.get('requests', '?')} requests (t={time.monotonic() - t:.0f}s)")
