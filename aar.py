"""aar: the application registry's command line and server wiring.

    aar serve [--data-dir D] [--listen ADDR:PORT] [--recover] [--new-identity]
    aar trust add [PATH] [-p|--publisher] [-q|--quiet]
    aar trust list|ls [--format table|csv|json|yaml] [--revoked]
    aar trust remove FINGERPRINT
    aar trust revoke FINGERPRINT [-y|--yes]
    aar --version

`main(argv=None) -> int` is the only place that prints or chooses an exit code:
0 done, 1 failed (the message says why), 2 the command line was wrong.
"""
import argparse
import ipaddress
import logging
import os
import pathlib
import signal
import socket
import sys

import names
from cli.cobra import CobraParser
from cli.formats import FORMATS, render
from registry.paths import DataDir, default_data_dir
from trust import certs
from trust.errors import AlreadyExists, TrustError
from version import VERSION

__all__ = ["main"]

DEFAULT_LISTEN = ("0.0.0.0", 3000)
MAX_PEM = 1 << 20

# Messages the tests assert on.
NO_INPUT = ("no certificate given: name a file (aar trust add client.crt) "
            "or pipe one in (cat client.crt | aar trust add)")
SNAP_HOME_HINT = ("under strict snap confinement aar can only read files in /root: "
                  "copy the certificate there, or pipe it in: "
                  "cat client.crt | sudo aar trust add")
EXPIRED = "certificate expired on {when}: ask its owner for a new one"
ADDED = "Added {role} certificate {fp} ({name})"
REMOVED = "Removed certificate {fp} ({name})"
REVOKED = "Revoked certificate {fp} ({name}); it can never be trusted again"
CONFIRM = ("Revoke {fp} ({name})? Revocation is irreversible: the certificate "
           "can never be added again. [y/N] ")
NEED_YES = ("refusing to revoke without confirmation: standard input is not a "
            "terminal; pass -y/--yes to confirm")
NOT_CONFIRMED = "revocation cancelled"
FIRST_START = """\
Created the registry's server certificate:
  {cert}
  fingerprint {fp}
Next: copy that certificate to every AMS node and run there
  ams-sync config trust add server.crt
  ams-sync config set registry.url https://<this host>:{port}
  ams-sync config set registry.fingerprint {fp}
then trust each node's registry/client.crt here with
  cat client.crt | sudo aar trust add [--publisher]"""


class CommandError(Exception):
    """A command failed in a way the operator can act on; the text says how."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


# -- argument types -----------------------------------------------------------

def _listen_address(text):
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or DEFAULT_LISTEN[0]
    try:
        port = int(port)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad listen address {text!r}: use ADDR:PORT, e.g. 0.0.0.0:3000 or [::]:3000")
    return host, port


def _fingerprint(text):
    try:
        return names.check_fingerprint(text, allow_prefix=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


# -- serve -------------------------------------------------------------------------

def _server_sans(host):
    sans = {"DNS:localhost", "IP:127.0.0.1", "IP:::1", f"DNS:{socket.gethostname()}"}
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            sans.add(f"IP:{host}")
    except ValueError:
        sans.add(f"DNS:{host}")
    return sorted(sans)


def _open_stores(args, data, host, out):
    """(packages, trust store, server certificate), each checked: a data
    directory that lost something refuses to start (registry/startup.py)."""
    from registry.errors import ApiError
    from registry.startup import open_trust_store, server_identity
    from registry.storage import PackageStore

    try:
        trust_store = open_trust_store(data, recover=args.recover)
    except ApiError as exc:
        raise CommandError(exc.message)
    packages = None
    try:
        packages = PackageStore(data, recover=args.recover)
        cert, created = server_identity(data, _server_sans(host),
                                        len(trust_store.records(revoked=True)),
                                        new_identity=args.new_identity)
    except (ApiError, TrustError) as exc:
        if packages is not None:
            packages.close()
        trust_store.close()
        raise CommandError(exc.message if isinstance(exc, ApiError) else str(exc))
    if created:
        print(FIRST_START.format(cert=data.server_cert, fp=cert.fingerprint,
                                 port=args.listen[1]), file=out, flush=True)
    return packages, trust_store, cert


def _serve(args, out):
    from registry.handlers import ApiHandler
    from registry.served import record_serving
    from registry.server import RegistryServer, Settings

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen
    data = DataDir(args.data_dir)
    packages, trust_store, cert = _open_stores(args, data, host, out)
    settings = Settings(workers=args.workers)
    try:
        server = RegistryServer((host, port), ApiHandler, trust_store=trust_store,
                                packages=packages, certfile=str(data.server_cert),
                                keyfile=str(data.server_key),
                                server_fingerprint=cert.fingerprint, settings=settings)
    except OSError as exc:
        packages.close()
        trust_store.close()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CommandError(f"cannot listen on {host}:{port}: {reason}")
    # From here on a lost trust store, index or key is refused, not recreated.
    record_serving(data, cert.fingerprint)
    bound = server.server_address
    logging.getLogger("aar").info(
        "serving https://%s:%d from %s (server fingerprint %s, %d trusted)",
        bound[0], bound[1], data.root, cert.fingerprint, len(trust_store.trusted()))

    def stop(signum, frame):
        logging.getLogger("aar").info("signal %d: shutting down", signum)
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        packages.close()
        trust_store.close()
    return 0


# -- trust ---------------------------------------------------------------------------

def _open_store(args):
    from registry.errors import ApiError
    from registry.startup import open_trust_store
    try:
        return open_trust_store(DataDir(args.data_dir))
    except ApiError as exc:
        raise CommandError(exc.message)


def _read_pem(path, stdin):
    if path in (None, "-"):
        if path is None and stdin.isatty():
            raise CommandError(NO_INPUT, status=2)
        data = stdin.buffer.read(MAX_PEM + 1) if hasattr(stdin, "buffer") else \
            stdin.read(MAX_PEM + 1).encode()
        where = "standard input"
    else:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_PEM + 1)
        except PermissionError as exc:
            hint = f"; {SNAP_HOME_HINT}" if os.environ.get("SNAP") else ""
            raise CommandError(f"cannot read {path}: {exc.strerror}{hint}")
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}")
        where = path
    if len(data) > MAX_PEM:
        raise CommandError(f"{where}: more than {MAX_PEM} bytes: not a certificate")
    return data, where


def _trust_add(args, out, stdin):
    data, where = _read_pem(args.path, stdin)
    try:
        cert = certs.parse_pem(data)
    except TrustError as exc:
        raise CommandError(f"{where}: {exc}")
    if cert.expired():
        raise CommandError(EXPIRED.format(when=cert.not_after.strftime("%Y-%m-%d %H:%M:%SZ")))
    role = "publisher" if args.publisher else "client"
    store = _open_store(args)
    try:
        store.add(cert, role)
    except AlreadyExists as exc:
        raise CommandError(f"certificate already exists: {exc}")
    finally:
        store.close()
    if not args.quiet:
        print(ADDED.format(role=role, fp=cert.fingerprint, name=cert.common_name or "-"),
              file=out)
    return 0


def _trust_list(args, out):
    store = _open_store(args)
    try:
        # The store's records(revoked=True) means "revoked ones too".
        records = [r for r in store.records(revoked=args.revoked)
                   if r.revoked == args.revoked]
    finally:
        store.close()
    rows = [r.to_dict() for r in records]
    columns = [("fingerprint", "FINGERPRINT"), ("name", "NAME"), ("role", "ROLE"),
               ("added_at", "ADDED"), ("not_after", "EXPIRES")]
    if args.revoked:
        columns.append(("revoked_at", "REVOKED"))
    if args.format in ("table", "csv"):
        for row in rows:
            row.pop("pem", None)
    out.write(render(rows, columns, args.format,
                     short={"fingerprint": lambda fp: fp[:12]}))
    return 0


def _trust_remove(args, out):
    store = _open_store(args)
    try:
        record = store.remove(args.fingerprint)
    finally:
        store.close()
    print(REMOVED.format(fp=record.fingerprint, name=record.name or "-"), file=out)
    return 0


def _trust_revoke(args, out, stdin):
    store = _open_store(args)
    try:
        record = store.get(store.resolve(args.fingerprint))
        if not args.yes:
            if not stdin.isatty():
                raise CommandError(NEED_YES, status=2)
            out.write(CONFIRM.format(fp=record.fingerprint, name=record.name or "-"))
            out.flush()
            if stdin.readline().strip().lower() not in ("y", "yes"):
                raise CommandError(NOT_CONFIRMED)
        record = store.revoke(record.fingerprint)
    finally:
        store.close()
    print(REVOKED.format(fp=record.fingerprint, name=record.name or "-"), file=out)
    return 0


# -- the parser ------------------------------------------------------------------------

def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=pathlib.Path, default=None, metavar="DIR",
                        help="registry data directory (default: $AAR_DATA_DIR, "
                             "$SNAP_COMMON or ~/.local/share/aar)")

    root = CobraParser(prog="aar", description="Anbox Application Registry: stores "
                       "application packages and serves them to trusted AMS nodes")
    root.add_argument("--version", action="version", version=f"aar {VERSION}",
                      help="version for aar")
    cmds = root.add_subparsers(dest="command", metavar="command", parser_class=CobraParser)

    serve = cmds.add_parser("serve", help="Run the registry server", parents=[common],
                            description="Run the registry server over mutual TLS. The first "
                            "start creates the data directory and the server certificate.")
    serve.add_argument("--listen", type=_listen_address, default=DEFAULT_LISTEN,
                       metavar="ADDR:PORT", help="address to listen on (default 0.0.0.0:3000)")
    serve.add_argument("--workers", type=int, default=32, metavar="N",
                       help="worker threads serving requests (default 32)")
    serve.add_argument("-v", "--verbose", action="store_true",
                       help="log every request (debug level)")
    serve.add_argument("--recover", action="store_true",
                       help="start even though files were lost or damaged: set aside "
                       "under DIR/quarantine/ every blob no package names, every "
                       "package whose blob is gone, a lost or damaged packages.db or "
                       "trust.db, and start without them (nothing is deleted)")
    serve.add_argument("--new-identity", action="store_true",
                       help="make a new server key and certificate even though nodes "
                       "pin the old one (the old files go to DIR/quarantine/); every "
                       "node must then be given the new certificate and fingerprint")

    trust = cmds.add_parser("trust", help="Manage trusted clients",
                            description="Manage trusted clients")
    tcmds = trust.add_subparsers(dest="trust_command", metavar="command",
                                 parser_class=CobraParser)
    add = tcmds.add_parser("add", help="Register a client certificate", parents=[common],
                           description="Register a client certificate, read from PATH or "
                           "from standard input (cat client.crt | aar trust add)")
    add.add_argument("path", nargs="?", metavar="PATH")
    add.add_argument("-p", "--publisher", action="store_true",
                     help="trust it as a publisher (read-write) instead of a client (read-only)")
    add.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")

    for name in ("list", "ls"):
        ls = tcmds.add_parser(name, help="List currently trusted clients" if name == "list"
                              else argparse.SUPPRESS, parents=[common],
                              description="List currently trusted clients")
        ls.add_argument("--format", choices=FORMATS, default="table",
                        help="output format: table, csv, json or yaml (default table)")
        ls.add_argument("--revoked", action="store_true",
                        help="list revoked certificates instead")
    _hide_alias(tcmds, "ls")

    rm = tcmds.add_parser("remove", help="Remove a trusted certificate", parents=[common],
                          description="Remove a trusted certificate; it may be added again")
    rm.add_argument("fingerprint", type=_fingerprint, metavar="FINGERPRINT")

    rv = tcmds.add_parser("revoke", help="Revoke a certificate", parents=[common],
                          description="Revoke a certificate. Irreversible: a revoked "
                          "certificate is refused at once and can never be added again")
    rv.add_argument("fingerprint", type=_fingerprint, metavar="FINGERPRINT")
    rv.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    return root, trust


def _hide_alias(subparsers, name):
    subparsers._choices_actions = [a for a in subparsers._choices_actions if a.dest != name]


def main(argv=None, *, stdin=None, stdout=None, stderr=None) -> int:
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    root, trust = _parser()
    args = root.parse(argv, out, err)
    if isinstance(args, int):
        return args
    if args.command is None:
        out.write(root.format_help())
        return 0
    if getattr(args, "data_dir", None) is None and hasattr(args, "data_dir"):
        args.data_dir = default_data_dir()
    try:
        if args.command == "serve":
            return _serve(args, out)
        if args.trust_command is None:
            out.write(trust.format_help())
            return 0
        if args.trust_command == "add":
            return _trust_add(args, out, stdin)
        if args.trust_command in ("list", "ls"):
            return _trust_list(args, out)
        if args.trust_command == "remove":
            return _trust_remove(args, out)
        return _trust_revoke(args, out, stdin)
    except CommandError as exc:
        print(f"Error: {exc}", file=err)
        return exc.status
    except TrustError as exc:
        print(f"Error: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
