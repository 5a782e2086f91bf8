"""A TCP forwarder on 127.0.0.1 that can be cut and restored: an object store
that goes away mid-transfer (and comes back on the same port), or hangs, for
the tests."""
import socket
import threading

__all__ = ["Forwarder"]


class Forwarder:
    def __init__(self, target_port, port=0):
        self.target = ("127.0.0.1", target_port)
        self.port = port
        self._lock = threading.Lock()
        self._socks = set()
        self._listener = None
        self.start()

    def start(self):
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        self.port = lst.getsockname()[1]
        with self._lock:
            self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def _accept(self, lst):
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if lst is not self._listener:     # stopped meanwhile: never forward
                    client.close()
                    upstream.close()
                    return
                self._socks.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        """Refuse new connections and reset every open one."""
        # close() alone does not wake a thread blocked in accept(): the kernel
        # keeps the socket listening for it. shutdown() does (EINVAL).
        with self._lock:
            lst, self._listener = self._listener, None
            socks, self._socks = self._socks, set()
        if lst is None:
            return                          # stopped already
        try:
            lst.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        lst.close()
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                # A pump thread blocked in recv() keeps the socket alive past
                # close(): the peer would see a store that stalls until its
                # timeout, not one that is gone. shutdown() wakes the thread.
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def hang(self):
        """Become an object store that hangs: cut every connection, then take
        new ones on the same port and never answer (stop() ends it)."""
        self.stop()
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        with self._lock:
            self._listener = lst

        def swallow():
            while True:
                try:
                    client, _ = lst.accept()
                except OSError:
                    return
                with self._lock:
                    self._socks.add(client)     # held open, never read
        threading.Thread(target=swallow, daemon=True).start()
