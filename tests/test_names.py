"""names.py: the one place names, versions, architectures and fingerprints are
checked. Good values come back canonical; bad ones raise ValueError whose
message shows a valid example."""
import platform

import pytest
from hypothesis import given, settings, strategies as st

import names

FP = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("name", [
    "a", "0", "game", "my-game", "com.example.app_2", "A.B-C_D", "x" * 64,
    "9lives", "a.b.c", "a-", "a_", "a.",
])
def test_good_app_names(name):
    assert names.check_app_name(name) == name


@pytest.mark.parametrize("name", [
    "", ".hidden", "-rf", "_x", "x" * 65, "a..b", "..", "a/b", "a b", "a\n",
    "game\n", "é", "a\x00", "a:b", "a@b", None, 5, b"game",
])
def test_bad_app_names(name):
    with pytest.raises(ValueError, match="my-game"):
        names.check_app_name(name)


@pytest.mark.parametrize("value,expected", [
    (0, 0), (1, 1), ("0", 0), ("42", 42), ("007", 7), (2**31 - 1, 2**31 - 1),
    (str(2**31 - 1), 2**31 - 1), ("0000000000002", 2),
])
def test_good_versions(value, expected):
    result = names.check_version(value)
    assert result == expected and type(result) is int


@pytest.mark.parametrize("value", [
    -1, 2**31, str(2**31), "-1", "+1", " 1", "1 ", "1.0", "1e3", "", "abc",
    "٣", "0x10", True, False, 1.0, None, "9" * 5000, b"1",
])
def test_bad_versions(value):
    with pytest.raises(ValueError, match="like 0 or 12"):
        names.check_version(value)


@pytest.mark.parametrize("arch", ["amd64", "arm64", "armhf", "i386", "x86_64", "a", "a" * 16])
def test_good_architectures(arch):
    assert names.check_arch(arch) == arch


@pytest.mark.parametrize("arch", ["", "AMD64", "arm-64", "a" * 17, "amd64\n", " amd64", None, 64])
def test_bad_architectures(arch):
    with pytest.raises(ValueError, match="amd64"):
        names.check_arch(arch)


@pytest.mark.parametrize("text", [
    FP, FP.upper(), ":".join(FP[i:i + 2] for i in range(0, 64, 2)).upper(),
    f"  {FP}\n", FP[:32] + " " + FP[32:],
])
def test_full_fingerprints_are_canonicalised(text):
    assert names.check_fingerprint(text) == FP
    assert names.check_fingerprint(text, allow_prefix=False) == FP


def test_openssl_fingerprint_line_value():
    # What `openssl x509 -fingerprint -sha256` prints after the '='.
    colons = ":".join(FP[i:i + 2] for i in range(0, 64, 2)).upper()
    assert names.check_fingerprint(colons) == FP


@pytest.mark.parametrize("prefix", [FP[:12], FP[:13], FP[:63], FP[:12].upper(), "e3:b0:c4:42:98:fc"])
def test_prefixes(prefix):
    assert FP.startswith(names.check_fingerprint(prefix))


@pytest.mark.parametrize("prefix", [FP[:12], FP[:63]])
def test_prefix_refused_when_not_allowed(prefix):
    with pytest.raises(ValueError, match=FP):
        names.check_fingerprint(prefix, allow_prefix=False)


@pytest.mark.parametrize("text", [
    "", "   ", ":::", FP[:11], FP + "0", "g" * 64, FP[:-1] + "z", "sha256:" + FP,
    None, 0, FP.encode(),
])
def test_bad_fingerprints(text):
    with pytest.raises(ValueError, match="e3b0c44298fc"):
        names.check_fingerprint(text)


def test_every_message_is_one_line():
    for check, value in [(names.check_app_name, "a\nb"), (names.check_version, "1\n"),
                         (names.check_arch, "x\n"), (names.check_fingerprint, "z\n")]:
        with pytest.raises(ValueError) as info:
            check(value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("machine,arch", [
    ("x86_64", "amd64"), ("AMD64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64"),
    ("armv7l", "armhf"), ("i686", "i386"), ("i386", "i386"), ("riscv64", "riscv64"),
    ("PPC64LE", "ppc64le"), ("s390x", "s390x"),
])
def test_host_architecture(monkeypatch, machine, arch):
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert names.host_architecture() == arch


def test_host_architecture_here_is_a_valid_arch():
    assert names.check_arch(names.host_architecture())


@settings(deadline=None)
@given(st.text(max_size=80))
def test_app_name_never_raises_anything_but_valueerror(text):
    try:
        assert names.check_app_name(text) == text
    except ValueError:
        pass


@settings(deadline=None)
@given(st.text(max_size=80))
def test_fingerprint_result_is_always_canonical(text):
    try:
        result = names.check_fingerprint(text)
    except ValueError:
        return
    assert 12 <= len(result) <= 64 and set(result) <= set("0123456789abcdef")


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_version_round_trips_through_text(number):
    assert names.check_version(str(number)) == number == names.check_version(number)
