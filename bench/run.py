#!/usr/bin/env python3
"""aar benchmark: the registry against nginx and docker-registry, side by side.

    python3 bench/run.py [--quick] [--rounds N] [--conns N] [--driver python|curl]
                         [--only 1,2,3,4,5,6] [--baseline REV] [--processes N] [--keep]

Starts everything on private loopback ports with fresh certificates, runs each
row with a bounded amount of work and a time cap, prints one table
(metric | aar | reference | ratio | target) and stops every process it started.
A row whose prerequisite is missing prints "n/a (reason)"; the run goes on.
bench/README.md says what each row measures and why the drivers are fair.
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402
from baseline import Baseline  # noqa: E402
import corerows  # noqa: E402
import drivers  # noqa: E402
import requestrows  # noqa: E402
import transferrows  # noqa: E402
from aarproc import Aar  # noqa: E402
from refs import DockerRegistry, Nginx  # noqa: E402
from report import Row, log, print_table  # noqa: E402

# Request budgets: each measurement of rows 1, 2 and 7 lasts a few seconds on
# a quiet machine (0.2-0.4 s was too short to be steady), the same for aar
# and nginx.
FULL = dict(small_requests=80000, list_requests=4000, list100_requests=20000,
            newconn_requests=2000, apps=1000,
            big=bl.GiB, pull_count=20, pull_size=50 * 1000 * 1000, cap=20.0,
            transfer_timeout=300, rounds=3, idle=10.0, attack_requests=200,
            attack_timeout=10.0, attack_cap=60.0)
QUICK = dict(small_requests=4000, list_requests=300, list100_requests=2000,
             newconn_requests=400, apps=1000,
             big=64 * bl.MiB, pull_count=20, pull_size=4 * 1000 * 1000, cap=5.0,
             transfer_timeout=120, rounds=1, idle=5.0, attack_requests=50,
             attack_timeout=5.0, attack_cap=20.0)

ERRORS = (bl.Unavailable, RuntimeError, OSError, subprocess.SubprocessError, ValueError)


class Bench:
    """One run: its parameters, servers and rows. The row functions in
    requestrows.py and transferrows.py take it and fill in their Row."""

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
        self.server = self.client = None    # benchlib.Cert, made by run()
        self.aar_a = self.aar_c = None      # the filled aar (rows 1-3, 6b), the fresh one
        self.aar_c_na = None                # why the fresh one is not running
        self.aar_w = None                   # the aar of 100 applications (rows 7-9)
        self.aar_one = self.aar_w_one = None    # ... as one process (requestrows.single)
        self.big_sha = None                 # of big_file()
        self.uploaded = False               # row 5 left the big package on aar_c
        self.baseline = None                # --baseline: baseline.Baseline, checked out
        self.old_r = None                   # ... its aar for rows 1 and 7
        self.old = None                     # ... once its aar for rows 4-6 runs

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

    def start_aar(self, label, processes=1):
        srv = Aar(self.work, self.server, self.client, label=label,
                  extra=("--processes", str(processes)))
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

    # -- rows ---------------------------------------------------------------

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
        aar_na = None
        try:
            self.aar_a = self.start_aar("aar-a", o.processes)
        except ERRORS as e:
            aar_na = str(e)
            log(f"aar unavailable: {e}")

        if o.baseline and not aar_na and (self.selected(1) or self.selected(7)):
            self._start_baseline(requests=True)
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
        r7 = self.row("7", f"GET /1.0/applications, {corerows.APPS} apps", "req/s", 1.0)
        r8 = self.row("8", f"{corerows.AGENTS:,} agents holding wait: server memory (Pss)", "MiB", None)
        r9 = self.row("9", "slow-connection attack: trusted client p99", "ms", 0.5)

        def with_aar(fn, need_c=False):
            def go(row):
                if aar_na:
                    raise bl.Unavailable(aar_na)
                if need_c and self.aar_c is None:
                    raise bl.Unavailable(self.aar_c_na)
                fn(self, row)
            return go

        plan_a = [(1, r1, requestrows.small_json), (3, r3, requestrows.new_connections),
                  (2, r2, requestrows.listing), (6, r6b, requestrows.no_change_cycle)]
        for n, row, fn in plan_a:
            if self.selected(n):
                log(f"row {row.key}: {row.metric}")
                self.guard(row, with_aar(fn))
        if self.aar_a:
            self.rss["aar-a"] = self.aar_a.peak_rss_kib()
        self._stop("aar_a", "aar_one")
        self._rows_w(aar_na, [(7, r7, corerows.listing_100), (8, r8, corerows.waiting_agents),
                              (9, r9, corerows.slow_attack)])
        # a fresh aar for the large transfers, so its peak RSS is theirs
        self.aar_c_na = aar_na
        if not aar_na and any(self.selected(n) for n in (4, 5, 6)):
            try:
                self.aar_c = self.start_aar("aar-c")
            except ERRORS as e:
                self.aar_c_na = str(e)
            if self.aar_c and o.baseline:
                self._start_baseline(transfers=True)
        plan_c = [(6, r6, transferrows.agent_pull), (5, r5, transferrows.upload),
                  (4, r4, transferrows.download), (4, r4b, transferrows.peak_rss)]
        for n, row, fn in plan_c:
            if self.selected(n):
                log(f"row {row.key}: {row.metric}")
                self.guard(row, with_aar(fn, need_c=True))
        for row in self.rows:
            if not self.selected(row.key.rstrip("b")) and not row.na:
                row.na = "not selected (--only)"
        if self.aar_c:
            self.aar_c.stop()
        rows_of_old = " and ".join(rows for rows, aar in (
            ("1, 7", self.old_r), ("4-6", self.old)) if aar)
        if self.baseline:
            self.baseline.remove()

        header = [
            f"aar benchmark  {time.strftime('%Y-%m-%d %H:%M')}  "
            f"{'quick' if o.quick else 'full'} run, {p['rounds']} round(s), "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
            f"{time.monotonic() - started:.0f} s",
            "TLS: " + "; ".join(f"{k} {v}" for k, v in self.tls.items()),
            f"aar: --processes {o.processes} for rows 1-3 and 7-9 (sub-rows: --processes 1, "
            f"the single process before), one process for rows 4-6",
            f"request driver: {o.driver}, {o.conns} connections; transfers: curl --http1.1 "
            f"({drivers.CURL_TLS13}); ratio = aar / reference (higher is better for aar)",
        ]
        if rows_of_old:
            header.append(f"baseline: rows {rows_of_old} also against {o.baseline} "
                          f"({self.baseline.short}), checked out apart, in the same run; "
                          "sub-rows give new / old")
        for name, why in self.na.items():
            header.append(f"{name}: n/a ({why})")
        print_table(self.rows, header)
        outdir = pathlib.Path(__file__).resolve().parent / "out"
        outdir.mkdir(exist_ok=True)
        (outdir / "results.json").write_text(json.dumps(
            {"header": header, "params": p, "rows": [r.as_dict() for r in self.rows],
             "rss_kib": self.rss}, indent=1))

    def _rows_w(self, aar_na, plan):
        """Rows 7-9 on a fresh aar of 100 applications: its RSS and its
        listing are theirs alone, and the attack of row 9 is its last use."""
        plan = [(n, row, fn) for n, row, fn in plan if self.selected(n)]
        if plan and not aar_na:
            try:
                self.aar_w = self.start_aar("aar-w", self.o.processes)
            except ERRORS as e:
                aar_na = str(e)
        for n, row, fn in plan:
            log(f"row {row.key}: {row.metric}")

            def go(row, fn=fn):
                if aar_na:
                    raise bl.Unavailable(aar_na)
                fn(self, row)
            self.guard(row, go)
        self._stop("aar_w", "aar_w_one")

    def _stop(self, *attrs):
        for attr in attrs:
            srv = getattr(self, attr)
            if srv is not None:
                srv.stop()
                shutil.rmtree(srv.dir, ignore_errors=True)
                setattr(self, attr, None)

    def _start_baseline(self, requests=False, transfers=False):
        """REV checked out (once), and its aar for rows 1 and 7 or for 4-6."""
        try:
            if self.baseline is None:
                self.baseline = Baseline(self.work, self.o.baseline)
                self.baseline.checkout()
            if requests:
                self.old_r = self.baseline.serve(self.work, self.server, self.client,
                                                 "aar-old-r")
            if transfers:
                self.baseline.start(self.work, self.server, self.client)
                self.old = self.baseline
        except ERRORS as e:
            self.na[f"baseline {self.o.baseline}"] = str(e)
            log(f"baseline unavailable: {e}")

    def cleanup(self):
        if self.baseline:
            self.baseline.remove()
        bl.stop_all()
        if self.o.keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK['big'] // bl.MiB} MiB instead of 1 GiB, fewer requests, one round")
    ap.add_argument("--rounds", type=int, help="measured rounds per row (best is kept)")
    ap.add_argument("--conns", type=int, default=4, help="concurrent connections/clients (4)")
    ap.add_argument("--driver", choices=("python", "curl"), default="python",
                    help="request-rate driver for rows 1-3 (default python; see README)")
    ap.add_argument("--only", help="comma-separated rows to run, e.g. 1,3 or 7,8,9 (default all)")
    ap.add_argument("--baseline", metavar="REV",
                    help="also run rows 1, 7 and 4-6 against aar at git revision REV "
                         "(checked out in a temporary worktree), e.g. main or 27e636a, "
                         "the core before the event loop; sub-rows give the ratio new / old")
    ap.add_argument("--processes", type=int, default=2, metavar="N",
                    help="aar's worker processes for rows 1-3 and 7-9 (default 2, as "
                         "nginx's worker_processes here); each such row also has a "
                         "sub-row of aar as one process. Rows 4-6 run one process")
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
