"""agent.config: validation, atomic 0600 writes, reload on change."""
import json
import os
import stat
import subprocess
import sys

import pytest

from agent import config as c
from agent.config import Config, validate
from agent.errors import ConfigError

FP = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("key, value, stored", [
    ("registry.url", "https://192.168.178.45:3000", "https://192.168.178.45:3000"),
    ("registry.url", "https://aar.example.com:3000/", "https://aar.example.com:3000"),
    ("registry.url", " https://[::1]:3000 ", "https://[::1]:3000"),
    ("registry.url", "", ""),
    ("registry.fingerprint", FP, FP),
    ("registry.fingerprint", FP.upper(), FP),
    ("registry.fingerprint", ":".join(FP[i:i + 2] for i in range(0, 64, 2)), FP),
    ("registry.mode", "push", "push"),
    ("registry.mode", "manual", "manual"),
    ("registry.mode", "", "pull"),
    ("registry.update_interval", "5m", "5m"),
    ("registry.update_interval", "1s", "1s"),
    ("registry.update_interval", "1h30m", "1h30m"),
    ("registry.update_interval", "", "1h"),
    ("registry.filter", "game", "game"),
    ("registry.filter", " game , casual,game ", "game,casual"),
    ("registry.filter", "", ""),
])
def test_validate_good(key, value, stored):
    assert validate(key, value) == stored


@pytest.mark.parametrize("key, value, message", [
    ("registry.url", "http://a:3000", c.PLAIN_HTTP.format(value="'http://a:3000'")),
    ("registry.url", "https://a", c.BAD_URL.format(value="'https://a'")),
    ("registry.url", "https://a:0", c.BAD_URL.format(value="'https://a:0'")),
    ("registry.url", "https://a:99999", c.BAD_URL.format(value="'https://a:99999'")),
    ("registry.url", "https://u:p@a:3000", c.BAD_URL.format(value="'https://u:p@a:3000'")),
    ("registry.url", "https://a:3000/x", c.BAD_URL.format(value="'https://a:3000/x'")),
    ("registry.url", "https://a:3000?x", c.BAD_URL.format(value="'https://a:3000?x'")),
    ("registry.url", "https://a b:3000", c.BAD_URL.format(value="'https://a b:3000'")),
    ("registry.url", "192.168.1.1:3000", c.BAD_URL.format(value="'192.168.1.1:3000'")),
    ("registry.mode", "publisher", c.BAD_MODE.format(value="'publisher'")),
    ("registry.mode", "PUSH", c.BAD_MODE.format(value="'PUSH'")),
    ("registry.update_interval", "0.5s", c.SHORT_INTERVAL.format(value="'0.5s'")),
    ("registry.update_interval", "0", c.SHORT_INTERVAL.format(value="'0'")),
    ("nope", "x", c.UNKNOWN_KEY.format(key="'nope'")),
])
def test_validate_bad(key, value, message):
    with pytest.raises(ConfigError) as info:
        validate(key, value)
    assert str(info.value) == message


@pytest.mark.parametrize("key, value, start", [
    ("registry.fingerprint", "abc", "invalid registry.fingerprint: "),
    ("registry.fingerprint", FP[:20], "invalid registry.fingerprint: "),
    ("registry.fingerprint", "z" * 64, "invalid registry.fingerprint: "),
    ("registry.update_interval", "5", "invalid registry.update_interval: "),
    ("registry.update_interval", "-5m", "invalid registry.update_interval: "),
    ("registry.filter", "a b", "invalid registry.filter: "),
    ("registry.filter", "a,,b", "invalid registry.filter: "),
])
def test_validate_bad_wrapped(key, value, start):
    with pytest.raises(ConfigError) as info:
        validate(key, value)
    assert str(info.value).startswith(start)


def test_every_message_shows_an_example():
    for message in (c.BAD_URL, c.BAD_MODE, c.SHORT_INTERVAL, c.BAD_FILTER):
        assert "like" in message


def test_defaults(tmp_path):
    config = Config.load(tmp_path / "config.json")
    assert config.items() == list(c.DEFAULTS.items())
    assert (config.url, config.fingerprint, config.mode) == ("", "", "pull")
    assert config.update_interval == 3600.0
    assert config.filter == ()
    assert not (tmp_path / "config.json").exists()


def test_set_writes_0600_json(tmp_path):
    path = tmp_path / "data" / "config.json"
    config = Config.load(path)
    assert config.set("registry.url", "https://a:3000/") == "https://a:3000"
    config.set("registry.update_interval", "5m")
    config.set("registry.filter", "x,y")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "registry.url": "https://a:3000", "registry.update_interval": "5m",
        "registry.filter": "x,y"}
    assert (config.url, config.update_interval, config.filter) == \
        ("https://a:3000", 300.0, ("x", "y"))
    # Back to the default: the key leaves the file.
    config.set("registry.filter", "")
    assert "registry.filter" not in json.loads(path.read_text())
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp files


def test_invalid_set_changes_nothing(tmp_path):
    path = tmp_path / "config.json"
    config = Config.load(path)
    config.set("registry.mode", "push")
    before = path.read_bytes()
    with pytest.raises(ConfigError):
        config.set("registry.mode", "sideways")
    assert path.read_bytes() == before
    assert config.mode == "push"


def test_set_keeps_other_writers_changes(tmp_path):
    path = tmp_path / "config.json"
    first, second = Config.load(path), Config.load(path)
    first.set("registry.mode", "push")
    second.set("registry.url", "https://a:1")
    assert Config.load(path).as_dict()["registry.mode"] == "push"
    assert Config.load(path).url == "https://a:1"


def test_changed_and_reload(tmp_path):
    path = tmp_path / "config.json"
    loop = Config.load(path)
    assert not loop.changed()
    assert loop.reload() is False
    Config.load(path).set("registry.update_interval", "5m")
    assert loop.changed()
    assert loop.reload() is True
    assert loop.update_interval == 300.0
    assert not loop.changed()
    # Same size, rewritten: the new inode gives it away even if mtime does not.
    Config.load(path).set("registry.update_interval", "7m")
    assert loop.reload() is True and loop.update_interval == 420.0
    path.unlink()
    assert loop.reload() is True
    assert loop.update_interval == 3600.0


def test_reload_of_a_broken_file_keeps_the_old_settings(tmp_path):
    path = tmp_path / "config.json"
    loop = Config.load(path)
    loop.set("registry.mode", "push")
    path.write_text('{"registry.mode": "sideways"}')
    with pytest.raises(ConfigError) as info:
        loop.reload()
    assert str(info.value).startswith(c.UNREADABLE.format(path=path, reason="")[:-1])
    assert loop.mode == "push"


@pytest.mark.parametrize("content, reason", [
    ("{", "not JSON"),
    ("[]", "not a JSON object"),
    ('{"registry.url": 5}', "must be text"),
    ('{"registry.url": "ftp://x"}', "invalid registry.url"),
    (b"\xff\xfe", "not JSON"),
])
def test_load_rejects_damaged_files(tmp_path, content, reason):
    path = tmp_path / "config.json"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert str(info.value).startswith(f"cannot read settings file {path}: ")
    assert reason in str(info.value)


def test_load_normalises_and_keeps_unknown_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"registry.fingerprint": FP.upper(), "future.key": 1}))
    config = Config.load(path)
    assert config.fingerprint == FP
    config.set("registry.mode", "manual")
    assert json.loads(path.read_text())["future.key"] == 1


def test_unknown_key_get(tmp_path):
    with pytest.raises(ConfigError):
        Config.load(tmp_path / "c.json").get("registry.nope")


def test_a_killed_writer_leaves_the_old_file(tmp_path):
    # The writer dies after writing its temporary file, before the rename:
    # readers still see the complete old settings.
    path = tmp_path / "config.json"
    Config.load(path).set("registry.mode", "push")
    script = (
        "import os, sys\n"
        "from agent.config import Config\n"
        "real = os.replace\n"
        "def die(src, dst):\n"
        "    os.kill(os.getpid(), 9)\n"
        "os.replace = die\n"
        "Config.load(sys.argv[1]).set('registry.mode', 'manual')\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT)
    assert done.returncode == -9
    assert Config.load(path).mode == "push"
    assert len(list(tmp_path.iterdir())) == 2  # config.json and the dead temp file
    Config.load(path).set("registry.mode", "pull")
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
