"""Which stores a registry uses: the data directory's, or the bucket's.

`aar serve` and every `aar` command ask here, with the configuration of
conf/main.yaml (registry/config.py): without `storage.s3` the package store
and the trust store are the data directory's files, as they always were;
with it, both live in the bucket and every replica shares them.
"""
from registry import config as _config
from registry.paths import DataDir

__all__ = ["load_config", "s3_client", "open_packages", "open_trust",
           "check_server_certificate", "BackendError"]

SERVER_CERT = "server/certificate.pem"


class BackendError(Exception):
    """A store cannot be opened; the message is one line saying why."""


def load_config(data_dir) -> "_config.Config":
    try:
        return _config.load(DataDir(data_dir).root)
    except _config.ConfigError as exc:
        raise BackendError(str(exc)) from None


def s3_client(s3):
    from objstore import sigv4
    from objstore.client import Endpoint, S3Client
    try:
        endpoint = Endpoint(s3.endpoint, s3.region, s3.bucket, s3.addressing, s3.ca_file)
    except ValueError as exc:
        raise BackendError(f"storage.s3: {exc}") from None
    creds = sigv4.Credentials(s3.access_key, s3.secret_key, s3.region, s3.session_token)
    return S3Client(endpoint, creds)


def open_packages(data, conf, **local_options):
    """The package store: PackageStore, or S3PackageStore with storage.s3.
    A local store that lost its index or blobs is BackendError (StartRefused)."""
    if conf.s3 is None:
        from registry.errors import StartRefused
        from registry.storage import PackageStore
        try:
            return PackageStore(data, **local_options)
        except StartRefused as exc:
            raise BackendError(exc.message) from None
    from registry.s3store import S3PackageStore, StorageError
    try:
        return S3PackageStore(s3_client(conf.s3), conf.s3.prefix,
                              redirect=conf.s3.redirect,
                              read_only=local_options.get("read_only", False),
                              stale_uploads=conf.s3.stale_uploads)
    except StorageError as exc:
        raise BackendError(str(exc)) from None


def open_trust(data, conf, poll=None, recover=False):
    """The trust store: the data directory's trust.db (checked, see
    registry/startup.py; ``recover`` sets a lost one aside), or the bucket's."""
    if conf.s3 is None:
        from registry.errors import StartRefused
        from registry.startup import open_trust_store
        try:
            return open_trust_store(data, recover=recover)
        except StartRefused as exc:
            raise BackendError(exc.message) from None
    from registry.s3trust import S3TrustStore
    from trust.errors import StoreError
    try:
        return S3TrustStore(s3_client(conf.s3), conf.s3.prefix, poll=poll)
    except StoreError as exc:
        raise BackendError(str(exc)) from None


def check_server_certificate(conf, pem):
    """Record this replica's server certificate in the bucket, or refuse to
    start if the bucket records another one (AMS pins one fingerprint)."""
    if conf.s3 is None:
        return
    from objstore.client import S3Error, Unreachable
    from trust import certs
    client = s3_client(conf.s3)
    key = conf.s3.prefix + SERVER_CERT
    try:
        recorded = client.get(key)
        if recorded is None:
            client.put(key, pem.encode())
            return
    except (S3Error, Unreachable) as exc:
        raise BackendError(f"S3 storage unusable: {exc}") from None
    theirs = certs.parse_pem(recorded).fingerprint
    ours = certs.parse_pem(pem.encode()).fingerprint
    if theirs != ours:
        raise BackendError(
            f"this replica's server certificate ({ours}) differs from the one the "
            f"bucket records ({theirs}): every replica must serve the same one (AMS "
            "pins one fingerprint); copy certs/server.crt and certs/server.key from "
            "a running replica into this data directory")
