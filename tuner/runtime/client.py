"""The runtime's HTTP client for a `tuner serve` (TUNER_CONFIG_URL): what the HTTP source and the
HTTP miss sink send, with the standard library's urllib, imported on the first request (never at
import: a model process that reads a file or a database loads no HTTP client).

A request carries the bearer token when one is set, follows no redirect (urllib would carry the
Authorization header to wherever the redirect points) and is bounded as a whole, not only per
socket read, so a server that trickles its answer cannot hold a background thread for ever.
Called from the runtime's background threads only, never on a launch.
"""
from __future__ import annotations

import json
import time
from typing import Any

READ_CHUNK = 1 << 16


class ServerRefused(Exception):
    """The server answered with an error status (401, 400, 503, ...); str: that status and its
    one-line {"error": ...}."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


_opener: Any = None


def _open(request: Any, timeout_s: float) -> Any:
    global _opener
    import urllib.request

    if _opener is None:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None  # the 3xx is then raised as an HTTPError: refused, token kept

        _opener = urllib.request.build_opener(NoRedirect)
    return _opener.open(request, timeout=timeout_s)


def _error_line(status: int, body: bytes) -> str:
    try:
        message = json.loads(body)["error"]
    except Exception:
        message = body.decode(errors="replace")
    text = " ".join(str(message).split())
    return text[:200] or {401: "the token was refused"}.get(status, "no reason given")


def call(method: str, url: str, token: str, timeout_s: float, body: Any = None,
         etag: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers by lower-case name, body) of one request; body (JSON-able) is sent as JSON. 304 is an answer
    (with If-None-Match: etag); any other status outside 2xx raises ServerRefused; no answer
    within timeout_s raises TimeoutError; an unreachable server ConnectionError."""
    import socket
    import urllib.error
    import urllib.request

    headers = {"Accept": "application/json", "User-Agent": "tuner-runtime"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if etag:
        headers["If-None-Match"] = etag
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    end = time.monotonic() + timeout_s
    try:
        response = _open(request, timeout_s)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 304:
                return 304, {k.lower(): v for k, v in exc.headers.items()}, b""
            raise ServerRefused(exc.code, _error_line(exc.code, exc.read(4096))) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise TimeoutError(f"no answer within {timeout_s:g} s") from None
        raise ConnectionError(str(reason)) from None
    except (TimeoutError, socket.timeout):
        raise TimeoutError(f"no answer within {timeout_s:g} s") from None
    with response:
        chunks = []
        try:
            while chunk := response.read(READ_CHUNK):
                chunks.append(chunk)
                if time.monotonic() > end:
                    raise TimeoutError(f"the answer took longer than {timeout_s:g} s")
        except socket.timeout:
            raise TimeoutError(f"the answer stopped coming for {timeout_s:g} s") from None
        return response.status, {k.lower(): v for k, v in response.headers.items()}, b"".join(chunks)

