"""The registry half of the ams-sync command line.

    ams-sync registry list [--format table|csv|json|yaml]
    ams-sync registry push APP        manual mode: push APP's published versions
    ams-sync registry pull APP        manual mode: pull APP's versions
    ams-sync registry join TOKEN      enrol with a registry (agent/join.py)
    ams-sync sync [--dry-run]         one cycle now (or its plan); exit 1 if anything failed
    ams-sync run [--log-level L] [--metrics-listen ADDR:PORT]
                                      the loop, until SIGTERM or SIGINT

ams_sync.py builds the parser and calls add_commands() with its helpers;
each handler takes its _Context (args, out, err, dirs) and returns the exit
status. Errors are raised for ams_sync.main to print.
"""
import argparse
import logging

from cli.formats import render

from . import config as config_mod
from . import loop
from .appstore import AppStore
from .errors import AgentError
from .sync import Listing, Sync, connect

__all__ = ["add_commands", "MANUAL_SYNC", "FAILED_LINE", "DONE_LINE", "LOG_FORMAT"]

MANUAL_SYNC = ("registry.mode is manual: nothing is synced automatically; use "
               "`ams-sync registry push APP` or `ams-sync registry pull APP`")
DONE_LINE = "  {action} {what}"
LOG_LEVELS = ("debug", "info", "warning", "error")
FAILED_LINE = "  failed: {message}"
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"

_LIST_COLUMNS = [("name", "NAME"), ("version", "VERSION"), ("architecture", "ARCHITECTURE"),
                 ("size", "SIZE"), ("sha256", "SHA256"), ("tags", "TAGS"),
                 ("publisher", "PUBLISHER"), ("created_at", "CREATED")]


def _print_summary(ctx, summary):
    ctx.print(str(summary))
    actions = (("would push", "would pull", "would remove") if summary.dry_run
               else ("pushed", "pulled", "removed"))
    for action, items in zip(actions, (summary.pushed, summary.pulled, summary.removed)):
        for what in items:
            ctx.print(DONE_LINE.format(action=action, what=what))
    for message in summary.failed:
        print(FAILED_LINE.format(message=message), file=ctx.err)
    return 0 if summary.ok else 1


def _session(ctx, listing=None, dry_run=False):
    """(config, client, Sync factory) for one command."""
    config = config_mod.Config.load(ctx.dirs.config)
    client, own = connect(ctx.dirs, config)
    progress = loop.TerminalProgress(ctx.err) if _tty(ctx.err) else None

    def make(store):
        return Sync(client, store, own_fingerprint=own, listing=listing, progress=progress,
                    dry_run=dry_run)
    return config, client, make


def _tty(stream):
    return hasattr(stream, "isatty") and stream.isatty()


def _registry_list(ctx):
    config = config_mod.Config.load(ctx.dirs.config)
    client, _ = connect(ctx.dirs, config)
    with client:
        _, apps = client.list()
    rows = [pkg for app in apps for pkg in app["versions"]]
    if ctx.args.format in ("json", "yaml"):
        ctx.out.write(render(rows, [], ctx.args.format))
        return 0
    short = {"sha256": lambda v: v[:12], "publisher": lambda v: (v or "-")[:12]}
    ctx.out.write(render(rows, _LIST_COLUMNS, ctx.args.format, short=short))
    return 0


def _registry_push(ctx):
    _, client, make = _session(ctx)
    with client, AppStore(ctx.dirs.root) as store:
        return _print_summary(ctx, make(store).push(ctx.args.name))


def _registry_pull(ctx):
    _, client, make = _session(ctx)
    with client, AppStore(ctx.dirs.root) as store:
        return _print_summary(ctx, make(store).pull(app=ctx.args.name))


def _registry_join(ctx):
    from .join import join
    ctx.print(join(ctx.dirs, ctx.args.token))
    return 0


def _sync(ctx):
    # The listing and its ETag are kept beside config.json, so a `sync` from
    # cron against an unchanged registry costs one 304.
    listing = Listing(ctx.dirs.sync_state)
    if ctx.args.dry_run:
        listing.path = None     # a plan changes nothing, not even the cached listing
    config, client, make = _session(ctx, listing, dry_run=ctx.args.dry_run)
    if config.mode == "manual":
        ctx.print(MANUAL_SYNC)
        return 0
    with client, AppStore(ctx.dirs.root) as store:
        return _print_summary(ctx, make(store).cycle(config.mode, config.filter))


def _run(ctx):
    handler = logging.StreamHandler(ctx.err)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("ams_sync")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, ctx.args.log_level.upper()))
    observer = listener = None
    try:
        if ctx.args.metrics_listen:
            from metrics.listener import MetricsServer
            from .cyclemetrics import CycleMetrics
            observer = CycleMetrics()
            try:
                listener = MetricsServer(ctx.args.metrics_listen, observer.metrics,
                                         observer.health).start()
            except OSError as error:
                raise AgentError("cannot listen for metrics on {}:{}: {}".format(
                    *ctx.args.metrics_listen, error.strerror or error)) from None
            logger.info("metrics on http://%s:%d/metrics and /healthz",
                        *listener.server_address[:2])
        return loop.run(ctx.dirs, ctx.err, observer=observer)
    finally:
        if listener is not None:
            listener.stop()
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _metrics_address(text):
    from metrics.listener import parse_listen
    try:
        return parse_listen(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_commands(cmds, common, group, leaf, format_flag, app_name):
    """Add `registry …`, `sync` and `run` to the ams-sync parser."""
    _, registry = group(cmds, "registry", "Inspect the registry; push or pull one application")
    ls = leaf(registry, "list", "List what the registry holds", _registry_list, common,
              aliases=["ls"])
    format_flag(ls, "table")
    push = leaf(registry, "push", "Push an application's published versions",
                _registry_push, common,
                "Upload every published version of APP (this node's architecture) "
                "that the registry lacks, and delete from the registry the versions "
                "this node pushed and no longer publishes")
    push.add_argument("name", type=app_name, metavar="APP")
    pull = leaf(registry, "pull", "Pull an application's versions", _registry_pull, common,
                "Download every version of APP (this node's architecture) that the "
                "node lacks, and remove pulled versions that left the registry")
    pull.add_argument("name", type=app_name, metavar="APP")
    join = leaf(registry, "join", "Enrol this node with a registry", _registry_join,
                common, "Enrol this node with the registry a join token names (`aar "
                "trust token add` prints one): trusts the registry's certificate, has "
                "the registry trust this node's, and sets registry.url, "
                "registry.fingerprint and registry.mode (pull for a client token, push "
                "for a publisher one)")
    join.add_argument("token", metavar="TOKEN")
    sync = leaf(cmds, "sync", "Run one sync cycle now", _sync, common,
                "Push or pull once, as registry.mode says; exit status 1 if anything "
                "failed. With --dry-run, print what would be pushed, pulled and removed, "
                "and change nothing.")
    sync.add_argument("--dry-run", action="store_true",
                      help="print the plan only: transfer, delete and import nothing")
    run = leaf(cmds, "run", "Sync every registry.update_interval until stopped", _run, common,
               "Run a sync cycle every registry.update_interval (re-reading the settings "
               "each time) until SIGTERM or SIGINT. Cycles that change nothing are "
               "logged at debug level.")
    run.add_argument("--log-level", choices=LOG_LEVELS, default="info", metavar="LEVEL",
                     help="least severe messages logged: debug, info, warning or error "
                          "(default info)")
    run.add_argument("--metrics-listen", type=_metrics_address, default=None,
                     metavar="ADDR:PORT", help="serve plain-HTTP /metrics and /healthz "
                     "there, e.g. 127.0.0.1:9301 (default: off)")
