"""The ASGI middleware in front of everything (tuner/api/app.py), in this order: the Host header
(DNS rebinding), the Origin of a dashboard form's POST (cross-site request forgery), the token
rules of auth.py, and a body whose Content-Length exceeds MAX_BODY (refused with 413 before it is
read; one sent without a length is cut off at MAX_BODY by FastAPI's own max_body_size on the
routers). A refused request is one error line, and nothing is parsed or written. Every answer
carries SECURITY_HEADERS.
"""
from __future__ import annotations

from starlette.requests import Request

from tuner.api import auth
from tuner.api.errors import MAX_BODY, TOO_LARGE, respond, status_of

# no script, style, frame or form target from anywhere but this server, and never in a frame of
# another site's page: the dashboard's CSS and JS are files under /static (no inline script)
SECURITY_HEADERS = (
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


class Guard:
    def __init__(self, app, policy: auth.Policy, hosts: tuple[str, ...], sessions: auth.Sessions):
        self.app, self.policy, self.hosts, self.sessions = app, policy, hosts, sessions

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secured(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        request = Request(scope)
        refusal = self.refusal(request)
        if refusal is not None:
            status, error = refusal
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return await respond(request, status, error, headers)(scope, receive, send_secured)
        await self.app(scope, receive, send_secured)

    def refusal(self, request: Request) -> tuple[int, str] | None:
        """(status, the one-line reason) for a request refused here, else None; the caller's role
        ("operator", "runtime" or None) is left in request.state.role."""
        method, path, headers = request.method, request.url.path, request.headers
        if not auth.host_allowed(headers.get("host"), self.hosts):
            return 400, (f"unknown Host header {(headers.get('host') or '')[:80]!r}: this server answers to "
                         f"{', '.join(self.hosts)}; add its name to TUNER_API_ALLOWED_HOSTS")
        if method not in auth.READS and not path.startswith("/v1/") and not auth.same_origin(
                headers.get("origin"), headers.get("referer"), headers.get("host")):
            return 403, "a form must be posted from this server's own pages (its Origin names another site, or none)"
        role, error = auth.authorize(method, path, headers.get("authorization"),
                                     self.sessions.valid(request.cookies.get(auth.COOKIE)), self.policy)
        if error is not None:
            return status_of(error), str(error)
        request.state.role = role
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return 413, TOO_LARGE
        return None
