"""Driving the agent as an operator would: `ams-sync config …` on PATH.

The data directory is $AMS_SYNC_DATA_DIR when set, else the `ams` snap's
$SNAP_COMMON (/var/snap/ams/common), the one the operator guide names.
"""
import json
import os
import pathlib
import shutil
import subprocess

__all__ = ["Agent", "AgentError", "DEFAULT_DATA_DIR"]

DEFAULT_DATA_DIR = "/var/snap/ams/common"


class AgentError(Exception):
    """`ams-sync` failed or is missing; the message is its own one-line error."""


class Agent:
    def __init__(self, env=None):
        self.env = dict(os.environ if env is None else env)
        self.data_dir = pathlib.Path(self.env.get("AMS_SYNC_DATA_DIR") or DEFAULT_DATA_DIR)
        self.env["AMS_SYNC_DATA_DIR"] = str(self.data_dir)

    def installed(self):
        return shutil.which("ams-sync", path=self.env.get("PATH")) is not None

    def _run(self, *argv, stdin=None):
        program = shutil.which("ams-sync", path=self.env.get("PATH"))
        if program is None:
            raise AgentError("ams-sync is not installed: attach the ams-sync resource "
                             "(juju attach-resource ams ams-sync=./ams.snap)")
        result = subprocess.run([program, *argv], input=stdin, env=self.env,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
            raise AgentError(f"ams-sync {' '.join(argv[:2])} failed: "
                             + lines[0].removeprefix("Error: "))
        return result.stdout

    def settings(self):
        return json.loads(self._run("config", "show", "--format", "json"))

    def client_certificate(self):
        """The node's registry client certificate (the agent makes it on first use)."""
        path = self.data_dir / "registry" / "client.crt"
        if not path.exists():
            self.settings()
        return path.read_text()

    def trust_registry(self, pem):
        """Import the registry's certificate; returns the fingerprint ams-sync printed."""
        return self._run("config", "trust", "add", "-", stdin=pem).strip().split()[-1]

    def set(self, key, value):
        """`ams-sync config set KEY VALUE`; "" puts back the default."""
        self._run("config", "set", key, value)
