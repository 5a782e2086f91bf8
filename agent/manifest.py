r"""manifest.yaml, read with a small and strict subset of YAML.

The standard library has no YAML reader, and a manifest needs very little of
YAML, so this module reads exactly the following and refuses the rest with a
ManifestError naming the line:

    # comments, on their own line or after a value
    name: my-game                  plain scalar
    boot-package: "com.example"    double-quoted (escapes \\ \" \n \t \xXX \uXXXX …)
    image: 'default'               single-quoted ('' is one quote)
    version: 3                     an int (key `version`, digits only; "1.0" stays text)
    tags: [game, "casual"]         flow list on one line
    addons:                        block list, items indented or not
      - ssh
    resources:                     mapping one level deep; its values are
      cpus: 2                      scalars or one-line flow lists
      memory: 3GB
    watchdog:
      disabled: false
      allowed-packages: [com.android.settings]

Refused: anchors (&a), aliases (*a), tags (!x), block scalars (| and >),
flow mappings ({a: b}), multi-line strings and flow lists, tab indentation,
duplicate keys, anything nested deeper than shown (a list inside a mapping
written as a block, a list of mappings), directives and several documents
(one leading `---` is allowed). Scalars stay strings ("2", "false", "~"):
only a whole-number `version` becomes an int, and `tags` a list of strings.
A key written with no value and no block below it reads as None.

`name` is required and must be a valid application name (names.py).
"""
import collections
import re

import names

from .errors import ManifestError

__all__ = [
    "parse_manifest", "parse_yaml_subset", "check_tag", "MAX_SIZE",
    "TOO_LARGE", "NOT_UTF8", "CONTROL_CHAR", "TAB_INDENT", "EXPECTED_KEY",
    "DUPLICATE_KEY", "UNEXPECTED_INDENT", "BAD_INDENT", "TOO_DEEP",
    "UNSUPPORTED", "MUST_QUOTE", "COLON_IN_VALUE", "UNTERMINATED",
    "BAD_ESCAPE", "TRAILING_TEXT", "BAD_FLOW_LIST", "EMPTY_ITEM",
    "MISSING_NAME", "NOT_A_STRING", "BAD_VERSION", "BAD_TAGS", "BAD_TAG",
]

MAX_SIZE = 64 * 1024

TOO_LARGE = f"the file is larger than {MAX_SIZE // 1024} KiB"
NOT_UTF8 = "the file is not UTF-8 text"
CONTROL_CHAR = "control character {char} is not allowed"
TAB_INDENT = "tabs are not allowed for indentation: indent with spaces"
EXPECTED_KEY = "expected 'key: value', like 'name: my-game'"
DUPLICATE_KEY = "duplicate key {key} (first on line {first})"
UNEXPECTED_INDENT = "unexpected indentation"
BAD_INDENT = "indentation does not match the lines above ({expected} spaces)"
TOO_DEEP = ("nesting deeper than one level is not supported: use a mapping "
            "of scalars or one-line lists like [a, b]")
UNSUPPORTED = "{what} are not supported"
MUST_QUOTE = "a value starting with {char} must be quoted"
COLON_IN_VALUE = ("a plain value cannot contain ': ' or end with ':': quote "
                  "the value")
UNTERMINATED = ("unterminated quoted string (strings must end on the line "
                "they start)")
BAD_ESCAPE = "unknown escape {escape} in a double-quoted string"
TRAILING_TEXT = "unexpected text after the value: {text}"
BAD_FLOW_LIST = "malformed list: expected one line like [a, b, 'c d']"
EMPTY_ITEM = "empty list item"
MISSING_NAME = "the required key 'name' is missing"
NOT_A_STRING = "{key} must be a single value, like '{key}: {example}'"
BAD_VERSION = "bad version: {error}"
BAD_TAGS = "tags must be a list of words, like 'tags: [game, casual]'"
BAD_TAG = ("invalid tag {tag}: tags are words like 'game' or 'casual' "
           "(no spaces or commas)")

_KEY_RE = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_./-]*):(?= |$)")
_TAG_RE = re.compile(r"[^\s,\[\]{}#'\"]{1,64}")
# Characters that cannot start a plain scalar, and what starting with them means.
_UNSUPPORTED_START = {
    "&": "anchors", "*": "aliases", "!": "tags (!type)",
    "|": "block scalars (| and >)", ">": "block scalars (| and >)",
    "{": "flow mappings ({a: b})",
}
_RESERVED_START = "%@`,]}?:"
_ESCAPES = {
    "0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n",
    "v": "\v", "f": "\f", "r": "\r", "e": "\x1b", " ": " ", '"': '"',
    "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0", "L": "\u2028",
    "P": "\u2029",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def check_tag(tag) -> str:
    """Return tag if it is a usable tag (a word without spaces or commas)."""
    if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
        raise ValueError(BAD_TAG.format(tag=_show(tag)))
    return tag


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_Line = collections.namedtuple("_Line", "number indent text")


def _lines(text):
    """The content lines (no blanks, no comment lines) as _Line objects."""
    result = []
    for number, raw in enumerate(text.split("\n"), 1):
        if raw.endswith("\r"):
            raw = raw[:-1]
        bad = _CONTROL_RE.search(raw)
        if bad:
            raise ManifestError(CONTROL_CHAR.format(char=repr(bad.group())), number)
        stripped = raw.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        indent = raw[: len(raw) - len(stripped)]
        if "\t" in indent:
            raise ManifestError(TAB_INDENT, number)
        result.append(_Line(number, len(indent), stripped))
    return result


def _quoted(text, pos, number):
    """Read a quoted scalar starting at text[pos]; return (value, end)."""
    quote = text[pos]
    out = []
    i = pos + 1
    while i < len(text):
        char = text[i]
        if char == quote:
            if quote == "'" and text.startswith("''", i):
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        if char == "\\" and quote == '"':
            i += 1
            if i >= len(text):
                break
            esc = text[i]
            if esc in _ESCAPES:
                out.append(_ESCAPES[esc])
                i += 1
            elif esc in _HEX_ESCAPES:
                digits = text[i + 1: i + 1 + _HEX_ESCAPES[esc]]
                code = (int(digits, 16) if len(digits) == _HEX_ESCAPES[esc]
                        and re.fullmatch(r"[0-9A-Fa-f]+", digits) else None)
                # Surrogates are not characters: UTF-8 cannot encode them.
                if code is None or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    shown = "\\" + esc + (digits if code is not None else "")
                    raise ManifestError(BAD_ESCAPE.format(escape=repr(shown)), number)
                out.append(chr(code))
                i += 1 + len(digits)
            else:
                raise ManifestError(BAD_ESCAPE.format(escape=repr("\\" + esc)), number)
            continue
        out.append(char)
        i += 1
    raise ManifestError(UNTERMINATED, number)


def _plain(text, pos, number, flow):
    """Read a plain scalar from text[pos]; return (value, end)."""
    first = text[pos]
    if first in _UNSUPPORTED_START:
        raise ManifestError(UNSUPPORTED.format(what=_UNSUPPORTED_START[first]), number)
    # '-', '?' and ':' may start a plain scalar when a non-space follows
    # ("-1", ":x"); a lone "- " here is a list item where none can be.
    if first in _RESERVED_START + "-" and (
            first not in "?:-" or text[pos + 1: pos + 2] in ("", " ")):
        raise ManifestError(MUST_QUOTE.format(char=repr(first)), number)
    stops = ",[]{}" if flow else ""
    i = pos
    while i < len(text):
        char = text[i]
        if char in stops or (char == "#" and text[i - 1] == " "):
            break
        if char == ":" and (i + 1 == len(text) or text[i + 1] == " "
                            or (flow and text[i + 1] in stops)):
            raise ManifestError(COLON_IN_VALUE, number)
        i += 1
    value = text[pos:i].rstrip(" ")
    return value, pos + len(value)


def _scalar(text, pos, number, flow=False):
    if text[pos] in "'\"":
        return _quoted(text, pos, number)
    return _plain(text, pos, number, flow)


def _skip_spaces(text, pos):
    while pos < len(text) and text[pos] == " ":
        pos += 1
    return pos


def _expect_end(text, pos, number):
    """Only spaces and a comment may follow a value."""
    end = _skip_spaces(text, pos)
    # YAML needs a space before '#' for it to start a comment.
    if end < len(text) and not (text[end] == "#" and end > pos):
        raise ManifestError(TRAILING_TEXT.format(text=_show(text[end:])), number)


def _flow_list(text, pos, number):
    """Read `[a, 'b', "c"]` from text[pos] (the '['); return (list, end)."""
    items = []
    i = _skip_spaces(text, pos + 1)
    if text[i: i + 1] == "]":
        return items, i + 1
    while True:
        if i >= len(text) or text[i] == "#":
            raise ManifestError(BAD_FLOW_LIST, number)
        if text[i] in "[{":
            raise ManifestError(TOO_DEEP, number)
        if text[i] in ",]":
            raise ManifestError(EMPTY_ITEM, number)
        value, i = _scalar(text, i, number, flow=True)
        items.append(value)
        i = _skip_spaces(text, i)
        if text[i: i + 1] == "]":
            return items, i + 1
        if text[i: i + 1] != ",":
            raise ManifestError(BAD_FLOW_LIST, number)
        i = _skip_spaces(text, i + 1)
        if text[i: i + 1] == "]":  # a trailing comma, as YAML allows
            return items, i + 1


def _inline_value(text, pos, number):
    """The value after 'key:' on the same line: None, a scalar or a flow list."""
    pos = _skip_spaces(text, pos)
    if pos >= len(text) or text[pos] == "#":
        return None
    if text[pos] == "[":
        value, end = _flow_list(text, pos, number)
    else:
        value, end = _scalar(text, pos, number)
    _expect_end(text, end, number)
    return value


def _key(line):
    match = _KEY_RE.match(line.text)
    if not match:
        if line.text.startswith("? "):
            raise ManifestError(UNSUPPORTED.format(what="complex keys (? key)"), line.number)
        raise ManifestError(EXPECTED_KEY, line.number)
    return match.group(1), match.end()


def _check_indent(line, indent):
    if line.indent != indent:
        raise ManifestError(TOO_DEEP if line.indent > indent
                            else BAD_INDENT.format(expected=indent), line.number)


def _add(mapping, where, key, value, line):
    if key in mapping:
        raise ManifestError(DUPLICATE_KEY.format(key=repr(key), first=where[key]), line.number)
    mapping[key], where[key] = value, line.number


def _block_list(lines, i):
    """Read '- item' lines from lines[i]; return (items, next index)."""
    indent = lines[i].indent
    items = []
    while i < len(lines):
        line = lines[i]
        # A list may sit at the key's own indentation (YAML allows it).
        if line.indent < indent or (line.indent == 0 and not line.text.startswith("-")):
            break
        _check_indent(line, indent)
        if line.text == "-":
            raise ManifestError(EMPTY_ITEM, line.number)
        if not line.text.startswith("- "):
            raise ManifestError(BAD_INDENT.format(expected=indent), line.number)
        pos = _skip_spaces(line.text, 2)
        if pos >= len(line.text) or line.text[pos] == "#":
            raise ManifestError(EMPTY_ITEM, line.number)
        if line.text[pos] in "[-":
            raise ManifestError(TOO_DEEP, line.number)
        if line.text[pos] not in "'\"" and _KEY_RE.match(line.text, pos):
            raise ManifestError(UNSUPPORTED.format(what="lists of mappings"), line.number)
        value, end = _scalar(line.text, pos, line.number)
        _expect_end(line.text, end, line.number)
        items.append(value)
        i += 1
    return items, i


def _block_mapping(lines, i):
    """Read 'key: value' lines indented like lines[i]; return (dict, next index)."""
    indent = lines[i].indent
    mapping, where = {}, {}
    while i < len(lines) and lines[i].indent > 0:
        line = lines[i]
        _check_indent(line, indent)
        if line.text.startswith("- ") or line.text == "-":
            raise ManifestError(BAD_INDENT.format(expected=indent), line.number)
        key, end = _key(line)
        value = _inline_value(line.text, end, line.number)
        nxt = lines[i + 1] if i + 1 < len(lines) else None
        # A key with nothing after it would open a block: one level too deep.
        if value is None and nxt is not None and (
                nxt.indent > indent or (nxt.indent == indent and nxt.text.startswith("-"))):
            raise ManifestError(TOO_DEEP, nxt.number)
        _add(mapping, where, key, value, line)
        i += 1
    return mapping, i


def parse_yaml_subset(text):
    """Parse the subset described above; return (dict, {key: line number})."""
    lines = _lines(text)
    if lines and lines[0].indent == 0 and re.fullmatch(r"---( +#.*)?", lines[0].text):
        lines = lines[1:]
    result, where = {}, {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.indent > 0:
            raise ManifestError(UNEXPECTED_INDENT, line.number)
        if line.text.startswith(("---", "...")):
            raise ManifestError(UNSUPPORTED.format(what="several documents"), line.number)
        if line.text.startswith("%"):
            raise ManifestError(UNSUPPORTED.format(what="directives (%)"), line.number)
        key, end = _key(line)
        value = _inline_value(line.text, end, line.number)
        i += 1
        if value is None and i < len(lines):
            nxt = lines[i]
            if nxt.text.startswith("- ") or nxt.text == "-":
                value, i = _block_list(lines, i)
            elif nxt.indent > 0:
                value, i = _block_mapping(lines, i)
        _add(result, where, key, value, line)
    return result, where


def _decode(data):
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_SIZE:
        raise ManifestError(TOO_LARGE)
    try:
        text = data if isinstance(data, str) else raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(NOT_UTF8, raw[: error.start].count(b"\n") + 1) from None
    # Editors on some systems start UTF-8 files with a byte order mark.
    return text[1:] if text.startswith("\ufeff") else text


def parse_manifest(data) -> dict:
    """Read a manifest (bytes or str); return its keys, a whole-number
    `version` as an int and `tags` as a list. ManifestError, with the line
    number, if it is invalid.
    """
    manifest, where = parse_yaml_subset(_decode(data))
    if "name" not in manifest:
        raise ManifestError(MISSING_NAME)
    if not isinstance(manifest["name"], str):
        raise ManifestError(NOT_A_STRING.format(key="name", example="my-game"), where["name"])
    try:
        names.check_app_name(manifest["name"])
    except ValueError as error:
        raise ManifestError(str(error), where["name"]) from None
    if "version" in manifest:
        version = manifest["version"]
        if not isinstance(version, str):
            raise ManifestError(NOT_A_STRING.format(key="version", example="1"),
                                where["version"])
        # A whole number becomes an int; "1.0" and other labels stay text, as
        # AMS takes them.
        if re.fullmatch(r"[0-9]+", version):
            try:
                manifest["version"] = names.check_version(version)
            except ValueError as error:
                raise ManifestError(BAD_VERSION.format(error=error), where["version"]) from None
    tags = manifest.get("tags") or []
    tags = [tags] if isinstance(tags, str) else tags
    if not isinstance(tags, list):
        raise ManifestError(BAD_TAGS, where["tags"])
    for tag in tags:
        try:
            check_tag(tag)
        except ValueError as error:
            raise ManifestError(str(error), where["tags"]) from None
    manifest["tags"] = tags
    return manifest
