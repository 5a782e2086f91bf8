import sys
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from certs import make_cert  # noqa: E402


@pytest.fixture(scope="session")
def certdir(tmp_path_factory):
    return tmp_path_factory.mktemp("certs")


@pytest.fixture(scope="session")
def certs(certdir):
    """A small set of real certificates shared by the whole session."""
    class _Certs:
        server = make_cert(certdir, "server", sans=["IP:127.0.0.1", "DNS:localhost"])
        publisher = make_cert(certdir, "publisher")
        client = make_cert(certdir, "client")
        stranger = make_cert(certdir, "stranger")
        expired = make_cert(certdir, "expired", expired=True)
    return _Certs


@pytest.fixture(scope="session")
def swift(tmp_path_factory):
    """OpenStack Swift (s3api + tempauth) on 127.0.0.1, once per session."""
    import os
    import swiftaio
    why = swiftaio.available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"Swift cannot run: {why}")
        pytest.skip(why)
    store = swiftaio.SwiftAIO(tmp_path_factory.mktemp("swift"))
    try:
        store.start()
    except BaseException:
        store.stop()
        raise
    yield store
    store.stop()


@pytest.fixture
def bucket(swift, request):
    """A fresh, empty bucket on the session's Swift; its name."""
    import re
    import uuid
    name = "t-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    # Not id(request): parametrised tests share the truncated name, and a
    # freed request's address comes back, so two of them met on one bucket
    # (BucketAlreadyOwnedByYou).
    name = f"{name}-{uuid.uuid4().hex[:10]}"
    swift.client().create_bucket(Bucket=name)
    return name
