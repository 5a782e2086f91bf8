"""ams-sync: the registry agent of one AMS node (`python -m ams_sync`).

Its commands mirror `amc config …` and `amc application …`, so the operator
guide's steps map one to one:

    ams-sync config trust add PATH|-          trust the registry's certificate
    ams-sync config trust list|remove
    ams-sync config set KEY VALUE             registry.url, .fingerprint, .mode, …
    ams-sync config show
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
from agent import config as config_mod
from agent.appstore import AppStore
from agent.errors import AgentError, ConfigError
from agent.paths import DataDir, default_data_dir
from cli.cobra import CobraParser
from cli.formats import FORMATS, render
from trust import certs
from trust.errors import AlreadyExists, CertificateError, TrustError
from trust.store import TrustStore
from version import VERSION

__all__ = [
    "main", "TRUST_ROLE", "TRUST_ADDED", "TRUST_EXPIRED", "TRUST_REMOVED",
    "NO_CLIENT_CERT", "APP_CREATED", "APP_PUBLISHED", "APP_REVOKED",
    "APP_DELETED", "VERSION_DELETED", "ERROR", "USAGE_ERROR",
]

# The agent's trust store holds registry server certificates. TrustStore
# knows the registry's two roles only; "client" (read-only) is the closest
# meaning and no code reads the role back.
TRUST_ROLE = "client"

TRUST_ADDED = "{fingerprint}"
SNAP_HOME_HINT = ("under strict snap confinement ams-sync can only read files in the "
                  "home directory (/root under sudo): copy the certificate there, or "
                  "pipe it in: cat server.crt | ams-sync config trust add -")
TRUST_EXPIRED = "Warning: certificate {fingerprint} expired at {not_after}"
TRUST_REMOVED = "Removed certificate {fingerprint} ({name})"
NO_CLIENT_CERT = "Warning: cannot create the registry client certificate: {error}"
APP_CREATED = "Created application {name} version {version} ({architecture})"
APP_PUBLISHED = "Published {name} version {version}"
APP_REVOKED = "Revoked {name} version {version}"
APP_DELETED = "Deleted application {name}"
VERSION_DELETED = "Deleted {name} version {version}"
ERROR = "Error: {message}"
USAGE_ERROR = "Error: {message}\nRun '{prog} --help' for usage."

_MAX_PEM = 1024 * 1024


class _UsageError(Exception):
    """An argument that only the command itself can check; exit status 2."""


class _Context:
    """What a command needs: its streams and the data directory."""

    def __init__(self, args, stdin, out, err):
        self.args, self.stdin, self.out, self.err = args, stdin, out, err
        self.dirs = DataDir(args.data_dir or default_data_dir())

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


def _setting(text):
    if text not in config_mod.KEYS:
        raise argparse.ArgumentTypeError(config_mod.UNKNOWN_KEY.format(key=repr(text)))
    return text


# -- config ------------------------------------------------------------------------------

def _trust_add(ctx):
    ctx.ensure_client_certificate()
    if ctx.args.path in (None, "-"):
        cert = certs.parse_pem(ctx.stdin.read(_MAX_PEM + 1))
    else:
        try:
            cert = certs.load_certificate(ctx.args.path)
        except CertificateError as error:
            # AppArmor denies the snap what lies outside its plugs; say so
            # rather than leave a bare "Permission denied".
            if os.environ.get("SNAP") and "ermission denied" in str(error):
                raise CertificateError(f"{error}; {SNAP_HOME_HINT}") from None
            raise
    with TrustStore(ctx.dirs.trust_db) as store:
        try:
            store.add(cert, TRUST_ROLE)
        except AlreadyExists:
            pass  # adding the same certificate twice leaves it trusted: success
    if cert.expired():
        print(TRUST_EXPIRED.format(fingerprint=cert.fingerprint,
                                   not_after=_when(cert.not_after)), file=ctx.err)
    ctx.print(TRUST_ADDED.format(fingerprint=cert.fingerprint))


def _when(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _trust_list(ctx):
    with TrustStore(ctx.dirs.trust_db) as store:
        records = store.records()
    rows = []
    for record in records:
        cert = certs.parse_pem(record.pem)
        rows.append({"fingerprint": record.fingerprint, "common_name": record.name,
                     "issue_date": _when(cert.not_before),
                     "expiry_date": _when(cert.not_after), "added_at": record.added_at})
    columns = [("fingerprint", "FINGERPRINT"), ("common_name", "COMMON NAME"),
               ("issue_date", "ISSUE DATE"), ("expiry_date", "EXPIRY DATE")]
    ctx.out.write(render(rows, columns, ctx.args.format))


def _trust_remove(ctx):
    with TrustStore(ctx.dirs.trust_db) as store:
        record = store.remove(ctx.args.fingerprint)
    ctx.print(TRUST_REMOVED.format(fingerprint=record.fingerprint, name=record.name or "-"))


def _config_set(ctx):
    ctx.ensure_client_certificate()
    key, value = ctx.args.key, ctx.args.value
    if key == "registry.fingerprint" and value.strip():
        # Like every command taking a fingerprint, accept a unique prefix of
        # one the trust store holds.
        try:
            value = names.check_fingerprint(value)
        except ValueError as error:
            raise _UsageError(config_mod.BAD_FINGERPRINT.format(error=error)) from None
        if len(value) < names.FINGERPRINT_LEN:
            with TrustStore(ctx.dirs.trust_db) as store:
                value = store.resolve(value)
    try:
        value = config_mod.validate(key, value)
    except ConfigError as error:
        raise _UsageError(str(error)) from None
    config_mod.Config.load(ctx.dirs.config).set(key, value)


def _config_show(ctx):
    ctx.ensure_client_certificate()
    settings = config_mod.Config.load(ctx.dirs.config).as_dict()
    if ctx.args.format in ("json", "yaml"):
        ctx.out.write(render(settings, [], ctx.args.format))
    else:
        rows = [{"key": key, "value": value} for key, value in settings.items()]
        ctx.out.write(render(rows, [("key", "KEY"), ("value", "VALUE")], ctx.args.format))


# -- application -------------------------------------------------------------------------

def _store(ctx):
    return AppStore(ctx.dirs.root)


def _app_create(ctx):
    with _store(ctx) as store:
        record = store.create(ctx.args.path, ctx.args.architecture)
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
    _, trust = _group(config, "trust", "Manage the registry certificates this node trusts")
    add = _leaf(trust, "add", "Trust a registry certificate", _trust_add, common,
                "Trust the registry's server certificate, read from PATH or from "
                "standard input ('-' or no PATH); prints its fingerprint")
    add.add_argument("path", nargs="?", metavar="PATH")
    ls = _leaf(trust, "list", "List trusted certificates", _trust_list, common,
               aliases=["ls"])
    _format_flag(ls, "table")
    rm = _leaf(trust, "remove", "Remove a trusted certificate", _trust_remove, common)
    rm.add_argument("fingerprint", type=_fingerprint, metavar="FINGERPRINT",
                    help="fingerprint, or a unique prefix of at least 12 hex digits")
    st = _leaf(config, "set", "Set a registry setting", _config_set, common,
               "Set a registry setting; an empty VALUE restores the default. Keys: "
               "registry.url (https://HOST:PORT), registry.fingerprint (of a trusted "
               "certificate), registry.mode (push, pull or manual; default pull), "
               "registry.update_interval (30s, 5m, 1h30m; default 1h), "
               "registry.filter (comma-separated tags; empty = all)")
    st.add_argument("key", type=_setting, metavar="KEY")
    st.add_argument("value", metavar="VALUE")
    show = _leaf(config, "show", "Show the registry settings", _config_show, common)
    _format_flag(show, "yaml")

    _, app = _group(cmds, "application", "Manage the node's applications")
    create = _leaf(app, "create", "Add an application package", _app_create, common,
                   "Add a package (a directory, .zip or .tar.bz2 with manifest.yaml "
                   "at its root) as the next version of the application it names")
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
    return root


def main(argv=None, *, stdin=None, stdout=None, stderr=None) -> int:
    """Run one ams-sync command; return its exit status."""
    stdin, out, err = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = _parser().parse(argv, out, err)
    if isinstance(args, int):
        return args
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
