"""One event-loop thread, its timers, and a bounded pool of worker threads.

The loop owns every socket. It waits in epoll (level-triggered) and calls the
object registered for a file descriptor with the events that are ready. Work
that may block (disk, database writes, an upload's body) goes to `Pool`; its
result comes back through `call_soon_threadsafe`, which wakes the loop with an
eventfd (a pipe where there is none).

Nothing here knows about HTTP or TLS: see connection.py and server.py.
"""
import collections
import heapq
import logging
import os
import queue
import select
import threading
import time

__all__ = ["Loop", "Pool", "READ", "WRITE", "ERRORS"]

log = logging.getLogger("aar.server")

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
ERRORS = select.EPOLLERR | select.EPOLLHUP


class Loop:
    """epoll, a timer heap and a thread-safe queue of callbacks."""

    def __init__(self):
        self._epoll = select.epoll()
        self._handlers = {}                  # fd -> object with on_event(events)
        self._timers = []                    # heap of [when, seq, callback, args]
        self._seq = 0
        self._soon = collections.deque()     # callbacks posted from other threads
        self._stopping = False
        self._polling = False                # in (or about to enter) epoll_wait
        self.now = time.monotonic()
        if hasattr(os, "eventfd"):
            self._wake_r = self._wake_w = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - Python 3.10 or a libc without eventfd
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, READ)

    # -- registration --------------------------------------------------------

    def add(self, fd, handler, events):
        self._handlers[fd] = handler
        self._epoll.register(fd, events)

    def forget(self, fd):
        """remove(), for a descriptor about to be closed: closing it takes
        it out of epoll, so the unregister call is saved."""
        self._handlers.pop(fd, None)

    def modify(self, fd, events):
        self._epoll.modify(fd, events)

    def remove(self, fd):
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass                         # already closed: epoll forgot it

    # -- timers and callbacks ----------------------------------------------------

    def call_later(self, delay, callback, *args):
        """Run callback(*args) on the loop after `delay` seconds; returns a
        handle for `cancel`."""
        self._seq += 1
        timer = [self.now + delay, self._seq, callback, args]
        heapq.heappush(self._timers, timer)
        return timer

    @staticmethod
    def cancel(timer):
        timer[2] = None                      # dropped when it reaches the top

    def call_soon(self, callback, *args):
        """From the loop thread: run callback(*args) after this round's events."""
        self._soon.append((callback, args))

    def call_soon_threadsafe(self, callback, *args):
        """From any thread: run callback(*args) on the loop soon."""
        self._soon.append((callback, args))
        # A loop that is busy sees the callback before it next sleeps: run()
        # sets _polling before it looks at _soon, so one of the two always
        # sees the other. (The write costs a system call and the GIL twice.)
        if not self._polling:
            return
        try:
            os.write(self._wake_w, b"\x01\0\0\0\0\0\0\0")
        except BlockingIOError:
            pass                             # a wake-up is pending already
        except OSError:
            pass                             # closing

    left = 0                                 # events of this round not yet handled

    def busy(self):
        """True while more of this round's events, or callbacks, wait for
        the loop: work that would make them wait longer had better go to a
        thread (transport.py's handshake steps)."""
        return self.left > 0 or bool(self._soon)

    def stop(self):
        """Make run() return; safe from any thread or a signal handler."""
        self._stopping = True
        self.call_soon_threadsafe(lambda: None)

    # -- the loop ----------------------------------------------------------------

    def run(self):
        handlers = self._handlers
        poll = self._epoll.poll
        timers = self._timers
        soon = self._soon
        wake = self._wake_r
        monotonic = time.monotonic
        while not self._stopping:
            self._polling = True
            if soon:
                timeout = 0
            elif timers:
                timeout = timers[0][0] - monotonic()
                if timeout < 0:
                    timeout = 0
            else:
                timeout = -1
            try:
                events = poll(timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                events = ()
            self._polling = False
            now = self.now = monotonic()
            left = len(events)
            for fd, mask in events:
                left -= 1
                self.left = left
                if fd == wake:
                    self._drain_wake()
                    continue
                handler = handlers.get(fd)
                if handler is not None:
                    try:
                        handler.on_event(mask)
                    except Exception:
                        log.exception("unexpected error in the event loop")
                        _close_quietly(handler)
            self.left = 0
            # Only what was queued before this round: a callback that queues
            # another (a connection's next turn of pipelined requests, the
            # next batch of timeouts) runs after the next poll, so the others'
            # events get their turn in between.
            if soon:
                for _ in range(len(soon)):
                    callback, args = soon.popleft()
                    try:
                        callback(*args)
                    except Exception:
                        log.exception("unexpected error in a loop callback")
            while timers and timers[0][0] <= now:
                _, _, callback, args = heapq.heappop(timers)
                if callback is not None:
                    try:
                        callback(*args)
                    except Exception:
                        log.exception("unexpected error in a timer")

    def _drain_wake(self):
        try:
            os.read(self._wake_r, 4096)
        except OSError:
            pass

    def handlers(self):
        return list(self._handlers.values())

    def close(self):
        """Release epoll and the wake-up descriptor; a second call does nothing."""
        if self._epoll.closed:
            return
        self._epoll.close()
        os.close(self._wake_r)
        if self._wake_w != self._wake_r:
            os.close(self._wake_w)


def _close_quietly(handler):
    close = getattr(handler, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # pragma: no cover - last resort
            log.exception("error closing after an error")


class Pool:
    """A fixed number of threads running blocking jobs for the loop.

    `submit(job, done)` runs job() in a worker and then done(result, error) on
    the loop: exactly one of them is None, unless job returned None.
    """

    def __init__(self, loop, size, name="aar-worker"):
        self._loop = loop
        self._jobs = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}",
                                          daemon=True) for i in range(size)]
        for t in self._threads:
            t.start()

    def submit(self, job, done):
        self._jobs.put((job, done))

    def _work(self):
        post = self._loop.call_soon_threadsafe
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, done = item
            try:
                result = job()
            except BaseException as exc:  # handed to the loop, which decides
                post(done, None, exc)
            else:
                post(done, result, None)

    def shutdown(self, timeout=5):
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout=timeout)
