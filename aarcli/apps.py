"""`aar application …`: the registry's packages, seen from its own host.

    list [--format F]                      every package, one row each
    show APP [--format F]                  one application's versions
    delete APP [VERSION [ARCH]] [-y]       asks on a terminal

list and show read the store beside a running server (read-only, through
PackageStore's public methods). delete needs the data directory to itself:
while `aar serve` runs, a publisher node deletes through the API instead.
"""
import argparse

import names
from cli.confirm import Refused, confirm
from cli.formats import FORMATS, human_size, render

from .common import CommandError, served_data_dir

__all__ = ["add_parser", "NOT_FOUND", "DELETED", "CONFIRM_DELETE", "SERVER_RUNNING"]

NOT_FOUND = "no application {name} in the registry"
NO_VERSION = "application {name} has no version {version}{arch}"
DELETED = "Deleted {what}: {count} package(s)"
CONFIRM_DELETE = "Delete {what} ({count} package(s))? Nodes that pulled it remove it. [y/N] "
SERVER_RUNNING = ("the registry server is running on {path}: stop it first "
                  "(sudo snap stop aar.daemon), or delete from a publisher node")

_COLUMNS = [("name", "NAME"), ("version", "VERSION"), ("architecture", "ARCHITECTURE"),
            ("size", "SIZE"), ("sha256", "SHA256"), ("tags", "TAGS"),
            ("publisher", "PUBLISHER"), ("created_at", "CREATED")]
_SHORT = {"sha256": lambda v: v[:12], "publisher": lambda v: (v or "-")[:12],
          "size": human_size}


def _typed(check):
    def convert(text):
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _bucket_store(args):
    """With storage.s3, the bucket's store (shared by replicas), else None."""
    from registry import backends
    try:
        conf = backends.load_config(args.data_dir)
        if conf.s3 is None:
            return None
        return backends.open_packages(None, conf, read_only=True)
    except backends.BackendError as exc:
        raise CommandError(str(exc))


def _reader(args):
    from registry.storage import PackageStore
    bucket = _bucket_store(args)
    if bucket is not None:
        return bucket
    data = served_data_dir(args.data_dir)
    if not data.packages_db.exists():
        return None
    return PackageStore(data, read_only=True)


def _rows(packages, fmt):
    # Tables and CSV have no room for a manifest; json and yaml keep it.
    drop = ("manifest",) if fmt in ("table", "csv") else ()
    return [{k: v for k, v in p.items() if k not in drop} for p in packages]


def _list(args, ctx):
    store = _reader(args)
    try:
        apps = store.list() if store else []
    finally:
        if store:
            store.close()
    rows = _rows([p for app in apps for p in app["versions"]], args.format)
    ctx.out.write(render(rows, _COLUMNS, args.format, short=_SHORT))
    return 0


def _show(args, ctx):
    store = _reader(args)
    try:
        app = store.application(args.name) if store else None
    finally:
        if store:
            store.close()
    if app is None:
        raise CommandError(NOT_FOUND.format(name=args.name))
    if args.format in ("json", "yaml"):
        ctx.out.write(render(app, [], args.format))
    else:
        ctx.out.write(render(_rows(app["versions"], args.format), _COLUMNS[1:],
                             args.format, short=_SHORT))
    return 0


def _delete(args, ctx):
    from registry.errors import ApiError
    from registry.storage import PackageStore
    # In a bucket, replicas and this command may change packages at once.
    store = _bucket_store(args)
    if store is None:
        data = served_data_dir(args.data_dir)
        try:
            store = PackageStore(data)
        except ApiError:
            raise CommandError(SERVER_RUNNING.format(path=data.root))
    with store:
        app = store.application(args.name)
        if app is None:
            raise CommandError(NOT_FOUND.format(name=args.name))
        doomed = [p for p in app["versions"]
                  if args.version in (None, p["version"])
                  and args.arch in (None, p["architecture"])]
        if not doomed:
            arch = f" for {args.arch}" if args.arch else ""
            raise CommandError(NO_VERSION.format(name=args.name, version=args.version,
                                                 arch=arch))
        what = " ".join(str(w) for w in (args.name, args.version, args.arch) if w is not None)
        try:
            confirm(CONFIRM_DELETE.format(what=what, count=len(doomed)), yes=args.yes,
                    stdin=ctx.stdin, out=ctx.out, verb="delete")
        except Refused as exc:
            raise CommandError(str(exc), exc.status)
        if args.version is None and args.arch is None:
            count = store.delete_application(args.name)
        else:
            count = sum(store.delete_package(p["name"], p["version"], p["architecture"])
                        for p in doomed)
    _audit_deleted(args, doomed)
    print(DELETED.format(what=what, count=count), file=ctx.out)
    return 0


def _audit_deleted(args, packages):
    # The same record the server writes for an API delete, with who ran it.
    from registry.audit import record_command
    log = served_data_dir(args.data_dir).audit_log
    for pkg in packages:
        record_command(log, args.argv, "package.delete", application=pkg["name"],
                       version=pkg["version"], architecture=pkg["architecture"],
                       sha256=pkg["sha256"], size=pkg["size"])


def add_parser(cmds, common):
    from cli.cobra import CobraParser
    text = "Inspect or delete the registry's applications"
    group = cmds.add_parser("application", help=text, description=text + " (on the "
                            "registry's host, reading its data directory)")
    group.set_defaults(handler=None, help_parser=group)
    sub = group.add_subparsers(metavar="command", parser_class=CobraParser)
    for name in ("list", "ls"):
        ls = sub.add_parser(name, parents=[common],
                            help="List every package" if name == "list" else argparse.SUPPRESS,
                            description="List every package the registry holds; tables "
                            "shorten digests and fingerprints to 12 digits")
        ls.add_argument("--format", choices=FORMATS, default="table",
                        help="output format: table, csv, json or yaml (default table)")
        ls.set_defaults(handler=_list)
    sub._choices_actions = [a for a in sub._choices_actions if a.dest != "ls"]
    show = sub.add_parser("show", parents=[common], help="Show an application's versions",
                          description="Show an application's versions")
    show.add_argument("name", type=_typed(names.check_app_name), metavar="APP")
    show.add_argument("--format", choices=FORMATS, default="table",
                      help="output format: table, csv, json or yaml (default table)")
    show.set_defaults(handler=_show)
    rm = sub.add_parser(
        "delete", parents=[common], help="Delete an application, a version or a package",
        description="Delete an application, one version of it, or one architecture's "
        "package of a version. Needs the registry stopped; asks on a terminal.",
        epilog="Examples:\n  aar application delete game          # every version\n"
               "  aar application delete game 3 arm64 -y")
    rm.add_argument("name", type=_typed(names.check_app_name), metavar="APP")
    rm.add_argument("version", type=_typed(names.check_version), nargs="?", metavar="VERSION")
    rm.add_argument("arch", type=_typed(names.check_arch), nargs="?", metavar="ARCH")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(handler=_delete)
    return group
