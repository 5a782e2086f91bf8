"""aar: the application registry's command line.

    aar serve [--data-dir D] [--listen ADDR:PORT] [--workers N] [--recover] [--new-identity]
    aar trust add [PATH] [-p|--publisher] [--name NAME] [-q|--quiet] [--init]
    aar trust list|ls [--format table|csv|json|yaml] [--revoked]
    aar trust remove|revoke FINGERPRINT [-y|--yes]
    aar trust set-role FINGERPRINT client|publisher
    aar trust token add|list|remove [ID]                 join tokens
    aar application list|show APP|delete APP [VERSION [ARCH]]
    aar config get KEY | set KEY=VALUE…   listen, metrics in conf/main.yaml
    aar audit [--since T] [--format table|csv|json|yaml]
    aar help [COMMAND…]  aar completion bash|zsh|fish  aar --version

The commands live in aarcli/, one module per group; this module builds the
parser and is the only place that prints an error or chooses an exit code:
0 done, 1 failed (the message says why), 2 the command line was wrong.
"""
import argparse
import pathlib
import sys

from aarcli import apps, audit, conf, serve, trust
from aarcli.common import CommandError, Context
from aarcli.trust import NEED_YES, NOT_CONFIRMED  # noqa: F401  (tests assert on them)
from cli.cobra import CobraParser, add_completion_command, add_help_command
from registry.audit import AuditError
from registry.paths import default_data_dir
from trust.errors import TrustError
from version import VERSION

__all__ = ["main"]

_DATA_DIR_HELP = ("registry data directory (default: $AAR_DATA_DIR, $SNAP_COMMON, "
                  "/var/lib/aar for root, else ~/.local/share/aar)")


def _parser():
    # --data-dir is taken before the command or after it; SUPPRESS keeps a
    # leaf's default from hiding one given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=pathlib.Path, default=argparse.SUPPRESS,
                        metavar="DIR", help=_DATA_DIR_HELP)
    root = CobraParser(prog="aar", description="Anbox Application Registry: stores "
                       "application packages and serves them to trusted AMS nodes")
    root.add_argument("--data-dir", type=pathlib.Path, default=None, metavar="DIR",
                      help=_DATA_DIR_HELP)
    root.add_argument("--version", action="version", version=f"aar {VERSION}",
                      help="version for aar")
    root.set_defaults(handler=None, help_parser=root)
    cmds = root.add_subparsers(dest="command", metavar="command", parser_class=CobraParser)
    serve.add_parser(cmds, common)
    trust.add_parser(cmds, common, _hide)
    apps.add_parser(cmds, common)
    conf.add_parser(cmds, common)
    audit.add_parser(cmds, common)
    add_help_command(cmds, root)
    add_completion_command(cmds, root)
    return root


def _hide(subparsers, name):
    subparsers._choices_actions = [a for a in subparsers._choices_actions if a.dest != name]


def main(argv=None, *, stdin=None, stdout=None, stderr=None) -> int:
    ctx = Context(stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr)
    args = _parser().parse(argv, ctx.out, ctx.err)
    if isinstance(args, int):
        return args
    if getattr(args, "cobra", None):
        return args.cobra(args, ctx.out)
    if args.handler is None:
        ctx.out.write(args.help_parser.format_help())
        return 0
    if args.data_dir is None:
        args.data_dir = default_data_dir()
    args.argv = sys.argv[1:] if argv is None else [str(a) for a in argv]   # for the audit log
    try:
        return args.handler(args, ctx)
    except CommandError as exc:
        print(f"Error: {exc}", file=ctx.err)
        return exc.status
    except (TrustError, AuditError) as exc:
        print(f"Error: {exc}", file=ctx.err)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
