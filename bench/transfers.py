"""Bulk transfers (rows 4-6): `curl`, one process per transfer, over HTTP/1.1
with the TLS 1.3 suite fixed (drivers.CURL_TLS13), timing taken from curl's
own time_total so process start-up is not counted. Each call also reports the
CPU the server spent, from /proc (drivers.proc_cpu).
"""
import subprocess
import time

from drivers import curl_base, proc_cpu


def _curl_transfer(args, timeout):
    fmt = "%{http_code} %{size_download} %{size_upload} %{time_total}"
    res = subprocess.run(args + ["-w", fmt], capture_output=True, text=True, timeout=timeout)
    parts = res.stdout.strip().split()[-4:]
    if res.returncode != 0 or len(parts) != 4:
        raise RuntimeError(f"curl exited {res.returncode}: {res.stderr.strip()[:200]}")
    code, down, up, total = parts
    return int(code), int(down), int(up), float(total)


def download(url, client, *, timeout, expect_size=None, output="/dev/null", server_pids=()):
    """GET url to output; returns dict(mib_s, seconds, bytes, server_cpu)."""
    srv0 = proc_cpu(server_pids)
    code, down, _, secs = _curl_transfer(curl_base(client) + ["-o", output, url], timeout)
    if code != 200:
        raise RuntimeError(f"HTTP {code}")
    if expect_size is not None and down != expect_size:
        raise RuntimeError(f"got {down} bytes, expected {expect_size}")
    return {"mib_s": down / secs / 2 ** 20, "seconds": secs, "bytes": down,
            "server_cpu": proc_cpu(server_pids) - srv0}


def fetch_many(urls_and_outputs, client, *, timeout):
    """One curl, one keep-alive connection, several downloads to files.
    Returns dict(seconds (wall, process included), bytes, codes)."""
    args = curl_base(client) + ["-w", "%{http_code} %{size_download}\n"]
    for url, out in urls_and_outputs:
        args += ["-o", str(out), url]
    t0 = time.monotonic()
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    secs = time.monotonic() - t0
    lines = [ln.split() for ln in res.stdout.splitlines() if ln.strip()]
    codes = [ln[0] for ln in lines]
    if res.returncode != 0 or codes.count("200") != len(urls_and_outputs):
        raise RuntimeError(f"curl exited {res.returncode}, codes {sorted(set(codes))}: "
                           f"{res.stderr.strip()[:200]}")
    return {"seconds": secs, "bytes": sum(int(ln[1]) for ln in lines)}


def upload_put(url, client, path, headers, *, timeout, server_pids=()):
    """PUT a file with Content-Length (curl -T) and extra headers. 'Expect:' is
    sent empty so no server pays curl's 100-continue wait."""
    args = curl_base(client) + ["-T", str(path), "-H", "Expect:", "-o", "/dev/null"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    srv0 = proc_cpu(server_pids)
    code, _, up, secs = _curl_transfer(args + [url], timeout)
    return {"code": code, "bytes": up, "seconds": secs, "server_cpu": proc_cpu(server_pids) - srv0}


def registry_upload(base_url, client, name, path, sha256, *, timeout, server_pids=()):
    """docker-registry monolithic blob upload: POST /v2/<name>/blobs/uploads/,
    then PUT <Location>&digest=sha256:<hex> with the whole body. Times both."""
    srv0 = proc_cpu(server_pids)
    res = subprocess.run(curl_base(client) + [
        "-X", "POST", "-D", "-", "-o", "/dev/null", "-H", "Content-Length: 0",
        "-w", "\n%{time_total}", f"{base_url}/v2/{name}/blobs/uploads/"],
        capture_output=True, text=True, timeout=60)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"POST failed: {res.stderr.strip()[:200]}")
    t_post = float(lines[-1])
    status = lines[0].split()[1] if lines[0].startswith("HTTP/") else "?"
    loc = next((ln.split(":", 1)[1].strip() for ln in lines
                if ln.lower().startswith("location:")), None)
    if status != "202" or not loc:
        raise RuntimeError(f"POST answered {status}, Location {loc!r}")
    if loc.startswith("/"):
        loc = base_url + loc
    loc += ("&" if "?" in loc else "?") + f"digest=sha256:{sha256}"
    args = curl_base(client) + ["-T", str(path), "-H", "Expect:",
                                 "-H", "Content-Type: application/octet-stream",
                                 "-o", "/dev/null"]
    code, _, up, t_put = _curl_transfer(args + [loc], timeout)
    return {"code": code, "bytes": up, "seconds": t_post + t_put,
            "server_cpu": proc_cpu(server_pids) - srv0}
