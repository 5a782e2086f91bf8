"""The rows against the fresh aar instance: large transfers (rows 4 and 5),
the agent's pull (row 6) and the server's peak RSS after them (row 4b).

Each row function takes the Bench (run.py) and the Row to fill in; it raises
benchlib.Unavailable when a server it needs is missing. With `--baseline REV`
(b.old, baseline.py) each also measures REV's aar in the same way and adds a
sub-row: today's figure, REV's, and the ratio new / old.
"""
import shutil
import time

import benchlib as bl
import transfers
from aarproc import Aar
from agentnode import Agent
from report import log


def agent_pull(b, row):
    """Row 6: the agent pulls packages; curl fetches the same URLs."""
    aar = b.aar_c
    n, size = b.p["pull_count"], b.p["pull_size"]
    pkgdir = b.work / "pull-packages"
    pkgdir.mkdir(exist_ok=True)
    servers = [aar] + ([b.old.aar] if b.old else [])
    https = [bl.Http(srv.port, b.client, timeout=300) for srv in servers]
    names = []
    t = time.monotonic()
    for i in range(n):
        name = f"bench-pull-{i:02d}"
        path = pkgdir / f"{name}.zip"
        sha, m = bl.big_package(path, name, size, tags=["bench"])
        for srv, http in zip(servers, https):
            with open(path, "rb") as f:
                srv.put(http, name, 0, b.arch, f, sha, m)
        path.unlink()
        names.append(name)
    for http in https:
        http.close()
    log(f"published {n} packages of {size / 1e6:.0f} MB in {time.monotonic() - t:.1f}s")
    agent = Agent(b.work / "agent-pull", aar)
    agent.setup()
    # reference: curl fetches the same URLs with the agent's certificate
    dest = b.work / "curl-pull"
    dest.mkdir(exist_ok=True)
    client = agent.client_cert()
    urls = [(aar.url(Aar.package_path(nm, 0, b.arch)), dest / f"{nm}.zip") for nm in names]
    ref = transfers.fetch_many(urls, client, timeout=b.p["transfer_timeout"])
    shutil.rmtree(dest, ignore_errors=True)
    total = ref["bytes"]
    log(f"  curl fetched {total / 1e6:.0f} MB in {ref['seconds']:.2f}s")
    res = agent.sync(timeout=b.p["transfer_timeout"])
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
    if b.old:
        old = Agent(b.work / "agent-pull-old", b.old.aar)
        old.setup()
        res_old = old.sync(timeout=b.p["transfer_timeout"])
        log(f"  agent synced from {b.old.short} in {res_old['wall']:.2f}s")
        row.sub.append(b.old.sub_row("MiB/s", row.aar, total / res_old["wall"] / bl.MiB,
                                     f"the same agent against {b.old.short}: "
                                     f"{res_old['wall']:.2f} s wall"))


def upload(b, row):
    """Row 5: aar PUT against docker-registry's POST + monolithic PUT."""
    aar, reg = b.aar_c, b.need("docker-registry")
    big = b.big_file()
    m = bl.manifest("bench-big", 0, ["bench"])
    a = transfers.upload_put(aar.url(Aar.package_path("bench-big", 0, b.arch)), b.client,
                             big, {"X-Aar-Sha256": b.big_sha, "X-Aar-Manifest": bl.dumps(m)},
                             timeout=b.p["transfer_timeout"], server_pids=aar.pids())
    if a["code"] not in (200, 201) or a["bytes"] != b.p["big"]:
        raise RuntimeError(f"aar PUT answered {a['code']} after {a['bytes']} bytes")
    log(f"  aar PUT {a['bytes'] / a['seconds'] / bl.MiB:.0f} MiB/s")
    d = transfers.registry_upload(reg.url(""), b.client, "bench/big", big, b.big_sha,
                                  timeout=b.p["transfer_timeout"],
                                  server_pids=[reg.proc.pid])
    if d["code"] != 201 or d["bytes"] != b.p["big"]:
        raise RuntimeError(f"docker-registry PUT answered {d['code']} after {d['bytes']} bytes")
    log(f"  docker-registry upload {d['bytes'] / d['seconds'] / bl.MiB:.0f} MiB/s")
    row.aar = a["bytes"] / a["seconds"] / bl.MiB
    row.ref, row.ref_name = d["bytes"] / d["seconds"] / bl.MiB, "docker-registry"
    row.ratio = row.aar / row.ref
    row.notes.append(f"{b.size_text()}: aar {a['seconds']:.2f} s ({a['server_cpu']:.2f} s "
                     f"server CPU), docker-registry {d['seconds']:.2f} s "
                     f"({d['server_cpu']:.2f} s server CPU; POST + monolithic PUT)")
    b.uploaded = True
    if b.old:
        old = b.old.aar
        o = transfers.upload_put(old.url(Aar.package_path("bench-big", 0, b.arch)), b.client,
                                 big, {"X-Aar-Sha256": b.big_sha,
                                       "X-Aar-Manifest": bl.dumps(m)},
                                 timeout=b.p["transfer_timeout"], server_pids=old.pids())
        if o["code"] not in (200, 201) or o["bytes"] != b.p["big"]:
            raise RuntimeError(f"{b.old.short} PUT answered {o['code']} after {o['bytes']} bytes")
        log(f"  aar {b.old.short} PUT {o['bytes'] / o['seconds'] / bl.MiB:.0f} MiB/s")
        row.sub.append(b.old.sub_row("MiB/s", row.aar, o["bytes"] / o["seconds"] / bl.MiB,
                                     f"{b.old.short}: {o['seconds']:.2f} s "
                                     f"({o['server_cpu']:.2f} s server CPU)"))


def download(b, row):
    """Row 4: one large package download against nginx's sendfile."""
    aar, nginx = b.aar_c, b.need("nginx")
    big = b.big_file()
    servers = [aar] + ([b.old.aar] if b.old else [])
    for srv in servers if not b.uploaded else []:
        with open(big, "rb") as f:
            http = bl.Http(srv.port, b.client, timeout=b.p["transfer_timeout"])
            srv.put(http, "bench-big", 0, b.arch, f, b.big_sha,
                    bl.manifest("bench-big", 0, ["bench"]))
            http.close()
    nginx.put_file("big.bin", src=big)
    targets = [("aar", aar.url(Aar.package_path("bench-big", 0, b.arch)), aar.pids),
               ("nginx", nginx.url("/big.bin"), nginx.pids)]
    if b.old:
        targets.append((b.old.short, b.old.aar.url(Aar.package_path("bench-big", 0, b.arch)),
                        b.old.aar.pids))
    best = {}
    for rnd in range(b.p["rounds"]):
        for name, url, pids in (targets if rnd % 2 == 0 else targets[::-1]):
            r = transfers.download(url, b.client, timeout=b.p["transfer_timeout"],
                                   expect_size=b.p["big"], server_pids=pids())
            log(f"  {name} GET {r['mib_s']:.0f} MiB/s ({r['server_cpu']:.2f}s server CPU)")
            if name not in best or r["mib_s"] > best[name]["mib_s"]:
                best[name] = r
    row.aar, row.ref, row.ref_name = best["aar"]["mib_s"], best["nginx"]["mib_s"], "nginx"
    row.ratio = row.aar / row.ref
    row.notes.append(f"{b.size_text()}, one connection, best of {b.p['rounds']}; "
                     f"server CPU per GiB: aar {best['aar']['server_cpu'] * bl.GiB / b.p['big']:.2f} s, "
                     f"nginx {best['nginx']['server_cpu'] * bl.GiB / b.p['big']:.2f} s")
    if b.old:
        old = best[b.old.short]
        row.sub.append(b.old.sub_row("MiB/s", row.aar, old["mib_s"],
                                     f"server CPU per GiB: {b.old.short} "
                                     f"{old['server_cpu'] * bl.GiB / b.p['big']:.2f} s"))


def peak_rss(b, row):
    """Row 4b: the aar server's VmHWM after rows 4-6."""
    kib = b.aar_c.peak_rss_kib() if b.aar_c else None
    if kib is None:
        raise bl.Unavailable("aar server not running")
    row.aar = kib / 1024
    row.target_text = "< 64"
    row.ratio = None
    ng = b.nginx.peak_rss_kib() if b.nginx else None
    row.ref_text = f"nginx worker {ng / 1024:.1f}" if ng else "-"
    ok = row.aar < 64
    row.target_text = "< 64  " + ("ok" if ok else "MISS")
    row.notes.append("VmHWM of the aar process that served rows 4-6 "
                     "(/proc/PID/status), threads included")
    old = b.old.aar.peak_rss_kib() if b.old else None
    if old:
        sub = b.old.sub_row("MiB", row.aar, old / 1024)
        sub.ratio = old / 1024 / row.aar          # lower is better: old / new
        sub.notes.append("ratio = old / new here (less memory is better)")
        row.sub.append(sub)
