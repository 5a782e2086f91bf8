"""One ams_sync node in pull mode against an aar instance, for rows 6 and 6b:
its data directory, its configuration and certificate (trusted on aar as a
client), and the timed `sync` runs under agentprobe.py.
"""
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import benchlib as bl


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

