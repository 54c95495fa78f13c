"""Every error the API answers with: one line in a JSON body {"error": ...} (an HTML page for the
dashboard's paths), with the status its kind calls for. Bad input is 400 (422 for a body that does
not fit the schema or a tuning request no job may hold, 413 for one over MAX_BODY); a name that finds nothing 404; a state that forbids
the action 409; no token 401; a token whose scope does not cover it, or a form posted from
another site, 403; an unknown Host header 400; a database or broker that cannot be used 503. Nothing a caller sends
gets a 500; an unexpected exception is logged and answered 500 without its details.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from db.session import DatabaseError
from db.urls import redact, scrub
from keys import SpecError
from tuner.api.auth import Forbidden, Unauthorized
from tuner.api.render import error_page
from tuner.errors import Conflict, InvalidRequest, NotFound, Unavailable, UserError

log = logging.getLogger("tuner.api")
MAX_BODY = 1 << 20  # 1 MiB: a job request is a few hundred bytes
TOO_LARGE = f"the body is larger than {MAX_BODY} bytes; a job request is a few hundred"
MAX_MESSAGE = 300  # characters of an error message; what a caller typed is echoed shorter still
API_PREFIXES = ("/v1/", "/metrics", "/healthz", "/docs", "/openapi.json")


def status_of(exc: Exception) -> int:
    for kind, code in ((Unauthorized, 401), (Forbidden, 403), (NotFound, 404), (Conflict, 409), (Unavailable, 503),
                       (DatabaseError, 503), (InvalidRequest, 422), (UserError, 400), (SpecError, 400)):
        if isinstance(exc, kind):
            return code
    return 500


def one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


def respond(request: Request, status: int, message: str, headers: dict | None = None):
    message = one_line(message)
    if request.url.path.startswith(API_PREFIXES) or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return HTMLResponse(error_page(request, status, message), status_code=status, headers=headers)


def validation_message(exc) -> str:
    """The first problem of a body or query that does not fit the schema (a RequestValidationError
    or pydantic's ValidationError), as one line."""
    errors = exc.errors()
    if not errors:
        return "the request does not fit the schema; see /docs"
    e = errors[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",)) or "the body"
    given = e.get("input")
    shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {str(given)[:80]!r})"
    more = f"; and {len(errors) - 1} more" if len(errors) > 1 else ""
    return f"{where}: {e.get('msg', 'invalid')}{shown}{more}; see /docs for the schema"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return respond(request, 422, validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 413:
            detail = TOO_LARGE
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such path {request.url.path[:80]}; see /docs"
        return respond(request, exc.status_code, detail, getattr(exc, "headers", None))

    async def _known(request: Request, exc: Exception):
        code = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        return respond(request, code, str(exc), headers)

    for kind in (UserError, SpecError, DatabaseError):  # Unauthorized, NotFound, ... are UserErrors
        app.add_exception_handler(kind, _known)

    @app.exception_handler(OperationalError)
    async def _database_gone(request: Request, exc: OperationalError):
        # the database went away after the server checked it (tuner/db_open.py checks a URL once)
        raw = request.app.state.settings.db_url
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None and str(exc.orig).strip() else "error"
        return respond(request, 503, f"cannot use database {redact(raw)}: {scrub(reason, raw)}; check the database server")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return respond(request, 500, "internal error; the server's log has the details")
