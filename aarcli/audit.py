"""`aar audit [--since T] [--format table|csv|json|yaml]`: show the audit log.

JSON and YAML carry every field of every record (registry/audit.py lists
them); the table shows one line per record: when, what, who or from where,
about what, and the detail (the reason of a refusal, the command of a change).
"""
import argparse

from cli.formats import FORMATS, render
from registry.audit import parse_since, read

from .common import served_data_dir

__all__ = ["add_parser"]

_COLUMNS = [("time", "TIME"), ("event", "EVENT"), ("who", "WHO"), ("subject", "SUBJECT"),
            ("detail", "DETAIL")]


def _since(text):
    try:
        return parse_since(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _row(record):
    who = record.get("user") or record.get("address") or ""
    fp = record.get("fingerprint") or ""
    name = record.get("name") or ""
    if record.get("application"):
        subject = "{}/{}/{}".format(record["application"], record.get("version", "*"),
                                    record.get("architecture", "*"))
    elif record.get("token") and not fp:
        subject = f"token {record['token']}"
    else:
        subject = " ".join(p for p in (fp[:12], f"({name})" if name else "") if p)
    if record.get("event") == "refusal":
        detail = record.get("reason", "")
    elif record.get("command"):
        detail = record["command"]
    else:
        detail = record.get("role") or ""
    if str(record.get("event", "")).startswith("package."):
        detail = f"{record.get('size')} bytes, sha256 {str(record.get('sha256'))[:12]}"
        if not record.get("command"):          # through the API: the certificate
            who = fp[:12] + (f" ({name})" if name else "")
    return {"time": record.get("time", ""), "event": record.get("event", ""),
            "who": who, "subject": subject, "detail": detail}


def _audit(args, ctx):
    records = read(served_data_dir(args.data_dir).audit_log, args.since)
    if args.format in ("json", "yaml"):
        ctx.out.write(render(records, [], args.format))
    else:
        ctx.out.write(render([_row(r) for r in records], _COLUMNS, args.format))
    return 0


def add_parser(cmds, common):
    audit = cmds.add_parser("audit", help="Show the audit log", parents=[common],
                            description="Show the audit log: trust changes, join "
                            "tokens, package writes and deletes, and refusals")
    audit.add_argument("--since", type=_since, default=None, metavar="TIME",
                       help="only records from TIME on: 2026-11-30, "
                            "2026-11-30T18:00:00Z, or back from now: 1h, 30m, 2d")
    audit.add_argument("--format", choices=FORMATS, default="table",
                       help="output format: table, csv, json or yaml (default table)")
    audit.set_defaults(handler=_audit, help_parser=audit)
    return audit
