"""The registry's listing, checked before anything acts on it (pure).

A pull-mode agent deletes what left the registry, so a listing that is cut
short, malformed or inconsistent must never be taken for the truth: one
missing field in one package fails the whole listing, and the cycle then
deletes nothing. What passes is exactly the shape docs/architecture.md gives:

    [{"name": "game", "versions": [{"name": "game", "version": 0,
      "architecture": "amd64", "size": 1234, "sha256": "<64 hex>",
      "publisher": "<64 hex or ''>", "tags": [...], "manifest": {...}, ...}]}]
"""
import re

import names

__all__ = ["check_listing", "packages_of"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")


def _fail(where, what):
    raise ValueError(f"{where}: {what}")


def _package(pkg, app, where, architecture, tags):
    if not isinstance(pkg, dict):
        _fail(where, "a version is not an object")
    if pkg.get("name") != app:
        _fail(where, f"a version names application {pkg.get('name')!r}")
    version = pkg.get("version")
    arch = pkg.get("architecture")
    try:
        names.check_version(version)
        if isinstance(version, str):
            raise ValueError("version is text, not a number")
        names.check_arch(arch)
    except ValueError as error:
        _fail(where, error)
    where = f"{app}/{version}/{arch}"
    if architecture and arch != architecture:
        _fail(where, f"architecture {arch}, asked for {architecture}")
    size = pkg.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        _fail(where, f"bad size {size!r}")
    if not isinstance(pkg.get("sha256"), str) or not _SHA256_RE.match(pkg["sha256"]):
        _fail(where, "bad sha256")
    if not isinstance(pkg.get("publisher"), str):
        _fail(where, "no publisher")
    got = pkg.get("tags")
    if not isinstance(got, list) or not all(isinstance(t, str) for t in got):
        _fail(where, "bad tags")
    if tags and set(tags).isdisjoint(got):
        _fail(where, f"tags {got} match none of {list(tags)}")
    if not isinstance(pkg.get("manifest", {}), dict):
        _fail(where, "bad manifest")
    return (app, version, arch)


def check_listing(metadata, architecture=None, tags=()):
    """Return metadata (the list of applications) if whole; ValueError if not.

    architecture and tags are what was asked for: a package outside them
    means the registry answered another question.
    """
    if not isinstance(metadata, list):
        _fail("listing", "not a list of applications")
    seen = set()
    for app in metadata:
        if not isinstance(app, dict):
            _fail("listing", "an application is not an object")
        name = app.get("name")
        try:
            names.check_app_name(name)
        except ValueError as error:
            _fail("listing", error)
        versions = app.get("versions")
        if not isinstance(versions, list):
            _fail(name, "no list of versions")
        for pkg in versions:
            key = _package(pkg, name, name, architecture, tags)
            if key in seen:
                _fail("/".join(map(str, key)), "listed twice")
            seen.add(key)
    return metadata


def packages_of(apps) -> dict:
    """{(app, version, arch): package} of a checked listing."""
    return {(pkg["name"], pkg["version"], pkg["architecture"]): pkg
            for app in apps for pkg in app["versions"]}
