"""`aar serve --processes N`: N worker processes on one listening socket, as
nginx runs its workers, and the parent that supervises them.

    aar serve (the parent: checks, recovery, the listening socket, then fork)
      │ never serves a request; one thread (it forks again to replace a worker)
      │ SIGTERM/SIGINT ─► SIGTERM to every worker, wait for them, exit
      │ a worker that dies ─► logged, replaced after a back-off
      │ GET /metrics, /healthz (`metrics:`) ─► asks every worker on its control
      │                                        socket, sums (metrics/combined.py)
      ├─ worker 1: RegistryServer on the inherited socket (one event loop)
      └─ worker 2: …   each connection wakes one of them (EPOLLEXCLUSIVE)

Before the first fork the parent also makes one eventfd per slot (Nudges,
registry/nudges.py), which every worker inherits: a publish through one
worker wakes the listings held by the others at once.

A worker's side of its control socket (a socketpair made before the fork)
is read by a thread of the worker (Control): a request is one byte of kind
("m" metrics snapshot, "h" health) and a 4-byte sequence number; the answer
is that number, a 4-byte length and the payload. End of file means the parent
is gone (even by SIGKILL): the worker then stops, so none is orphaned.

Everything that must happen once (configuration, recovery, the claim on
the data directory) happens in the parent before the first fork, and it
forks with no thread running and no database open: aarcli/serve.py.
"""
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time

from metrics.combined import combine, retire, to_metrics
from registry.nudges import Nudges

__all__ = ["Supervisor", "Control", "cpus"]

log = logging.getLogger("aar.workers")

_FRAME = struct.Struct("!II")             # sequence number, payload length
_ASK = struct.Struct("!cI")               # kind, sequence number
_ASK_SECONDS = 2.0                        # a worker's answer to a scrape
_STOP_SECONDS = 30.0                      # graceful stop, then SIGKILL
_BACKOFF_FIRST, _BACKOFF_MOST = 0.5, 30.0
_STEADY_SECONDS = 10.0                    # a worker that lived this long: no back-off


def cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Worker:
    __slots__ = ("slot", "pid", "sock", "started", "snapshot")

    def __init__(self, slot, pid, sock):
        self.slot, self.pid, self.sock = slot, pid, sock
        self.started = time.monotonic()
        self.snapshot = None              # its last answer to a scrape


class Supervisor:
    """Forks `count` workers, each running `run_worker(slot, control, nudge)`
    (its exit code), keeps them running and stops them; `run()` is the exit
    code. `nudge` is the worker's registry.nudges.Nudge."""

    def __init__(self, count, run_worker, metrics_address=None):
        self.count = count
        self._run_worker = run_worker
        self._workers = {}                # pid -> _Worker
        self._due = {}                    # slot -> monotonic time to start it again
        self._backoff = {}                # slot -> seconds before the next start
        self._stop_signal = None
        self._failed = False              # a worker ended badly while stopping
        self._retired = None              # counts of workers that have exited
        self._seq = 0
        self._wake_r, self._wake_w = os.pipe()
        self._metrics = None
        if metrics_address is not None:   # bound now: a taken port is an error
            from metrics.listener import InlineMetricsServer
            self._metrics = InlineMetricsServer(metrics_address, self, self._health)
            # Readable may still mean nothing to accept (a reset): never block.
            self._metrics.socket.setblocking(False)
        self._nudges = None               # made in run(): kept by the slots

    @property
    def metrics_address(self):
        return None if self._metrics is None else self._metrics.server_address[:2]

    # -- the parent's loop -----------------------------------------------------

    def run(self):
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)   # wakes the selector
        log.info("%d worker processes", self.count)
        self._nudges = Nudges(self.count)
        for slot in range(1, self.count + 1):
            self._spawn(slot)
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        if self._metrics is not None:
            selector.register(self._metrics.fileno(), selectors.EVENT_READ)
        try:
            while self._stop_signal is None:
                timeout = None
                if self._due:
                    timeout = max(0.0, min(self._due.values()) - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.fd == self._wake_r:
                        _drain(self._wake_r)
                    elif self._stop_signal is None:
                        self._metrics.handle_request()
                self._reap()
                self._start_due()
            log.info("signal %d: stopping %d worker processes", self._stop_signal,
                     len(self._workers))
            self._stop_all()
        finally:
            selector.close()
            signal.set_wakeup_fd(-1)
            if self._metrics is not None:
                self._metrics.server_close()
            self._nudges.close()
        return 1 if self._failed else 0

    def _on_stop(self, signum, frame):
        self._stop_signal = signum

    def _spawn(self, slot):
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:                                      # the worker
            code = 1
            try:
                parent_end.close()
                self._forget_parent()
                code = self._run_worker(slot, child_end,
                                        self._nudges.for_slot(slot))
            except BaseException:                         # it must never return here
                log.exception("worker process %d failed", slot)
            finally:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        child_end.close()
        self._workers[pid] = _Worker(slot, pid, parent_end)
        log.info("worker process %d started (pid %d)", slot, pid)

    def _forget_parent(self):
        """In a new worker: none of the parent's descriptors or handlers."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._metrics is not None:
            self._metrics.socket.close()
        for worker in self._workers.values():  # a sibling's end would hide our EOF
            worker.sock.close()

    def _reap(self):
        while self._workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            worker.sock.close()
            if worker.snapshot is not None:
                self._retired = retire(self._retired, worker.snapshot)
            code = os.waitstatus_to_exitcode(status)
            if self._stop_signal is not None:
                if code != 0:
                    self._failed = True
                    log.error("worker process %d (pid %d) %s", worker.slot, pid,
                              _ending(code))
                continue
            lived = time.monotonic() - worker.started
            delay = self._backoff.get(worker.slot, 0.0)
            delay = min(max(delay * 2, _BACKOFF_FIRST), _BACKOFF_MOST) \
                if lived < _STEADY_SECONDS else 0.0
            self._backoff[worker.slot] = delay
            self._due[worker.slot] = time.monotonic() + delay
            log.error("worker process %d (pid %d) %s after %.1f s; starting another "
                      "in %.1f s", worker.slot, pid, _ending(code), lived, delay)

    def _start_due(self):
        now = time.monotonic()
        for slot, when in list(self._due.items()):
            if when <= now and self._stop_signal is None:
                del self._due[slot]
                self._spawn(slot)

    def _stop_all(self):
        for worker in self._workers.values():
            _signal(worker.pid, signal.SIGTERM)
        end = time.monotonic() + _STOP_SECONDS
        while self._workers and time.monotonic() < end:
            self._reap()
            if self._workers:
                time.sleep(0.05)
        for worker in list(self._workers.values()):
            log.error("worker process %d (pid %d) did not stop in %d s: killing it",
                      worker.slot, worker.pid, _STOP_SECONDS)
            _signal(worker.pid, signal.SIGKILL)
            os.waitpid(worker.pid, 0)
            self._failed = True
        self._workers.clear()

    # -- metrics and health, asked of every worker -----------------------------

    def render(self) -> bytes:
        """GET /metrics: the sum over the workers (metrics/combined.py)."""
        snapshots = []
        for worker in list(self._workers.values()):
            answer = self._ask(worker, b"m")
            if answer is not None:
                worker.snapshot = json.loads(answer)
            if worker.snapshot is not None:   # one that did not answer: its last
                snapshots.append(worker.snapshot)
        return to_metrics(combine(snapshots, self._retired)).render()

    def _health(self):
        if self._stop_signal is not None:
            return "shutting down"
        if len(self._workers) < self.count:
            return f"{self.count - len(self._workers)} of {self.count} worker " \
                   "processes not running (restarting)"
        for worker in list(self._workers.values()):
            answer = self._ask(worker, b"h")
            if answer is None:
                return f"worker process {worker.slot} (pid {worker.pid}) did not answer"
            if answer:
                return f"worker process {worker.slot}: {answer.decode()}"
        return ""

    def _ask(self, worker, kind):
        """The worker's answer (bytes), or None if it gave none in time."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        sock = worker.sock
        try:
            sock.settimeout(_ASK_SECONDS)
            sock.sendall(_ASK.pack(kind, self._seq))
            while True:               # skip a late answer to an earlier question
                seq, size = _FRAME.unpack(_recv(sock, _FRAME.size))
                payload = _recv(sock, size)
                if seq == self._seq:
                    return payload
        except (OSError, EOFError) as exc:
            log.warning("worker process %d (pid %d) did not answer: %s",
                        worker.slot, worker.pid, exc or "timed out")
            return None


class Control:
    """A worker's side of its control socket, in a thread of its own: answers
    the parent's questions; stops the server when the parent is gone."""

    def __init__(self, sock, server, health):
        self._sock = sock
        self._server = server
        self._health = health
        threading.Thread(target=self._serve, name="aar-control", daemon=True).start()

    def _serve(self):
        try:
            while True:
                kind, seq = _ASK.unpack(_recv(self._sock, _ASK.size))
                if kind == b"m":
                    payload = json.dumps(self._server.events.metrics.snapshot()).encode()
                else:
                    payload = self._health().encode()
                self._sock.sendall(_FRAME.pack(seq, len(payload)) + payload)
        except (OSError, EOFError):
            if not self._server.stopping():
                log.error("the parent process is gone: stopping")
                self._server.shutdown()


def _recv(sock, size):
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return bytes(data)


def _drain(fd):
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _ending(code):
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by signal {-code} ({name})"
    return f"exited with status {code}"
