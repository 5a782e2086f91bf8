"""Driving the registry as an operator would: `aar trust …` on PATH.

The data directory is $AAR_DATA_DIR when set, else the snap's $SNAP_COMMON
(/var/snap/aar/common), the one the operator guide names; the programs get it
through the same variable, so the charm and `aar` always agree on it.
"""
import json
import os
import pathlib
import shutil
import subprocess

__all__ = ["Registry", "RegistryError", "DEFAULT_DATA_DIR"]

DEFAULT_DATA_DIR = "/var/snap/aar/common"


class RegistryError(Exception):
    """`aar` failed or is missing; the message is its own one-line error."""


class Registry:
    def __init__(self, env=None):
        self.env = dict(os.environ if env is None else env)
        self.data_dir = pathlib.Path(self.env.get("AAR_DATA_DIR") or DEFAULT_DATA_DIR)
        self.env["AAR_DATA_DIR"] = str(self.data_dir)

    @property
    def server_certificate_path(self):
        return self.data_dir / "certs" / "server.crt"

    def installed(self):
        return shutil.which("aar", path=self.env.get("PATH")) is not None

    def server_certificate(self):
        """The PEM `aar serve` made on its first start; None until then."""
        try:
            return self.server_certificate_path.read_text()
        except FileNotFoundError:
            return None

    def _aar(self, *argv, stdin=None):
        program = shutil.which("aar", path=self.env.get("PATH"))
        if program is None:
            raise RegistryError("aar is not installed: attach the aar resource "
                                "(juju attach-resource aar aar=./aar.snap)")
        result = subprocess.run([program, *argv], input=stdin, env=self.env,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
            message = lines[0].removeprefix("Error: ")
            raise RegistryError(f"aar {argv[0]} {argv[1]} failed: {message}")
        return result.stdout

    def _never_used(self):
        # What `aar trust` itself checks before it touches a data directory.
        return not (self.server_certificate_path.exists() or (self.data_dir / "trust.db").exists())

    def trusted(self):
        """{fingerprint: role} of every certificate the registry trusts now."""
        if self._never_used():
            return {}
        listed = json.loads(self._aar("trust", "list", "--format", "json"))
        return {record["fingerprint"]: record["role"] for record in listed}

    def revoked(self):
        if self._never_used():
            return set()
        listed = json.loads(self._aar("trust", "list", "--revoked", "--format", "json"))
        return {record["fingerprint"] for record in listed}

    def trust(self, pem, role):
        flags = ["--publisher"] if role == "publisher" else []
        # --init: the charm may trust nodes before the service's first start;
        # the data directory is the one the service is given.
        self._aar("trust", "add", "--quiet", "--init", *flags, stdin=pem)

    def remove(self, fingerprint):
        self._aar("trust", "remove", "--yes", fingerprint)

    def configure(self, wanted):
        """`aar config set KEY=VALUE` for each {key: value} of wanted (listen,
        metrics, processes, storage.s3.*) that differs from conf/main.yaml ("" removes
        the key), in one command, so `aar` checks the file as a whole; the
        rest of the file, which the operator may have written, is `aar`'s to
        keep. True when changed."""
        changes = [f"{key}={value}" for key, value in wanted.items()
                   if self._aar("config", "get", key).strip() != value]
        if changes:
            # On standard input: a secret key in the arguments would be in
            # every local user's process list.
            self._aar("config", "set", "--stdin", stdin="".join(f"{c}\n" for c in changes))
        return bool(changes)

    @property
    def s3_ca_path(self):
        # A name that says whose it is: the charm removes only this file.
        return self.data_dir / "conf" / "charm-s3-ca.pem"

    def write_s3_ca(self, pem):
        """Put the object store's CA (PEM) where storage.s3.ca-file will name
        it and return that path; "" removes the charm's file and returns ""."""
        path = self.s3_ca_path
        if not pem.strip():
            path.unlink(missing_ok=True)
            return ""
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise RegistryError("s3-ca is not a PEM certificate (-----BEGIN CERTIFICATE-----)")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = path.with_name(path.name + ".tmp")
        temp.write_text(pem.strip() + "\n")
        os.replace(temp, path)
        return str(path)
