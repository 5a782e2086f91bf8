"""Real certificates for the tests, made with the `openssl` command.

Every test that needs a certificate gets one from here, so the suite exercises
what operators feed the programs: PEM files written by openssl, EC P-256 keys.
"""
import pathlib
import subprocess

__all__ = ["CertPair", "make_cert", "make_ca", "make_signed"]


class CertPair:
    """A certificate file and its key file."""

    def __init__(self, cert: pathlib.Path, key: pathlib.Path):
        self.cert = cert
        self.key = key

    @property
    def pem(self) -> str:
        return self.cert.read_text()

    def __repr__(self):
        return f"CertPair({self.cert})"


def _run(args):
    subprocess.run(args, check=True, capture_output=True)


def make_cert(directory, name, *, days=365, expired=False, sans=None,
              rsa=False) -> CertPair:
    """Write `<name>.crt` and `<name>.key` into directory; CN is name.

    expired=True makes a certificate whose notAfter lies a day in the past
    (openssl x509 accepts a negative -days where req does not).
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / f"{name}.crt"
    key = directory / f"{name}.key"
    keyopts = (["-newkey", "rsa:2048"] if rsa else
               ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
    if expired:
        csr = directory / f"{name}.csr"
        _run(["openssl", "req", "-new", *keyopts, "-nodes", "-keyout", str(key),
              "-out", str(csr), "-subj", f"/CN={name}"])
        _run(["openssl", "x509", "-req", "-in", str(csr), "-signkey", str(key),
              "-days", "-1", "-out", str(cert)])
        csr.unlink()
    else:
        ext = []
        if sans:
            ext = ["-addext", "subjectAltName=" + ",".join(sans)]
        _run(["openssl", "req", "-x509", *keyopts, "-nodes", "-keyout", str(key),
              "-out", str(cert), "-subj", f"/CN={name}", "-days", str(days), *ext])
    return CertPair(cert, key)


def make_ca(directory, name) -> CertPair:
    """A certificate authority: `<name>.crt` (CA:TRUE, keyCertSign) and its key."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
          "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    return CertPair(cert, key)


def make_signed(directory, name, ca: CertPair, sans) -> CertPair:
    """A server certificate for sans (e.g. ["IP:127.0.0.1"]) signed by ca, with
    the extensions strict verification wants (Python 3.13's default)."""
    directory = pathlib.Path(directory)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    csr, ext = directory / f"{name}.csr", directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={','.join(sans)}\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    _run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"])
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey",
          str(ca.key), "-CAcreateserial", "-days", "30", "-extfile", str(ext),
          "-out", str(cert)])
    csr.unlink()
    return CertPair(cert, key)
