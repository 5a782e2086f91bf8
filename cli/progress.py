"""A transient status line on a terminal: what a long step is doing right now.

    game.zip: compressing 120.4 MB of 210.6 MB (57%)
    game/3/amd64: verifying 88.0 MB of 210.6 MB (41%)

Each update replaces the line ("\\r" and erase-line), at most every `every`
seconds unless the phase changed; clear() erases it, so a step that ended
leaves nothing behind and the command's own result line follows. Callers
create one only when the stream is a terminal: logs and pipes get none.
Thread-safe: a pull's importers report from their own threads.
"""
import threading
import time

from cli.formats import human_size

__all__ = ["StatusLine"]

_ERASE = "\r\033[K"


class StatusLine:
    def __init__(self, stream, every=0.2, clock=time.monotonic):
        self.stream, self.every, self.clock = stream, every, clock
        self._lock = threading.Lock()
        self._last = None           # (what, phase) last shown
        self._when = 0.0
        self._shown = False

    def show(self, what, phase, done=None, total=None):
        """Say that `what` is in `phase`, with a byte count when there is one."""
        now = self.clock()
        with self._lock:
            if (what, phase) == self._last and now - self._when < self.every:
                return
            text = f"{what}: {phase}"
            if total:
                text += (f" {human_size(done or 0)} of {human_size(total)}"
                         f" ({100 * (done or 0) // total}%)")
            elif done:
                text += f" {human_size(done)}"
            self.stream.write(_ERASE + text)
            self.stream.flush()
            self._last, self._when, self._shown = (what, phase), now, True

    def reporter(self, what):
        """progress(phase, done=None, total=None) for the steps of one item."""
        return lambda phase, done=None, total=None: self.show(what, phase, done, total)

    def clear(self):
        with self._lock:
            if self._shown:
                self.stream.write(_ERASE)
                self.stream.flush()
            self._last, self._shown = None, False
