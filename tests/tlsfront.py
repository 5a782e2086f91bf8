"""A TLS front on 127.0.0.1 for a plain-HTTP server (the tests' Swift): an
object store reached over HTTPS with a certificate from a test CA.

It asks every caller for a client certificate (optional) and records what it
got, so a test can prove that nobody presented one: `offered` holds the DER of
each certificate a caller presented (verified against `client_ca`), `failed`
the error of each handshake that did not complete (a certificate it could not
verify ends up there), `handshakes` counts the completed ones, and
`requests` holds the first request line of each connection.
"""
import select
import socket
import ssl
import threading

__all__ = ["TLSFront"]


class TLSFront:
    def __init__(self, target_port, pair, client_ca):
        self.target = ("127.0.0.1", target_port)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pair.cert, pair.key)
        self.context.verify_mode = ssl.CERT_OPTIONAL
        self.context.load_verify_locations(client_ca)
        self.offered, self.failed, self.handshakes, self.requests = [], [], 0, []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        raw.settimeout(30)
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            with self._lock:
                self.failed.append(str(exc))
            raw.close()
            return
        peer = tls.getpeercert(binary_form=True)
        with self._lock:
            self.handshakes += 1
            if peer:
                self.offered.append(peer)
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            tls.close()
            return
        # One thread moves both directions: an SSL object is not used from
        # two threads at once.
        upstream.settimeout(30)
        first = True
        try:
            while True:
                ready = [tls] if tls.pending() else \
                    select.select([tls, upstream], [], [], 60)[0]
                if not ready:
                    break
                for src in ready:
                    data = src.recv(1 << 16)
                    if not data:
                        return
                    if src is tls and first:
                        first = False
                        with self._lock:
                            self.requests.append(data.split(b"\r\n", 1)[0].decode())
                    (upstream if src is tls else tls).sendall(data)
        except OSError:
            pass
        finally:
            tls.close()
            upstream.close()

    def stop(self):
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
