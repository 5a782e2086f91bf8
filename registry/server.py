"""The registry's HTTPS server: one poller thread and a bounded pool of workers.

    accept ─► poller (selectors) ──readable──► worker queue ─► worker: TLS handshake,
                ▲                                              requests while they come
                └───────────── park (quiet for `linger`) ◄─────┘

* The poller owns every connection that is waiting for bytes: fresh ones that have
  not sent their ClientHello yet and idle keep-alive ones. It closes those that
  wait longer than `handshake_timeout` or `idle_timeout`. Waiting costs no thread,
  so fifty silent TCP connections delay nobody.
* A worker takes a connection only when it has something to read. The TLS
  handshake runs there, under a timeout, never in the accepting thread.
* The number of workers is fixed; a burst queues instead of spawning threads.

State lives on the server object: the trust view, the package store, the
settings. Nothing is module-global.
"""
import collections
import logging
import queue
import selectors
import socket
import ssl
import threading
import time

from registry.events import Events
from registry.livetrust import LiveTrust
from registry.protocol import Connection
from trust.certs import fingerprint as der_fingerprint

__all__ = ["RegistryServer", "Settings"]

log = logging.getLogger("aar.server")
access = logging.getLogger("aar.access")


class Settings:
    """Tunables of one server; defaults suit a registry serving a cluster."""

    def __init__(self, workers=32, handshake_timeout=10.0, idle_timeout=60.0,
                 request_timeout=60.0, linger=1.0, max_package_size=64 << 30,
                 backlog=1024):
        self.workers = workers
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.linger = linger
        self.max_package_size = max_package_size
        self.backlog = backlog


def _listen(host, port, backlog, defer):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog,
                                dualstack_ipv6=(family == socket.AF_INET6 and host in ("::", "")))
    if hasattr(socket, "TCP_DEFER_ACCEPT"):
        # Linux hands us a connection once its first bytes arrived, so a
        # silent client costs the server nothing at all for `defer` seconds.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(1, int(defer)))
    sock.setblocking(False)
    return sock


def _has_data(sock):
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True          # reset or error: let the worker find out and log it


class RegistryServer:
    """Serves `handler_class` over mutual TLS on `address` until `shutdown()`."""

    def __init__(self, address, handler_class, *, trust_store, packages, certfile,
                 keyfile, server_fingerprint, settings=None, events=None):
        self.settings = settings or Settings()
        self.handler_class = handler_class
        self.packages = packages
        self.trust = LiveTrust(trust_store, certfile, keyfile)
        self.trust_store = trust_store           # join tokens live in its database
        self.server_fingerprint = server_fingerprint
        with open(certfile, encoding="ascii") as f:
            self.server_pem = f.read()           # what a joining node imports
        self.events = events or Events()
        self.events.attach(self)
        self.socket = _listen(address[0], address[1], self.settings.backlog,
                              self.settings.handshake_timeout)
        self.server_address = self.socket.getsockname()[:2]
        self._work = queue.SimpleQueue()
        self._parked = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._workers = []
        handler_class.attach(self)

    # -- life cycle ---------------------------------------------------------

    def serve_forever(self):
        """Run the poller in this thread and the workers beside it until shutdown."""
        for i in range(self.settings.workers):
            t = threading.Thread(target=self._worker, name=f"aar-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        try:
            self._poll()
        finally:
            for _ in self._workers:
                self._work.put(None)
            for t in self._workers:
                t.join(timeout=5)
            self._stopped.set()

    def stopping(self):
        """True once shutdown() was asked for."""
        return self._stopping.is_set()

    def shutdown(self):
        """Ask serve_forever to return; safe from a signal handler or another thread."""
        self._stopping.set()
        self._wake()

    def server_close(self):
        self.socket.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or we are closing

    # -- the poller ---------------------------------------------------------

    def _poll(self):
        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        waiting = {}                      # fd -> Connection
        next_sweep = time.monotonic() + 1.0
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select(timeout=1.0):
                    if key.data == "accept":
                        self._accept(sel, waiting)
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        conn = key.data
                        sel.unregister(key.fileobj)
                        del waiting[key.fd]
                        self._work.put(conn)
                while self._parked:
                    conn = self._parked.popleft()
                    conn.deadline = time.monotonic() + self.settings.idle_timeout
                    self._register(sel, waiting, conn)
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + 1.0
                    for fd, conn in list(waiting.items()):
                        if conn.deadline <= now:
                            sel.unregister(conn.sock)
                            del waiting[fd]
                            log.debug("closing %s: %s", _peer(conn),
                                      "idle" if conn.tls else "no TLS handshake in time")
                            self._close(conn)
        finally:
            for conn in waiting.values():
                self._close(conn)
            while self._parked:
                self._close(self._parked.popleft())
            sel.close()

    def _register(self, sel, waiting, conn):
        try:
            key = sel.register(conn.sock, selectors.EVENT_READ, conn)
        except (ValueError, OSError):     # closed under us
            self._close(conn)
            return
        waiting[key.fd] = conn

    def _accept(self, sel, waiting):
        deadline = time.monotonic() + self.settings.handshake_timeout
        for _ in range(64):               # drain the backlog, but let others run
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:        # EMFILE and friends: say so, keep serving
                log.error("accept failed: %s", exc)
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.events.connection_opened()
            conn = Connection(sock, addr[:2])
            conn.deadline = deadline
            if _has_data(sock):
                # The ClientHello is already here (it usually is, with
                # TCP_DEFER_ACCEPT): straight to a worker, no trip through
                # the selector.
                self._work.put(conn)
            else:
                self._register(sel, waiting, conn)

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def others_waiting(self):
        """True when connections with a request wait for a worker."""
        return not self._work.empty()

    def _park(self, conn):
        self._parked.append(conn)
        self._wake()

    # -- workers --------------------------------------------------------------

    def _worker(self):
        while True:
            conn = self._work.get()
            if conn is None:
                return
            try:
                if self._serve(conn):
                    if self._stopping.is_set():
                        self._close(conn)
                    elif conn.has_buffered():
                        self._work.put(conn)  # its next request is already here
                    else:
                        self._park(conn)
                else:
                    self._close(conn)
            except Exception:             # never let one connection kill a worker
                log.exception("unexpected error serving %s", _peer(conn))
                self._close(conn)

    def _serve(self, conn):
        if not conn.tls and not self._handshake(conn):
            return False
        conn.sock.settimeout(self.settings.request_timeout)
        handler = self.handler_class(conn, self)
        handler.linger = self.settings.linger
        handler.request_timeout = self.settings.request_timeout
        try:
            return handler.serve()
        except (socket.timeout, TimeoutError):
            log.info("closing %s: request timed out", _peer(conn))
        except ssl.SSLError as exc:
            log.info("closing %s: TLS error: %s", _peer(conn), exc.reason or exc)
        except OSError as exc:
            log.debug("closing %s: %s", _peer(conn), exc)
        return False

    def _handshake(self, conn):
        raw = conn.sock
        raw.setblocking(True)
        raw.settimeout(self.settings.handshake_timeout)
        started = time.monotonic()
        try:
            tls_sock = self.trust.context.wrap_socket(
                raw, server_side=True, do_handshake_on_connect=False)
            conn.sock = tls_sock
            tls_sock.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            self.events.refused(_addr(conn), "untrusted",
                                "at TLS handshake: " + _verify_reason(exc))
            _lingering_close(conn.sock)
            return False
        except ssl.SSLError as exc:
            self.events.refused(_addr(conn), "tls", "at TLS handshake: " + _tls_reason(exc))
            _lingering_close(conn.sock)
            return False
        except (socket.timeout, TimeoutError):
            log.info("closing %s: TLS handshake timed out", _addr(conn))
            return False
        except OSError as exc:
            log.debug("closing %s during TLS handshake: %s", _addr(conn), exc)
            return False
        self.events.handshake(time.monotonic() - started)
        der = tls_sock.getpeercert(binary_form=True)
        # No certificate (CERT_OPTIONAL): fingerprint None; the handlers admit
        # such a caller to the join endpoint only.
        conn.fingerprint = der_fingerprint(der) if der else None
        conn.tls = True
        return True

    def _close(self, conn):
        try:
            if conn.sock.fileno() != -1:      # count each connection's close once
                self.events.connection_closed()
            conn.sock.close()
        except OSError:
            pass

    # -- logging ------------------------------------------------------------

    def access_log(self, handler, code, size):
        if access.isEnabledFor(logging.DEBUG):
            access.debug('%s %s "%s" %s %s', _addr(handler.conn),
                         (handler.conn.fingerprint or "-")[:12],
                         handler.requestline, code, size)


_TLS_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate presented",
    "CERTIFICATE_VERIFY_FAILED": "client certificate not trusted",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this server's certificate",
    "TLSV1_ALERT_CERTIFICATE_UNKNOWN": "the client does not trust this server's certificate",
    "UNSUPPORTED_PROTOCOL": "TLS version below 1.2",
    "NO_SHARED_CIPHER": "no shared cipher",
    "HTTP_REQUEST": "plain HTTP on the HTTPS port",
    "WRONG_VERSION_NUMBER": "not a TLS client",
}


def _verify_reason(exc):
    message = exc.verify_message or exc.reason or "verification failed"
    if "expired" in message:
        return f"client certificate expired ({message})"
    # A self-signed certificate outside the store (never added, removed or
    # revoked) fails as "self-signed certificate" or "unable to get local issuer".
    return f"client certificate not trusted ({message})"


def _tls_reason(exc):
    return _TLS_REASONS.get(exc.reason, exc.reason or str(exc))


def _addr(conn):
    host, port = conn.addr[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer(conn):
    if conn.fingerprint:
        return f"{_addr(conn)} ({conn.fingerprint[:12]})"
    return _addr(conn)


def _lingering_close(sock):
    """Close after a refused handshake so that the client reads why.

    Under TLS 1.3 the client finishes its side of the handshake and sends its
    request before our alert arrives. Closing with that request unread makes
    the kernel answer with a reset, which can overtake the alert: the client
    then reports a dropped connection instead of a refused certificate. So
    send FIN after the alert and read what is in flight, briefly, first.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(_LINGER_SECONDS)
        received = 0
        while received < _LINGER_BYTES:
            data = sock.recv(65536)
            if not data:
                break
            received += len(data)
    except OSError:
        pass


_LINGER_SECONDS = 0.5
_LINGER_BYTES = 256 * 1024


