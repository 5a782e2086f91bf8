"""`aar config get|set`: the top-level addresses in <data-dir>/conf/main.yaml.

    aar config get KEY                   listen or metrics; empty when unset
    aar config set KEY=VALUE…            an empty VALUE removes the key

The snap's configure hook runs `aar config set` with what `snap set aar
listen=… metrics=…` holds, so a bad value is refused there, with this
message. Only the lines of these keys change: the rest of the file (the
storage section, comments) is kept byte for byte, and the file is replaced
atomically, mode 0600 (it may hold storage credentials).
"""
import argparse
import os
import re
import tempfile

from .common import CommandError
from .serve import listen_address

__all__ = ["add_parser", "KEYS", "SET"]

KEYS = ("listen", "metrics")
SET = "{key}: {value}"
UNSET = "{key}: unset (default)"


def _path(args):
    return os.path.join(os.path.abspath(args.data_dir), "conf", "main.yaml")


def _line_of(key):
    # A top-level key: at column 0, so `listen:` inside a section is not it.
    return re.compile(rf"^{re.escape(key)}:(.*)$", re.M)


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")


def _parsed(text, path):
    # The reader `aar serve` uses (registry/config.py), so what this command
    # shows and accepts is what the server will read.
    from registry.config import ConfigError, parse
    try:
        return parse(text, path)
    except ConfigError as exc:
        raise CommandError(str(exc))


def _pair(text):
    key, sep, value = text.partition("=")
    if not sep or key not in KEYS:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY one of {', '.join(KEYS)}, not {text!r}")
    value = value.strip()
    if value:
        host, port = listen_address(value)     # both keys are ADDR:PORT
        value = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if value and key == "metrics":
        from metrics.listener import parse_listen
        try:
            parse_listen(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return key, value


def _get(args, ctx):
    path = _path(args)
    value = _parsed(_read(path), path).get(args.key)
    print("" if value is None else value, file=ctx.out)
    return 0


def _set(args, ctx):
    path = _path(args)
    before = _read(path)
    lines = before.splitlines(keepends=True)
    for key, value in args.pairs:
        at = next((i for i, line in enumerate(lines) if _line_of(key).match(line)), None)
        new = [f'{key}: "{value}"\n'] if value else []
        if at is None:
            lines[:0] = new
        else:
            lines[at:at + 1] = new
        print((SET if value else UNSET).format(key=key, value=value), file=ctx.out)
    text = "".join(lines)
    _parsed(text, path)             # never write a file the server cannot read
    if text != before:
        _write(path, text)
    return 0


def _write(path, text):
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".main.yaml.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}")


def add_parser(cmds, common):
    from cli.cobra import CobraParser
    text = "Get or set the registry's addresses in conf/main.yaml"
    group = cmds.add_parser("config", help=text, description=text)
    group.set_defaults(handler=None, help_parser=group)
    sub = group.add_subparsers(metavar="command", parser_class=CobraParser)
    get = sub.add_parser("get", parents=[common], help="Print one setting",
                         description="Print one setting of conf/main.yaml: listen "
                         "(the HTTPS address) or metrics (the plain-HTTP /metrics "
                         "address); empty when unset")
    get.add_argument("key", choices=KEYS, metavar="KEY", help="listen or metrics")
    get.set_defaults(handler=_get)
    st = sub.add_parser(
        "set", parents=[common], help="Set settings",
        description="Set listen and metrics in conf/main.yaml; an empty VALUE removes "
        "the key. `aar serve` reads them at start; --listen wins over listen.",
        epilog="Examples:\n  sudo aar config set listen=0.0.0.0:3000\n"
               "  sudo aar config set metrics=127.0.0.1:9300 listen=[::]:3000\n"
               "  sudo snap set aar listen=0.0.0.0:3000     # the same, in the snap")
    st.add_argument("pairs", type=_pair, nargs="+", metavar="KEY=VALUE")
    st.set_defaults(handler=_set)
    return group
