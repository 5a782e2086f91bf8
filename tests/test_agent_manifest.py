"""agent.manifest: the YAML subset, line numbers in every refusal."""
import pytest

from agent import manifest as m
from agent.errors import ManifestError, PackageError
from agent.manifest import parse_manifest, parse_yaml_subset

FULL = """\
---
# An AMS application manifest
name: candy   # trailing comment
instance-type: a2.3
boot-package: "com.canonical.candy\\x41\\u00e9\\n"
boot-activity: 'it''s # not a comment'
version: 3
tags: [game, "casual", ]
addons:
  - ssh
  - 'x y'
required-permissions:
- android.permission.A
- android.permission.B
resources:
  cpus: 2
  memory: 3GB
watchdog:
  disabled: false
  allowed-packages: [com.android.settings]
  note:
video-encoder: gpu-preferred
features:
url: http://example.com/a#b
colon: a:b
"""


def test_full_manifest():
    assert parse_manifest(FULL) == {
        "name": "candy",
        "instance-type": "a2.3",
        "boot-package": "com.canonical.candyA\u00e9\n",
        "boot-activity": "it's # not a comment",
        "version": 3,
        "tags": ["game", "casual"],
        "addons": ["ssh", "x y"],
        "required-permissions": ["android.permission.A", "android.permission.B"],
        "resources": {"cpus": "2", "memory": "3GB"},
        "watchdog": {"disabled": "false", "allowed-packages": ["com.android.settings"],
                     "note": None},
        "video-encoder": "gpu-preferred",
        "features": None,
        "url": "http://example.com/a#b",
        "colon": "a:b",
    }


@pytest.mark.parametrize("text, expected", [
    ("name: a", {"name": "a", "tags": []}),
    ("name: a\n", {"name": "a", "tags": []}),
    ("name: a\r\ntags: x\r\n", {"name": "a", "tags": ["x"]}),
    ("\ufeffname: a", {"name": "a", "tags": []}),
    (b"\xef\xbb\xbfname: a", {"name": "a", "tags": []}),
    ("name: a\ntags: []", {"name": "a", "tags": []}),
    ("name: a\ntags:", {"name": "a", "tags": []}),
    ("name: a\nversion: 1.0", {"name": "a", "version": "1.0", "tags": []}),
    ("name: a\nversion: '7'", {"name": "a", "version": 7, "tags": []}),
    ("name: a\nversion: 007", {"name": "a", "version": 7, "tags": []}),
    ("name: \"a\"", {"name": "a", "tags": []}),
    ("name: a\nx: ~\ny: null\nz: 'true'", {"name": "a", "x": "~", "y": "null",
                                          "z": "true", "tags": []}),
    ("name: a\nx: -1\ny: :z\nz: a - b", {"name": "a", "x": "-1", "y": ":z",
                                        "z": "a - b", "tags": []}),
    ("# only comments\n\n   \nname: a\n  # indented comment", {"name": "a", "tags": []}),
    ("name: a\nl:\n  - a   # c\n\n  # c\n  - 'b'", {"name": "a", "l": ["a", "b"], "tags": []}),
    ("name: a\nx: \"\\t\\\\\\\"\\/\\U0001F600\"", {"name": "a", "x": "\t\\\"/\U0001F600",
                                                   "tags": []}),
    ("name: a\nx: value\twith tab", {"name": "a", "x": "value\twith tab", "tags": []}),
])
def test_good(text, expected):
    assert parse_manifest(text) == expected


# (input, message constant, its format arguments, line number or None)
BAD = [
    ("name: a\n\tfoo: b", m.TAB_INDENT, {}, 2),
    ("name: a\nres:\n \tcpus: 2", m.TAB_INDENT, {}, 3),
    ("name: a\nname: b", m.DUPLICATE_KEY, {"key": "'name'", "first": 1}, 2),
    ("name: a\nm:\n  k: 1\n  k: 2", m.DUPLICATE_KEY, {"key": "'k'", "first": 3}, 4),
    ("name: &x a", m.UNSUPPORTED, {"what": "anchors"}, 1),
    ("name: a\nb: *x", m.UNSUPPORTED, {"what": "aliases"}, 2),
    ("name: !str a", m.UNSUPPORTED, {"what": "tags (!type)"}, 1),
    ("name: a\nd: |\n  text", m.UNSUPPORTED, {"what": "block scalars (| and >)"}, 2),
    ("name: a\nd: >-\n  text", m.UNSUPPORTED, {"what": "block scalars (| and >)"}, 2),
    ("name: a\nd: {a: b}", m.UNSUPPORTED, {"what": "flow mappings ({a: b})"}, 2),
    ("%YAML 1.2\nname: a", m.UNSUPPORTED, {"what": "directives (%)"}, 1),
    ("name: a\n---\nname: b", m.UNSUPPORTED, {"what": "several documents"}, 2),
    ("name: a\n...", m.UNSUPPORTED, {"what": "several documents"}, 2),
    ("name: a\n? key\n: v", m.UNSUPPORTED, {"what": "complex keys (? key)"}, 2),
    ("name: a\nl:\n  - a: b", m.UNSUPPORTED, {"what": "lists of mappings"}, 3),
    ("name: a\nr:\n  a:\n    b: c", m.TOO_DEEP, {}, 4),
    ("name: a\nr:\n  a:\n  - c", m.TOO_DEEP, {}, 4),
    ("name: a\nr:\n  a: 1\n    b: 2", m.TOO_DEEP, {}, 4),
    ("name: a\nl:\n  - - b", m.TOO_DEEP, {}, 3),
    ("name: a\nl:\n  - [b]", m.TOO_DEEP, {}, 3),
    ("name: a\nl:\n  - a\n    - b", m.TOO_DEEP, {}, 4),
    ("name: a\nl: [a, [b]]", m.TOO_DEEP, {}, 2),
    ("name: a\nl: [a, {b: c}]", m.TOO_DEEP, {}, 2),
    ("name: a\nr:\n    a: 1\n  b: 2", m.BAD_INDENT, {"expected": 4}, 4),
    ("name: a\nl:\n  - a\n  b: 1", m.BAD_INDENT, {"expected": 2}, 4),
    ("name: a\nr:\n  a: 1\n  - b", m.BAD_INDENT, {"expected": 2}, 4),
    ("  name: a", m.UNEXPECTED_INDENT, {}, 1),
    ("name: a\n  continued", m.UNEXPECTED_INDENT, {}, 2),
    ("name: a\njust text", m.EXPECTED_KEY, {}, 2),
    ("name: a\nkey:value", m.EXPECTED_KEY, {}, 2),
    ("name: a\n\"quoted\": key", m.EXPECTED_KEY, {}, 2),
    ("name: a\n- item", m.EXPECTED_KEY, {}, 2),
    ("name: a\nl:\n  - a\n- b", m.EXPECTED_KEY, {}, 4),
    ("name: \"abc", m.UNTERMINATED, {}, 1),
    ("name: a\nb: 'abc\n  def'", m.UNTERMINATED, {}, 2),
    ("name: a\nb: \"\\q\"", m.BAD_ESCAPE, {"escape": repr("\\q")}, 2),
    ("name: a\nb: \"\\x4\"", m.BAD_ESCAPE, {"escape": repr("\\x")}, 2),
    ("name: a\nb: \"\\uD800\"", m.BAD_ESCAPE, {"escape": repr("\\uD800")}, 2),
    ("name: \"a\"x", m.TRAILING_TEXT, {"text": "'x'"}, 1),
    ("name: a\nl: [a] b", m.TRAILING_TEXT, {"text": "'b'"}, 2),
    ("name: a\nl: [a, b", m.BAD_FLOW_LIST, {}, 2),
    ("name: a\nl: [a,\n  b]", m.BAD_FLOW_LIST, {}, 2),
    ("name: a\nl: [a b c d: e]", m.COLON_IN_VALUE, {}, 2),
    ("name: a\nl: [a, #b]", m.BAD_FLOW_LIST, {}, 2),
    ("name: a\nl: [a, , b]", m.EMPTY_ITEM, {}, 2),
    ("name: a\nl:\n  -", m.EMPTY_ITEM, {}, 3),
    ("name: a\nl:\n  -   # nothing", m.EMPTY_ITEM, {}, 3),
    ("name: a b: c", m.COLON_IN_VALUE, {}, 1),
    ("name: a:", m.COLON_IN_VALUE, {}, 1),
    ("name: - a", m.MUST_QUOTE, {"char": "'-'"}, 1),
    ("name: a\nb: @x", m.MUST_QUOTE, {"char": "'@'"}, 2),
    ("name: a\nb: `x`", m.MUST_QUOTE, {"char": "'`'"}, 2),
    ("name: a\nb: , x", m.MUST_QUOTE, {"char": "','"}, 2),
    ("name: a\x01", m.CONTROL_CHAR, {"char": repr("\x01")}, 1),
    ("name: a\nb: c\rd", m.CONTROL_CHAR, {"char": repr("\r")}, 2),
    (b"name: a\nb: \xff", m.NOT_UTF8, {}, 2),
    ("name: a\nx: " + "y" * m.MAX_SIZE, m.TOO_LARGE, {}, None),
    ("tags: [a]", m.MISSING_NAME, {}, None),
    ("", m.MISSING_NAME, {}, None),
    ("name:\n  x: 1", m.NOT_A_STRING, {"key": "name", "example": "my-game"}, 1),
    ("name: [a]", m.NOT_A_STRING, {"key": "name", "example": "my-game"}, 1),
    ("name: a\nversion:", m.NOT_A_STRING, {"key": "version", "example": "1"}, 2),
    ("name: a\ntags:\n  x: y", m.BAD_TAGS, {}, 2),
    ("name: a\ntags: [a b]", m.BAD_TAG, {"tag": "'a b'"}, 2),
    ("name: a\ntags: ['a,b']", m.BAD_TAG, {"tag": "'a,b'"}, 2),
]


@pytest.mark.parametrize("text, message, args, line", BAD)
def test_bad(text, message, args, line):
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    assert info.value.message == message.format(**args)
    assert info.value.line == line
    prefix = f"manifest.yaml line {line}: " if line else "manifest.yaml: "
    assert str(info.value) == prefix + message.format(**args)


@pytest.mark.parametrize("text, line", [
    ("name: x y", 1),
    ("# c\nname: ../etc", 2),
    ("name: -rf", 1),
    ("name: a\nversion: 99999999999", 2),
])
def test_bad_name_or_version_names_the_line(text, line):
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    assert info.value.line == line
    assert "like" in str(info.value)  # names.py messages show an example


def test_manifest_error_is_a_package_error():
    assert issubclass(ManifestError, PackageError)


def test_size_limit_is_inclusive():
    text = "name: a\nx: "
    text += "y" * (m.MAX_SIZE - len(text))
    assert len(parse_manifest(text)["x"]) == m.MAX_SIZE - len("name: a\nx: ")


def test_key_lines():
    _, where = parse_yaml_subset("# c\nname: a\n\nres:\n  a: 1\nl:\n  - x\n")
    assert where == {"name": 2, "res": 4, "l": 6}


@pytest.mark.parametrize("tag", ["game", "a.b", "x-1", "\u00e9t\u00e9"])
def test_check_tag_good(tag):
    assert m.check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "a b", "a,b", "a\n", "[x]", "x" * 65, None])
def test_check_tag_bad(tag):
    with pytest.raises(ValueError):
        m.check_tag(tag)
