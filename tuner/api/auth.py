"""Who may do what through the HTTP API.

Writes to the API (anything but GET and HEAD under /v1/) need the bearer token TUNER_API_TOKEN
in the Authorization header, always; a server without one accepts no write. Reads are open to
the loopback interface and need the token from anywhere else: a browser sends it as the
`tuner_token` cookie that the /login page sets (HttpOnly, SameSite=Strict), since a page cannot
add a header. A page's form that writes (submit a job) is a read as far as this goes, and carries
the token in a field of its own, which the page checks (or the login cookie). The server refuses to listen beyond the loopback interface
without a token (`check_bind`).
"""
from __future__ import annotations

import hmac
import ipaddress

from tuner.errors import UserError

COOKIE = "tuner_token"
OPEN_PATHS = ("/healthz", "/login")  # the container's healthcheck; the page that takes the token


class Unauthorized(UserError):
    """No token, or the wrong one (HTTP 401)."""


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: only "localhost" is known to stay on this machine
        return False


def check_bind(host: str, token: str) -> None:
    """Refuse to serve beyond the loopback interface without a token: reads would be open to all."""
    if not is_loopback(host) and not token:
        raise UserError(f"refusing to listen on {host[:80]} without a token: anyone who can reach it could read "
                        "every result; set TUNER_API_TOKEN (e.g. `openssl rand -hex 24`) or listen on 127.0.0.1")


def token_matches(given: str | None, token: str) -> bool:
    return bool(token) and given is not None and hmac.compare_digest(given.encode(), token.encode())


def bearer(authorization: str | None) -> str | None:
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authorize(method: str, path: str, client_host: str | None, authorization: str | None,
              cookie: str | None, token: str) -> str | None:
    """None when the request may go on, else the one-line reason it may not (HTTP 401).

    An API write takes the token from the Authorization header only: a cookie that a browser
    adds by itself must not be enough to write. Anything else (reads, and the pages' own forms,
    which check the token they carry in check_form) is open on the loopback interface and takes
    the header or the login cookie from elsewhere."""
    if path in OPEN_PATHS:
        return None
    api_write = method not in ("GET", "HEAD") and path.startswith("/v1/")
    given = bearer(authorization) if api_write else bearer(authorization) or cookie
    if token_matches(given, token) or (not api_write and is_loopback(client_host)):
        return None
    if not token:
        return "this server has no TUNER_API_TOKEN, so it takes no writes and no reads from other hosts; start it with one"
    what = "a write" if api_write else "a read from another host than this one"
    if given is None:
        return f"{what} needs the token: send 'Authorization: Bearer <TUNER_API_TOKEN>'"
    return "wrong token: send the server's TUNER_API_TOKEN as 'Authorization: Bearer <token>'"


def check_form(form_token: str | None, cookie: str | None, token: str) -> None:
    """A page's write: the token in the form's field, or the login cookie."""
    if not token:
        raise Unauthorized("this server has no TUNER_API_TOKEN, so it takes no writes; start it with one")
    if not (token_matches(form_token or None, token) or token_matches(cookie, token)):
        raise Unauthorized("wrong or missing token: give the server's TUNER_API_TOKEN in the form (or log in)")
