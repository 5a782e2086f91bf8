#!/usr/bin/env python3
"""aar with S3 storage against the object store itself, side by side.

    .venv/bin/python bench/s3rows.py [--size MiB] [--rounds N] [--only S2,S3]
                                     [--baseline REV]

Run from the test venv after ./test.sh has made .venv (boto3) and .venv-swift
(OpenStack Swift). Starts Swift (s3api) on loopback and two `aar serve`
replicas on one bucket (one redirecting downloads, one proxying them), plus a
local-storage aar for the listing row, and prints:

  S1 1 GiB download through a replica with redirect vs a GET of the object   >= 0.9
  S2 1 GiB download through a replica proxying     vs a GET of the object   >= 0.8
  S3 1 GiB upload through a replica (sha256 checked) vs boto3's multipart    >= 0.8
  S4 listing of 1,000 packages, req/s: S3 storage vs local storage           >= 0.9

The upload row's client sends the body 1 MiB per write, as aar's own
publisher does; boto3 uploads 8 MiB parts, 10 threads, its defaults. The
listing row is the best of 6 interleaved rounds per store, with the
servers' CPU per request in its note. Every download reads the same object
(the package's blob) with the same client: S1 and S2 with one Python loop (1 MiB reads, discarded), the
reference through a URL boto3 presigned; S1c with curl (-L through the
replica, vs curl of the presigned URL). The redirect rows include the
registry's 307 and the second connection. Rounds are interleaved (each
starting with another column), best of --rounds; notes give the replica's
CPU per GiB. `--only` runs some rows (the package S1 and S2 read is then
uploaded once, untimed, when S3 is not among them). `--baseline REV` adds a
proxying replica run from git revision REV (a temporary worktree, as in
run.py) on the same bucket: S2 and S3 get a sub-row new / old, measured in
the same interleaved rounds. Processes are stopped by PID at the end.
"""
import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "tests")]

import benchlib as bl  # noqa: E402
from baseline import Baseline  # noqa: E402
from drivers import proc_cpu  # noqa: E402
from report import Row, log, print_table  # noqa: E402
from s3parts import MiB, Registry, conf_for, fill_bucket, get_url, listing_rate, \
    read_all, timed  # noqa: E402
from swiftaio import SwiftAIO  # noqa: E402

ROWS = ("S1", "S2", "S3", "S4")
LISTING_ROUNDS = 6


def rows_arg(text):
    keys = [k.strip().upper() for k in text.split(",") if k.strip()]
    bad = [k for k in keys if k not in ROWS]
    if bad or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown row {', '.join(bad) or repr(text)}: choose among {', '.join(ROWS)}")
    return set(keys)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="MiB moved per transfer row")
    ap.add_argument("--rounds", type=int, default=3,
                    help="transfers per column; the best counts (default 3)")
    ap.add_argument("--apps", type=int, default=1000,
                    help="packages in the listing row S4 (default 1000)")
    ap.add_argument("--only", type=rows_arg, default=set(ROWS), metavar="S2,S3",
                    help="run only these rows (default: all of S1-S4)")
    ap.add_argument("--baseline", metavar="REV",
                    help="also run S2 and S3 against a replica of git revision REV")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary directory (Swift's devices hold "
                         "several GiB after a full run)")
    opts = ap.parse_args(argv)
    work = pathlib.Path(tempfile.mkdtemp(prefix="aar-s3bench-"))
    swift = SwiftAIO(work / "swift")
    old = None
    rows = {"S1": Row("S1", f"{opts.size} MiB download, replica with redirect", "MiB/s", 0.9),
            "S2": Row("S2", f"{opts.size} MiB download, replica proxying", "MiB/s", 0.8),
            "S3": Row("S3", f"{opts.size} MiB upload, replica (sha256 checked)", "MiB/s", 0.8),
            "S4": Row("S4", f"listing of {opts.apps} packages, S3 vs local", "req/s", 0.9)}
    rows = {k: r for k, r in rows.items() if k in opts.only}
    try:
        if opts.baseline:
            old = Baseline(work, opts.baseline).checkout()
        log("starting swift")
        swift.start()
        s3 = swift.client()
        for b in ("bench", "benchlist"):
            s3.create_bucket(Bucket=b)
        certs = work / "certs"
        server = bl.make_cert(certs, "server", sans=["IP:127.0.0.1"])
        client = bl.make_cert(certs, "client")
        (work / "proto" / "certs").mkdir(parents=True)
        for src, dst in ((server.cert, "server.crt"), (server.key, "server.key")):
            (work / "proto" / "certs" / dst).write_bytes(src.read_bytes())
        proto = work / "proto" / "certs"
        if rows.keys() & {"S1", "S2", "S3"}:
            transfer_rows(opts, work, swift, s3, proto, client, rows, old)
        if "S4" in rows:
            listing_row(opts, work, swift, proto, client, rows["S4"])
    except (RuntimeError, OSError, subprocess.SubprocessError, AssertionError,
            bl.Unavailable) as exc:
        log(f"failed: {exc!r}")
        for row in rows.values():
            if row.ratio is None:
                row.na = row.na or str(exc)[:120]
    finally:
        bl.stop_all()
        swift.stop()
        if old is not None:
            old.remove()
        # Each run leaves 5-7 GiB of objects and packages here: a few runs
        # filled the disk, and the next run then failed with bare TLS EOFs.
        if opts.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(list(rows.values()), ["aar with S3 storage (Swift s3api on loopback)"])
    return 0


def transfer_rows(opts, work, swift, s3, proto, client, rows, old):
    redirect = Registry(work, "redirect", proto, conf_for(swift, "bench", True))
    proxy = Registry(work, "proxy", proto, conf_for(swift, "bench", False))
    replicas = [redirect, proxy]
    if old is not None:
        # The same bucket: one trust store and one package for every replica.
        old.proxy = Registry(work, "proxy-old", proto, conf_for(swift, "bench", False),
                             repo=old.src)
        replicas.append(old.proxy)
    redirect.trust(client)
    for reg in replicas:
        reg.start(client)
    big = work / "big"
    size = opts.size * MiB
    log(f"writing {opts.size} MiB")
    sha = bl.random_file(big, size)

    # S3: upload through the replica vs boto3 multipart to the same store.
    def upload_via(reg):
        c = reg.conn(client)
        with open(big, "rb") as f:
            c.request("PUT", f"/1.0/applications/big/{upload_via.n}/amd64/package",
                      body=f, headers={"Content-Length": str(size), "X-Aar-Sha256": sha})
            resp = c.getresponse()
            resp.read()
        assert resp.status == 201, resp.status
        upload_via.n += 1
        c.close()
    upload_via.n = 1
    if "S3" in rows:
        log("upload rows")
        plan = {"aar": (redirect, lambda: upload_via(redirect)),
                "boto3": (None, lambda: s3.upload_file(str(big), "bench", "ref/big"))}
        if old is not None:
            plan["old"] = (old.proxy, lambda: upload_via(old.proxy))
        best, cpu = interleaved(plan, opts.rounds, [p.pid for p in swift.procs.values()])
        row = rows["S3"]
        gib = size / (1 << 30)
        row.notes.append(f"replica CPU {cpu['aar'] / gib:.2f} s/GiB; Swift CPU per GiB: "
                         + ", ".join(f"{name} {cpu[(name, 'store')] / gib:.2f} s"
                                     for name in plan))
        row.aar, row.ref, row.ref_name = size / MiB / best["aar"], size / MiB / best["boto3"], \
            "boto3 multipart"
        row.ratio = row.aar / row.ref
        if old is not None:
            row.sub.append(old.sub_row("MiB/s", row.aar, size / MiB / best["old"],
                                       f"replica CPU {old.short} "
                                       f"{cpu['old'] / (size / (1 << 30)):.2f} s/GiB"))
    else:
        log(f"uploading the {opts.size} MiB package the downloads read")
        upload_via(redirect)
    if not rows.keys() & {"S1", "S2"}:
        return
    # Downloads: every column reads the same object (the package's blob),
    # the reference through a URL presigned by boto3, rounds interleaved
    # so that the machine's load falls on every column alike.
    ref_url = s3.generate_presigned_url("get_object", Params={
        "Bucket": "bench", "Key": f"blobs/sha256/{sha}"})
    path = "/1.0/applications/big/1/amd64/package"

    def location():
        c = redirect.conn(client)
        c.request("GET", path)
        resp = c.getresponse()
        resp.read()
        assert resp.status == 307, resp.status
        c.close()
        return resp.getheader("Location")

    def via_redirect():
        assert get_url(location()) == size

    def via_proxy(reg):
        c = reg.conn(client)
        c.request("GET", path)
        resp = c.getresponse()
        assert resp.status == 200 and read_all(resp) == size
        c.close()

    def curl(*args):
        subprocess.run(["curl", "-sSf", "-o", os.devnull, *args], check=True)

    def curl_redirect():
        curl("-L", "-k", "--cert", str(client.cert), "--key", str(client.key),
             f"https://127.0.0.1:{redirect.port}{path}")
    plan = {"ref": (None, lambda: get_url(ref_url))}
    if "S1" in rows:
        plan.update({"redirect": (None, via_redirect), "curl ref": (None, lambda: curl(ref_url)),
                     "curl -L": (None, curl_redirect)})
    if "S2" in rows:
        bl.wait_https(proxy.port, client, "/1.0/applications/big/1/amd64", timeout=30)
        plan["proxy"] = (proxy, lambda: via_proxy(proxy))
        if old is not None:
            bl.wait_https(old.proxy.port, client, "/1.0/applications/big/1/amd64", timeout=30)
            plan["old"] = (old.proxy, lambda: via_proxy(old.proxy))
    log("download rows")
    best, cpu = interleaved(plan, opts.rounds)
    rate = {name: size / MiB / t for name, t in best.items()}
    if "S1" in rows:
        row = rows["S1"]
        row.aar, row.ref, row.ref_name = rate["redirect"], rate["ref"], "object GET"
        row.ratio = row.aar / row.ref
        redirect_ms = min(timed(location, 1) for _ in range(20)) * 1000
        row.notes.append(f"the 307 itself: {redirect_ms:.1f} ms (new TLS connection)")
        curl_row = Row("", "  the same with curl: -L via the replica vs the object",
                       "MiB/s", 0.9)
        curl_row.aar, curl_row.ref = rate["curl -L"], rate["curl ref"]
        curl_row.ref_name, curl_row.ratio = "curl of the object", rate["curl -L"] / rate["curl ref"]
        row.sub.append(curl_row)
    if "S2" in rows:
        row = rows["S2"]
        row.aar, row.ref, row.ref_name = rate["proxy"], rate["ref"], "object GET"
        row.ratio = row.aar / row.ref
        row.notes.append(f"replica CPU {cpu['proxy'] / (size / (1 << 30)):.2f} s/GiB")
        if old is not None:
            row.sub.append(old.sub_row("MiB/s", rate["proxy"], rate["old"],
                                       f"replica CPU {old.short} "
                                       f"{cpu['old'] / (size / (1 << 30)):.2f} s/GiB"))


def interleaved(plan, rounds, store_pids=()):
    """Each column of plan {name: (replica or None, fn)} once per round, each
    round starting with another column (what runs first after the uploads
    meets the store's background work); the best time of each, and the CPU
    its replica used in that column's last round (with store_pids: also the
    store's, as cpu[(name, "store")])."""
    best, cpu = {}, {}
    names = list(plan)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            reg, fn = plan[name]
            before = proc_cpu([reg.proc.pid]) if reg else 0
            store = proc_cpu(store_pids)
            took = timed(fn, 1)
            cpu[name] = proc_cpu([reg.proc.pid]) - before if reg else 0
            cpu[(name, "store")] = proc_cpu(store_pids) - store
            best[name] = min(best.get(name, took), took)
    return best, cpu


def listing_row(opts, work, swift, proto, client, row):
    """S4: listing of 1,000 packages, S3 replica vs local storage."""
    log(f"filling {opts.apps} packages")
    blob = fill_bucket(swift, "benchlist", opts.apps)
    lister = Registry(work, "lister", proto, conf_for(swift, "benchlist", False))
    local = Registry(work, "local", proto)
    from registry.storage import PackageStore
    import io
    import hashlib
    with PackageStore(local.data) as store:
        for i in range(opts.apps):
            name = f"app-{i:04d}"
            store.put(name, 1, "amd64", io.BytesIO(blob), len(blob),
                      hashlib.sha256(blob).hexdigest(), bl.manifest(name, 1, ["bench"]))
    for reg in (lister, local):
        reg.trust(client)
        reg.start(client)
    log("listing rows")
    rates, cpu = {}, {}
    # Rounds of ~1 s swing ±15 % with the machine's load: best of 6 each,
    # interleaved, every other round led by the other store, and the
    # server's CPU per request beside it, which the load moves less.
    for r in range(LISTING_ROUNDS):
        for reg in (lister, local) if r % 2 == 0 else (local, lister):
            rate, per = listing_rate(reg, client)
            rates[reg] = max(rates.get(reg, 0), rate)
            cpu.setdefault(reg, []).append(per)
    row.aar, row.ref, row.ref_name = rates[lister], rates[local], "local aar"
    row.ratio = row.aar / row.ref
    s3_us, local_us = (sorted(cpu[reg])[len(cpu[reg]) // 2] * 1e6 for reg in (lister, local))
    row.notes.append(f"best of {LISTING_ROUNDS} interleaved rounds; server CPU us/request "
                     f"(median): S3 {s3_us:.0f}, local {local_us:.0f}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
