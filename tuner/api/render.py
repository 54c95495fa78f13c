"""The dashboard's templates (tuner/api/templates/) and their filters: how a page, and an error
in the dashboard's own look, are rendered. Its own module so that the error handlers
(errors.py) and the pages (pages.py) both use it without importing each other."""
from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from tuner import display

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters.update(config=display.config_word, ms=display.ms, dims=display.dims_word,
                             speedup=display.speedup)


def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status)


def error_page(request: Request, status: int, message: str) -> str:
    return templates.get_template("error.html").render(request=request, status=status, message=message)
