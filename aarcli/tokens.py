"""`aar trust token add|list|remove`: join tokens for one-command enrolment.

    aar trust token add [--role client|publisher] [--ttl 1h] [--name NAME]
                        [--address HOST[:PORT]]...
    aar trust token list [--format table|csv|json|yaml]
    aar trust token remove ID

`add` prints one line (trust/tokens.py has its format). The addresses it
carries are the --address flags in order (a node tries them in turn), else
`listen` of conf/main.yaml when it names one address, else this host's
addresses, on the configured port (3000 by default); pass --address whenever
the nodes reach the registry by another name, address or port (a load
balancer, NAT).
"""
import argparse
import socket

from agent.duration import parse_duration
from cli.cobra import CobraParser
from cli.formats import FORMATS, render
from registry.audit import record_command
from trust import certs
from trust.errors import TokenError
from trust.store import ROLES, TrustStore
from trust.tokens import Token

from .common import CommandError, served_data_dir



def _open(args):
    """(data directory, trust store): the data directory's trust.db, or the
    bucket's store with storage.s3 (any replica's host then serves)."""
    from registry import backends
    try:
        conf = backends.load_config(args.data_dir)
        if conf.s3 is not None:
            return served_data_dir(args.data_dir, True), conf, backends.open_trust(None, conf)
    except backends.BackendError as exc:
        raise CommandError(str(exc))
    data = served_data_dir(args.data_dir)
    return data, conf, TrustStore(data.trust_db)

__all__ = ["add_parser", "NO_SERVER_CERT", "REMOVED", "DEFAULT_PORT"]

DEFAULT_PORT = 3000
NO_SERVER_CERT = ("no server certificate at {path}: start `aar serve` once, "
                  "it creates one")
REMOVED = "Removed join token {id}"
_COLUMNS = [("id", "ID"), ("role", "ROLE"), ("name", "NAME"), ("state", "STATE"),
            ("expires_at", "EXPIRES"), ("used_by", "USED BY")]


def _ttl(text):
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"--ttl {text} is too short: at least 1s")
    return seconds


def _address(text):
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port or (":" in host and not host.endswith("]")):
        host, port = text, str(DEFAULT_PORT)      # no port, or a bare IPv6 address
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"bad address {text!r}: use HOST or HOST:PORT, e.g. 10.0.0.5:3000")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _own_urls(conf):
    """Where nodes find this registry by default: the `listen` address of
    conf/main.yaml if it names one, else this host's non-loopback addresses
    (IPv4 first), else its name; on the configured port, else 3000."""
    host, port = "", DEFAULT_PORT
    listen = conf.get("listen")
    if listen:
        host, _, text = str(listen).rpartition(":")
        host = host.strip("[]")
        port = int(text) if text.isdigit() else DEFAULT_PORT
    if host and host not in ("0.0.0.0", "::"):
        return [_address(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")]
    name = socket.gethostname()
    found = []
    try:
        for _, _, _, _, addr in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM):
            ip = addr[0]
            if ip.startswith("127.") or ip == "::1" or ip in found:
                continue
            found.append(ip)
    except OSError:
        pass
    found.sort(key=lambda ip: ":" in ip)
    return [_address(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
            for ip in found] or [_address(f"{name}:{port}")]


def _add(args, ctx):
    data, conf, store = _open(args)
    with store:
        if not data.server_cert.exists():
            raise TokenError(NO_SERVER_CERT.format(path=data.server_cert))
        fingerprint = certs.load_certificate(data.server_cert).fingerprint
        urls = args.address or _own_urls(conf)
        row, secret = store.join_tokens().create(args.role, args.ttl, args.name or "")
    record_command(data.audit_log, args.argv, "token.add", token=row["id"],
                   role=row["role"], name=row["name"], expires_at=row["expires_at"],
                   urls=list(urls))
    print(Token(urls=tuple(urls), fingerprint=fingerprint, id=row["id"],
                secret=secret).encode(), file=ctx.out)
    return 0


def _list(args, ctx):
    with _open(args)[2] as store:
        rows = store.join_tokens().list()
    ctx.out.write(render(rows, _COLUMNS, args.format,
                     short={"used_by": lambda fp: (fp or "")[:12]}))
    return 0


def _remove(args, ctx):
    data, _, store = _open(args)
    with store:
        row = store.join_tokens().remove(args.id)
    record_command(data.audit_log, args.argv, "token.remove", token=row["id"],
                   role=row["role"], name=row["name"], state=row["state"])
    print(REMOVED.format(id=row["id"]), file=ctx.out)
    return 0


def add_parser(tcmds, common):
    """Add `token` under `aar trust`; returns the `token` parser (for its help)."""
    token = tcmds.add_parser("token", help="Manage join tokens",
                             description="Manage join tokens: one line that lets one AMS "
                             "node enrol itself with `ams-sync registry join TOKEN`")
    token.set_defaults(handler=None, help_parser=token)
    cmds = token.add_subparsers(dest="token_command", metavar="command",
                                parser_class=CobraParser)
    add = cmds.add_parser("add", help="Create a join token", parents=[common],
                          epilog="Examples:\n  sudo aar trust token add --role publisher "
                                 "--address 10.0.0.5:3000\n  sudo aar trust token add --ttl "
                                 "24h --name rack-3 --address aar.example.net:3000",
                          description="Create a one-time join token and print it. It "
                          "carries the registry's addresses, its server fingerprint and "
                          "a secret; the registry keeps only the secret's hash.")
    add.add_argument("--role", choices=ROLES, default="client",
                     help="role the node is trusted with: client (read-only, pull) or "
                          "publisher (read-write, push) (default client)")
    add.add_argument("--ttl", type=_ttl, default=3600.0, metavar="DURATION",
                     help="how long the token can be used: 30m, 1h, 24h (default 1h)")
    add.add_argument("--name", default="", metavar="NAME",
                     help="name the node's certificate is listed under "
                          "(default: the certificate's common name)")
    add.add_argument("--address", type=_address, action="append", default=[],
                     metavar="HOST[:PORT]",
                     help="how nodes reach this registry; repeat for several "
                          "(default: `listen` in conf/main.yaml if it names an address, "
                          "else this host's addresses; its port, else 3000)")
    add.set_defaults(handler=_add, help_parser=add)
    ls = cmds.add_parser("list", help="List join tokens", parents=[common],
                         description="List join tokens and whether each is valid, "
                         "used or expired")
    ls.add_argument("--format", choices=FORMATS, default="table",
                    help="output format: table, csv, json or yaml (default table)")
    ls.set_defaults(handler=_list, help_parser=ls)
    rm = cmds.add_parser("remove", help="Remove a join token", parents=[common],
                         description="Remove a join token: it can no longer be used")
    rm.add_argument("id", metavar="ID")
    rm.set_defaults(handler=_remove, help_parser=rm)
    return token
