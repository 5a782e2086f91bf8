"""ams-sync: the registry agent of one AMS node (`python -m ams_sync`).

Its commands mirror `amc config …` and `amc application …`, so the operator
guide's steps map one to one:

    ams-sync config trust add PATH|-          trust the registry's certificate
    ams-sync config trust list|remove
    ams-sync config set KEY VALUE             registry.url, .fingerprint, .mode, …
    ams-sync config get KEY | show
    ams-sync config client-cert show|renew    (agent/configcmds.py)
    ams-sync application create PATH [--architecture A]
    ams-sync application list|show|publish|revoke|delete
    ams-sync registry list|push APP|pull APP|join TOKEN, sync, run   (agent/commands.py)

This module is the only place that prints and turns errors into exit codes:
0 success, 1 failure (AgentError, TrustError, OSError), 2 usage.
"""
import argparse
import os
import sys

import names
from agent import configcmds
from agent.configcmds import (NO_INPUT, SNAP_HOME_HINT, TRUST_ADDED,  # noqa: F401
                              TRUST_ALREADY, TRUST_EXPIRED, TRUST_REMOVED, TRUST_ROLE)
from agent.appstore import AppStore
from agent.errors import AgentError
from agent.paths import DataDir, default_data_dir
from cli.cobra import CobraParser, add_completion_command, add_help_command
from cli.confirm import is_tty
from cli.formats import FORMATS, render
from cli.progress import StatusLine
from trust.errors import TrustError
from version import VERSION

__all__ = [
    "main", "TRUST_ROLE", "TRUST_ADDED", "TRUST_EXPIRED", "TRUST_REMOVED",
    "NO_CLIENT_CERT", "APP_CREATED", "APP_PUBLISHED", "APP_REVOKED",
    "APP_DELETED", "VERSION_DELETED", "ERROR", "USAGE_ERROR",
]

NO_CLIENT_CERT = "Warning: cannot create the registry client certificate: {error}"
APP_CREATED = "Created application {name} version {version} ({architecture})"
APP_PUBLISHED = "Published {name} version {version}"
APP_REVOKED = "Revoked {name} version {version}"
APP_DELETED = "Deleted application {name}"
VERSION_DELETED = "Deleted {name} version {version}"
ERROR = "Error: {message}"
USAGE_ERROR = "Error: {message}\nRun '{prog} --help' for usage."

_UsageError = configcmds.UsageError


class _Context:
    """What a command needs: its streams and the data directory."""

    def __init__(self, args, stdin, out, err):
        self.args, self.stdin, self.out, self.err = args, stdin, out, err
        # Absolute, so that logs and messages name the directory unambiguously.
        self.dirs = DataDir(os.path.abspath(args.data_dir or default_data_dir()))

    def print(self, text):
        print(text, file=self.out)

    def ensure_client_certificate(self):
        # The operator copies registry/client.crt to the registry host right
        # after configuring the node, so every `config` command makes it. A
        # node without openssl can still be configured: warn, go on.
        try:
            self.dirs.client_certificate()
        except (TrustError, OSError) as error:
            print(NO_CLIENT_CERT.format(error=error), file=self.err)


# -- argument types ---------------------------------------------------------------------

def _typed(check):
    def convert(text):
        try:
            return check(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = check.__name__.replace("check_", "")
    return convert


_app_name = _typed(names.check_app_name)
_version = _typed(names.check_version)
_arch = _typed(names.check_arch)
_fingerprint = _typed(names.check_fingerprint)


# -- application -------------------------------------------------------------------------

def _store(ctx):
    return AppStore(ctx.dirs.root)


def _app_create(ctx):
    # Compressing and checking a large package takes a while: on a terminal,
    # a status line says which phase it is in; logs and pipes get nothing.
    status = StatusLine(ctx.err) if is_tty(ctx.err) else None
    progress = status.reporter(os.path.basename(os.path.normpath(ctx.args.path))) \
        if status else None
    try:
        with _store(ctx) as store:
            record = store.create(ctx.args.path, ctx.args.architecture, progress=progress)
    finally:
        if status:
            status.clear()
    ctx.print(APP_CREATED.format(**record))


def _numbers(versions, published=None):
    return ",".join(str(v["version"]) for v in versions
                    if published is None or v["published"] == published)


def _app_list(ctx):
    with _store(ctx) as store:
        apps = store.list()
    if ctx.args.format in ("json", "yaml"):
        ctx.out.write(render(apps, [], ctx.args.format))
        return
    rows = [{"name": app["name"], "versions": _numbers(app["versions"]),
             "published": _numbers(app["versions"], True),
             "architecture": sorted({v["architecture"] for v in app["versions"]}),
             "origin": app["origin"],
             "tags": app["versions"][-1]["tags"] if app["versions"] else []}
            for app in apps]
    columns = [("name", "NAME"), ("versions", "VERSIONS"), ("published", "PUBLISHED"),
               ("architecture", "ARCHITECTURE"), ("origin", "ORIGIN"), ("tags", "TAGS")]
    ctx.out.write(render(rows, columns, ctx.args.format))


def _app_show(ctx):
    with _store(ctx) as store:
        app = store.show(ctx.args.name)
    if ctx.args.format in ("json", "yaml"):
        ctx.out.write(render(app, [], ctx.args.format))
        return
    columns = [("version", "VERSION"), ("architecture", "ARCHITECTURE"),
               ("published", "PUBLISHED"), ("size", "SIZE"), ("sha256", "SHA256"),
               ("created_at", "CREATED")]
    ctx.out.write(render(app["versions"], columns, ctx.args.format,
                         short={"sha256": lambda digest: digest[:12]}))


def _app_publish(ctx):
    with _store(ctx) as store:
        record = store.publish(ctx.args.name, ctx.args.version, force=ctx.args.force)
    ctx.print(APP_PUBLISHED.format(**record))


def _app_revoke(ctx):
    with _store(ctx) as store:
        record = store.revoke(ctx.args.name, ctx.args.version, force=ctx.args.force)
    ctx.print(APP_REVOKED.format(**record))


def _app_delete(ctx):
    with _store(ctx) as store:
        if ctx.args.version is None:
            store.delete(ctx.args.name, force=ctx.args.force)
            ctx.print(APP_DELETED.format(name=ctx.args.name))
        else:
            store.delete_version(ctx.args.name, ctx.args.version, force=ctx.args.force)
            ctx.print(VERSION_DELETED.format(name=ctx.args.name, version=ctx.args.version))


# -- registry, sync, run -----------------------------------------------------------------
# The registry half adds `registry list|push APP|pull APP`, `sync` and `run`
# here, with the parser helpers below: each leaf sets `handler=`, a function
# taking the _Context and returning the exit status.

def _add_registry_commands(cmds, common):
    # The handlers live in agent/commands.py, beside the engine they drive.
    from agent import commands
    commands.add_commands(cmds, common, _group, _leaf, _format_flag, _app_name)


# -- the parser --------------------------------------------------------------------------

def _group(cmds, name, text):
    group = cmds.add_parser(name, help=text, description=text)
    group.set_defaults(handler=None, help_parser=group)
    return group, group.add_subparsers(metavar="command", parser_class=CobraParser)


def _leaf(cmds, name, text, handler, common, description=None, aliases=()):
    leaf = cmds.add_parser(name, help=text, description=description or text,
                           parents=[common], aliases=list(aliases))
    leaf.set_defaults(handler=handler, help_parser=leaf)
    return leaf


def _format_flag(parser, default):
    parser.add_argument("--format", choices=FORMATS, default=default,
                        help=f"output format: {', '.join(FORMATS)} (default {default})")


def _parser():
    # Leaves carry --data-dir too (`… config show --data-dir D`); SUPPRESS
    # keeps their default from hiding one given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, metavar="DIR",
                        help="agent data directory (default: $AMS_SYNC_DATA_DIR, "
                             "$SNAP_COMMON or ~/.local/share/ams-sync)")
    root = CobraParser(prog="ams-sync", description="AMS registry agent: the node's "
                       "applications and registry settings, pushed to or pulled from aar")
    root.add_argument("--data-dir", default=None, metavar="DIR",
                      help="agent data directory (default: $AMS_SYNC_DATA_DIR, "
                           "$SNAP_COMMON or ~/.local/share/ams-sync)")
    root.add_argument("--version", action="version", version=f"ams-sync {VERSION}",
                      help="version for ams-sync")
    root.set_defaults(handler=None, help_parser=root)
    cmds = root.add_subparsers(metavar="command", parser_class=CobraParser)

    _, config = _group(cmds, "config", "Manage the registry settings and trust")
    configcmds.add_commands(config, common, _leaf, _group, _format_flag, _fingerprint)

    _, app = _group(cmds, "application", "Manage the node's applications")
    create = _leaf(app, "create", "Add an application package", _app_create, common,
                   "Add a package (a directory, .zip or .tar.bz2 with manifest.yaml "
                   "at its root) as the next version of the application it names")
    create.epilog = ("Examples:\n  ams-sync application create ./game        "
                     "# a directory with manifest.yaml\n"
                     "  ams-sync application create game.tar.bz2 --architecture arm64")
    create.add_argument("path", metavar="PATH")
    create.add_argument("--architecture", type=_arch, default=None, metavar="ARCH",
                        help=f"architecture of the package (default "
                             f"{names.host_architecture()})")
    ls = _leaf(app, "list", "List applications", _app_list, common, aliases=["ls"])
    _format_flag(ls, "table")
    show = _leaf(app, "show", "Show an application and its versions", _app_show, common)
    show.add_argument("name", type=_app_name, metavar="APP")
    _format_flag(show, "yaml")
    for name, text, handler in (("publish", "Publish a version", _app_publish),
                                ("revoke", "Unpublish a version", _app_revoke)):
        leaf = _leaf(app, name, text, handler, common)
        leaf.add_argument("name", type=_app_name, metavar="APP")
        leaf.add_argument("version", type=_version, metavar="VERSION")
        leaf.add_argument("--force", action="store_true",
                          help="change an application pulled from the registry")
    rm = _leaf(app, "delete", "Delete an application or one version", _app_delete,
               common)
    rm.add_argument("name", type=_app_name, metavar="APP")
    rm.add_argument("version", type=_version, nargs="?", default=None, metavar="VERSION",
                    help="delete only this version")
    rm.add_argument("--force", action="store_true",
                    help="delete an application pulled from the registry")

    _add_registry_commands(cmds, common)
    add_help_command(cmds, root)
    add_completion_command(cmds, root)
    return root


def main(argv=None, *, stdin=None, stdout=None, stderr=None) -> int:
    """Run one ams-sync command; return its exit status."""
    stdin, out, err = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = _parser().parse(argv, out, err)
    if isinstance(args, int):
        return args
    if getattr(args, "cobra", None):
        return args.cobra(args, out)
    if args.handler is None:
        out.write(args.help_parser.format_help())
        return 0
    try:
        return args.handler(_Context(args, stdin, out, err)) or 0
    except _UsageError as error:
        print(USAGE_ERROR.format(message=error, prog=args.help_parser.prog), file=err)
        return 2
    except (AgentError, TrustError) as error:
        print(ERROR.format(message=error), file=err)
        return 1
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(ERROR.format(message=f"{where}{error.strerror or error}"), file=err)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
