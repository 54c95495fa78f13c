"""Who may do what through the HTTP API, decided from what the request carries, never from where
it seems to come from (a same-host forwarder or an X-Forwarded-For header makes any caller look
local).

Two bearer tokens: TUNER_API_TOKEN (operators: everything) and TUNER_RUNTIME_TOKEN (inference
hosts: RUNTIME_ROUTES only, 403 elsewhere). Every path but OPEN_PATHS needs one of them, unless the
server runs with open reads (`tuner serve --open-reads`, a single user's laptop: loopback only),
which opens GET and HEAD. A browser logs in with the operators' token and gets a session cookie (a
random id the server maps to an expiry, never the token; HttpOnly, SameSite=Strict): it is good for
reads and for the dashboard's own forms, whose Origin guard.py checks, never for an API write,
which takes the Authorization header only. Beyond the loopback interface the server refuses to
start without a token, or with one shorter than MIN_TOKEN (`check_bind`).
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from tuner.errors import UserError

COOKIE = "tuner_session"
SESSION_S = 12 * 3600  # a login lasts a working day
MAX_SESSIONS = 1000  # the oldest login is dropped beyond this
MIN_TOKEN = 32  # characters of a token a server beyond the loopback accepts (`openssl rand -hex 24` gives 48)
OPEN_PATHS = ("/healthz", "/login")  # the container's healthcheck (status only); the page that logs in
OPEN_PREFIXES = ("/static/",)  # the dashboard's and /docs' packaged CSS and JS: nothing of the service's
RUNTIME_ROUTES = frozenset({("GET", "/v1/bundle"), ("POST", "/v1/misses")})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
READS = ("GET", "HEAD")


class Unauthorized(UserError):
    """No token, or the wrong one (HTTP 401)."""


class Forbidden(UserError):
    """A token whose scope does not cover the request (HTTP 403)."""


@dataclass(frozen=True)
class Policy:
    """What a server accepts: its tokens and whether reads are open."""
    operator: str = ""
    runtime: str = ""
    open_reads: bool = False


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: only "localhost" is known to stay on this machine
        return False


def check_bind(host: str, policy: Policy) -> None:
    """Refuse a server that anyone who reaches it could read, or guess the token of."""
    if policy.runtime and policy.runtime == policy.operator:
        raise UserError("TUNER_RUNTIME_TOKEN equals TUNER_API_TOKEN: inference hosts would hold the operators' "
                        "token; give each its own (e.g. `openssl rand -hex 24`)")
    if is_loopback(host):
        return
    if policy.open_reads:
        raise UserError(f"refusing open reads on {host[:80]}: --open-reads is for one user on this machine; "
                        "listen on 127.0.0.1 or drop --open-reads (TUNER_API_OPEN_READS)")
    if not policy.operator:
        raise UserError(f"refusing to listen on {host[:80]} without a token: anyone who can reach it could read "
                        "every result; set TUNER_API_TOKEN (e.g. `openssl rand -hex 24`) or listen on 127.0.0.1")
    for name, token in (("TUNER_API_TOKEN", policy.operator), ("TUNER_RUNTIME_TOKEN", policy.runtime)):
        if token and len(token) < MIN_TOKEN:
            raise UserError(f"refusing to listen on {host[:80]} with a {len(token)}-character {name}: give one of "
                            f"at least {MIN_TOKEN} characters (e.g. `openssl rand -hex 24`) or listen on 127.0.0.1")


def allowed_hosts(bound: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    """The names a Host header may carry: the bound address, the loopback's and the setting's. Any
    other is refused, so a page on another site that rebinds its name to this address (DNS
    rebinding) is not answered."""
    return tuple(dict.fromkeys(h.lower().strip("[]") for h in (bound, *LOOPBACK_NAMES, *extra)))


def host_allowed(header: str | None, allowed: tuple[str, ...]) -> bool:
    try:
        name = urlsplit(f"//{header or ''}").hostname  # drops the port, and the brackets of an IPv6 address
    except ValueError:
        return False
    if not name:
        return False
    return any(p == "*" or name == p or (p.startswith("*.") and name.endswith(p[1:])) for p in allowed)


def same_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """A form's POST comes from a page of this server: its Origin (or, without one, its Referer)
    names the host the request was sent to."""
    source = origin if origin and origin != "null" else referer
    if not source or not host:
        return False
    try:
        return urlsplit(source).netloc.lower() == host.lower()
    except ValueError:
        return False


def token_matches(given: str | None, token: str) -> bool:
    return bool(token) and given is not None and hmac.compare_digest(given.encode(), token.encode())


def bearer(authorization: str | None) -> str | None:
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def role_of(given: str | None, policy: Policy) -> str | None:
    if token_matches(given, policy.operator):
        return "operator"
    if token_matches(given, policy.runtime):
        return "runtime"
    return None


def authorize(method: str, path: str, authorization: str | None, session: bool,
              policy: Policy) -> tuple[str | None, UserError | None]:
    """(the caller's role, None) when the request may go on, else (None, the error: 401 or 403).

    `session`: the request carries a live login cookie. It stands for the operators' token except
    on an API write, since a browser adds a cookie by itself to any request a page makes."""
    given = bearer(authorization)
    role = role_of(given, policy)
    api_write = method not in READS and path.startswith("/v1/")
    if role is None and session and not api_write:
        role = "operator"
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return role, None
    if role == "operator" or (role == "runtime" and (method, path) in RUNTIME_ROUTES):
        return role, None
    if role == "runtime":
        return None, Forbidden("the runtime token (TUNER_RUNTIME_TOKEN) may only GET /v1/bundle and POST "
                               "/v1/misses; use TUNER_API_TOKEN for this")
    if given is None and policy.open_reads and method in READS:
        return None, None
    if given is not None:
        return None, Unauthorized("wrong token: send the server's TUNER_API_TOKEN as 'Authorization: Bearer <token>'")
    if not policy.operator:
        return None, Unauthorized("this server has no TUNER_API_TOKEN, so it takes no writes and no reads; start it "
                                  "with one (or with --open-reads, for reads on a laptop)")
    what = "a write" if api_write else "this"
    return None, Unauthorized(f"{what} needs the token: send 'Authorization: Bearer <TUNER_API_TOKEN>' "
                              "(a browser: log in at /login)")


class Sessions:
    """Logins: random ids mapped to their expiry, in this process only (a restart logs everyone
    out). The cookie holds the id, so the token never rides on every request, and logout ends it."""

    def __init__(self, ttl_s: float = SESSION_S, limit: int = MAX_SESSIONS):
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()
        self.ttl_s, self.limit = ttl_s, limit

    def start(self) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._expiry = {k: t for k, t in self._expiry.items() if t > now}
            while len(self._expiry) >= self.limit:
                self._expiry.pop(next(iter(self._expiry)))  # dicts keep insertion order: the oldest first
            self._expiry[sid] = now + self.ttl_s
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        with self._lock:
            expiry = self._expiry.get(sid)
        return expiry is not None and expiry > time.monotonic()

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._expiry.pop(sid or "", None)
