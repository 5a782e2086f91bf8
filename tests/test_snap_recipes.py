"""Static checks of the snap recipes, and that every command they name runs.

The recipes are read with a small reader of the YAML they use (block mappings,
block and flow lists, `|` text): the tests need no YAML library.
"""
import re
import subprocess
import sys

import pytest

from test_zipapp import ROOT, clean_env, zipapp  # noqa: F401  (zipapp: fixture)

RECIPES = {"aar": ROOT / "snap" / "aar" / "snapcraft.yaml",
           "ams": ROOT / "snap" / "ams" / "snapcraft.yaml"}
ZIPAPP_COMMAND = re.compile(r"^usr/bin/python3 \$SNAP/aar\.pyz((?: [a-z][a-z0-9-]*)*)$")


# -- the reader ---------------------------------------------------------------

def _scalar(text):
    text = text.strip()
    if len(text) >= 2 and text[0] in "'\"" and text[-1] == text[0]:
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(item) for item in text[1:-1].split(",") if item.strip()]
    return text


def read_yaml(text):
    """Parse the subset of YAML our recipes use into dicts, lists and strings."""
    lines = text.splitlines()
    pos = 0

    def indent(line):
        return len(line) - len(line.lstrip(" "))

    def skip_blank():
        nonlocal pos
        while pos < len(lines) and (not lines[pos].strip()
                                    or lines[pos].lstrip().startswith("#")):
            pos += 1

    def literal(parent):
        nonlocal pos
        body = []
        while pos < len(lines) and (not lines[pos].strip() or indent(lines[pos]) > parent):
            body.append(lines[pos])
            pos += 1
        while body and not body[-1].strip():
            body.pop()
        cut = min((indent(line) for line in body if line.strip()), default=0)
        return "".join(line[cut:] + "\n" for line in body)

    def value(parent, rest):
        nonlocal pos
        if rest == "|":
            return literal(parent)
        if rest:
            return _scalar(rest)
        skip_blank()
        if pos < len(lines) and (indent(lines[pos]) > parent
                                 or lines[pos].lstrip().startswith("- ")):
            return block(indent(lines[pos]))
        return None

    def block(level):
        nonlocal pos
        skip_blank()
        is_list = lines[pos].lstrip().startswith("- ")
        result = [] if is_list else {}
        while True:
            skip_blank()
            if pos >= len(lines) or indent(lines[pos]) < level:
                return result
            line = lines[pos].strip()
            assert indent(lines[pos]) == level, f"bad indent at line {pos + 1}: {line}"
            pos += 1
            if is_list:
                assert line.startswith("- "), f"expected a list item at line {pos}"
                result.append(_scalar(line[2:]))
                continue
            key, colon, rest = line.partition(":")
            assert colon, f"expected `key: value` at line {pos}: {line}"
            result[key.strip()] = value(level, rest.strip())

    return block(0)


def test_reader():
    text = ("# c\nname: aar\nv: '0.1'\nl: [a, b]\nm:\n  k:\n    - x\n    - y\n"
            "  t: |\n    one\n\n      two\nlast: z\n")
    assert read_yaml(text) == {"name": "aar", "v": "0.1", "l": ["a", "b"],
                               "m": {"k": ["x", "y"], "t": "one\n\n  two\n"},
                               "last": "z"}


# -- the recipes --------------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(RECIPES))
def recipe(request):
    return read_yaml(RECIPES[request.param].read_text())


def test_common_settings(recipe):
    assert recipe["base"] == "core22"
    assert recipe["confinement"] == "strict"
    assert recipe["grade"] == "stable"
    # shiv must unpack somewhere strict confinement lets it write.
    assert recipe["environment"]["SHIV_ROOT"].startswith("$SNAP_USER_DATA/")
    parts = recipe["parts"]
    assert {"python3", "openssl"} <= set(parts["runtime"]["stage-packages"])
    assert parts["zipapp"]["stage"] == ["aar.pyz"]


def test_version_is_the_programs():
    version = {}
    exec((ROOT / "version.py").read_text(), version)
    for name, path in RECIPES.items():
        assert read_yaml(path.read_text())["version"] == version["VERSION"], name


def test_aar_snap():
    snap = read_yaml(RECIPES["aar"].read_text())
    assert snap["name"] == "aar"  # so $SNAP_COMMON is /var/snap/aar/common
    apps = snap["apps"]
    assert set(apps) == {"aar", "daemon"}
    assert "daemon" not in apps["aar"]
    assert set(apps["aar"]["plugs"]) == {"network", "network-bind", "home"}
    service = apps["daemon"]
    assert service["daemon"] == "simple"
    assert service["restart-condition"] == "always"
    assert set(service["plugs"]) == {"network", "network-bind"}
    assert _zipapp_args(apps["aar"]["command"]) == []
    assert _zipapp_args(service["command"]) == ["serve"]


def test_ams_snap():
    snap = read_yaml(RECIPES["ams"].read_text())
    # The seeds' /var/snap/ams/common/registry/client.crt is <SNAP_COMMON>/registry/...
    assert snap["name"] == "ams"
    apps = snap["apps"]
    assert set(apps) == {"ams-sync", "sync"}
    assert "daemon" not in apps["ams-sync"]
    assert "network" in apps["ams-sync"]["plugs"]
    service = apps["sync"]
    assert service["daemon"] == "simple"
    assert service["restart-condition"] == "always"
    assert "network" in service["plugs"]
    assert _zipapp_args(apps["ams-sync"]["command"]) == ["ams-sync"]
    assert _zipapp_args(service["command"]) == ["ams-sync", "run"]


def _zipapp_args(command):
    match = ZIPAPP_COMMAND.match(command)
    assert match, f"command does not run the zipapp with the staged python3: {command}"
    return match.group(1).split()


def _all_commands():
    for name, path in sorted(RECIPES.items()):
        for app, spec in read_yaml(path.read_text())["apps"].items():
            yield pytest.param(_zipapp_args(spec["command"]), id=f"{name}.{app}")


@pytest.mark.parametrize("args", list(_all_commands()))
def test_command_runs(zipapp, tmp_path, args):  # noqa: F811  (fixture)
    """What each app runs exists: `<command> --help` exits 0.

    The snaps run the zipapp by its own name, aar.pyz, as here."""
    result = subprocess.run([sys.executable, str(zipapp), *args, "--help"],
                            env=clean_env(tmp_path), capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "usage" in (result.stdout + result.stderr).lower()


def test_pack_script_uses_the_recipes():
    script = (ROOT / "snap" / "pack.sh").read_text()
    assert "build.sh" in script and "snap/snapcraft.yaml" in script
    assert (ROOT / "snap" / "pack.sh").stat().st_mode & 0o111
