"""Non-blocking TLS on one socket, for the event loop: the layer beneath
connection.py.

It waits for the first TLS record (the ClientHello) to be all here before
it makes the connection a TLS one, does the handshake (with the reasons a
refused one is logged under, and the alert that tells the client), and
closes so that the client reads our last bytes. Reads and writes of TLS
records are tlsio.py's, whose class this one extends. What the bytes mean is
Connection's business: it subclasses Transport and supplies `_established()`
(the handshake is done), `_readable()` (requests may be read), `_sent()` (the
queue is empty) and `close()`.

Handshake steps run in threads of their own (`server.tls_pool`), not on the
loop. This departs from "every handshake on the loop thread" (issue 8) for
a measured reason: a handshake is about 600 us of OpenSSL work (key share
and signature when the ClientHello is here, the client's certificate when
its flight is), most of a new connection's cost, and one loop thread runs
them one at a time where nginx runs one per worker process. CPython releases
the GIL inside SSL_do_handshake, so steps of different connections run at
once on several CPUs. What keeps this safe:

* a step is one do_handshake() on memory BIOs (tlsio.py): the loop has put
  what the peer sent in the incoming BIO and sends what the step sealed, so
  a step never touches the socket nor waits for the peer, and a slow or
  silent peer holds no thread, only its socket;
* while its step is in the pool the loop leaves the connection alone: no
  event is watched, and close() (a timeout, room for newcomers, shutdown)
  does everything at once but close the socket, which waits for the step to
  come back (`_release`), so its descriptor cannot be reused meanwhile;
* everything else (the refusal logs, the counts of unfinished handshakes,
  the requests and their authorisation) stays on the loop as before.
With `Settings(handshake_threads=0)` (one CPU) the steps run on the loop.

A hand-off is not free: the thread is woken, the GIL changes hands at
least twice, and the loop is woken for the result (about 30 us of server
CPU a context switch, measured: 5.4 of them a connection with every step
handed off, against 0.7 on the loop). So a step goes to a thread only where
it may let others go on: the first one (the ClientHello's: accepted in a
batch, others may be right behind it), and a later one only while more of
the loop's round, or callbacks, wait (`Loop.busy()`). On an idle loop a
later step runs there at once: the same OpenSSL work, no hand-off.
"""
import errno
import logging
import socket
import ssl
from functools import partial

from registry.loop import READ, WRITE
from registry.plainhttp import answer_plain_http
from registry.tlsio import BATCH, TlsIO

__all__ = ["Transport", "HANDSHAKE", "READING", "DISCARD", "BUSY",
           "UPLOAD", "WAITING", "WRITING", "STREAMING", "LINGER", "CLOSED"]

log = logging.getLogger("aar.server")

HANDSHAKE, READING, DISCARD, BUSY, UPLOAD, WAITING, WRITING, STREAMING, LINGER, \
    CLOSED = ("handshake", "reading", "discard", "busy", "upload", "waiting", "writing",
              "streaming", "linger", "closed")

# What one recv() may bring during a handshake: a client's whole flight
# (its certificate chain) however large, within reason.
_HANDSHAKE_RECV = 64 * 1024
# A TLS record: a 5-byte header, then at most 16 KiB (+ 2 KiB of expansion).
_RECORD_MAX = 5 + 16384 + 2048
_LINGER_SECONDS = 0.5
_CORK = getattr(socket, "TCP_CORK", None)     # Linux's
_LINGER_BYTES = 256 * 1024
# nginx's lingering_time; a drain reads in large bites, dropped at once.
_DRAIN_SECONDS = 30.0
_DRAIN_READ = 256 * 1024


def _closed(*args):
    raise OSError(errno.EBADF, "connection closed")


class Transport(TlsIO):
    """The socket half of a Connection (see the module's docstring)."""

    stepping = False                      # a handshake step runs in the pool
    first_bytes = None                    # the first bytes read, unless a TLS record
    hello = None                          # the bytes of an unfinished ClientHello
    # OpenSSL's read and write (tlsio.py), once the ClientHello is here.
    _read = _write = staticmethod(_closed)

    def _watch(self, events):
        if events != self.events:
            self.events = events
            self.loop.modify(self.fd, events)
            # Reading again (after a pause, a job, an answer): records left
            # in the incoming BIO are announced by no event.
            if events & READ and self.tls is not None and self.buffered():
                self.loop.call_soon(self._read_buffered)

    def _read_buffered(self):
        if self.events & READ and self.state != CLOSED and self.buffered():
            self.on_event(READ)

    def handshake(self):
        tls = self.tls
        first = tls is None
        if first:
            got = self._hello()
            if got is None:
                return
            tls = self.tls
            self.inbio.write(got)
        else:
            if self.wire:                 # the rest of our flight goes first
                try:
                    if not self._send_wire():
                        return self._watch(WRITE)
                except OSError as exc:
                    log.debug("closing %s during TLS handshake: %s", self.peer, exc)
                    return self.close()
                self._watch(READ)
            # What the peer sent goes to OpenSSL's incoming BIO; the step
            # itself touches only memory.
            try:
                n = self.sock.recv_into(self.inbox, _HANDSHAKE_RECV)
            except (BlockingIOError, InterruptedError):
                return                    # nothing new
            except OSError as exc:
                log.debug("closing %s during TLS handshake: %s", self.peer, exc)
                return self.close()
            if n:
                self.inbio.write(self.inbox[:n])
            else:
                self.inbio.write_eof()    # the step says how it ended
        pool = self.server.tls_pool
        # To a thread: the first step, and a later one while others wait for
        # the loop (the module's docstring says why).
        if pool is None or not (first or self.loop.busy()):
            try:
                want = _step(tls)
            except Exception as exc:
                return self._handshake_failed(exc)
            return self._stepped(want)
        # A step in the pool: nothing on the loop touches this connection
        # until it is back (close() leaves the socket open till then, see
        # _release), and no event is wanted meanwhile.
        self.stepping = True
        self.server.in_tls_pool.add(self)
        self._watch(0)
        pool.submit(partial(_step, tls), self._back_from_pool)

    def _back_from_pool(self, want, error):
        self.stepping = False
        self.server.in_tls_pool.discard(self)
        if self.state == CLOSED:          # timed out or made room meanwhile
            return self._release()
        if error is not None:
            return self._handshake_failed(error)
        self._stepped(want)

    def _stepped(self, want):
        if self.outbio.pending:           # our flight, the peer's to read
            try:
                sent = self._send_sealed()
            except OSError as exc:
                log.debug("closing %s during TLS handshake: %s", self.peer, exc)
                return self.close()
            if want and not sent:
                return self._watch(WRITE)
        if want:
            if self.events != READ:
                self._watch(READ)
            return
        self._established()
        # A request may have come in the same segment as the handshake's
        # end: it is in the BIO, and the socket, just read, need not be
        # asked again (it is watched, level-triggered, from here on).
        if self.state == READING and self.buffered():
            self.bio_only = True
            self._readable()
            self.bio_only = False

    def _handshake_failed(self, exc):
        if isinstance(exc, ssl.SSLError):
            self._send_alert()            # the client reads why, not a reset
        if isinstance(exc, ssl.SSLCertVerificationError):
            self.server.events.refused(self.peer, "untrusted",
                                       "at TLS handshake: " + _verify_reason(exc))
            return self.linger()
        if isinstance(exc, ssl.SSLError):
            self.server.events.refused(self.peer, "tls",
                                       "at TLS handshake: " + _tls_reason(exc))
            if exc.reason == "HTTP_REQUEST":
                # say why, in words curl shows
                answer_plain_http(self.sock, self.first_bytes or b"")
            return self.linger()
        if isinstance(exc, OSError):
            log.debug("closing %s during TLS handshake: %s", self.peer, exc)
            return self.close()
        self.close()
        raise exc

    def _release(self):
        """Close the socket, unless a handshake step still runs in the pool:
        then _back_from_pool closes it, so that a connection ends at one
        point, after its TLS object is no longer in use."""
        if not self.stepping:
            try:
                self.sock.close()
            except OSError:
                pass
            # Nothing may read or write through OpenSSL's object after this.
            self._read = self._write = _closed
            self.tls = None
            self.wire = None

    def _hello(self):
        """What the peer sent, once its first record is all here (the socket
        is then a TLS one, and OpenSSL's object made); else None.

        Until then its bytes are kept here (`hello`, at most a record): a
        peer that drips its ClientHello a byte at a time costs no TLS object
        and no OpenSSL call per byte, and a flood of them is accepted and
        closed cheaply. Bytes that are no TLS handshake record go to OpenSSL
        at once, which says what they are (plain HTTP, an old protocol).
        Read, not peeked at and read again: with TCP_DEFER_ACCEPT the whole
        ClientHello is usually here at the first look, and one recv() less
        a connection is worth having."""
        inbox = self.server.inbox         # the loop's buffer (server.py)
        try:
            n = self.sock.recv_into(inbox, _HANDSHAKE_RECV)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            log.debug("closing %s before its TLS handshake: %s", self.peer, exc)
            return self.close()
        if not n:
            log.debug("closing %s: closed before its TLS handshake", self.peer)
            return self.close()
        hello = self.hello
        got = inbox[:n] if hello is None else hello + inbox[:n]
        if got[0] == 0x16:                # a handshake record: all of it here?
            size = len(got)
            need = 5 + (got[3] << 8 | got[4]) if size >= 5 else 5
            if size < min(need, _RECORD_MAX):
                self.hello = bytes(got)
                return None
        else:                             # kept for the answer to plain HTTP
            self.first_bytes = bytes(got)
        if hello is not None:
            self.hello = None
        # OpenSSL's object on two memory BIOs (tlsio.py), as ssl.SSLObject
        # makes it within: the wrapper class would cost three Python calls
        # more on every read and write.
        self.inbio, self.outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = self.server.trust.context._wrap_bio(self.inbio, self.outbio, True, None)
        self.inbox = inbox
        self._read, self._write = self.tls.read, self.tls.write
        return got

    def _send(self, size):
        """Write the answer just queued, `size` bytes. An answer of up to
        BATCH bytes leaves in one send() (tlsio.py), one segment and one
        wake-up of the client; a longer one (a listing of a thousand
        applications, ~0.5 MB) is corked while its batches go, so they too
        leave in full segments. Uncorked again at once, whether all went or
        the socket is full, so nothing waits for the cork's timer."""
        self.state = WRITING
        self.deadline = self.loop.now + self.server.settings.request_timeout
        if size <= BATCH or _CORK is None:
            return self._flush()
        sock = self.sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
        except OSError:
            pass                          # closing anyway: the write says so
        self._flush()
        if self.state != CLOSED:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)
            except OSError:
                pass

    def linger(self, drain=0):
        """Close so that the client reads what we sent before anything else.

        Closing with unread bytes makes the kernel answer with a reset, which
        can overtake our last bytes (a TLS 1.3 client sends its request before
        our alert arrives). So send FIN and read what is in flight, briefly.
        `drain` more bytes are read and dropped besides (the rest of a body
        refused or failed mid-way, which most clients send in full before
        they read the answer), as long as they keep coming, for at most
        _DRAIN_SECONDS.
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return self.close()
        self.state = LINGER
        self.buf = b""
        self.linger_left = _LINGER_BYTES + drain
        now = self.loop.now
        self.linger_until = now + (_DRAIN_SECONDS if drain else _LINGER_SECONDS)
        self.deadline = now + _LINGER_SECONDS
        self._watch(READ)

    def _linger_read(self):
        try:
            data = self.sock.recv(_DRAIN_READ)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except OSError:
            data = b""
        self.linger_left -= len(data)
        if not data or self.linger_left < 0:
            return self.close()
        # Bytes that keep coming keep a drain going, within its bound.
        self.deadline = min(self.loop.now + _LINGER_SECONDS, self.linger_until)

    @property
    def address(self):
        host, port = self.addr[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def peer(self):
        host, port = self.addr[:2]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{where} ({self.fingerprint[:12]})" if self.fingerprint else where


def _step(tls):
    """One step of a server handshake: READ while it wants more of the
    peer, 0 once done. Runs in the pool or on the loop: it reads and writes
    only its memory BIOs, so it never waits for the peer, and CPython
    releases the GIL inside OpenSSL's SSL_do_handshake, so steps of two
    connections run at once."""
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:         # (a memory BIO never wants to write)
        return READ
    return 0


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
