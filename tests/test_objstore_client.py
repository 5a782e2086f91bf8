"""The standard-library S3 client against a real object store (Swift)."""
import hashlib
import io
import os
import time
import urllib.error
import urllib.request

import pytest

from objstore import upload
from objstore.client import Endpoint, S3Client, S3Error, Unreachable
from objstore import sigv4
from s3env import client_for


def test_put_get_head_list_delete(swift, bucket):
    c = client_for(swift, bucket)
    c.put("dir/a b", b"hello")
    c.put("dir/c", b"x" * 10)
    assert c.get("dir/a b") == b"hello"
    assert c.head("dir/c")["content-length"] == "10"
    items, date = c.list("dir/")
    assert [i["key"] for i in items] == ["dir/a b", "dir/c"]
    assert date
    c.delete("dir/a b")
    assert c.get("dir/a b") is None and c.head("dir/a b") is None
    # boto3 sees what we wrote
    assert swift.client().get_object(Bucket=bucket, Key="dir/c")["Body"].read() == b"x" * 10


def test_list_pages(swift, bucket):
    c = client_for(swift, bucket)
    for i in range(7):
        c.put(f"p/{i}", b"")
    items, _ = c.list("p/", page_size=3)      # three pages
    assert [i["key"] for i in items] == [f"p/{i}" for i in range(7)]


def test_streamed_get_with_range(swift, bucket):
    c = client_for(swift, bucket)
    c.put("r", bytes(range(256)))
    resp = c.open("r", 10, 20)
    try:
        assert resp.read() == bytes(range(10, 20))
    finally:
        resp.close()
        resp.conn_to_close.close()


def test_presigned_get_works_then_expires(swift, bucket):
    c = client_for(swift, bucket)
    c.put("pre", b"presigned")
    with urllib.request.urlopen(c.presigned_url("pre", expires=60)) as r:
        assert r.read() == b"presigned"
    url = c.presigned_url("pre", expires=1)
    time.sleep(2.5)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url)
    assert err.value.code == 403
    tampered = c.presigned_url("pre", expires=60).replace("pre?", "prf?")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(tampered)
    assert err.value.code in (403, 404)


def test_wrong_key_missing_bucket_unreachable(swift, bucket):
    with pytest.raises(S3Error) as err:
        client_for(swift, bucket, secret="wrong", attempts=1).head_bucket()
    assert err.value.status == 403
    with pytest.raises(S3Error) as err:
        client_for(swift, "no-such-bucket-here", attempts=1).head_bucket()
    assert err.value.status == 404
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = S3Client(Endpoint(f"http://127.0.0.1:{port}", "us-east-1", bucket),
                    sigv4.Credentials("a", "b", "us-east-1"), attempts=2, backoff=0.01)
    with pytest.raises(Unreachable, match="unreachable"):
        dead.get("x")


def test_multipart_upload_checked(swift, bucket):
    c = client_for(swift, bucket)
    body = os.urandom(9 * upload.MIB + 12345)     # two parts
    sha = hashlib.sha256(body).hexdigest()
    upload.upload(c, "big", io.BytesIO(body), len(body), sha, threshold=upload.MIB,
                  concurrency=2)
    assert c.get("big") == body
    assert c.list_multipart("") == []


def test_multipart_wrong_digest_leaves_nothing(swift, bucket):
    c = client_for(swift, bucket)
    body = os.urandom(2 * upload.MIB)
    with pytest.raises(upload.DigestMismatch):
        upload.upload(c, "bad", io.BytesIO(body), len(body), "0" * 64, threshold=upload.MIB)
    assert c.head("bad") is None
    assert c.list_multipart("") == []
    with pytest.raises(upload.ShortBody):
        upload.upload(c, "short", io.BytesIO(body), len(body) + 5, "0" * 64,
                      threshold=upload.MIB)
    assert c.head("short") is None and c.list_multipart("") == []


def test_part_size_fits_64_gib_in_10000_parts():
    for size in (0, 1, 16 << 20, 5 << 30, 64 << 30, 200 << 30, 5 << 40):
        part = upload.part_size(size)
        assert part >= 8 << 20 and -(-size // part) <= 10_000
