"""`--baseline REV`: an older aar measured in the same run as today's, for the
rows that must not regress (4-6) and the keep-alive request rows (1 and 7).

REV is checked out into a temporary `git worktree add --detach` (the
repository's own checkout is left alone) and its `aar.py serve` runs from
there with a fresh data directory, exactly like today's (aarproc.Aar). The
worktree is removed when the run ends, whatever happened.

The core before the event loop (a worker thread per busy connection) is
27e636a; its command line (`serve --listen --data-dir`, `trust add -p`) is
the same as today's. Rows 1 and 7 get an aar of their own from the same
checkout (`serve`), so the transfers' peak RSS is not theirs.
"""
import shutil
import subprocess

import benchlib as bl
from aarproc import Aar
from report import Row, log

__all__ = ["Baseline"]


class Baseline:
    """REV's source in a temporary worktree, and the aar started from it."""

    def __init__(self, work, rev):
        self.rev = rev
        self.src = work / "baseline-src"
        self.aar = None               # rows 4-6's
        self.short = None
        self._running = []            # every aar started from here

    def checkout(self):
        try:
            self.short = _git("rev-parse", "--short", f"{self.rev}^{{commit}}")
        except RuntimeError as e:
            raise bl.Unavailable(f"--baseline {self.rev}: not a commit here ({e})") from None
        _git("worktree", "add", "--detach", str(self.src), self.short)
        log(f"baseline {self.rev} ({self.short}) checked out in {self.src}")
        return self

    def start(self, work, server, client):
        """The aar of rows 4-6."""
        self.aar = self.serve(work, server, client, "aar-old")
        return self.aar

    def serve(self, work, server, client, label):
        """Another aar of REV, with its own fresh data directory."""
        aar = Aar(work, server, client, label=label, repo=self.src)
        self._running.append(aar)
        aar.start()
        log(f"aar {self.short} ({label}, baseline) up on 127.0.0.1:{aar.port}")
        return aar

    def sub_row(self, unit, new, old, note=None):
        """The sub-row printed under a row: today's figure, the baseline's, new/old."""
        row = Row("", f"vs {self.short} (--baseline)", unit)
        row.aar, row.ref, row.ref_name = new, old, f"old {self.short}"
        row.ratio = new / old if new is not None and old else None
        if note:
            row.notes.append(note)
        return row

    def remove(self):
        for aar in self._running:
            aar.stop()
        self._running = []
        self.aar = None
        if self.src.exists():
            try:
                _git("worktree", "remove", "--force", str(self.src))
            except RuntimeError as e:
                log(f"could not remove the baseline worktree: {e}")
                shutil.rmtree(self.src, ignore_errors=True)
                _git("worktree", "prune")


def _git(*args):
    done = subprocess.run(["git", "-C", str(bl.REPO), *args], capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["git failed"])[-1])
    return done.stdout.strip()
