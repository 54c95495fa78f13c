"""The dashboard: server-rendered pages (Jinja2 templates in tuner/api/templates/, CSS in
static/), no JavaScript but /docs' Swagger UI. Pages that show running work reload themselves
every few seconds (<meta http-equiv="refresh">). Each page reads through the same functions as its
/v1 endpoint; plots are the reports' own figures, inlined as SVG (render.plot). A browser logs in
with the operators' token for a session (auth.py); guard.py checks every form's Origin.
"""
from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from db.session import session_scope
from tuner import coordinator, display, fleet
from tuner.api import auth
from tuner.api.errors import MAX_BODY, status_of, validation_message
from tuner.api.render import page, plot
from tuner.api.routes import JobIn, build, key_view, settings_of
from tuner.db_open import open_for_read
from tuner.errors import UserError
from tuner.reports.held import held

router = APIRouter(include_in_schema=False, max_body_size=MAX_BODY)
REFRESH_S = 3  # how often a page with running work reloads


def _attempt(fn, *args):
    """(result, None), or (None, the one-line error) for a report whose inputs the page's form took."""
    try:
        return fn(*args), None
    except UserError as exc:
        return None, str(exc)


FLEET_WORKERS = 100  # workers the fleet page lists (live first); the rest are counted


@router.get("/", response_class=HTMLResponse)
def fleet_page(request: Request):
    settings = settings_of(request)
    with session_scope(open_for_read(settings)) as s:
        depths = fleet.queue_depths(settings, fleet.queue_names(s))
        classes = fleet.device_classes(s, settings.worker_dead_after_s, depths)
        workers = fleet.workers(s, settings.worker_dead_after_s, limit=FLEET_WORKERS)
        counts = fleet.worker_counts(s, settings.worker_dead_after_s)
        jobs = fleet.jobs_by_state(s)
    return page(request, "fleet.html", classes=classes, workers=workers, counts=counts, jobs=jobs, depths=depths,
                refresh=REFRESH_S * 3)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request):
    return _jobs(request)


def _jobs(request: Request, error: str | None = None, status: int = 200, form: dict | None = None):
    try:
        rows = coordinator.jobs(settings_of(request), 100)
    except UserError:
        if error is None:
            raise
        rows = []  # the form's own error first (no database yet, say); the list when there is one
    running = any(r["state"] not in coordinator.FINAL for r in rows)
    return page(request, "jobs.html", status=status, jobs=rows, error=error, form=form or {},
                refresh=REFRESH_S if running else None)


@router.post("/jobs", response_class=HTMLResponse)
def submit_form(request: Request, kernel: str = Form(..., max_length=100), shapes: str = Form(..., max_length=2000),
                dtype: str = Form("float32", max_length=16), device_class: str = Form(..., max_length=80),
                trials: int = Form(20)):
    """The jobs page's form: one shape per line (a logged-in session's; guard.py checked its Origin)."""
    form = {"kernel": kernel, "shapes": shapes, "dtype": dtype, "device_class": device_class, "trials": trials}
    try:
        settings = settings_of(request)
        job = JobIn(kernel=kernel, shapes=[s.strip() for s in shapes.splitlines() if s.strip()] or [""],
                    dtypes=[dtype], device_class=device_class, trials=trials)
        job_id = coordinator.submit(settings, build(job), job.device_class, job.parallel)
    except UserError as exc:
        return _jobs(request, error=str(exc), status=status_of(exc), form=form)
    except ValidationError as exc:
        return _jobs(request, error=validation_message(exc), status=422, form=form)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str):
    st = coordinator.status(settings_of(request), job_id[:64])
    return page(request, "job.html", job=st, measurement=_measurement(st),
                refresh=REFRESH_S if st["state"] not in coordinator.FINAL else None)


def _measurement(st: dict) -> str:
    from harness.protocol import Measurement

    return Measurement.from_json(st.get("measurement")).describe()


@router.get("/keys/{kernel}/{key_hash}", response_class=HTMLResponse)
def key_page(request: Request, kernel: str, key_hash: str, device_class: Optional[str] = None):
    settings = settings_of(request)
    view = key_view(settings, kernel[:100], key_hash[:32], device_class)
    classes = sorted({t["device_class"] for t in view["trials"]} | {b["device_class"] for b in view["history"]})
    return page(request, "key.html", view=view, plot=_key_plot(settings, view, device_class),
                timing=display.timing_label(classes), device_class=device_class)


_PLOTS: dict[tuple, str] = {}  # (page, hash of what a plot shows) -> its SVG
MAX_PLOTS = 64


def _key_plot(settings, view: dict, device_class: str | None) -> str:
    """The key's trial plot, drawn once per state of the key rather than per view: a key of 100,000
    trials takes a second to sample and draw, and its page is looked at again and again."""
    from tuner import queries
    from tuner.reports import trials

    def draw(view: dict):
        url = open_for_read(settings)
        slugs = queries.device_class_slugs(url, device_class, None)
        with session_scope(url) as s:
            points = queries.key_points(s, view["kernel"], view["key_hash"], slugs, view["trials_total"])
        return trials.figure({**view, "trials": points})

    state = {k: view[k] for k in ("kernel", "key_hash", "trials_total", "last_trial", "current")}
    return _drawn("key", {**state, "device_class": device_class}, draw, view)


def _drawn(kind: str, state: dict, draw, *args) -> str:
    """The SVG of draw(*args or state), drawn once per state: matplotlib takes a few hundred
    milliseconds a figure, and a page is looked at again and again while what it shows stands."""
    import hashlib
    import json

    key = (kind, hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest())
    svg = _PLOTS.get(key)
    if svg is None:
        svg = plot(draw(*(args or (state,))))
        if len(_PLOTS) >= MAX_PLOTS:
            _PLOTS.clear()
        _PLOTS[key] = svg
    return svg


@router.get("/retune", response_class=HTMLResponse)
def retune_page(request: Request, run: Optional[str] = None):
    from tuner.reports.retune import figure, report

    result, error = _attempt(held, "retune", report, settings_of(request), run[:64] if run else None)
    svg = _drawn("retune", result, figure) if result and result["keys"] else None
    return page(request, "retune.html", result=result, error=error, plot=svg)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, a: Optional[str] = None, b: Optional[str] = None, kernel: Optional[str] = None):
    from tuner.reports.compare import figure, report

    result = error = svg = None
    if a and b:
        result, error = _attempt(held, "compare", report, settings_of(request), [a[:80], b[:80]],
                                 kernel[:100] if kernel else None)
        result = _first_rows(result)
        # the plot draws the rows shown: a bar per key, and the state hashed, of 100 keys, not thousands
        drawn = {k: result[k] for k in ("a", "b", "timing", "keys")} if result and result["keys"] else None
        svg = _drawn("compare", drawn, figure) if drawn else None
    return page(request, "compare.html", result=result, error=error, plot=svg,
                form={"a": a, "b": b, "kernel": kernel}, classes=_stored_classes(request))


COMPARE_ROWS = 100  # rows a compare page's table shows; all of them are in /v1/compare's answer


def _first_rows(result: dict | None) -> dict | None:
    """The report with each table cut to its first COMPARE_ROWS rows, and `more` (rows left out,
    per table): at fleet scale a class holds thousands of keys that the other lacks, and rendering
    2,500 rows took 130 ms a request, and hashing them for the plot's cache 45 ms. The held report
    itself stays whole."""
    if result is None:
        return None
    tables = ("keys", "only_a", "only_b")
    return {**result, **{t: result[t][:COMPARE_ROWS] for t in tables},
            "more": {t: len(result[t]) - COMPARE_ROWS for t in tables if len(result[t]) > COMPARE_ROWS},
            "per_page": COMPARE_ROWS}


@router.get("/shapes", response_class=HTMLResponse)
def shapes_page(request: Request, kernel: Optional[str] = None, vary: Optional[str] = None,
                shape: Optional[str] = None, device_class: Optional[str] = None, dtype: str = "float32"):
    from tuner.reports.shapes import figure, report

    result = error = svg = None
    form = {"kernel": kernel, "vary": vary, "shape": shape, "device_class": device_class, "dtype": dtype}
    if kernel and vary and device_class:
        result, error = _attempt(held, "shapes", report, settings_of(request), kernel[:100], vary[:100],
                                 shape[:200] if shape else None,
                                 device_class[:80], dtype[:16])
        svg = _drawn("shapes", result, figure) if result and result["points"] else None
    return page(request, "shapes.html", result=result, error=error, plot=svg, form=form,
                classes=_stored_classes(request))


def _stored_classes(request: Request) -> list[str]:
    """The form's choices: the stored classes' slugs alone (fleet.device_classes would also count
    every class's live workers and last minute's trials, a tenth of a compare page's time)."""
    from sqlalchemy import select

    from db import models

    with session_scope(open_for_read(settings_of(request))) as s:
        return list(s.scalars(select(models.DeviceClass.slug).order_by(models.DeviceClass.slug)))


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request):
    """Swagger UI of /openapi.json, from packaged files (tuner/api/app.py)."""
    return page(request, "docs.html")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request):
    return page(request, "login.html", error=None)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, token: str = Form(..., max_length=200)):
    """The operators' token for a session: the cookie holds a random id, never the token."""
    settings = settings_of(request)
    if not auth.token_matches(token, settings.api_token):
        return page(request, "login.html", status=401, error="wrong token: give the server's TUNER_API_TOKEN "
                                                              "(the runtime token is for inference hosts only)")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(auth.COOKIE, request.app.state.sessions.start(), max_age=auth.SESSION_S, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request):
    request.app.state.sessions.end(request.cookies.get(auth.COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.COOKIE, httponly=True, samesite="strict")
    return response
