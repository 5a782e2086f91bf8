"""`aar config get|set`: the settings of <data-dir>/conf/main.yaml.

    aar config get KEY                   empty when unset
    aar config set KEY=VALUE…            an empty VALUE removes the key
    aar config set --stdin < pairs       KEY=VALUE lines, kept out of the
                                         process list (secret keys)

KEY is listen or metrics (ADDR:PORT), processes (a count or auto: `aar serve
--processes`), or one of storage.s3's keys that
DESIGN.md fixes: storage.s3.endpoint, .region, .bucket, .prefix,
.access-key, .secret-access-key, .ca-file, .redirect (true or false).

The snap's configure hook runs `aar config set` with what `snap set aar
listen=… metrics=…` holds, and the charm with what its options hold, so a bad
value is refused there, with this message. Only the lines of the keys given
change (a storage.s3 key missing from the file is added at the end of its
section, which is made if need be): the rest of the file (other keys,
comments) is kept byte for byte, and the file is replaced atomically, mode
0600 (it may hold storage credentials). A file the server could not use
(storage.s3 without a bucket or credentials, say, or with processes above 1)
is never written.
"""
import argparse
import os
import re
import tempfile

from .common import CommandError
from .serve import PROCESSES_WITH_S3, listen_address, processes

__all__ = ["add_parser", "KEYS", "S3_KEYS", "SET"]

S3_KEYS = tuple("storage.s3." + key for key in (
    "endpoint", "region", "bucket", "prefix", "access-key", "secret-access-key",
    "ca-file", "redirect"))
KEYS = ("listen", "metrics", "processes") + S3_KEYS
_SECRET = "storage.s3.secret-access-key"
SET = "{key}: {value}"
UNSET = "{key}: unset (default)"
_INDENT = 2                      # of a section this command makes


def _path(args):
    return os.path.join(os.path.abspath(args.data_dir), "conf", "main.yaml")


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")


def _parsed(text, path, storage=False):
    # The reader `aar serve` uses (registry/config.py), so what this command
    # shows and accepts is what the server will read. storage: check
    # storage.s3 as `aar serve` will at start, too.
    from registry.config import Config, ConfigError, parse
    try:
        values = parse(text, path)
        if storage:
            Config(values, path)
        return values
    except ConfigError as exc:
        raise CommandError(str(exc))


def _address(value):
    host, port = listen_address(value)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pair(text):
    key, sep, value = text.partition("=")
    if not sep or key not in KEYS:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY one of {', '.join(KEYS)}, not {text!r}")
    value = value.strip()
    if not value:
        return key, value
    if key in ("listen", "metrics"):
        value = _address(value)             # both keys are ADDR:PORT
    if key == "metrics":
        from metrics.listener import parse_listen
        try:
            parse_listen(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if key == "processes":
        processes(value)                    # ArgumentTypeError when it is not one
    if key == "storage.s3.redirect":
        value = value.lower()
        if value not in ("true", "false"):
            raise argparse.ArgumentTypeError(f"{key} is true or false, not {value!r}")
    if key == "storage.s3.endpoint" and not re.match(r"https?://[^/\s]+/?\Z", value):
        raise argparse.ArgumentTypeError(
            f"{key} is http(s)://HOST[:PORT], not {value!r}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise argparse.ArgumentTypeError(f"{key} cannot hold control characters")
    return key, value


def _check_processes(values):
    """`aar serve` refuses more than one process on storage.s3: so does this."""
    storage = values.get("storage")
    if values.get("processes") is None or not isinstance(storage, dict) \
            or storage.get("s3") is None:
        return
    try:
        count = processes(str(values["processes"]))
    except argparse.ArgumentTypeError:
        return                              # a value written by hand: serve says
    if count > 1:
        raise CommandError(PROCESSES_WITH_S3.format(what="processes"))


def _rendered(key, value):
    """The YAML text of value: true/false bare, anything else quoted."""
    if key == "storage.s3.redirect":
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _get(args, ctx):
    path = _path(args)
    value = _parsed(_read(path), path)
    for part in args.key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        value = "true" if value else "false"
    print("" if value is None else value, file=ctx.out)
    return 0


# -- editing the file's lines --------------------------------------------------------

def _content(line):
    body = line.strip()
    return bool(body) and not body.startswith("#")


def _indent(line):
    return len(line) - len(line.lstrip(" "))


def _block_end(lines, at):
    """The index after the last line nested under lines[at]."""
    end = at + 1
    for i in range(at + 1, len(lines)):
        if _content(lines[i]):
            if _indent(lines[i]) <= _indent(lines[at]):
                break
            end = i + 1
    return end


def _find(lines, key, lo, hi, indent):
    # The key at exactly this indent: a deeper line has more spaces before it.
    line_re = re.compile(rf" {{{indent}}}{re.escape(key)}:(\s|\Z)")
    return next((i for i in range(lo, hi) if line_re.match(lines[i])), None)


def _edit(lines, parts, text, lo, hi, indent):
    """Set the key path parts to text (None: remove it) among lines[lo:hi],
    whose keys sit at indent. A section left empty by a removal goes too."""
    at = _find(lines, parts[0], lo, hi, indent)
    if len(parts) == 1:
        new = [] if text is None else [f"{' ' * indent}{parts[0]}: {text}\n"]
        if at is not None:
            lines[at:at + 1] = new
        else:
            # A new top-level key goes first, a new nested one last in its section.
            where = lo if indent == 0 else hi
            lines[where:where] = new
        return
    if at is None:
        if text is None:
            return
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        new = [f"{' ' * (indent + _INDENT * depth)}{part}:\n"
               for depth, part in enumerate(parts[:-1])]
        new.append(f"{' ' * (indent + _INDENT * (len(parts) - 1))}{parts[-1]}: {text}\n")
        where = len(lines) if indent == 0 else hi
        lines[where:where] = new
        return
    if lines[at].split(":", 1)[1].split("#", 1)[0].strip():
        raise CommandError(f"main.yaml: {parts[0]} holds a value where a section is expected")
    end = _block_end(lines, at)
    inner = next((_indent(line) for line in lines[at + 1:end] if _content(line)),
                 indent + _INDENT)
    _edit(lines, parts[1:], text, at + 1, end, inner)
    if text is None and not any(_content(line) for line in lines[at + 1:_block_end(lines, at)]):
        del lines[at]


def _stdin_pairs(stdin):
    """The KEY=VALUE lines of standard input; a bad one is a usage error."""
    from cli.confirm import is_tty
    if is_tty(stdin):
        raise CommandError("--stdin reads KEY=VALUE lines from a pipe or file, "
                           "not a terminal", status=2)
    data = stdin.buffer.read(1 << 20) if hasattr(stdin, "buffer") else stdin.read(1 << 20)
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise CommandError("standard input is not UTF-8 text", status=2) from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                pairs.append(_pair(line))
            except argparse.ArgumentTypeError as exc:
                raise CommandError(f"standard input line {number}: {exc}", status=2) from None
    return pairs


def _set(args, ctx):
    pairs = list(args.pairs) + (_stdin_pairs(ctx.stdin) if args.stdin else [])
    if not pairs:
        raise CommandError("nothing to set: give KEY=VALUE arguments (or lines on "
                           "standard input with --stdin)", status=2)
    path = _path(args)
    before = _read(path)
    lines = before.splitlines(keepends=True)
    for key, value in pairs:
        _edit(lines, key.split("."), _rendered(key, value) if value else None,
              0, len(lines), 0)
    text = "".join(lines)
    # Never write a file the server cannot read, or would refuse to start on.
    values = _parsed(text, path, storage=any(key in S3_KEYS for key, _ in pairs))
    _check_processes(values)
    if text != before:
        _write(path, text)
    for key, value in pairs:
        shown = "(hidden)" if key == _SECRET else value
        print((SET if value else UNSET).format(key=key, value=shown), file=ctx.out)
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
    text = "Get or set the registry's settings in conf/main.yaml"
    group = cmds.add_parser("config", help=text, description=text)
    group.set_defaults(handler=None, help_parser=group)
    sub = group.add_subparsers(metavar="command", parser_class=CobraParser)
    get = sub.add_parser("get", parents=[common], help="Print one setting",
                         description="Print one setting of conf/main.yaml: listen "
                         "(the HTTPS address), metrics (the plain-HTTP /metrics "
                         "address), processes (aar serve --processes) or a storage.s3 "
                         "key; empty when unset")
    get.add_argument("key", choices=KEYS, metavar="KEY",
                     help="listen, metrics, processes or storage.s3.{endpoint,region,"
                     "bucket,prefix,access-key,secret-access-key,ca-file,redirect}")
    get.set_defaults(handler=_get)
    st = sub.add_parser(
        "set", parents=[common], help="Set settings",
        description="Set listen, metrics, processes and storage.s3 keys in "
        "conf/main.yaml; an empty VALUE removes the key. `aar serve` reads them at "
        "start; --listen wins over listen. A storage.s3 section must end up usable (a bucket and "
        "credentials, here or in $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY).",
        epilog="Examples:\n  sudo aar config set listen=0.0.0.0:3000\n"
               "  sudo aar config set metrics=127.0.0.1:9300 listen=[::]:3000\n"
               "  sudo aar config set processes=auto      # aar serve --processes\n"
               "  printf '%s\\n' storage.s3.bucket=aar storage.s3.access-key=AKIA… \\\n"
               "      storage.s3.secret-access-key=… | sudo aar config set --stdin\n"
               "  sudo snap set aar listen=0.0.0.0:3000     # the same, in the snap")
    st.add_argument("pairs", type=_pair, nargs="*", metavar="KEY=VALUE")
    st.add_argument("--stdin", action="store_true",
                    help="also read KEY=VALUE lines from standard input, which, unlike "
                    "arguments, other users cannot see in the process list")
    st.set_defaults(handler=_set)
    return group
