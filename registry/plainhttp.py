"""The answer to a plain-HTTP request on the HTTPS port.

A browser, curl or a monitor pointed at http:// instead of https:// gets
nothing from a TLS server but a closed connection, and is left guessing.
OpenSSL recognises the mistake (the handshake fails with reason
HTTP_REQUEST); then, like nginx's "The plain HTTP request was sent to HTTPS
port", we answer 400 in plain text, outside TLS, with the URL to use, and
close. Only a fixed text goes out: nothing of the request but a Host that
is a plain host name or address, so the answer reflects no caller's input.
"""
import re
import socket

__all__ = ["answer_plain_http", "plain_http_answer"]

# How much of the request is searched for a Host.
_LOOK = 4096
_HOST_RE = re.compile(rb"\r?\nhost:[ \t]*([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])"
                      rb"(?::[0-9]{1,5})?[ \t]*\r?\n", re.IGNORECASE)


def plain_http_answer(host, port) -> bytes:
    """The whole HTTP/1.1 400 response that sends the caller to https://host:port."""
    body = (f"This is the aar registry's HTTPS port: the plain HTTP request was sent "
            f"to an HTTPS port.\nUse https://{host}:{port} (mutual TLS: a client "
            f"certificate the registry trusts).\n").encode("ascii")
    return (b"HTTP/1.1 400 Bad Request\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body)) + body


def answer_plain_http(sock, received):
    """Write plain_http_answer() on sock's TCP stream, under its TLS layer.

    Best effort: the socket is non-blocking and fresh, so its send buffer
    takes these few hundred bytes at once; if it cannot, the caller closes
    as it would have anyway. The host is the Host of the request (the bytes
    `received` so far) when it has a safe one, else the address the
    connection arrived at; the port is ours.
    """
    try:
        host, port = sock.getsockname()[:2]
        if ":" in host:
            host = f"[{host}]"
        named = _HOST_RE.search(received[:_LOOK])
        if named:
            host = named.group(1).decode("ascii")
        socket.socket.send(sock, plain_http_answer(host, port))
    except OSError:
        pass
