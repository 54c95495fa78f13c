"""The dashboard's pages of the service's output (tuner/browse.py): /bests with its exports as
downloads, /seeds, /misses. Each list a page at a time (default 100), filtered by query
parameters, so a link names what it shows."""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from tuner import browse
from tuner.api.errors import MAX_BODY
from tuner.api.render import page
from tuner.api.routes import settings_of
from tuner.errors import UserError

router = APIRouter(include_in_schema=False, max_body_size=MAX_BODY)
Text = Annotated[Optional[str], Query(max_length=100)]
Limit = Annotated[int, Query(ge=1, le=browse.MAX_PAGE)]


def _selection(kernel, device_class, dtype, shape) -> browse.Selection:
    return browse.Selection(kernel or None, device_class or None, dtype or None, shape or None)


@router.get("/bests", response_class=HTMLResponse)
def bests_page(request: Request, kernel: Text = None, device_class: Text = None, dtype: Text = None,
               shape: Annotated[Optional[str], Query(max_length=200)] = None,
               before: Annotated[Optional[int], Query(ge=0)] = None, limit: Limit = browse.PAGE):
    sel = _selection(kernel, device_class, dtype, shape)
    try:
        found, error = browse.bests(settings_of(request), sel, before, limit), None
    except UserError as exc:  # a class or shape the filter cannot read: said on the page, with the form
        found, error = {"rows": [], "next": None, "kernels": []}, str(exc)
    return page(request, "bests.html", status=400 if error else 200, found=found, error=error, form=sel.query(),
                formats=browse.formats_for(found["kernels"]), limit=limit)


@router.get("/bests/export/{fmt}")
def bests_export(request: Request, fmt: str,
                 kernel: Text = None, device_class: Text = None, dtype: Text = None,
                 shape: Annotated[Optional[str], Query(max_length=200)] = None):
    """The selection's current bests in one export format, as a download (UserError: 400)."""
    name, body, media = browse.export(settings_of(request), fmt[:20], _selection(kernel, device_class, dtype, shape))
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/seeds", response_class=HTMLResponse)
def seeds_page(request: Request, kernel: Text = None, device_class: Text = None,
               after: Annotated[Optional[int], Query(ge=0)] = None, limit: Limit = browse.PAGE):
    try:
        found, error = browse.seeds(settings_of(request), kernel or None, device_class or None, after, limit), None
    except UserError as exc:
        found, error = {"rows": [], "next": None}, str(exc)
    return page(request, "seeds.html", status=400 if error else 200, found=found, error=error, limit=limit,
                form={k: v for k, v in (("kernel", kernel), ("device_class", device_class)) if v})


@router.get("/misses", response_class=HTMLResponse)
def misses_page(request: Request, kernel: Text = None, device_class: Text = None,
                offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0, limit: Limit = browse.PAGE):
    try:
        found, error = browse.misses(settings_of(request), kernel or None, device_class or None, offset, limit), None
    except UserError as exc:
        found, error = {"rows": [], "next": None}, str(exc)
    return page(request, "misses.html", status=400 if error else 200, found=found, error=error, limit=limit,
                form={k: v for k, v in (("kernel", kernel), ("device_class", device_class)) if v})
