"""The runtime's HTTP client for a `tuner serve` (TUNER_CONFIG_URL): what the HTTP source and the
HTTP miss sink send, with the standard library's http.client, imported on the first request
(never at import: a model process that reads a file or a database loads no HTTP client).

Bounded, since a model process must survive any server, or anything posing as one:
- one deadline for the whole request: connect, TLS, headers and body. A socket's timeout starts
  again with every byte, so a server trickling its headers would hold a call for ever; a watchdog
  timer shuts the socket when the deadline passes instead;
- the body is capped (TUNER_RUNTIME_MAX_BUNDLE_MB) and refused beyond it, from its Content-Length
  before a byte is read when the server gives one;
- no redirect is followed (it would carry the Authorization header wherever it points);
- no proxy from the environment unless TUNER_RUNTIME_PROXY_FROM_ENV (then http(s)_proxy and
  no_proxy as urllib reads them): a stray HTTP_PROXY of a model server's shell must not see the
  token or the answers;
- the token never goes in clear beyond this machine: an http:// URL whose host (or proxy) is not
  a loopback address is refused before anything is sent. https:// checks the server's certificate
  against the system's CAs (OpenSSL's SSL_CERT_FILE / SSL_CERT_DIR name others).
Called from the runtime's background threads only, never on a launch.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

READ_CHUNK = 1 << 16
ERROR_BODY = 4096  # bytes of an error answer read for its message


class ServerRefused(Exception):
    """The server answered with an error status (401, 400, 503, ...); str: that status and its
    one-line {"error": ...}."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Refused(Exception):
    """A request this client will not make, or an answer it will not take (str: why, and the fix)."""


@dataclass(frozen=True)
class Options:
    """What every request of this process carries and is bounded by."""

    token: str = ""
    max_bytes: int = 64 << 20
    proxy_from_env: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> "Options":
        # the inference hosts' own token scope when set: it can read bundles and post misses only
        return cls(settings.runtime_token or settings.api_token, int(settings.runtime_max_bundle_mb * (1 << 20)),
                   settings.runtime_proxy_from_env)


def is_loopback(host: str | None) -> bool:
    """Whether host names this machine's loopback interface (a name other than localhost may resolve
    anywhere)."""
    import ipaddress

    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _proxy(parts: Any) -> Any:
    """The environment's proxy for this URL (urlsplit parts), None when none or no_proxy names it."""
    import urllib.request
    from urllib.parse import urlsplit

    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urlsplit(proxy if "://" in proxy else f"http://{proxy}")


def refusal(url: str, options: Options) -> str | None:
    """Why this client will not send options' token to url, or None."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return _refusal(parts, _proxy(parts) if options.proxy_from_env else None, options.token)


def _refusal(parts: Any, proxy: Any, token: str) -> str | None:
    if not token or parts.scheme != "http":
        return None
    for host in (parts.hostname, proxy.hostname if proxy is not None else None):
        if host is not None and not is_loopback(host):
            return (f"refusing to send the token over plain http:// to {host[:80]}, which is not this machine "
                    "(anyone on the path could read it); give TUNER_CONFIG_URL an https:// URL")
    return None


def _error_line(status: int, body: bytes) -> str:
    try:
        message = json.loads(body)["error"]
    except Exception:
        message = body.decode(errors="replace")
    text = " ".join(str(message).split())
    return text[:200] or {401: "the token was refused"}.get(status, "no reason given")


def _connection(parts: Any, proxy: Any, timeout_s: float) -> tuple[Any, str]:
    """(an unopened http.client connection, the request target) for a URL, through proxy if any."""
    import http.client
    import ssl

    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    via = (proxy.hostname, proxy.port or 80) if proxy is not None else (parts.hostname, port)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(*via, timeout=timeout_s, context=ssl.create_default_context())
        if proxy is not None:
            conn.set_tunnel(parts.hostname, port)  # CONNECT: the proxy sees neither token nor answer
        return conn, target
    conn = http.client.HTTPConnection(*via, timeout=timeout_s)
    if proxy is not None:  # a plain proxy takes the absolute URL
        target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
    return conn, target


def call(method: str, url: str, options: Options, timeout_s: float, body: Any = None,
         etag: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers by lower-case name, body) of one request; body (JSON-able) is sent as JSON.
    304 is an answer (with If-None-Match: etag); any other status outside 2xx raises ServerRefused;
    a request refused here or an answer over the cap raises Refused; no whole answer within
    timeout_s raises TimeoutError; anything else on the way ConnectionError."""
    import http.client
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    proxy = _proxy(parts) if options.proxy_from_env else None
    why = _refusal(parts, proxy, options.token)
    if why:
        raise Refused(why)
    headers = {"Accept": "application/json", "User-Agent": "tuner-runtime"}
    if options.token:
        headers["Authorization"] = f"Bearer {options.token}"
    if etag:
        headers["If-None-Match"] = etag
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    conn, target = _connection(parts, proxy, timeout_s)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the read blocked on it
            except OSError:
                pass

    watchdog = threading.Timer(timeout_s, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request(method, target, body=data, headers=headers)
        response = conn.getresponse()
        found = {k.lower(): v for k, v in response.getheaders()}
        if response.status == 304:
            return 304, found, b""
        if not 200 <= response.status < 300:
            raise ServerRefused(response.status, _error_line(response.status, response.read(ERROR_BODY)))
        data = _read_capped(response, found, options.max_bytes)
        if expired.is_set():  # the read ended because the watchdog shut the socket: a part only
            raise TimeoutError
        return response.status, found, data
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
            raise TimeoutError(f"no whole answer within {timeout_s:g} s") from None
        text = str(exc).strip().splitlines()
        raise ConnectionError(f"{type(exc).__name__}: {text[0][:200] if text else ''}") from None
    finally:
        watchdog.cancel()
        conn.close()


def _read_capped(response: Any, headers: dict[str, str], max_bytes: int) -> bytes:
    limit = f"TUNER_RUNTIME_MAX_BUNDLE_MB={max_bytes / (1 << 20):g}"
    length = headers.get("content-length", "")
    if length.strip().isdigit() and int(length) > max_bytes:
        raise Refused(f"the answer is {int(length) / (1 << 20):.1f} MB, over {limit}; raise it if that is right")
    chunks, size = [], 0
    while chunk := response.read(READ_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise Refused(f"the answer is over {limit} (refused after reading that much); raise it if that is right")
        chunks.append(chunk)
    return b"".join(chunks)

