"""A small S3 client on http.client: the requests the registry needs, signed.

* Addressing: path-style (``https://host/bucket/key``), the default for an
  explicit endpoint because every S3-compatible store speaks it, or
  virtual-host (``https://bucket.host/key``), the default for AWS itself.
* HTTPS verifies against the system CA store, or the configured CA file.
* Every request has a connect and read timeout. Idempotent requests whose body
  is in memory are retried on connection errors, 5xx and throttling, with
  exponential backoff and full jitter; the last failure is raised.
* Errors: S3Error (the store answered no: status, code, message) and
  Unreachable (no answer at all). Both say which request failed.

One connection per thread for small requests; a streaming GET gets a
connection of its own, closed with the stream.
"""
import http.client
import random
import ssl
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

from objstore import sigv4

__all__ = ["S3Client", "S3Error", "Unreachable", "Endpoint"]

_RETRY_STATUS = frozenset({500, 502, 503, 504, 429})
_RETRY_CODES = frozenset({"SlowDown", "Throttling", "RequestTimeout",
                          "InternalError", "ServiceUnavailable"})


class S3Error(Exception):
    """The object store answered with an error status."""

    def __init__(self, status, code, message, what):
        super().__init__(f"{what}: {status} {code}: {message}" if message
                         else f"{what}: {status} {code}")
        self.status, self.code, self.what = status, code, what


class Unreachable(Exception):
    """No answer from the object store (connection refused, reset, timed out, TLS)."""


class Endpoint:
    """Where the bucket is and how to address it."""

    def __init__(self, url=None, region="us-east-1", bucket="", addressing=None,
                 ca_file=None):
        if not url:
            url = f"https://s3.{region}.amazonaws.com"
            addressing = addressing or "virtual"
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"bad S3 endpoint {url!r}: use https://host[:port]")
        self.scheme = parts.scheme
        self.hostname = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.region, self.bucket = region, bucket
        self.addressing = addressing or "path"
        if self.addressing not in ("path", "virtual"):
            raise ValueError(f"bad addressing style {self.addressing!r}: path or virtual")
        self.ca_file = ca_file
        self.url = url

    def host(self):
        """(connect host, Host header value) of the bucket."""
        name = self.hostname
        if self.addressing == "virtual":
            name = f"{self.bucket}.{name}"
        default = 443 if self.scheme == "https" else 80
        return name, name if self.port == default else f"{name}:{self.port}"

    def path(self, key=""):
        if self.addressing == "virtual":
            return "/" + key
        return f"/{self.bucket}/{key}" if key else f"/{self.bucket}"


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)


def _xml(body):
    """Parse S3's XML, dropping namespaces."""
    root = ET.fromstring(body)
    for el in root.iter():
        if "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return root


class S3Client:
    """Requests to one bucket."""

    def __init__(self, endpoint, credentials, timeout=30.0, attempts=5,
                 backoff=0.25, max_backoff=8.0):
        self.endpoint = endpoint
        self.creds = credentials
        self.timeout = timeout
        self.attempts = attempts
        self.backoff, self.max_backoff = backoff, max_backoff
        self._local = threading.local()
        self._ssl = None
        if endpoint.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=endpoint.ca_file)

    # -- connections ---------------------------------------------------------

    def _connect(self, timeout=None):
        host, _ = self.endpoint.host()
        if self._ssl is not None:
            return http.client.HTTPSConnection(host, self.endpoint.port, context=self._ssl,
                                               timeout=timeout or self.timeout)
        return http.client.HTTPConnection(host, self.endpoint.port,
                                          timeout=timeout or self.timeout)

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _drop_conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- one request -------------------------------------------------------------

    def _signed(self, method, key, params, headers, payload):
        _, host_header = self.endpoint.host()
        path = self.endpoint.path(key)
        signed = sigv4.sign_headers(self.creds, method, host_header, path, params,
                                    headers, payload)
        url = sigv4.uri_encode(path, True)
        if params:
            url += "?" + "&".join(f"{sigv4.uri_encode(k, False)}={sigv4.uri_encode(v, False)}"
                                  for k, v in params)
        return url, signed

    def request(self, method, key="", params=(), headers=None, body=b"",
                ok=(200,), what=None, attempts=None):
        """One request with retries; returns Response (body read) or raises."""
        what = what or f"{method} {key or self.endpoint.bucket}"
        params = list(params)
        payload = sigv4.UNSIGNED if body else sigv4.EMPTY_SHA256
        delay = self.backoff
        attempts = attempts or self.attempts
        for attempt in range(1, attempts + 1):
            url, signed = self._signed(method, key, params, headers, payload)
            if body:
                signed["content-length"] = str(len(body))
            try:
                conn = self._conn()
                conn.request(method, url, body=body or None, headers=signed)
                resp = conn.getresponse()
                data = resp.read()
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                if resp.will_close:
                    self._drop_conn()
            except ssl.SSLCertVerificationError as exc:
                self._drop_conn()
                raise self._untrusted(exc, what) from None   # no retry mends it
            except (OSError, http.client.HTTPException) as exc:
                self._drop_conn()
                error = Unreachable(f"{what}: {self.endpoint.url} unreachable: "
                                    f"{exc or type(exc).__name__}")
                retry = True
            else:
                if resp.status in ok:
                    return Response(resp.status, hdrs, data)
                error = self._error(resp.status, data, what)
                retry = resp.status in _RETRY_STATUS or error.code in _RETRY_CODES
            if not retry or attempt == attempts:
                raise error
            time.sleep(random.uniform(0, delay))
            delay = min(self.max_backoff, delay * 2)
        raise AssertionError("unreachable")

    def _untrusted(self, exc, what):
        why = getattr(exc, "verify_message", "") or str(exc)
        if self.endpoint.ca_file:
            fix = f"it is not signed by the CA in ca-file {self.endpoint.ca_file}"
        else:
            fix = "set storage.s3.ca-file to the CA that signed it"
        return Unreachable(f"{what}: the TLS certificate of {self.endpoint.url} is "
                           f"not trusted ({why}): {fix}")

    @staticmethod
    def _error(status, data, what):
        code, message = http.client.responses.get(status, "Error").replace(" ", ""), ""
        if data:
            try:
                root = _xml(data)
                code = root.findtext("Code") or code
                message = root.findtext("Message") or ""
            except ET.ParseError:
                message = data[:200].decode("utf-8", "replace")
        return S3Error(status, code, message, what)

    # -- objects -----------------------------------------------------------------

    def head_bucket(self):
        self.request("HEAD", what=f"bucket {self.endpoint.bucket!r}")

    def put(self, key, data, headers=None):
        """PUT a small object; returns its ETag."""
        return self.request("PUT", key, headers=headers, body=data).header("etag")

    def get(self, key):
        """The bytes of a small object, or None if there is none."""
        try:
            return self.request("GET", key).body
        except S3Error as exc:
            if exc.status == 404:
                return None
            raise

    def head(self, key):
        """The object's headers, or None if there is none."""
        try:
            return self.request("HEAD", key).headers
        except S3Error as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, key, attempts=None):
        """Delete an object (absent is fine); ``attempts=1``: no retry, when a
        late repetition could delete what another writer put there since."""
        self.request("DELETE", key, ok=(200, 204, 404), attempts=attempts)

    def list(self, prefix, delimiter=None, page_size=None):
        """Every object under prefix as dicts {key, etag, size, modified};
        also returns the server's Date of the first page (seconds)."""
        items, token, date = [], None, None
        while True:
            params = [("list-type", "2"), ("prefix", prefix)]
            if delimiter:
                params.append(("delimiter", delimiter))
            if page_size:
                params.append(("max-keys", str(page_size)))
            if token:
                params.append(("continuation-token", token))
            resp = self.request("GET", "", params, what=f"list {prefix}")
            if date is None:
                date = resp.header("date")
            root = _xml(resp.body)
            for c in root.iter("Contents"):
                items.append({"key": c.findtext("Key"),
                              "etag": (c.findtext("ETag") or "").strip('"'),
                              "size": int(c.findtext("Size") or 0),
                              "modified": c.findtext("LastModified") or ""})
            if root.findtext("IsTruncated") != "true":
                return items, date
            token = root.findtext("NextContinuationToken")

    def open(self, key, start=0, end=None):
        """A streaming GET of bytes [start, end); returns the HTTPResponse
        (read it, then close it). Raises S3Error / Unreachable."""
        headers = {}
        if start or end is not None:
            headers["range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        url, signed = self._signed("GET", key, (), headers, sigv4.EMPTY_SHA256)
        conn = self._connect()
        try:
            conn.request("GET", url, headers=signed)
            resp = conn.getresponse()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise self._untrusted(exc, f"GET {key}") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise Unreachable(f"GET {key}: {self.endpoint.url} unreachable: {exc}") from None
        if resp.status not in (200, 206):
            data = resp.read()
            conn.close()
            raise self._error(resp.status, data, f"GET {key}")
        resp.conn_to_close = conn
        return resp

    def presigned_url(self, key, expires=300, method="GET"):
        _, host_header = self.endpoint.host()
        path = self.endpoint.path(key)
        query = sigv4.presign(self.creds, method, host_header, path, expires=expires)
        return (f"{self.endpoint.scheme}://{host_header}"
                f"{sigv4.uri_encode(path, True)}?{query}")

    # -- multipart ---------------------------------------------------------------

    def create_multipart(self, key):
        resp = self.request("POST", key, [("uploads", "")], what=f"start upload {key}")
        return _xml(resp.body).findtext("UploadId")

    def upload_part(self, key, upload_id, number, data):
        resp = self.request("PUT", key, [("partNumber", str(number)),
                                         ("uploadId", upload_id)], body=data,
                            what=f"upload part {number} of {key}")
        return resp.header("etag")

    def complete_multipart(self, key, upload_id, etags):
        parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
                        for n, e in enumerate(etags, 1))
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        resp = self.request("POST", key, [("uploadId", upload_id)], body=body,
                            what=f"complete upload {key}")
        # S3 may answer 200 with an error document after a long wait.
        root = _xml(resp.body)
        if root.tag == "Error":
            raise S3Error(500, root.findtext("Code") or "InternalError",
                          root.findtext("Message") or "", f"complete upload {key}")

    def abort_multipart(self, key, upload_id, attempts=None):
        self.request("DELETE", key, [("uploadId", upload_id)], ok=(200, 204, 404),
                     what=f"abort upload {key}", attempts=attempts)

    def list_multipart(self, prefix):
        """In-progress uploads under prefix: [(key, upload_id, initiated)]."""
        found, params = [], [("uploads", ""), ("prefix", prefix)]
        while True:
            root = _xml(self.request("GET", "", params, what=f"list uploads {prefix}").body)
            for u in root.iter("Upload"):
                found.append((u.findtext("Key"), u.findtext("UploadId"),
                              u.findtext("Initiated") or ""))
            if root.findtext("IsTruncated") != "true":
                return found
            params = [("uploads", ""), ("prefix", prefix),
                      ("key-marker", root.findtext("NextKeyMarker") or ""),
                      ("upload-id-marker", root.findtext("NextUploadIdMarker") or "")]
