"""Our SigV4 signer against botocore's, the reference implementation."""
import datetime
import urllib.parse

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from objstore import sigv4

AK, SK, REGION = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "eu-west-3"
CREDS = sigv4.Credentials(AK, SK, REGION)

CASES = [
    ("GET", "example.net", "/bucket/key", []),
    ("PUT", "example.net:9000", "/bucket/packages/app 1/é/x+y=z", []),
    ("GET", "bucket.s3.eu-west-3.amazonaws.com", "/", [("list-type", "2"),
                                                      ("prefix", "registry/pkg s/")]),
    ("POST", "127.0.0.1:8080", "/b/k", [("uploads", "")]),
    ("PUT", "127.0.0.1:8080", "/b/k~1", [("partNumber", "3"), ("uploadId", "a/b+c==")]),
    ("DELETE", "127.0.0.1:8080", "/b/blobs/sha256/ab", []),
]


def _url(host, path, params):
    url = f"http://{host}{sigv4.uri_encode(path, True)}"
    if params:
        url += "?" + "&".join(f"{sigv4.uri_encode(k, False)}={sigv4.uri_encode(v, False)}"
                              for k, v in params)
    return url


def _when(amz_date):
    return datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("method,host,path,params", CASES)
def test_signed_headers_match_botocore(method, host, path, params):
    req = AWSRequest(method=method, url=_url(host, path, params),
                     headers={"Content-Type": "application/octet-stream"})
    S3SigV4Auth(BotoCredentials(AK, SK), "s3", REGION).add_auth(req)
    ours = sigv4.sign_headers(CREDS, method, host, path, params,
                              {"Content-Type": "application/octet-stream"},
                              payload=req.headers["X-Amz-Content-SHA256"],
                              now=_when(req.headers["X-Amz-Date"]))
    assert ours["authorization"] == req.headers["Authorization"]


@pytest.mark.parametrize("method,host,path,params", CASES)
def test_presigned_query_matches_botocore(method, host, path, params):
    req = AWSRequest(method=method, url=_url(host, path, params))
    S3SigV4QueryAuth(BotoCredentials(AK, SK), "s3", REGION, expires=120).add_auth(req)
    theirs = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req.url).query,
                                         keep_blank_values=True))
    ours = dict(urllib.parse.parse_qsl(
        sigv4.presign(CREDS, method, host, path, params, expires=120,
                      now=_when(theirs["X-Amz-Date"])), keep_blank_values=True))
    assert ours == theirs


def test_the_secret_changes_the_signature():
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    a = sigv4.sign_headers(CREDS, "GET", "h", "/b/k", now=when)
    b = sigv4.sign_headers(sigv4.Credentials(AK, SK + "x", REGION), "GET", "h", "/b/k",
                           now=when)
    assert a["authorization"] != b["authorization"]
    assert "wJalr" not in repr(CREDS)
