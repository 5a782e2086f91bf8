"""Wake sibling worker processes when the package store changed through one.

`aar serve --processes N`: a listing held with `wait=` (waiters.py) is
answered when the store changes. A change through the worker holding it
wakes it at once; a change through a sibling must reach it too, at once
and without every worker polling the store's generation many times a
second (CPU while idle, for nothing).

So the parent makes one eventfd per worker slot before the first fork
(Nudges), and every worker inherits all of them. A worker watches its own
slot's descriptor in its event loop; after a change it made, it adds 1 to
each sibling's. The descriptors belong to the slots, not to the processes:
a worker started again in a slot gets the same one, and a nudge written
while the slot was empty is read by its next worker (a spurious wake-up
costs one generation check).

A nudge says only "look": the worker compares the store's generation as
its poll does, so it is never wrong, only early. The poll stays
(Settings.change_poll, a second, only while listings are held) for a
change whose nudge never came: a worker that died between its commit and
its nudge.
"""
import os

__all__ = ["Nudges", "Nudge"]

_ONE = (1).to_bytes(8, "little")


def _pair():
    """(read fd, write fd): one eventfd, or a pipe where there is none."""
    if hasattr(os, "eventfd"):
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return fd, fd
    return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # pragma: no cover - no eventfd


class Nudges:
    """The parent's descriptors, one pair per slot (slots count from 1)."""

    def __init__(self, count):
        self._pairs = []
        try:
            for _ in range(count):
                self._pairs.append(_pair())
        except OSError:
            self.close()
            raise

    def for_slot(self, slot):
        """In the worker of `slot`: its end, and the way to nudge the others."""
        own = self._pairs[slot - 1][0]
        others = [w for i, (_, w) in enumerate(self._pairs) if i != slot - 1]
        return Nudge(own, others)

    def close(self):
        for r, w in self._pairs:
            os.close(r)
            if w != r:
                os.close(w)
        self._pairs = []


class Nudge:
    """One worker's side: `fileno()` to watch, `take()` once it is readable,
    `others()` after a change this worker made."""

    def __init__(self, own, others):
        self._own = own
        self._others = others

    def fileno(self):
        return self._own

    def take(self):
        """Empty this worker's descriptor (it stays readable until then)."""
        try:
            os.read(self._own, 4096)
        except (BlockingIOError, InterruptedError):
            pass

    def others(self):
        for fd in self._others:
            try:
                os.write(fd, _ONE)
            except BlockingIOError:
                pass                      # a pipe that is full: a wake-up is pending
