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
