"""Installing a program from its charm resource and running it as a service.

The resource is either the snap (a squashfs file) or the zipapp `aar.pyz`.
Juju stores a resource under the file name charmcraft.yaml declares, whatever
the operator attached, so the kind is told by the file's first bytes, not its
name:

    snap     snap install --dangerous FILE; the program reached as `aar` /
             `ams-sync` on PATH (an alias for ams.ams-sync); the snap's own
             service runs it
    zipapp   copied to /usr/local/lib/aar/aar.pyz, linked as
             /usr/local/bin/<program>, run by /etc/systemd/system/<program>.service

This is the one part the tests cannot run for real (no snapd, no systemd in a
test), so its outside edges come from the environment: $AAR_CHARM_PREFIX puts
/usr/local and /etc under a test's directory, $AAR_CHARM_SYSTEMCTL and
$AAR_CHARM_SNAP name the commands. The same file is in both charms (a test
keeps the copies equal).
"""
import dataclasses
import os
import pathlib
import shlex
import shutil
import subprocess
import tempfile
import zipfile

__all__ = ["Service", "Workload", "WorkloadError", "SNAP", "ZIPAPP"]

SNAP, ZIPAPP = "snap", "zipapp"
_SQUASHFS_MAGIC = b"hsqs"


class WorkloadError(Exception):
    """Installing or running the service failed; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Service:
    program: str        # the command on PATH: aar, ams-sync
    snap: str           # the snap's name: aar, ams
    snap_app: str       # its app that is the program: aar, ams-sync
    snap_service: str   # its service: daemon, sync
    data_env: str       # AAR_DATA_DIR, AMS_SYNC_DATA_DIR
    description: str

    @property
    def data_dir(self):
        """Where the snap keeps its data ($SNAP_COMMON): also the zipapp's, so
        the operator guide's paths hold for both."""
        return f"/var/snap/{self.snap}/common"


def resource_kind(path):
    with open(path, "rb") as file:
        head = file.read(4)
    if head == _SQUASHFS_MAGIC:
        return SNAP
    if zipfile.is_zipfile(path):
        return ZIPAPP
    raise WorkloadError(f"the resource {os.path.basename(path)} is neither a snap nor "
                        "the zipapp aar.pyz: attach one of them with juju attach-resource")


class Workload:
    def __init__(self, service, env=None):
        env = os.environ if env is None else env
        self.service = service
        prefix = pathlib.Path(env.get("AAR_CHARM_PREFIX") or "/")
        self.lib_dir = prefix / "usr/local/lib" / service.snap
        self.bin_dir = prefix / "usr/local/bin"
        self.unit_path = prefix / "etc/systemd/system" / f"{service.program}.service"
        self.systemctl = env.get("AAR_CHARM_SYSTEMCTL") or "systemctl"
        self.snap = env.get("AAR_CHARM_SNAP") or "snap"
        self.data_dir = env.get(service.data_env) or service.data_dir

    def _run(self, *argv):
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise WorkloadError(f"{shlex.join(argv)} failed: {error}") from None
        if result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
            raise WorkloadError(f"{shlex.join(argv)} failed: {''.join(last) or result.returncode}")

    def install(self, resource):
        """Install the resource; returns its kind (SNAP or ZIPAPP)."""
        kind = resource_kind(resource)
        if kind == SNAP:
            self._run(self.snap, "install", "--dangerous", str(resource))
            if self.service.snap_app != self.service.snap:
                self._run(self.snap, "alias", f"{self.service.snap}.{self.service.snap_app}",
                          self.service.program)
            return kind
        self.lib_dir.mkdir(parents=True, exist_ok=True)
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        target = self.lib_dir / "aar.pyz"
        # Copied beside the old file and renamed over it: a failed copy leaves
        # the running version in place.
        fd, temp = tempfile.mkstemp(dir=self.lib_dir, prefix=".aar.pyz.")
        os.close(fd)
        try:
            shutil.copyfile(resource, temp)
            os.chmod(temp, 0o755)
            os.replace(temp, target)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        link = self.bin_dir / self.service.program
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        return kind

    def unit_text(self, args):
        command = shlex.join([str(self.bin_dir / self.service.program), *args])
        return (
            "[Unit]\n"
            f"Description={self.service.description} (installed by the {self.service.program} charm)\n"
            "After=network-online.target\nWants=network-online.target\n\n"
            "[Service]\n"
            f"Environment={self.service.data_env}={self.data_dir}\n"
            f"Environment=SHIV_ROOT=/var/lib/{self.service.snap}-shiv\n"
            f"ExecStart={command}\n"
            "Restart=always\nRestartSec=5\n\n"
            "[Install]\nWantedBy=multi-user.target\n")

    def start(self, kind, args=()):
        """Start the service, or restart it so it takes new arguments or code."""
        if kind == SNAP:
            name = f"{self.service.snap}.{self.service.snap_service}"
            self._run(self.snap, "start", "--enable", name)
            self._run(self.snap, "restart", name)
            return
        self.unit_path.parent.mkdir(parents=True, exist_ok=True)
        self.unit_path.write_text(self.unit_text(args))
        self._run(self.systemctl, "daemon-reload")
        self._run(self.systemctl, "enable", self.unit_path.name)
        self._run(self.systemctl, "restart", self.unit_path.name)

    def stop(self, kind):
        """Stop the service and keep it stopped across reboots."""
        if kind == SNAP:
            self._run(self.snap, "stop", "--disable",
                      f"{self.service.snap}.{self.service.snap_service}")
        elif kind == ZIPAPP:
            self._run(self.systemctl, "disable", "--now", self.unit_path.name)
