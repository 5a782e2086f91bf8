#!/usr/bin/env python3
"""aar benchmark: the registry against nginx and docker-registry, side by side.

    python3 bench/run.py [--quick] [--rounds N] [--conns N] [--driver python|curl]
                         [--only 1,2,3,4,5,6] [--keep]

Starts everything on private loopback ports with fresh certificates, runs each
row with a bounded amount of work and a time cap, prints one table
(metric | aar | reference | ratio | target) and stops every process it started.
A row whose prerequisite is missing prints "n/a (reason)"; the run goes on.
bench/README.md says what each row measures and why the drivers are fair.
"""
import argparse
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402
import drivers  # noqa: E402
from aarproc import Aar  # noqa: E402
from refs import DockerRegistry, Nginx  # noqa: E402

FULL = dict(small_requests=20000, list_requests=2000, newconn_requests=2000, apps=1000,
            big=bl.GiB, pull_count=20, pull_size=50 * 1000 * 1000, cap=20.0,
            transfer_timeout=300, rounds=3)
QUICK = dict(small_requests=4000, list_requests=300, newconn_requests=400, apps=1000,
             big=64 * bl.MiB, pull_count=20, pull_size=4 * 1000 * 1000, cap=5.0,
             transfer_timeout=120, rounds=1)

ERRORS = (bl.Unavailable, RuntimeError, OSError, subprocess.SubprocessError, ValueError)


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# the table

class Row:
    def __init__(self, key, metric, unit, target=None, higher=True):
        self.key, self.metric, self.unit = key, metric, unit
        self.target = target            # ratio the row must reach, or None
        self.higher = higher
        self.aar = self.ref = None      # numbers
        self.ref_name = ""
        self.aar_text = self.ref_text = None   # preformatted alternative
        self.ratio = None
        self.target_text = f">= {target}" if target is not None else "-"
        self.na = None                  # reason the row could not be measured
        self.notes = []
        self.sub = []                   # extra rows printed under this one

    def verdict(self):
        if self.na or self.ratio is None or self.target is None:
            return ""
        return "ok" if self.ratio >= self.target else "MISS"

    def as_dict(self):
        return {k: v for k, v in dict(
            key=self.key, metric=self.metric, unit=self.unit, aar=self.aar, reference=self.ref,
            reference_name=self.ref_name, ratio=self.ratio, target=self.target_text,
            verdict=self.verdict(), na=self.na, notes=self.notes,
            aar_text=self.aar_text, ref_text=self.ref_text,
            sub=[s.as_dict() for s in self.sub]).items() if v not in (None, [], "")}


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def print_table(rows, header, out=sys.stdout):
    cols = ["metric", "aar", "reference", "ratio", "target"]
    lines = []
    for r in rows:
        for i, row in enumerate([r] + r.sub):
            label = (f"{row.key:<3}{row.metric}" + (f" ({row.unit})" if row.unit else ""))
            if row.na:
                aar, ref, ratio, tgt = "n/a", "", "", row.target_text
            else:
                aar = row.aar_text or fmt(row.aar)
                ref = row.ref_text or (f"{row.ref_name} {fmt(row.ref)}" if row.ref_name or row.ref
                                       is not None else "-")
                ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
                tgt = row.target_text + (f"  {row.verdict()}" if row.verdict() else "")
            lines.append([label, aar, ref, ratio, tgt])
            if row.na:
                lines.append(["", f"    n/a: {row.na}"])
            for n in row.notes:
                lines.append(["", "    " + n])
    width = [max(len(c), *(len(ln[i]) for ln in lines if len(ln) > i and not
                           (i == 1 and len(ln) == 2))) for i, c in enumerate(cols)]
    width[1] = min(width[1], 24)
    width[0] = min(width[0], 52)
    print("", file=out)
    for h in header:
        print(h, file=out)
    print("", file=out)
    print(" | ".join(c.ljust(width[i]) for i, c in enumerate(cols)).rstrip(), file=out)
    print("-+-".join("-" * w for w in width), file=out)
    for ln in lines:
        if len(ln) == 2:
            print(" " * (width[0]) + " " + ln[1], file=out)
        else:
            print(" | ".join(c.ljust(width[i]) for i, c in enumerate(ln)).rstrip(), file=out)
    print("", file=out)


# --------------------------------------------------------------------------
# the benchmark

class Bench:
    def __init__(self, opts):
        self.o = opts
        self.p = dict(QUICK if opts.quick else FULL)
        if opts.rounds:
            self.p["rounds"] = opts.rounds
        self.work = bl.tempdir()
        self.arch = self._arch()
        self.nginx = self.registry = None
        self.na = {}            # server name -> reason it is unavailable
        self.rows = []
        self.rss = {}
        self.tls = {}

    @staticmethod
    def _arch():
        try:
            sys.path.insert(0, str(bl.REPO))
            import names
            return names.host_architecture()
        except Exception:  # noqa: BLE001 - fall back to the bench's own table
            return bl.host_arch()
        finally:
            sys.path.remove(str(bl.REPO))

    # -- servers ------------------------------------------------------------

    def start_refs(self):
        for attr, cls in (("nginx", Nginx), ("registry", DockerRegistry)):
            srv = cls(self.work, self.server, self.client)
            try:
                srv.start()
                setattr(self, attr, srv)
                self.tls[srv.name] = bl.tls_probe(srv.port, self.client)
                log(f"{srv.name} up on 127.0.0.1:{srv.port}")
            except bl.Unavailable as e:
                self.na[srv.name] = str(e)
                log(f"{srv.name} unavailable: {e}")

    def start_aar(self, label):
        srv = Aar(self.work, self.server, self.client, label=label)
        srv.start()
        self.tls["aar"] = bl.tls_probe(srv.port, self.client)
        if not srv.same_cert:
            log("note: aar replaced the bench server certificate")
        log(f"aar ({label}) up on 127.0.0.1:{srv.port}")
        return srv

    def need(self, name):
        srv = {"nginx": self.nginx, "docker-registry": self.registry}[name]
        if srv is None:
            raise bl.Unavailable(self.na.get(name, f"{name} not started"))
        return srv

    # -- helpers ------------------------------------------------------------

    def best_rate(self, mode, targets, requests):
        """targets: [(name, port, path, pids)]; alternating rounds, best of each."""
        conns = self.o.conns
        best = {}
        for name, port, path, pids in targets:   # warm-up, not counted
            drivers.rate(mode, port, self.client, path, requests=max(conns, requests // 10),
                         conns=conns, cap=2.0, driver=self.o.driver)
        for rnd in range(self.p["rounds"]):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for name, port, path, pids in order:
                r = drivers.rate(mode, port, self.client, path, requests=requests, conns=conns,
                                 cap=self.p["cap"], server_pids=pids(), driver=self.o.driver)
                if r["bad"]:
                    log(f"  {name}: {r['bad']} failed requests {r['statuses']}")
                log(f"  {name} {mode} {path}: {r['rate']:.0f}/s ({r['ok']} in {r['seconds']:.2f}s,"
                    f" server {r['server_us'] or 0:.0f} us/req, client {r['client_us']:.0f} us/req)")
                if name not in best or r["rate"] > best[name]["rate"]:
                    best[name] = r
        return best

    def cpu_notes(self, best, names):
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

    @staticmethod
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

    def row(self, key, metric, unit, target=None):
        r = Row(key, metric, unit, target)
        self.rows.append(r)
        return r

    def guard(self, row, fn):
        t = time.monotonic()
        try:
            fn(row)
        except ERRORS as e:
            row.na = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            log(f"row {row.key}: n/a ({row.na})")
        except Exception as e:  # noqa: BLE001 - a bench bug must not lose the other rows
            import traceback
            traceback.print_exc()
            row.na = f"bench error: {type(e).__name__}: {e}"[:160]
        log(f"row {row.key} done in {time.monotonic() - t:.1f}s")

    def selected(self, n):
        return not self.o.only or str(n) in self.o.only.split(",")

    # -- rows ---------------------------------------------------------------

    def row_status(self, row):
        aar, nginx = self.aar_a, self.need("nginx")
        status, _, body = bl.Http(aar.port, self.client).request("GET", "/1.0/status")
        if status != 200:
            raise RuntimeError(f"aar GET /1.0/status answered {status}")
        nginx.put_file("status.json", body)
        best = self.best_rate("keepalive", [
            ("aar", aar.port, "/1.0/status", aar.pids),
            ("nginx", nginx.port, "/status.json", nginx.pids)], self.p["small_requests"])
        row.aar, row.ref, row.ref_name = best["aar"]["rate"], best["nginx"]["rate"], "nginx"
        row.ratio = row.aar / row.ref
        self.cpu_subrow(row, best, row.ref_name)
        row.notes += [f"{len(body)}-byte JSON body; {self.o.conns} keep-alive connections, "
                      f"driver {self.o.driver}"] + self.cpu_notes(best, ["aar", "nginx"])

    def row_list(self, row):
        aar, nginx = self.aar_a, self.need("nginx")
        self.fill_apps(aar, self.p["apps"])
        status, hdrs, body = bl.Http(aar.port, self.client).request("GET", "/1.0/applications")
        if status != 200:
            raise RuntimeError(f"aar GET /1.0/applications answered {status}")
        apps = json.loads(body)["metadata"]
        if len(apps) < self.p["apps"]:
            raise RuntimeError(f"aar lists {len(apps)} applications, expected {self.p['apps']}")
        nginx.put_file("applications.json", body)
        best = self.best_rate("keepalive", [
            ("aar", aar.port, "/1.0/applications", aar.pids),
            ("nginx", nginx.port, "/applications.json", nginx.pids)], self.p["list_requests"])
        row.aar, row.ref, row.ref_name = best["aar"]["rate"], best["nginx"]["rate"], "nginx"
        row.ratio = row.aar / row.ref
        self.cpu_subrow(row, best, row.ref_name)
        row.notes += [f"{len(apps)} applications, {len(body):,} bytes per listing"] + \
            self.cpu_notes(best, ["aar", "nginx"])

    def fill_apps(self, aar, n):
        if getattr(aar, "filled", 0) >= n:
            return
        t = time.monotonic()
        http = bl.Http(aar.port, self.client)
        for i in range(n):
            name = f"bench-app-{i:04d}"
            body, m = bl.small_package(name, 0, tags=["bench", f"group{i % 10}"])
            aar.put(http, name, 0, self.arch, body, hashlib.sha256(body).hexdigest(), m)
        http.close()
        aar.filled = n
        log(f"filled aar with {n} applications in {time.monotonic() - t:.1f}s")

    def row_newconn(self, row):
        aar = self.aar_a
        targets = [("aar", aar.port, "/1.0/status", aar.pids)]
        missing = []
        if self.nginx:
            self.nginx.put_file("status.json", bl.Http(aar.port, self.client).request(
                "GET", "/1.0/status")[2])
            targets.append(("nginx", self.nginx.port, "/status.json", self.nginx.pids))
        else:
            missing.append("nginx")
        if self.registry:
            targets.append(("docker-registry", self.registry.port, "/v2/",
                            lambda: [self.registry.proc.pid]))
        else:
            missing.append("docker-registry")
        if len(targets) == 1:
            raise bl.Unavailable("no reference server: " + "; ".join(
                self.na.get(m, m) for m in missing))
        best = self.best_rate("newconn", targets, self.p["newconn_requests"])
        refs = sorted((n for n in best if n != "aar"), key=lambda n: -best[n]["rate"])
        row.aar = best["aar"]["rate"]
        row.ref_name, row.ref = refs[0], best[refs[0]]["rate"]
        row.ratio = row.aar / row.ref
        self.cpu_subrow(row, best, row.ref_name)
        for other in refs[1:]:
            sub = Row("", f"  vs {other}", "", None)
            sub.aar, sub.ref, sub.ref_name = row.aar, best[other]["rate"], other
            sub.ratio = row.aar / sub.ref
            row.sub.append(sub)
        for m in missing:
            sub = Row("", f"  vs {m}", "", None)
            sub.na = self.na.get(m, "not started")
            row.sub.append(sub)
        row.notes += [f"one request per connection, full handshake (no session resumption), "
                      f"{self.o.conns} concurrent clients, driver {self.o.driver}"] + \
            self.cpu_notes(best, [n for n, *_ in targets])

    def row_nochange(self, row):
        aar = self.aar_a
        self.fill_apps(aar, self.p["apps"])
        agent = Agent(self.work / "agent-nochange", aar)
        agent.setup()
        t = time.monotonic()
        first = agent.sync(timeout=max(300, self.p["apps"]))
        log(f"agent first pull of {self.p['apps']} apps: {first['wall']:.1f}s wall, "
            f"{first['cpu']:.1f}s CPU, {first.get('requests', '?')} requests")
        pulled = agent.count_apps("bench-app-")
        if pulled is not None and pulled < self.p["apps"]:
            raise RuntimeError(f"the first cycle pulled {pulled} of {self.p['apps']} apps")
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

    def row_pull(self, row):
        aar = self.aar_c
        n, size = self.p["pull_count"], self.p["pull_size"]
        pkgdir = self.work / "pull-packages"
        pkgdir.mkdir(exist_ok=True)
        http = bl.Http(aar.port, self.client, timeout=300)
        names = []
        t = time.monotonic()
        for i in range(n):
            name = f"bench-pull-{i:02d}"
            path = pkgdir / f"{name}.zip"
            sha, m = bl.big_package(path, name, size, tags=["bench"])
            with open(path, "rb") as f:
                aar.put(http, name, 0, self.arch, f, sha, m)
            path.unlink()
            names.append(name)
        http.close()
        log(f"published {n} packages of {size / 1e6:.0f} MB in {time.monotonic() - t:.1f}s")
        agent = Agent(self.work / "agent-pull", aar)
        agent.setup()
        # reference: curl fetches the same URLs with the agent's certificate
        dest = self.work / "curl-pull"
        dest.mkdir(exist_ok=True)
        client = agent.client_cert()
        urls = [(aar.url(Aar.package_path(nm, 0, self.arch)), dest / f"{nm}.zip") for nm in names]
        ref = drivers.fetch_many(urls, client, timeout=self.p["transfer_timeout"])
        shutil.rmtree(dest, ignore_errors=True)
        total = ref["bytes"]
        log(f"  curl fetched {total / 1e6:.0f} MB in {ref['seconds']:.2f}s")
        res = agent.sync(timeout=self.p["transfer_timeout"])
        pulled = agent.count_apps("bench-pull-")
        if pulled is not None and pulled < n:
            raise RuntimeError(f"agent pulled {pulled} of {n} packages")
        log(f"  agent synced in {res['wall']:.2f}s ({res['cpu']:.2f}s CPU)")
        row.aar = total / res["wall"] / bl.MiB
        row.ref, row.ref_name = total / ref["seconds"] / bl.MiB, "curl"
        row.ratio = row.aar / row.ref
        row.notes.append(f"{n} x {size / 1e6:.0f} MB: agent `sync` {res['wall']:.2f} s wall, "
                         f"{res['cpu']:.2f} s CPU (start-up, listing, sha256 check and import "
                         f"included); curl {ref['seconds']:.2f} s, one connection, to files")

    def row_upload(self, row):
        aar, reg = self.aar_c, self.need("docker-registry")
        big = self.big_file()
        m = bl.manifest("bench-big", 0, ["bench"])
        a = drivers.upload_put(aar.url(Aar.package_path("bench-big", 0, self.arch)), self.client,
                               big, {"X-Aar-Sha256": self.big_sha, "X-Aar-Manifest": bl.dumps(m)},
                               timeout=self.p["transfer_timeout"], server_pids=aar.pids())
        if a["code"] not in (200, 201) or a["bytes"] != self.p["big"]:
            raise RuntimeError(f"aar PUT answered {a['code']} after {a['bytes']} bytes")
        log(f"  aar PUT {a['bytes'] / a['seconds'] / bl.MiB:.0f} MiB/s")
        d = drivers.registry_upload(reg.url(""), self.client, "bench/big", big, self.big_sha,
                                    timeout=self.p["transfer_timeout"],
                                    server_pids=[reg.proc.pid])
        if d["code"] != 201 or d["bytes"] != self.p["big"]:
            raise RuntimeError(f"docker-registry PUT answered {d['code']} after {d['bytes']} bytes")
        log(f"  docker-registry upload {d['bytes'] / d['seconds'] / bl.MiB:.0f} MiB/s")
        row.aar = a["bytes"] / a["seconds"] / bl.MiB
        row.ref, row.ref_name = d["bytes"] / d["seconds"] / bl.MiB, "docker-registry"
        row.ratio = row.aar / row.ref
        row.notes.append(f"{self.size_text()}: aar {a['seconds']:.2f} s ({a['server_cpu']:.2f} s "
                         f"server CPU), docker-registry {d['seconds']:.2f} s "
                         f"({d['server_cpu']:.2f} s server CPU; POST + monolithic PUT)")
        self.uploaded = True

    def row_download(self, row):
        aar, nginx = self.aar_c, self.need("nginx")
        big = self.big_file()
        if not getattr(self, "uploaded", False):
            with open(big, "rb") as f:
                http = bl.Http(aar.port, self.client, timeout=self.p["transfer_timeout"])
                aar.put(http, "bench-big", 0, self.arch, f, self.big_sha,
                        bl.manifest("bench-big", 0, ["bench"]))
                http.close()
        nginx.put_file("big.bin", src=big)
        targets = [("aar", aar.url(Aar.package_path("bench-big", 0, self.arch)), aar.pids),
                   ("nginx", nginx.url("/big.bin"), nginx.pids)]
        best = {}
        for rnd in range(self.p["rounds"]):
            for name, url, pids in (targets if rnd % 2 == 0 else targets[::-1]):
                r = drivers.download(url, self.client, timeout=self.p["transfer_timeout"],
                                     expect_size=self.p["big"], server_pids=pids())
                log(f"  {name} GET {r['mib_s']:.0f} MiB/s ({r['server_cpu']:.2f}s server CPU)")
                if name not in best or r["mib_s"] > best[name]["mib_s"]:
                    best[name] = r
        row.aar, row.ref, row.ref_name = best["aar"]["mib_s"], best["nginx"]["mib_s"], "nginx"
        row.ratio = row.aar / row.ref
        row.notes.append(f"{self.size_text()}, one connection, best of {self.p['rounds']}; "
                         f"server CPU per GiB: aar {best['aar']['server_cpu'] * bl.GiB / self.p['big']:.2f} s, "
                         f"nginx {best['nginx']['server_cpu'] * bl.GiB / self.p['big']:.2f} s")

    def row_rss(self, row):
        kib = self.aar_c.peak_rss_kib() if self.aar_c else None
        if kib is None:
            raise bl.Unavailable("aar server not running")
        row.aar = kib / 1024
        row.target_text = "< 64"
        row.ratio = None
        ng = self.nginx.peak_rss_kib() if self.nginx else None
        row.ref_text = f"nginx worker {ng / 1024:.1f}" if ng else "-"
        ok = row.aar < 64
        row.target_text = "< 64  " + ("ok" if ok else "MISS")
        row.notes.append("VmHWM of the aar process that served rows 4-6 "
                         "(/proc/PID/status), threads included")

    # -- data ------------------------------------------------------------------

    def big_file(self):
        path = self.work / "big.bin"
        if not path.exists():
            t = time.monotonic()
            self.big_sha = bl.random_file(path, self.p["big"])
            log(f"wrote {self.size_text()} test file in {time.monotonic() - t:.1f}s")
        return path

    def size_text(self):
        b = self.p["big"]
        return f"{b // bl.GiB} GiB" if b >= bl.GiB else f"{b // bl.MiB} MiB"

    # -- the run ---------------------------------------------------------------

    def run(self):
        o, p = self.o, self.p
        started = time.monotonic()
        for tool in ("curl", "openssl"):
            if not bl.which(tool):
                sys.exit(f"bench: {tool} is required; run bench/setup.sh")
        certs = self.work / "certs"
        self.server = bl.make_cert(certs, "server", ["IP:127.0.0.1", "DNS:localhost"])
        self.client = bl.make_cert(certs, "bench-client")
        self.start_refs()
        self.aar_a = self.aar_c = None
        aar_na = None
        try:
            self.aar_a = self.start_aar("aar-a")
        except ERRORS as e:
            aar_na = str(e)
            log(f"aar unavailable: {e}")

        big = self.size_text()
        r1 = self.row("1", "keep-alive GET /1.0/status", "req/s", 1.0)
        r2 = self.row("2", f"GET /1.0/applications, {p['apps']} apps", "req/s", 1.0)
        r3 = self.row("3", "new mTLS connections, 1 req each", "conn/s", 1.0)
        r4 = self.row("4", f"{big} package download", "MiB/s", 0.9)
        r4b = self.row("4b", "aar server peak RSS (VmHWM)", "MiB", None)
        r4b.target_text = "< 64"
        r5 = self.row("5", f"{big} upload with sha256 check", "MiB/s", 3.0)
        r6 = self.row("6", f"agent pull {p['pull_count']} x {p['pull_size'] // 1000000} MB",
                      "MiB/s", 0.8)
        r6b = self.row("6b", f"agent no-change cycle, {p['apps']} apps", "", None)

        def with_aar(fn, need_c=False):
            def go(row):
                if aar_na:
                    raise bl.Unavailable(aar_na)
                if need_c and self.aar_c is None:
                    raise bl.Unavailable(self.aar_c_na)
                fn(row)
            return go

        plan_a = [(1, r1, self.row_status), (3, r3, self.row_newconn), (2, r2, self.row_list),
                  (6, r6b, self.row_nochange)]
        for n, row, fn in plan_a:
            if self.selected(n):
                log(f"row {row.key}: {row.metric}")
                self.guard(row, with_aar(fn))
        if self.aar_a:
            self.rss["aar-a"] = self.aar_a.peak_rss_kib()
            self.aar_a.stop()
            shutil.rmtree(self.aar_a.dir, ignore_errors=True)
        # a fresh aar for the large transfers, so its peak RSS is theirs
        self.aar_c_na = aar_na
        if not aar_na and any(self.selected(n) for n in (4, 5, 6)):
            try:
                self.aar_c = self.start_aar("aar-c")
            except ERRORS as e:
                self.aar_c_na = str(e)
        plan_c = [(6, r6, self.row_pull), (5, r5, self.row_upload), (4, r4, self.row_download),
                  (4, r4b, self.row_rss)]
        for n, row, fn in plan_c:
            if self.selected(n):
                log(f"row {row.key}: {row.metric}")
                self.guard(row, with_aar(fn, need_c=True))
        for row in self.rows:
            if not self.selected(row.key.rstrip("b")) and not row.na:
                row.na = "not selected (--only)"
        if self.aar_c:
            self.aar_c.stop()

        header = [
            f"aar benchmark  {time.strftime('%Y-%m-%d %H:%M')}  "
            f"{'quick' if o.quick else 'full'} run, {p['rounds']} round(s), "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
            f"{time.monotonic() - started:.0f} s",
            "TLS: " + "; ".join(f"{k} {v}" for k, v in self.tls.items()),
            f"request driver: {o.driver}, {o.conns} connections; transfers: curl --http1.1 "
            f"({drivers.CURL_TLS13}); ratio = aar / reference (higher is better for aar)",
        ]
        for name, why in self.na.items():
            header.append(f"{name}: n/a ({why})")
        print_table(self.rows, header)
        outdir = pathlib.Path(__file__).resolve().parent / "out"
        outdir.mkdir(exist_ok=True)
        (outdir / "results.json").write_text(json.dumps(
            {"header": header, "params": p, "rows": [r.as_dict() for r in self.rows],
             "rss_kib": self.rss}, indent=1))

    def cleanup(self):
        bl.stop_all()
        if self.o.keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


class Agent:
    """One ams_sync node in pull mode against an aar instance."""

    def __init__(self, data, aar):
        self.data = pathlib.Path(data)
        self.aar = aar
        self.env = dict(os.environ, AMS_SYNC_DATA_DIR=str(self.data))
        self.env.pop("SNAP_COMMON", None)
        # An installed agent (the zipapp unpacked under ~/.shiv) keeps its
        # compiled bytecode; without this every timed run would compile the
        # agent's sources again (about 45 ms of start-up).
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def cmd(self, *args, check=True, timeout=60):
        return bl.run([sys.executable, "-m", "ams_sync", *args], env=self.env, cwd=str(bl.REPO),
                      check=check, timeout=timeout)

    def setup(self):
        if not (bl.REPO / "ams_sync.py").exists() and not (bl.REPO / "ams_sync").is_dir():
            raise bl.Unavailable("ams_sync not in the repository yet")
        self.data.mkdir(parents=True, exist_ok=True)
        fp = bl.Cert(self.aar.server_cert_path, self.aar.server_cert_path).fingerprint
        self.cmd("config", "trust", "add", str(self.aar.server_cert_path))
        self.cmd("config", "set", "registry.url", f"https://127.0.0.1:{self.aar.port}")
        self.cmd("config", "set", "registry.fingerprint", fp)
        self.cmd("config", "set", "registry.mode", "pull")
        crt = self.data / "registry" / "client.crt"
        if not crt.exists():
            self.cmd("config", "show", check=False)
        if not crt.exists():
            self.cmd("registry", "list", check=False)   # first use makes the certificate
        if not crt.exists():
            raise bl.Unavailable(f"the agent made no client certificate at {crt}")
        self.aar.trust(crt, publisher=False)

    def client_cert(self):
        reg = self.data / "registry"
        keys = [reg / "client.key"] + sorted(reg.glob("*.key"))
        key = next((k for k in keys if k.exists()), None)
        if key is None:
            raise bl.Unavailable("agent client key not found")
        return bl.Cert(reg / "client.crt", key)

    def sync(self, timeout):
        """`python -m ams_sync sync` under agentprobe: wall, CPU, request counts."""
        return self.probe(["--", "sync"], timeout)

    def loop_cycle(self, timeout):
        """agentprobe --loop: a no-change cycle inside one long-running agent."""
        try:
            return self.probe(["--loop"], timeout)
        except RuntimeError as e:
            return {"error": str(e)}

    def probe(self, args, timeout):
        counts = self.data.parent / f"{self.data.name}-counts.json"
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(pathlib.Path(__file__).with_name(
            "agentprobe.py")), str(counts), *args], env=self.env, cwd=str(bl.REPO),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        import threading
        out = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        reader.join(5)
        text = (out[0] if out else b"").decode(errors="replace").strip()
        if proc.returncode != 0:
            last = text.splitlines()[-1] if text else ""
            raise RuntimeError(f"agentprobe {' '.join(args)} exited {proc.returncode}: "
                               f"{last[:150]}")
        res = {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "output": text[-500:]}
        try:
            res.update(json.loads(counts.read_text()))
        except (OSError, ValueError):
            pass
        return res

    def baseline_cpu(self):
        """CPU seconds of `python -m ams_sync --version`: the start-up share."""
        proc = subprocess.Popen([sys.executable, "-m", "ams_sync", "--version"], env=self.env,
                                cwd=str(bl.REPO), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        _, _, ru = os.wait4(proc.pid, 0)
        proc.returncode = 0
        return ru.ru_utime + ru.ru_stime

    def count_apps(self, prefix):
        res = self.cmd("application", "list", "--format", "json", check=False)
        if res.returncode == 0:
            try:
                return sum(1 for app in json.loads(res.stdout)
                           if app.get("name", "").startswith(prefix) and app.get("versions"))
            except (ValueError, AttributeError, TypeError):
                pass
        res = self.cmd("application", "list", check=False)
        if res.returncode != 0:
            return None
        return len({w for w in res.stdout.replace(",", " ").replace('"', " ").split()
                    if w.startswith(prefix)})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK['big'] // bl.MiB} MiB instead of 1 GiB, fewer requests, one round")
    ap.add_argument("--rounds", type=int, help="measured rounds per row (best is kept)")
    ap.add_argument("--conns", type=int, default=4, help="concurrent connections/clients (4)")
    ap.add_argument("--driver", choices=("python", "curl"), default="python",
                    help="request-rate driver for rows 1-3 (default python; see README)")
    ap.add_argument("--only", help="comma-separated rows to run, e.g. 1,3 (default all)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    o = ap.parse_args(argv)
    bench = Bench(o)
    log(f"work directory {bench.work}")
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
