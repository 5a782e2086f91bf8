"""`aar trust …`: the client certificates the registry trusts, and their roles.

    add [PATH] [-p] [--name NAME] [-q] [--init]   PATH or standard input
    list|ls [--format F] [--revoked]
    remove FINGERPRINT [-y]                       asks on a terminal
    revoke FINGERPRINT [-y]                       asks on a terminal; final
    set-role FINGERPRINT client|publisher         keeps the record's history
    token add|list|remove                         join tokens (aarcli/tokens.py)

Every change is recorded in the audit log (registry/audit.py) before the
command reports it done.

A fingerprint may be a unique prefix of 12 or more hex digits; whatever it
matched, the messages print the full fingerprint.
"""
import argparse
import os

import names
from cli.confirm import CANCELLED, NEED_YES, Refused, confirm, is_tty
from cli.formats import FORMATS, render
from trust import certs
from trust.errors import AlreadyExists, TrustError
from trust.store import ROLES

from registry.audit import record_command

from .common import CommandError, served_data_dir

__all__ = ["add_parser", "NO_INPUT", "SNAP_HOME_HINT", "EXPIRED", "ADDED", "ALREADY",
           "OTHER_ROLE", "REMOVED", "REVOKED", "ROLE_SET", "CONFIRM_REVOKE",
           "CONFIRM_REMOVE", "NEED_YES", "NOT_CONFIRMED"]

MAX_PEM = 1 << 20

# Messages the tests assert on.
NO_INPUT = ("no certificate given: name a file (aar trust add client.crt) "
            "or pipe one in (cat client.crt | aar trust add)")
SNAP_HOME_HINT = ("under strict snap confinement aar can only read files in /root: "
                  "copy the certificate there, or pipe it in: "
                  "cat client.crt | sudo aar trust add")
EXPIRED = "certificate expired on {when}: ask its owner for a new one"
ADDED = "Added {role} certificate {fp} ({name})"
ALREADY = "Certificate {fp} ({name}) is already trusted as {role}: nothing changed"
OTHER_ROLE = ("certificate {fp} ({name}) is already trusted as {role}; to make it a "
              "{wanted}, run: aar trust set-role {short} {wanted}")
REMOVED = "Removed certificate {fp} ({name})"
REVOKED = "Revoked certificate {fp} ({name}); it can never be trusted again"
ROLE_SET = "Certificate {fp} ({name}) is now a {role}"
CONFIRM_REVOKE = ("Revoke {fp} ({name})? Revocation is irreversible: the certificate "
                  "can never be added again. [y/N] ")
CONFIRM_REMOVE = ("Remove {fp} ({name}, {role})? The node loses access until its "
                  "certificate is added again. [y/N] ")
NOT_CONFIRMED = CANCELLED.format(verb="revoke")
NEED_YES = NEED_YES.format(verb="revoke")


def _fingerprint(text):
    try:
        return names.check_fingerprint(text, allow_prefix=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _audit(args, event, record, **extra):
    record_command(served_data_dir(args.data_dir, True).audit_log, args.argv, event,
                   fingerprint=record.fingerprint, name=record.name, role=record.role,
                   **extra)


def _open(args, init=False):
    # The same checks as `aar serve` (registry/startup.py): a lost or damaged
    # trust store on a data directory that has served is refused, never
    # silently recreated.
    from registry import backends
    try:
        conf = backends.load_config(args.data_dir)
        if conf.s3 is not None:      # the bucket's store: any replica host may change it
            return backends.open_trust(None, conf)
        return backends.open_trust(served_data_dir(args.data_dir, init), conf)
    except backends.BackendError as exc:
        raise CommandError(str(exc))


def read_pem(path, stdin, program="aar trust add"):
    """(bytes, where) of the PEM in path, or on stdin for None or '-'.

    No PATH with a terminal on stdin is a usage error rather than a silent wait.
    """
    if path in (None, "-"):
        if path is None and is_tty(stdin):
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


def _add(args, ctx):
    data, where = read_pem(args.path, ctx.stdin)
    try:
        cert = certs.parse_pem(data)
    except TrustError as exc:
        raise CommandError(f"{where}: {exc}")
    if cert.expired():
        raise CommandError(EXPIRED.format(when=cert.not_after.strftime("%Y-%m-%d %H:%M:%SZ")))
    role = "publisher" if args.publisher else "client"
    with _open(args, init=args.init) as store:
        try:
            record = store.add(cert, role, name=args.name)
            message = ADDED
            _audit(args, "trust.add", record)
        except AlreadyExists:
            # The same certificate in the same role is what the operator
            # asked for: success, so that scripts and charms may repeat it.
            record = store.get(cert.fingerprint)
            if record.role != role:
                raise CommandError(OTHER_ROLE.format(
                    fp=record.fingerprint, name=record.name or "-", role=record.role,
                    wanted=role, short=record.fingerprint[:12]))
            message = ALREADY
    if not args.quiet:
        print(message.format(role=record.role, fp=record.fingerprint,
                             name=record.name or "-"), file=ctx.out)
    return 0


def _list(args, ctx):
    with _open(args) as store:
        # The store's records(revoked=True) means "revoked ones too".
        records = [r for r in store.records(revoked=args.revoked)
                   if r.revoked == args.revoked]
    rows = [r.to_dict() for r in records]
    columns = [("fingerprint", "FINGERPRINT"), ("name", "NAME"), ("role", "ROLE"),
               ("added_at", "ADDED"), ("not_after", "EXPIRES")]
    if args.revoked:
        columns.append(("revoked_at", "REVOKED"))
    if args.format in ("table", "csv"):
        for row in rows:
            row.pop("pem", None)
    ctx.out.write(render(rows, columns, args.format,
                         short={"fingerprint": lambda fp: fp[:12]}))
    return 0


def _asked(question, args, ctx, verb):
    try:
        confirm(question, yes=args.yes, stdin=ctx.stdin, out=ctx.out, verb=verb)
    except Refused as exc:
        raise CommandError(str(exc), exc.status)


def _remove(args, ctx):
    with _open(args) as store:
        record = store.get(store.resolve(args.fingerprint))
        if not record.revoked:      # a revoked one is refused below: nothing to ask
            _asked(CONFIRM_REMOVE.format(fp=record.fingerprint, name=record.name or "-",
                                         role=record.role), args, ctx, "remove")
        record = store.remove(record.fingerprint)
    _audit(args, "trust.remove", record)
    print(REMOVED.format(fp=record.fingerprint, name=record.name or "-"), file=ctx.out)
    return 0


def _revoke(args, ctx):
    with _open(args) as store:
        record = store.get(store.resolve(args.fingerprint))
        if not record.revoked:
            _asked(CONFIRM_REVOKE.format(fp=record.fingerprint, name=record.name or "-"),
                   args, ctx, "revoke")
        record = store.revoke(record.fingerprint)
    _audit(args, "trust.revoke", record)
    print(REVOKED.format(fp=record.fingerprint, name=record.name or "-"), file=ctx.out)
    return 0


def _set_role(args, ctx):
    with _open(args) as store:
        before = store.get(store.resolve(args.fingerprint))
        record = store.set_role(args.fingerprint, args.role)
    if before.role != record.role:
        _audit(args, "trust.set-role", record, previous_role=before.role)
    print(ROLE_SET.format(fp=record.fingerprint, name=record.name or "-", role=record.role),
          file=ctx.out)
    return 0


def add_parser(cmds, common, hide):
    """Add `trust` and its commands; hide(subparsers, name) keeps one out of the
    help list (`aar trust --help` is the seeds' text, byte for byte)."""
    from cli.cobra import CobraParser
    trust = cmds.add_parser("trust", help="Manage trusted clients",
                            description="Manage trusted clients")
    trust.set_defaults(handler=None, help_parser=trust)
    tcmds = trust.add_subparsers(dest="trust_command", metavar="command",
                                 parser_class=CobraParser)
    add = tcmds.add_parser(
        "add", help="Register a client certificate", parents=[common],
        description="Register a client certificate, read from PATH or from standard "
        "input (cat client.crt | aar trust add). Adding one that is already trusted "
        "in the same role changes nothing and succeeds.",
        epilog="Examples:\n  cat client.crt | sudo aar trust add\n"
               "  sudo aar trust add --publisher --name builder-1 client.crt\n"
               "  aar trust add --init --data-dir /srv/aar client.crt   "
               "# before the first `aar serve`")
    add.add_argument("path", nargs="?", metavar="PATH")
    add.add_argument("-p", "--publisher", action="store_true",
                     help="trust it as a publisher (read-write) instead of a client (read-only)")
    add.add_argument("--name", default=None, metavar="NAME",
                     help="name shown in lists (default: the certificate's common name)")
    add.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    add.add_argument("--init", action="store_true",
                     help="allow a data directory where no registry has run yet")
    add.set_defaults(handler=_add)

    for name in ("list", "ls"):
        ls = tcmds.add_parser(name, help="List currently trusted clients" if name == "list"
                              else argparse.SUPPRESS, parents=[common],
                              description="List currently trusted clients; tables "
                              "shorten fingerprints to 12 digits, the other formats "
                              "print them in full")
        ls.add_argument("--format", choices=FORMATS, default="table",
                        help="output format: table, csv, json or yaml (default table)")
        ls.add_argument("--revoked", action="store_true",
                        help="list revoked certificates instead")
        ls.set_defaults(handler=_list)
    hide(tcmds, "ls")

    rm = tcmds.add_parser("remove", help="Remove a trusted certificate", parents=[common],
                          description="Remove a trusted certificate; it may be added "
                          "again. Asks for confirmation on a terminal.")
    rm.add_argument("fingerprint", type=_fingerprint, metavar="FINGERPRINT")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(handler=_remove)

    rv = tcmds.add_parser("revoke", help="Revoke a certificate", parents=[common],
                          description="Revoke a certificate. Irreversible: a revoked "
                          "certificate is refused at once and can never be added again")
    rv.add_argument("fingerprint", type=_fingerprint, metavar="FINGERPRINT")
    rv.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    rv.set_defaults(handler=_revoke)

    sr = tcmds.add_parser("set-role", help="Change a trusted certificate's role",
                          parents=[common],
                          description="Change a trusted certificate's role, keeping its "
                          "name and the date it was added",
                          epilog="Examples:\n  aar trust set-role 3f2a9c01b7e4 publisher")
    sr.add_argument("fingerprint", type=_fingerprint, metavar="FINGERPRINT")
    sr.add_argument("role", choices=ROLES, metavar="ROLE", help="client or publisher")
    sr.set_defaults(handler=_set_role)
    hide(tcmds, "set-role")
    from . import tokens
    tokens.add_parser(tcmds, common)
    hide(tcmds, "token")
    return trust
