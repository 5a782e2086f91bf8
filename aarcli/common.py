"""What every `aar` command shares: its error type, its streams, its data directory."""
import os

from registry.paths import DataDir

__all__ = ["CommandError", "Context", "NOT_SERVED", "served_data_dir"]

NOT_SERVED = ("no registry has run on data directory {path} (it has no certs/server.crt "
              "and no trust.db): name the one `aar serve` uses with --data-dir (sudo "
              "drops $AAR_DATA_DIR), or, to set up trust before the first start, "
              "run `aar trust add --init …`")


class CommandError(Exception):
    """A command failed in a way the operator can act on; the text says how."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


class Context:
    """What a command handler gets besides its arguments."""

    def __init__(self, stdin, out, err):
        self.stdin, self.out, self.err = stdin, out, err


def served_data_dir(path, init=False) -> DataDir:
    """The DataDir at path (made absolute, as logs and messages show it).

    Unless init, refuse a directory where no registry has ever run: that is
    what `sudo aar trust add` finds when sudo dropped $AAR_DATA_DIR, and a
    trust store written there is one the server never reads.
    """
    data = DataDir(os.path.abspath(path))
    if not (init or data.server_cert.exists() or data.trust_db.exists()):
        raise CommandError(NOT_SERVED.format(path=data.root))
    return data
