"""The registry's HTTPS server: one event-loop thread and a bounded worker pool.

    accept ─► Connection (connection.py), every socket non-blocking in one epoll
                 │ request heads, small answers: on the loop
                 │ TLS handshake steps ──► TLS threads (transport.py) ──► loop
                 ▼
              ApiHandler.handle (handlers.py): authorise, route
                 ├─ status, info, cached listing, 304, error ──► sent at once
                 ├─ wait= listing unchanged ──► held (waiters.py), no thread
                 └─ metadata, package file, upload, delete ──► Pool (loop.py)
                                 worker ─── Reply ──► back on the loop, sent
                    package bytes: the pool reads ahead (bodies.py), the loop writes

* The loop thread owns every socket. A TLS handshake step, one
  do_handshake() on the connection's memory BIOs (tlsio.py), runs in a TLS
  thread (the GIL is released in OpenSSL, so steps run on several CPUs),
  while the loop leaves that connection alone; transport.py says why and how.
* A peer that is silent or slow, in its handshake, its request head, or while
  reading a response, costs a socket and its buffers, never a thread. The
  sweep below closes it when its deadline passes.
* Limits keep the process within its file descriptors: connections in all,
  per client address, and unfinished handshakes. At a limit the oldest
  unfinished handshake (or else the oldest idle connection) makes room,
  so a flood of silent sockets cannot lock a real client out. The limit on
  unfinished handshakes is hard: when none of them has had its grace second
  yet, accepting pauses and newcomers wait in the kernel's backlog.

Everything the server reports (refusals, requests, writes) goes through
`self.events` (registry/events.py): the audit log, the metrics, the service log.
State lives on the server object: the trust view, the package store, the
settings. Nothing is module-global.
"""
import _socket
import collections
import gc
import logging
import os
import resource
import select
import socket
import time

from registry.connection import Connection, HANDSHAKE, READING, WAITING
from registry.events import Events
from registry.livetrust import LiveTrust
from registry.loop import READ, Loop, Pool
from registry.tlsio import BATCH
from version import VERSION

__all__ = ["RegistryServer", "Settings", "listen"]

log = logging.getLogger("aar.server")
access = logging.getLogger("aar.access")

_SWEEP_SECONDS = 1.0
_FD_RESERVE = 64              # descriptors kept for the databases, blobs, logs
_ACCEPT_BATCH = 64
_EXPIRE_BATCH = 32
_STREAM = socket.SOCK_STREAM


class Settings:
    """Tunables of one server; defaults suit a registry serving a cluster."""

    def __init__(self, workers=32, handshake_timeout=10.0, idle_timeout=60.0,
                 request_timeout=60.0, max_package_size=64 << 30, backlog=1024,
                 max_connections=None, max_per_address=None, max_handshakes=512,
                 handshake_grace=1.0, handshake_threads=None, change_poll=1.0,
                 shared_listener=False, nudge=None):
        self.workers = workers
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.max_package_size = max_package_size
        self.backlog = backlog
        self.max_connections = max_connections or _fd_budget()
        # One address may hold a quarter of them: a NAT of many nodes fits,
        # one misbehaving host cannot take every descriptor.
        self.max_per_address = max_per_address or max(1024, self.max_connections // 4)
        # At most max_handshakes unfinished handshakes, ever. At the limit the
        # oldest is closed if it has had handshake_grace seconds (a real
        # client needs a round trip, milliseconds); if none has, accepting
        # pauses and newcomers wait in the kernel's backlog, so a thousand
        # nodes reconnecting at once are delayed, not turned away.
        self.max_handshakes = max_handshakes
        self.handshake_grace = handshake_grace
        # Threads for the CPU-heavy steps of TLS handshakes (transport.py):
        # the loop keeps one CPU, the others run handshakes, as nginx runs a
        # worker per CPU. 0 (on one CPU) keeps them on the loop.
        self.handshake_threads = _cpus() - 1 if handshake_threads is None \
            else handshake_threads
        # How often held listings (waiters.py) look for a change another
        # process made (a replica on the same S3 bucket; sibling workers
        # nudge instead, below, and this poll only catches a lost nudge).
        self.change_poll = change_poll
        # One of several worker processes accepting on one inherited socket
        # (registry/workers.py): each connection wakes one of them, not all.
        self.shared_listener = shared_listener
        # Such a worker's link to its siblings (nudges.py): a change through
        # one wakes the others' held listings at once.
        self.nudge = nudge


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _fd_budget():
    """Connections this process can hold: its descriptor limit, raised to the
    hard limit, less a reserve."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = hard
    return max(16, soft - _FD_RESERVE)


def listen(host, port, backlog, defer):
    """The listening socket, non-blocking; `aar serve --processes N` makes it
    before forking the workers that share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog,
                                dualstack_ipv6=(family == socket.AF_INET6 and host in ("::", "")))
    # Linux gives every accepted socket the listener's TCP_NODELAY (an
    # answer leaves when written): one setsockopt() here, none per connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "TCP_DEFER_ACCEPT"):
        # Linux hands us a connection once its first bytes arrived, so a
        # silent client costs the server nothing at all for `defer` seconds.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(1, int(defer)))
    sock.setblocking(False)
    return sock


class RegistryServer:
    """Serves `handler_class` over mutual TLS on `address` until `shutdown()`."""

    server_version = "aar/" + VERSION

    def __init__(self, address, handler_class, *, trust_store, packages, certfile,
                 keyfile, server_fingerprint, settings=None, events=None, sock=None):
        self.settings = settings or Settings()
        self.packages = packages
        self.trust = LiveTrust(trust_store, certfile, keyfile)
        self.trust_store = trust_store           # join tokens live in its database
        self.server_fingerprint = server_fingerprint
        with open(certfile, encoding="ascii") as f:
            self.server_pem = f.read()           # what a joining node imports
        self.events = events or Events()
        self.events.attach(self)
        self._stopping = False
        # `sock`: a listening socket made by listen() and inherited, then
        # `address` is not used.
        self.socket = sock if sock is not None else listen(
            address[0], address[1], self.settings.backlog, self.settings.handshake_timeout)
        self.server_address = self.socket.getsockname()[:2]
        self._family = int(self.socket.family)    # for accept(), as an int
        self.loop = Loop()
        # What one recv() brings, before it goes to a BIO a record at a time:
        # one buffer for every connection, as only the loop's thread reads.
        self.inbox = memoryview(bytearray(BATCH))
        self.pool = None
        self.tls_pool = None                     # handshake steps, transport.py
        self.in_tls_pool = set()                 # connections with a step there
        self.handler = handler_class(self)
        self.connections = set()
        self.handshaking = collections.OrderedDict()    # oldest first
        self.per_address = {}                    # host -> open connections
        # Alone, drain the backlog in batches; beside sibling workers, take one
        # connection per wake-up, so the next one wakes a sibling that is idle.
        self._accept_events, self._accept_batch = READ, _ACCEPT_BATCH
        if self.settings.shared_listener:
            self._accept_batch = 1
            self._accept_events |= getattr(select, "EPOLLEXCLUSIVE", 0)
        self._accept_timer = None         # set while accepting is paused
        self._out_of_fds = False          # ... because accept() failed

    # -- life cycle ---------------------------------------------------------

    def serve_forever(self):
        """Run the loop in this thread, the workers beside it, until shutdown()."""
        self.pool = Pool(self.loop, self.settings.workers)
        if self.settings.handshake_threads:
            self.tls_pool = Pool(self.loop, self.settings.handshake_threads, name="aar-tls")
        # What exists now (modules, the handler, the stores) lives as long as
        # the process: out of the collector's full passes, which then cost a
        # fraction of a millisecond, not several in the middle of a request.
        gc.collect()
        gc.freeze()
        self.loop.add(self.socket.fileno(), _Acceptor(self), self._accept_events)
        self.loop.call_later(_SWEEP_SECONDS, self._sweep)
        try:
            self.loop.run()
        finally:
            for conn in list(self.connections):
                conn.close()
            self.loop.remove(self.socket.fileno())
            self.pool.shutdown()
            if self.tls_pool is not None:
                self.tls_pool.shutdown()
                for conn in list(self.in_tls_pool):   # their steps are over
                    conn.stepping = False
                    conn._release()

    def shutdown(self):
        """Ask serve_forever to return; safe from a signal handler or another thread."""
        self._stopping = True
        self.loop.stop()

    def stopping(self):
        """True once shutdown() was asked for."""
        return self._stopping

    def server_close(self):
        """Release the socket, the loop and the generation gates: after the
        package and trust stores are closed (the gates map the stores' -shm
        files, and closing those before sqlite does drops its locks: gate.py)."""
        self.socket.close()
        self.loop.close()
        self.trust.close()
        self.handler.generation.close()

    # -- admission ------------------------------------------------------------

    def accept(self, mask=READ):
        """Take new connections (the listening socket is readable)."""
        handshaking, limit = self.handshaking, self.settings.max_handshakes
        for _ in range(self._accept_batch):   # drain the backlog, but let others run
            if len(handshaking) >= limit and not self._handshake_room():
                return
            try:
                # socket.accept() less its two enum conversions (family and
                # type looked up again per call): about 2 us a connection.
                fd, addr = self.socket._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: say so, and stop listening for a moment
                # rather than spin on a socket that stays readable.
                log.error("accept failed: %s", exc)
                self._pause_accept(0.5, full=True)
                return
            # The C socket type, not socket.socket: the Python class's
            # __init__ and close() (two Python frames each, and _real_close)
            # add nothing a connection uses.
            self._admit(_socket.socket(self._family, _STREAM, 0, fd), addr[:2])

    def _handshake_room(self):
        """True if one more handshake may start: below the limit, or the
        oldest unfinished one has had its grace (_admit closes it). Otherwise
        accepting pauses until that grace ends or a handshake ends."""
        settings = self.settings
        if len(self.handshaking) < settings.max_handshakes:
            return True
        age = time.monotonic() - next(iter(self.handshaking)).opened
        if age >= settings.handshake_grace:
            return True
        self._pause_accept(settings.handshake_grace - age)
        return False

    def _pause_accept(self, seconds, full=False):
        if self._accept_timer is None:
            self.loop.remove(self.socket.fileno())
            self._accept_timer = self.loop.call_later(seconds, self._resume_accept)
            self._out_of_fds = full

    def _resume_accept(self):
        if self._accept_timer is not None and not self._stopping:
            self.loop.cancel(self._accept_timer)
            self._accept_timer = None
            self.loop.add(self.socket.fileno(), _Acceptor(self), self._accept_events)

    def _admit(self, sock, addr):
        host = addr[0]
        settings = self.settings
        per_address = self.per_address
        held = per_address.get(host, 0)
        if (len(self.connections) >= settings.max_connections
                and not self._make_room(None)) \
                or (held >= settings.max_per_address and not self._make_room(host)):
            log.warning("refused %s: connection limit reached", _show(addr))
            sock.close()
            return
        if len(self.handshaking) >= settings.max_handshakes:
            oldest = next(iter(self.handshaking))
            log.info("closing %s: too many unfinished TLS handshakes", oldest.peer)
            oldest.close()
        try:
            sock.setblocking(False)       # TCP_NODELAY: the listener's (listen)
        except OSError as exc:
            log.debug("closing %s before its handshake: %s", _show(addr), exc)
            sock.close()
            return
        conn = Connection(self, sock, addr)     # TLS once its ClientHello is here
        self.events.connection_opened()
        self.connections.add(conn)
        self.handshaking[conn] = None
        per_address[host] = per_address.get(host, 0) + 1    # room made may have changed it
        self.loop.add(conn.fd, conn, READ)
        # With TCP_DEFER_ACCEPT the ClientHello is usually here already.
        conn.handshake()

    def _make_room(self, host):
        """Close the oldest unfinished handshake, else the oldest idle
        connection (of `host` if given); False if there is none."""
        for conn in self.handshaking:
            if host is None or conn.addr[0] == host:
                log.info("closing %s: connection limit reached", conn.peer)
                conn.close()
                return True
        idle = [c for c in self.connections if c.state == READING and not c.buf
                and (host is None or c.addr[0] == host)]
        if idle:
            conn = min(idle, key=lambda c: c.deadline)
            log.info("closing %s: idle, and the connection limit is reached", conn.peer)
            conn.close()
            return True
        return False

    def handshake_done(self, conn):
        self.handshaking.pop(conn, None)
        if self._accept_timer is not None and not self._out_of_fds:
            self._resume_accept()         # a place is free: take the next

    def forget(self, conn, state):
        """A connection closed: drop it from every count."""
        self.connections.discard(conn)
        self.events.connection_closed()
        if state == HANDSHAKE:
            self.handshake_done(conn)
        elif state == WAITING:
            # Only a held request (waiters.py) leaves anything behind: a
            # connection is WAITING for as long as the handler holds it.
            self.handler.forget(conn)
        host = conn.addr[0]
        per_address = self.per_address
        left = per_address[host] - 1
        if left > 0:
            per_address[host] = left
        else:
            del per_address[host]

    def _sweep(self):
        self.loop.call_later(_SWEEP_SECONDS, self._sweep)
        now = self.loop.now
        self._expire([c for c in self.connections if c.deadline <= now])

    def _expire(self, due):
        """Time out `due`, a batch per loop turn. Peers opened together time
        out together (500 dripping handshakes: ~50 ms of closing and logging),
        and a real client's handshake must not wait for all of them."""
        for conn in due[:_EXPIRE_BATCH]:
            if conn.deadline <= self.loop.now:     # it may have moved on since
                conn.timed_out()
        if len(due) > _EXPIRE_BATCH:
            self.loop.call_soon(self._expire, due[_EXPIRE_BATCH:])

    # -- logging ------------------------------------------------------------

    def access_log(self, conn, request, code, size):
        if access.isEnabledFor(logging.DEBUG):
            line = request.line if request is not None else "-"
            access.debug('%s %s "%s" %s %s', _show(conn.addr),
                         (conn.fingerprint or "-")[:12], line, code, size)


class _Acceptor:
    """The listening socket's entry in the loop: its on_event is the
    server's accept itself (a call less a wake-up)."""

    __slots__ = ("on_event",)

    def __init__(self, server):
        self.on_event = server.accept


def _show(addr):
    host, port = addr[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
