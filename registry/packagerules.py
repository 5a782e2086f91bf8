"""What every package store asks of an upload, and the shape of a listing:
shared by storage.py (the data directory) and s3store.py (a bucket)."""
import logging

import names
from registry.errors import ApiError
from registry.paths import is_sha256

__all__ = ["check_upload", "same_or_conflict", "build_listing"]

log = logging.getLogger("aar.storage")


def check_upload(app, version, arch, length, sha256, manifest):
    """Validate put()'s arguments; return (version, sha256, tags, manifest)."""
    try:
        names.check_app_name(app)
        version = names.check_version(version)
        names.check_arch(arch)
    except ValueError as exc:
        raise ApiError.of("bad_request", str(exc)) from None
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ApiError.of("bad_request", f"invalid length {length!r}")
    sha256 = sha256.lower() if isinstance(sha256, str) else sha256
    if not is_sha256(sha256):
        raise ApiError.of("bad_request", f"invalid sha256 {sha256!r}: expected 64 hex digits")
    manifest = {} if manifest is None else manifest
    if not isinstance(manifest, dict):
        raise ApiError.of("bad_request", "manifest must be a JSON object")
    tags = manifest.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ApiError.of("bad_request", "manifest tags must be a list of strings")
    return version, sha256, tags, manifest


def same_or_conflict(existing, sha256, length) -> dict:
    """The answer to a put of a version that exists: itself if the bytes are
    the same (a no-op), else ApiError conflict or size_mismatch."""
    where = f"{existing['name']} {existing['version']} {existing['architecture']}"
    if existing["sha256"] != sha256:
        raise ApiError.of("conflict", f"{where} is already published with "
                          f"sha256 {existing['sha256']}")
    if existing["size"] != length:
        raise ApiError.of("size_mismatch", f"{where} has {existing['size']} "
                          f"bytes, not {length}")
    log.debug("%s is already stored with the same bytes", where)
    return existing


def build_listing(packages, architecture, wanted) -> list:
    """The listing's applications from package dicts (any order): sorted by
    name, each with its versions sorted by (version, arch); ``architecture``
    and ``wanted`` (a set of tags: any one matches) filter packages."""
    apps = {}
    for pkg in sorted(packages, key=lambda p: (p["name"], p["version"], p["architecture"])):
        if architecture is not None and pkg["architecture"] != architecture:
            continue
        if wanted and wanted.isdisjoint(pkg["tags"]):
            continue
        apps.setdefault(pkg["name"], {"name": pkg["name"], "versions": []})[
            "versions"].append(dict(pkg))
    return list(apps.values())
