"""The dashboard's templates (tuner/api/templates/) and their filters: how a page, and an error
in the dashboard's own look, are rendered. Its own module so that the error handlers
(errors.py) and the pages (pages.py) both use it without importing each other."""
from __future__ import annotations

import html
import re
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from db import lifecycle
from tuner import display

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters.update(config=display.config_word, ms=display.ms, dims=display.dims_word,
                             speedup=display.speedup)
# the job states as db/lifecycle.py names them: a template never writes one
templates.env.globals.update(JOB_STATES=lifecycle.JOB_STATES, END_STATES=lifecycle.END_STATES)


def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status)


def error_page(request: Request, status: int, message: str) -> str:
    return templates.get_template("error.html").render(request=request, status=status, message=message)


STYLE_ATTRIBUTE = re.compile(r' style="([^"]*)"')
STYLE_ELEMENT = re.compile(r'<style[^>]*>\s*\*\s*\{([^}]*)\}\s*</style>')


def _attributes(declarations: str) -> str:
    pairs = (d.split(":", 1) for d in declarations.split(";") if ":" in d)
    return "".join(f' {name.strip()}="{value.strip()}"' for name, value in pairs)


USE = re.compile(r"<use ([^>]*?)/>")


def _titled(text: str, titles: dict[str, list[str]]) -> str:
    """Each point of a scatter (a <use> inside the <g id> its gid names, one per point in the
    order drawn) given its <title>: the browser shows it on hover, no script needed."""
    for gid, names in titles.items():
        start = text.find(f'<g id="{gid}">')
        if start < 0:
            continue
        head, tail = text[:start], text[start:]
        it = iter(names)
        tail = USE.sub(lambda m: f"<use {m.group(1)}><title>{html.escape(next(it))}</title></use>",
                       tail, count=len(names))
        text = head + tail
    return text


def plot(fig) -> str:
    """A report's figure as inline SVG that the Content-Security-Policy lets the browser draw:
    matplotlib writes its colours and strokes as style attributes and a <style> element, which
    `default-src 'self'` blocks (every line would be black), so they become SVG presentation
    attributes, and the <style> element's rule for every element becomes (inherited) attributes
    of the root <svg>."""
    from tuner.reports import figures

    text = _titled(figures.svg(fig), getattr(fig, "point_titles", {}))
    root = STYLE_ELEMENT.search(text)
    text = STYLE_ELEMENT.sub("", text)
    text = STYLE_ATTRIBUTE.sub(lambda m: _attributes(m.group(1)), text)
    return text.replace("<svg", "<svg" + _attributes(root.group(1)), 1) if root else text
