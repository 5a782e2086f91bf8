"""Many loopback connections at once, for the rows that hold hundreds of
them open (corerows.py): non-blocking TCP connects and TLS handshakes under
one deadline, so a server that stalls some of them cannot stall the driver;
and one timed request on a fresh connection.

Standard library only; everything goes to 127.0.0.1.
"""
import resource
import selectors
import socket
import ssl
import time

__all__ = ["raise_nofile", "context", "connect_many", "handshake_many", "timed_request"]


def raise_nofile():
    """Lift the soft limit on open files to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def context(cert=None, key=None):
    """A client context that does not verify the server (the bench pins
    nothing), with the client certificate when given, and no resumption."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def connect_many(port, count, deadline):
    """Open up to count TCP connections; (connected sockets, failures).

    All connects start at once; those not connected by deadline (a
    time.monotonic() moment) are closed and counted as failures.
    """
    sel = selectors.DefaultSelector()
    pending, done, failed = 0, [], 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(("127.0.0.1", port))
        if err == 0:
            done.append(sock)
        elif err in (115, 11):     # EINPROGRESS, EAGAIN
            sel.register(sock, selectors.EVENT_WRITE)
            pending += 1
        else:
            sock.close()
            failed += 1
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
            sock = key.fileobj
            sel.unregister(sock)
            pending -= 1
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                sock.close()
                failed += 1
            else:
                done.append(sock)
    for key in list(sel.get_map().values()):
        key.fileobj.close()
        failed += 1
    sel.close()
    return done, failed


def handshake_many(ctx, socks, deadline, first=None):
    """TLS handshakes on connected non-blocking sockets, all at once;
    (SSLSockets whose handshake completed, failures). Still non-blocking.

    first: bytes (a request) each connection sends as soon as its handshake
    is over, as a client does; else it stays silent.
    """
    sel = selectors.DefaultSelector()
    done, failed = [], 0

    def step(ssock):
        """One handshake step: the event to wait for, or None when over."""
        nonlocal failed
        try:
            ssock.do_handshake()
        except ssl.SSLWantReadError:
            return selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            return selectors.EVENT_WRITE
        except (OSError, ssl.SSLError):
            ssock.close()
            failed += 1
            return None
        if first:
            try:
                ssock.settimeout(max(0.1, deadline - time.monotonic()))
                ssock.sendall(first)
                ssock.setblocking(False)
            except (OSError, ssl.SSLError):
                ssock.close()
                failed += 1
                return None
        done.append(ssock)
        return None

    for sock in socks:
        ssock = ctx.wrap_socket(sock, do_handshake_on_connect=False)
        event = step(ssock)
        if event:
            sel.register(ssock, event)
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
            sel.unregister(key.fileobj)
            event = step(key.fileobj)
            if event:
                sel.register(key.fileobj, event)
    late = [key.fileobj for key in sel.get_map().values()]
    sel.close()
    for ssock in late:
        ssock.close()
    return done, failed + len(late)


def _content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def timed_request(ctx, port, path, timeout):
    """A fresh TLS connection, one GET, the whole answer read: (status,
    seconds). status is None when no whole answer came within timeout."""
    started = time.monotonic()
    end = started + timeout
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(raw) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                             f"Connection: close\r\n\r\n".encode())
                data = b""
                while b"\r\n\r\n" not in data:
                    sock.settimeout(max(0.001, end - time.monotonic()))
                    chunk = sock.recv(65536)
                    if not chunk:
                        return None, time.monotonic() - started
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                need = _content_length(head) - len(body)
                while need > 0:
                    sock.settimeout(max(0.001, end - time.monotonic()))
                    chunk = sock.recv(65536)
                    if not chunk:
                        return None, time.monotonic() - started
                    need -= len(chunk)
                return int(head[9:12]), time.monotonic() - started
    except (OSError, ssl.SSLError, ValueError):
        return None, time.monotonic() - started
