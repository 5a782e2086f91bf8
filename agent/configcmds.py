"""The `config` half of the ams-sync command line (it mirrors `amc config …`).

    ams-sync config trust add [PATH|-]         trust the registry's certificate
    ams-sync config trust list|remove
    ams-sync config set KEY VALUE  |  get KEY  |  show
    ams-sync config client-cert show|renew     this node's registry client certificate

ams_sync.py builds the parser and calls add_commands() with its helpers; each
handler takes the _Context (args, stdin, out, err, dirs). Errors are raised
for ams_sync.main to print; UsageError means exit status 2.
"""
import argparse
import os

import names
from cli.confirm import is_tty
from cli.formats import render
from trust import certs
from trust.errors import AlreadyExists, CertificateError
from trust.store import TrustStore

from . import config as config_mod
from .errors import ConfigError

__all__ = ["add_commands", "UsageError", "TRUST_ROLE", "TRUST_ADDED", "TRUST_ALREADY",
           "SNAP_HOME_HINT", "TRUST_EXPIRED", "TRUST_REMOVED", "NO_INPUT", "RENEWED"]

# The agent's trust store holds registry server certificates. TrustStore
# knows the registry's two roles only; "client" (read-only) is the closest
# meaning and no code reads the role back.
TRUST_ROLE = "client"

TRUST_ADDED = "{fingerprint}"
TRUST_ALREADY = "Certificate {fingerprint} ({name}) is already trusted: nothing changed"
SNAP_HOME_HINT = ("under strict snap confinement ams-sync can only read files in the "
                  "home directory (/root under sudo): copy the certificate there, or "
                  "pipe it in: cat server.crt | ams-sync config trust add -")
TRUST_EXPIRED = "Warning: certificate {fingerprint} expired at {not_after}"
TRUST_REMOVED = "Removed certificate {fingerprint} ({name})"
NO_INPUT = ("no certificate given: name a file (ams-sync config trust add server.crt) "
            "or pipe one in (cat server.crt | ams-sync config trust add)")
RENEWED = """\
New registry client certificate {fingerprint}
  {path}
(the old one is kept as {old})
Next: trust it on the registry host, with the same role as before:
  cat client.crt | sudo aar trust add [--publisher]
then remove the old one there:
  sudo aar trust remove {old_fingerprint}"""
CLIENT_CERT = "{fingerprint}\n  {path}\n  expires {not_after}"

_MAX_PEM = 1024 * 1024


class UsageError(Exception):
    """An argument that only the command itself can check; exit status 2."""


def _when(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def setting(text):
    """argparse type of a settings key."""
    if text not in config_mod.KEYS:
        raise argparse.ArgumentTypeError(config_mod.UNKNOWN_KEY.format(key=repr(text)))
    return text


# -- config trust ---------------------------------------------------------------------------

def _trust_add(ctx):
    ctx.ensure_client_certificate()
    if ctx.args.path in (None, "-"):
        # No PATH on a terminal would wait for a paste nobody announced.
        if ctx.args.path is None and is_tty(ctx.stdin):
            raise UsageError(NO_INPUT)
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
            # Adding the same certificate twice leaves it trusted: success,
            # as in `aar trust add`.
            print(TRUST_ALREADY.format(fingerprint=cert.fingerprint,
                                       name=cert.common_name or "-"), file=ctx.err)
    if cert.expired():
        print(TRUST_EXPIRED.format(fingerprint=cert.fingerprint,
                                   not_after=_when(cert.not_after)), file=ctx.err)
    ctx.print(TRUST_ADDED.format(fingerprint=cert.fingerprint))


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
    # Tables shorten fingerprints as `aar trust list` does; `config set
    # registry.fingerprint` takes the 12-digit prefix.
    ctx.out.write(render(rows, columns, ctx.args.format,
                         short={"fingerprint": lambda fp: fp[:12]}))


def _trust_remove(ctx):
    with TrustStore(ctx.dirs.trust_db) as store:
        record = store.remove(ctx.args.fingerprint)
    ctx.print(TRUST_REMOVED.format(fingerprint=record.fingerprint, name=record.name or "-"))


# -- config set / get / show ------------------------------------------------------------------

def _config_set(ctx):
    ctx.ensure_client_certificate()
    key, value = ctx.args.key, ctx.args.value
    if key == "registry.fingerprint" and value.strip():
        # Like every command taking a fingerprint, accept a unique prefix of
        # one the trust store holds.
        try:
            value = names.check_fingerprint(value)
        except ValueError as error:
            raise UsageError(config_mod.BAD_FINGERPRINT.format(error=error)) from None
        if len(value) < names.FINGERPRINT_LEN:
            with TrustStore(ctx.dirs.trust_db) as store:
                value = store.resolve(value)
    try:
        value = config_mod.validate(key, value)
    except ConfigError as error:
        raise UsageError(str(error)) from None
    config_mod.Config.load(ctx.dirs.config).set(key, value)


def _config_get(ctx):
    # The value alone, for scripts: url=$(ams-sync config get registry.url)
    ctx.print(config_mod.Config.load(ctx.dirs.config).get(ctx.args.key))


def _config_show(ctx):
    ctx.ensure_client_certificate()
    settings = config_mod.Config.load(ctx.dirs.config).as_dict()
    if ctx.args.format in ("json", "yaml"):
        ctx.out.write(render(settings, [], ctx.args.format))
    else:
        rows = [{"key": key, "value": value} for key, value in settings.items()]
        ctx.out.write(render(rows, [("key", "KEY"), ("value", "VALUE")], ctx.args.format))


# -- config client-cert -----------------------------------------------------------------------

def _client_cert_show(ctx):
    path, _ = ctx.dirs.client_certificate()
    cert = certs.load_certificate(path)
    ctx.print(CLIENT_CERT.format(fingerprint=cert.fingerprint, path=path,
                                 not_after=_when(cert.not_after)))


def _client_cert_renew(ctx):
    old_path, _ = ctx.dirs.client_certificate()
    old = certs.load_certificate(old_path)
    kept = ctx.dirs.renew_client_certificate()
    new = certs.load_certificate(ctx.dirs.client_cert)
    ctx.print(RENEWED.format(fingerprint=new.fingerprint, path=ctx.dirs.client_cert,
                             old=kept, old_fingerprint=old.fingerprint[:12]))


def add_commands(config, common, leaf, group, format_flag, fingerprint):
    """Add the `config` commands under the config group's subparsers."""
    _, trust = group(config, "trust", "Manage the registry certificates this node trusts")
    add = leaf(trust, "add", "Trust a registry certificate", _trust_add, common,
               "Trust the registry's server certificate, read from PATH or from "
               "standard input ('-' or no PATH); prints its fingerprint. Adding one "
               "that is already trusted changes nothing and succeeds.")
    add.add_argument("path", nargs="?", metavar="PATH")
    ls = leaf(trust, "list", "List trusted certificates", _trust_list, common,
              aliases=["ls"])
    format_flag(ls, "table")
    rm = leaf(trust, "remove", "Remove a trusted certificate", _trust_remove, common)
    rm.add_argument("fingerprint", type=fingerprint, metavar="FINGERPRINT",
                    help="fingerprint, or a unique prefix of at least 12 hex digits")
    st = leaf(config, "set", "Set a registry setting", _config_set, common,
              "Set a registry setting; an empty VALUE restores the default. Keys: "
              "registry.url (https://HOST:PORT), registry.fingerprint (of a trusted "
              "certificate), registry.mode (push, pull or manual; default pull), "
              "registry.update_interval (30s, 5m, 1h30m; default 1h), "
              "registry.filter (comma-separated tags; empty = all)")
    st.epilog = ("Examples:\n  ams-sync config set registry.url https://192.168.178.45:3000\n"
                 "  ams-sync config set registry.fingerprint 3f2a9c01b7e4\n"
                 "  ams-sync config set registry.mode push")
    st.add_argument("key", type=setting, metavar="KEY")
    st.add_argument("value", metavar="VALUE")
    get = leaf(config, "get", "Print one registry setting", _config_get, common,
               "Print the value of one registry setting (its default when unset)")
    get.add_argument("key", type=setting, metavar="KEY")
    show = leaf(config, "show", "Show the registry settings", _config_show, common)
    format_flag(show, "yaml")
    _, cc = group(config, "client-cert", "Show or renew this node's registry client "
                  "certificate")
    leaf(cc, "show", "Print the client certificate's fingerprint, path and expiry",
         _client_cert_show, common)
    leaf(cc, "renew", "Make a new client certificate", _client_cert_renew, common,
         "Make a new key and client certificate for this node (the old pair is "
         "kept beside it) and print what to trust on the registry")
