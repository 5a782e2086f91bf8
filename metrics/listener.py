"""The plain-HTTP listener of `--metrics-listen`: GET /metrics and GET /healthz.

    MetricsServer(("127.0.0.1", 9300), metrics, health).start()
    GET /metrics  -> the text exposition format 0.0.4
    GET /healthz  -> 200 "ok", or 503 and the reason health() returned

It runs in threads of its own (http.server), off the programs' hot paths: a
load balancer or Prometheus needs no client certificate to reach it, so it
should listen on a management address only.
"""
import http.server
import logging
import socket
import threading

from .core import CONTENT_TYPE

__all__ = ["MetricsServer", "InlineMetricsServer", "parse_listen"]

log = logging.getLogger("metrics")


def parse_listen(text):
    """'ADDR:PORT' or '[v6]:PORT' -> (host, port); ValueError if it is neither."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad metrics address {text!r}: use ADDR:PORT, "
                         "e.g. 127.0.0.1:9300")
    return host, int(port)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "metrics"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, self.server.metrics.render(), CONTENT_TYPE)
        elif path == "/healthz":
            try:
                problem = self.server.health()
            except Exception as error:  # the check itself failing is a failure
                problem = f"health check failed: {error}"
            if problem:
                self._answer(503, f"unhealthy: {problem}\n".encode(), "text/plain")
            else:
                self._answer(200, b"ok\n", "text/plain")
        else:
            self._answer(404, b"not found: use /metrics or /healthz\n", "text/plain")

    def _answer(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)


class _Inline(_Handler):
    timeout = 5                  # a stalled scraper holds the caller no longer


class _Answers:
    """What both servers share: the address family, metrics and health."""

    def __init__(self, address, metrics, health=lambda: ""):
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Inline if self.inline else _Handler)
        self.metrics = metrics
        self.health = health


class InlineMetricsServer(_Answers, http.server.HTTPServer):
    """The same answers, one request at a time in the caller's thread: call
    handle_request() when fileno() is readable. For a process that must
    stay single-threaded because it forks (registry/workers.py)."""

    inline = True


class MetricsServer(_Answers, http.server.ThreadingHTTPServer):
    """GET /metrics and /healthz over plain HTTP, in a thread of its own.

    health() returns "" when all is well, else the reason for a 503.
    """

    daemon_threads = True
    inline = False

    def __init__(self, address, metrics, health=lambda: ""):
        super().__init__(address, metrics, health)
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
