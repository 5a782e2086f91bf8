"""Our S3 client for a bucket of the test Swift (tests/swiftaio.py)."""
from objstore import sigv4
from objstore.client import Endpoint, S3Client


def client_for(swift, bucket, secret=None, **kw):
    endpoint = Endpoint(swift.endpoint, swift.region, bucket)
    creds = sigv4.Credentials(swift.access_key, secret or swift.secret_key, swift.region)
    return S3Client(endpoint, creds, **kw)
