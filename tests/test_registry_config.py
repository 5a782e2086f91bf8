"""conf/main.yaml: the YAML subset and the storage.s3 checks."""
import pytest

from registry import config
from registry.config import ConfigError, parse

EXAMPLE = """\
# the real AAR's file
listen: 0.0.0.0:3000
metrics: 127.0.0.1:9300          # optional
storage:
  s3:
    endpoint: https://s3.example.net:443   # absent: AWS
    region: us-east-1
    bucket: aar
    prefix: registry/
    access-key: "AKIA#1"
    secret-access-key: 'it''s secret'
    redirect: false
"""


def test_parse_the_design_example():
    values = parse(EXAMPLE)
    assert values["listen"] == "0.0.0.0:3000"
    assert values["metrics"] == "127.0.0.1:9300"
    s3 = values["storage"]["s3"]
    assert s3["endpoint"] == "https://s3.example.net:443"
    assert s3["access-key"] == "AKIA#1" and s3["secret-access-key"] == "it's secret"
    assert s3["redirect"] is False and s3["bucket"] == "aar"


def test_config_get_and_s3(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "main.yaml").write_text(EXAMPLE)
    conf = config.load(tmp_path, env={})
    assert conf.get("metrics") == "127.0.0.1:9300"
    assert conf.get("storage.s3.region") == "us-east-1"
    assert conf.get("nope.deeper", 7) == 7
    assert conf.s3.bucket == "aar" and conf.s3.prefix == "registry/"
    assert conf.s3.redirect is False


def test_absent_file_changes_nothing(tmp_path):
    conf = config.load(tmp_path, env={})
    assert conf.s3 is None and conf.get("listen") is None


def test_secrets_from_the_environment(tmp_path):
    conf = config.Config(parse("storage:\n  s3:\n    bucket: b\n"), env={
        "AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk"})
    assert (conf.s3.access_key, conf.s3.secret_key, conf.s3.redirect) == ("ak", "sk", True)
    with pytest.raises(ConfigError, match="access-key"):
        config.Config(parse("storage:\n  s3:\n    bucket: b\n"), env={})


@pytest.mark.parametrize("text,message", [
    ("a: 1\n  b: 2\n", "main.yaml:2: inconsistent indentation"),
    ("a:\n  - x\n", "main.yaml:2: lists are not supported"),
    ("a: [1, 2]\n", "main.yaml:1: only plain values"),
    ("a: 1\na: 2\n", "main.yaml:2: 'a' appears twice"),
    ("just text\n", "main.yaml:1: expected 'key: value'"),
    ("a:\n\tb: 1\n", "main.yaml:2: indent with spaces"),
    ("a: 'open\n", "main.yaml:1: unterminated"),
])
def test_refused_with_the_line(text, message):
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_unknown_s3_key_is_refused():
    with pytest.raises(ConfigError, match="unknown key.*bukket"):
        config.Config(parse("storage:\n  s3:\n    bukket: b\n"), env={})
    with pytest.raises(ConfigError, match="bucket is required"):
        config.Config(parse("storage:\n  s3:\n    region: x\n"), env={})
