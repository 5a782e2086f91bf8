"""`aar serve`: check the arguments and the data directory, then run the server.

Every way the start can fail that an operator can fix (a data directory that
is a file or not writable, a port taken, another server on the same data) is
one line naming the path or address and what to do, never a traceback.
"""
import argparse
import ipaddress
import logging
import os
import signal
import socket

from registry.paths import DataDir

from .common import CommandError

__all__ = ["DEFAULT_LISTEN", "FIRST_START", "EVERY_INTERFACE", "add_parser",
           "listen_address", "workers", "show_address"]

DEFAULT_LISTEN = ("0.0.0.0", 3000)
MAX_WORKERS = 1024

FIRST_START = """\
Created the registry's server certificate:
  {cert}
  fingerprint {fp}
Next, for each AMS node, make a join token here and use it there:
  sudo aar trust token add [--role publisher] --address <this host>:{port}
  ams-sync registry join <the token>
or register it by hand: copy that certificate to the node and run there
  ams-sync config trust add server.crt
  ams-sync config set registry.url https://<this host>:{port}
  ams-sync config set registry.fingerprint {fp}
then trust each node's registry/client.crt here with
  cat client.crt | sudo aar trust add [--publisher]"""
EVERY_INTERFACE = ("listening on every interface ({address}): give --listen "
                   "127.0.0.1:{port} or one address to bind less")
BAD_DATA_DIR = "cannot use data directory {path}: {reason}"
PROCESSES_WITH_S3 = ("{what} above 1 needs the data directory's own storage; with "
                     "storage.s3, run more replicas on the bucket")


# -- argument types: a bad value is a usage error (exit 2) ---------------------------

def listen_address(text):
    """'ADDR:PORT', '[v6]:PORT', ':PORT' or 'PORT' -> (host, port)."""
    bad = argparse.ArgumentTypeError(
        f"bad listen address {text!r}: use ADDR:PORT, e.g. 0.0.0.0:3000, [::]:3000 or :3000")
    if text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"bad listen address {text!r}: give ADDR:PORT without a scheme "
            "(the registry speaks HTTPS on it)")
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if host.startswith("["):
        if not host.endswith("]"):
            raise bad
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(
            f"bad listen address {text!r}: put an IPv6 address in brackets, e.g. [::1]:3000")
    if not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise bad
    return host or DEFAULT_LISTEN[0], int(port)


def _count(what, least):
    """An argparse type: a count of `what` from `least` to MAX_WORKERS."""
    def count(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not least <= value <= MAX_WORKERS:
            raise argparse.ArgumentTypeError(
                f"invalid {what} count {text!r}: give a number from {least} to "
                f"{MAX_WORKERS}")
        return value
    return count


def change_poll(text):
    """--change-poll: seconds, from 0.1 to 3600."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(
            f"invalid change poll {text!r}: give seconds from 0.1 to 3600")
    return value


handshake_threads = _count("handshake thread", 0)   # 0: every step on the loop
workers = _count("worker", 1)
_process_count = _count("process", 1)


def processes(text):
    """--processes: a count, or `auto` for one per CPU (as nginx's auto)."""
    if text == "auto":
        from registry.workers import cpus
        return min(cpus(), MAX_WORKERS)
    return _process_count(text)


def show_address(host, port):
    """host:port as a URL would write it: IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the server ----------------------------------------------------------------------

def _server_sans(host):
    sans = {"DNS:localhost", "IP:127.0.0.1", "IP:::1", f"DNS:{socket.gethostname()}"}
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            sans.add(f"IP:{host}")
    except ValueError:
        sans.add(f"DNS:{host}")
    return sorted(sans)


def _open_stores(args, data, conf, host, port, out):
    """(packages, trust store, server certificate), each checked: a data
    directory that lost something refuses to start (registry/startup.py),
    before anything in it changed."""
    from registry import backends
    from registry.errors import ApiError
    from registry.startup import server_identity
    from trust.errors import TrustError

    try:
        packages = backends.open_packages(data, conf, recover=args.recover)
    except backends.BackendError as exc:
        raise CommandError(str(exc))
    except ApiError as exc:                 # the data directory is in use
        raise CommandError(exc.message)
    except OSError as exc:
        raise CommandError(BAD_DATA_DIR.format(path=exc.filename or data.root,
                                               reason=exc.strerror or exc))
    trust_store = None
    try:
        trust_store = backends.open_trust(data, conf, poll=1.0, recover=args.recover)
        cert, created = server_identity(data, _server_sans(host),
                                        len(trust_store.trusted()),
                                        new_identity=args.new_identity)
        backends.check_server_certificate(conf, cert.pem)
    except (backends.BackendError, ApiError, TrustError, OSError) as exc:
        packages.close()
        if trust_store is not None:
            trust_store.close()
        if isinstance(exc, ApiError):
            raise CommandError(exc.message)
        if isinstance(exc, backends.BackendError):
            raise CommandError(str(exc))
        if isinstance(exc, OSError):
            raise CommandError(BAD_DATA_DIR.format(path=exc.filename or data.root,
                                                   reason=exc.strerror or exc))
        raise
    if created:
        print(FIRST_START.format(cert=data.server_cert, fp=cert.fingerprint, port=port),
              file=out, flush=True)
    return packages, trust_store, cert


def _data_dir(path):
    # Only the directory itself: the package store checks blobs/ is still
    # there before it makes anything (registry/recovery.py).
    data = DataDir(os.path.abspath(path))
    try:
        data.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not data.root.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(data.root))
        if not os.access(data.root, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(data.root))
    except OSError as exc:
        where = exc.filename or data.root
        raise CommandError(BAD_DATA_DIR.format(path=where, reason=exc.strerror or exc))
    return data


def _metrics_address(text):
    from metrics.listener import parse_listen
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _metrics(args, server, data, close):
    """Start the --metrics-listen listener, or None; a taken port is one line."""
    if not args.metrics_listen:
        return None
    from metrics.listener import MetricsServer
    from registry import health
    try:
        return MetricsServer(args.metrics_listen, server.events.metrics,
                             lambda: health.check(server, data)).start()
    except OSError as exc:
        close()
        raise cannot_listen("for metrics on", args.metrics_listen, exc)


def cannot_listen(where, address, exc):
    """The one line for a port that cannot be bound (taken, no such address)."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return CommandError(f"cannot listen {where} {show_address(*address[:2])}: {reason}")


def _serve(args, out):
    from registry import backends
    from registry.server import Settings

    data = _data_dir(args.data_dir)
    try:
        conf = backends.load_config(data.root)
    except backends.BackendError as exc:
        raise CommandError(str(exc))
    if args.processes is None:
        args.processes = 1
        if conf.get("processes") is not None:
            try:
                args.processes = processes(str(conf.get("processes")))
            except argparse.ArgumentTypeError as exc:
                raise CommandError(f"{conf.path}: processes: {exc}")
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if args.processes > 1:                # which worker said it
        fmt = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=fmt)
    host, port = args.listen or _configured_listen(conf)
    if args.metrics_listen is None and conf.get("metrics"):
        try:
            args.metrics_listen = _metrics_address(str(conf.get("metrics")))
        except argparse.ArgumentTypeError as exc:
            raise CommandError(f"{conf.path}: metrics: {exc}")
    if args.processes > 1 and conf.s3 is not None:
        raise CommandError(PROCESSES_WITH_S3.format(what="--processes"))
    stores = _open_stores(args, data, conf, host, port, out)
    if args.processes > 1:
        from .serveprocs import serve_many
        return serve_many(args, data, (host, port), stores, _server, _serving)
    packages, trust_store, cert = stores
    settings = Settings(workers=args.workers, handshake_threads=args.handshake_threads,
                        change_poll=args.change_poll)
    server, close = _server(args, data, (host, port), stores, settings)
    metrics = _metrics(args, server, data, close)
    _serving(server.server_address, data, cert, len(trust_store.trusted()))
    if metrics is not None:
        logging.getLogger("aar").info("metrics on http://%s/metrics and /healthz",
                                      show_address(*metrics.server_address[:2]))
    return run_server(server, close, metrics)


def run_server(server, close, metrics=None):
    """Serve until SIGTERM or SIGINT, then stop the metrics listener and
    close(): one process, or one worker of `--processes N`. Exit code 0."""
    log = logging.getLogger("aar")

    def stop(signum, frame):
        log.info("signal %d: shutting down", signum)
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        if metrics is not None:
            metrics.stop()
        close()
    return 0


def _server(args, data, address, stores, settings, sock=None):
    """(the RegistryServer over `stores`, a function that closes it all)."""
    from registry.audit import AuditLog
    from registry.events import Events
    from registry.handlers import ApiHandler
    from registry.server import RegistryServer

    packages, trust_store, cert = stores
    audit_log = AuditLog(data.audit_log)
    try:
        server = RegistryServer(address, ApiHandler, trust_store=trust_store,
                                packages=packages, certfile=str(data.server_cert),
                                keyfile=str(data.server_key),
                                server_fingerprint=cert.fingerprint, settings=settings,
                                events=Events(audit_log), sock=sock)
    except OSError as exc:
        packages.close()
        trust_store.close()
        audit_log.close()
        raise cannot_listen("on", address, exc)

    def close():
        packages.close()
        trust_store.close()
        server.server_close()             # after the stores: see its docstring
        audit_log.close()
    return server, close


def _serving(bound, data, cert, trusted):
    """Say where the registry serves; from here on a lost trust store,
    index or key is refused, not recreated (registry/served.py)."""
    from registry.served import record_serving

    log = logging.getLogger("aar")
    log.info("serving https://%s from %s (server fingerprint %s, %d trusted)",
             show_address(bound[0], bound[1]), data.root, cert.fingerprint, trusted)
    if ipaddress.ip_address(bound[0]).is_unspecified:
        log.info(EVERY_INTERFACE.format(address=show_address(bound[0], bound[1]),
                                        port=bound[1]))
    record_serving(data, cert.fingerprint)


def _configured_listen(conf):
    text = conf.get("listen")
    if text is None:
        return DEFAULT_LISTEN
    try:
        return listen_address(str(text))
    except argparse.ArgumentTypeError as exc:
        raise CommandError(f"{conf.path}: listen: {exc}")


def add_parser(cmds, common):
    serve = cmds.add_parser("serve", help="Run the registry server", parents=[common],
                            description="Run the registry server over mutual TLS. The first "
                            "start creates the data directory and the server certificate.",
                            epilog="Examples:\n  sudo aar serve                        "
                            "# every interface, port 3000\n"
                            "  aar serve --listen 192.168.1.10:3000\n"
                            "  aar serve --listen [::]:3000          # IPv6 and IPv4")
    serve.add_argument("--listen", type=listen_address, default=None,
                       metavar="ADDR:PORT", help="address to listen on (default: `listen` "
                       "in <data-dir>/conf/main.yaml, else 0.0.0.0:3000, every "
                       "interface; [::]:3000 for IPv6)")
    serve.add_argument("--workers", type=workers, default=32, metavar="N",
                       help=f"worker threads for disk and database work (package reads, "
                       f"uploads, deletes); connections are served by one event loop "
                       f"whatever their number; 1 to {MAX_WORKERS} (default 32)")
    serve.add_argument("--handshake-threads", type=handshake_threads, default=None,
                       metavar="N", help="threads for the CPU-heavy steps of TLS "
                       "handshakes, which then run on several CPUs at once; 0 runs "
                       "them on the event loop (default: the CPUs less one)")
    serve.add_argument("--processes", type=processes, default=None, metavar="N",
                       help="worker processes, each an event loop of its own, sharing "
                       "the listening socket, as nginx's worker_processes: more new "
                       "TLS connections a second on a machine of several CPUs; `auto` "
                       "is one per CPU. With N above 1 the parent process only "
                       "supervises (a worker that dies is started again) and sums "
                       "the workers' metrics, and each worker runs its handshakes on "
                       "its loop unless --handshake-threads is given (default: `processes` "
                       "in <data-dir>/conf/main.yaml, else 1)")
    serve.add_argument("--change-poll", type=change_poll, default=1.0, metavar="SECONDS",
                       help="how often listings held with wait= look for a change "
                       "made outside this server, e.g. by another replica on the "
                       "same S3 bucket (a publish or delete through this server, or "
                       "any of its --processes, wakes them at once); 0.1 to 3600 "
                       "(default 1)")
    serve.add_argument("--metrics-listen", type=_metrics_address, default=None,
                       metavar="ADDR:PORT", help="serve plain-HTTP /metrics and /healthz "
                       "there, e.g. 127.0.0.1:9300 (default: off)")
    serve.add_argument("-v", "--verbose", action="store_true",
                       help="log every request (debug level)")
    serve.add_argument("--recover", action="store_true",
                       help="start even though files were lost or damaged: set aside "
                       "under DIR/quarantine/ every blob no package names, every "
                       "package whose blob is gone, a lost or damaged packages.db or "
                       "trust.db, and start without them (nothing is deleted)")
    serve.add_argument("--new-identity", action="store_true",
                       help="when the server key is lost, make a new key and "
                       "certificate even though nodes pin the old one (a certificate "
                       "left behind goes to DIR/quarantine/); every node must then be "
                       "given the new certificate and fingerprint")
    serve.set_defaults(handler=lambda args, ctx: _serve(args, ctx.out))
    return serve
