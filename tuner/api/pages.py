"""The dashboard: server-rendered pages (Jinja2 templates in tuner/api/templates/, CSS in
static/). The parts of a page that show running work (the jobs list, a job's keys, the fleet, a
running key's plot) are templates of their own, each also answered alone by a `/fragment` route
that static/refresh.js fetches every few seconds and swaps in, so a form being filled beside them
is never reloaded; without JavaScript a page is complete and a reload link refreshes it. The
fragment's X-Refresh-After header says when to ask again (0: what it shows has ended). Each page
reads through the same functions as its /v1 endpoint; plots are the reports' own figures, inlined as SVG (render.plot). A browser logs in
with the operators' token for a session (auth.py); guard.py checks every form's Origin.
"""
from __future__ import annotations

import threading
import time
from functools import partial
from typing import Optional
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from db import lifecycle
from db.session import session_scope
from tuner import coordinator, display, fleet
from tuner.api import auth
from tuner.api.errors import MAX_BODY, status_of, validation_message
from tuner.api.render import page, plot
from tuner.api.submit_form import form_fields, request_of, typed_values
from tuner.api.routes import key_view, settings_of
from tuner.db_open import open_for_read
from tuner.errors import UserError
from tuner.reports.held import held, state

router = APIRouter(include_in_schema=False, max_body_size=MAX_BODY)
REFRESH_S = 3  # how often the parts of a page that show running work are fetched again


def _attempt(fn, *args):
    """(result, None), or (None, the one-line error) for a report whose inputs the page's form took."""
    try:
        return fn(*args), None
    except UserError as exc:
        return None, str(exc)


FLEET_WORKERS = 100  # workers the fleet page lists (live first); the rest are counted


def fragment(request: Request, name: str, refresh: float | None, **context) -> HTMLResponse:
    """A part of a page alone, for static/refresh.js: when to ask again in X-Refresh-After."""
    response = page(request, name, **context)
    response.headers["X-Refresh-After"] = f"{refresh or 0:g}"
    response.headers["Cache-Control"] = "no-store"
    return response


FLEET_HELD_S = 1.0  # a fleet view read serves the requests of the next second (or TUNER_METRICS_CACHE_S, if shorter)
_fleet_held: dict[int, tuple[float, dict]] = {}
_fleet_lock = threading.Lock()


def _fleet(request: Request) -> dict:
    """The fleet view's state: seven queries (16 ms at fleet scale, most of a page's time), read
    once a second at most and shared by the requests of that second (every open fleet page asks
    every few seconds, and eight at once queued past 200 ms); a request that comes while it is read
    waits for that read instead of starting its own."""
    settings = settings_of(request)
    with _fleet_lock:
        held = _fleet_held.get(id(settings))
        if held is not None and time.monotonic() - held[0] < min(FLEET_HELD_S, settings.metrics_cache_s):
            return held[1]
        with session_scope(open_for_read(settings)) as s:
            depths = fleet.queue_depths(settings, fleet.queue_names(s))
            shown = {"classes": fleet.device_classes(s, settings.worker_dead_after_s, depths),
                     "queues": fleet.queues(s, settings.worker_dead_after_s, depths),
                     "workers": fleet.workers(s, settings.worker_dead_after_s, limit=FLEET_WORKERS),
                     "counts": fleet.worker_counts(s, settings.worker_dead_after_s), "jobs": fleet.jobs_by_state(s),
                     "depths": depths, "keep_days": settings.workers_keep_days}
        _fleet_held.clear()  # one app's settings at a time: a test's many apps never pile up
        _fleet_held[id(settings)] = (time.monotonic(), shown)
        return shown


@router.get("/", response_class=HTMLResponse)
def fleet_page(request: Request):
    return page(request, "fleet.html", refresh=REFRESH_S * 3, **_fleet(request))


@router.get("/fleet/fragment", response_class=HTMLResponse)
def fleet_fragment(request: Request):
    return fragment(request, "fleet_body.html", REFRESH_S * 3, **_fleet(request))


def _filters(state: Optional[str], kernel: Optional[str], device_class: Optional[str]) -> dict:
    """The jobs page's filters as given (an empty field: no filter)."""
    return {"state": (state or "")[:16] or None, "kernel": (kernel or "")[:100] or None,
            "device_class": (device_class or "")[:80] or None}


def _listed(request: Request, filters: dict) -> tuple[dict, float]:
    """The jobs list's context, and how soon it changes: soon while a listed job runs."""
    # held per state of the database (tuner/reports/held.py): a hundred jobs' trial counts read
    # every job's trials (100,000 for one at fleet scale) at each refresh of each open page
    rows = held("jobs", coordinator.jobs, settings_of(request), 100, filters["state"], filters["kernel"],
                filters["device_class"])
    running = any(r["state"] not in lifecycle.END_STATES for r in rows)
    query = urlencode({k: v for k, v in filters.items() if v})
    # nothing listed runs: asked again less often (a job submitted elsewhere still shows up)
    return {"jobs": rows, "query": f"?{query}" if query else ""}, REFRESH_S if running else REFRESH_S * 5


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, state: Optional[str] = None, kernel: Optional[str] = None,
              device_class: Optional[str] = None):
    return _jobs(request, filters=_filters(state, kernel, device_class))


@router.get("/jobs/fragment", response_class=HTMLResponse)
def jobs_fragment(request: Request, state: Optional[str] = None, kernel: Optional[str] = None,
                  device_class: Optional[str] = None):
    listed, refresh = _listed(request, _filters(state, kernel, device_class))
    return fragment(request, "jobs_list.html", refresh, **listed)


def _jobs(request: Request, error: str | None = None, status: int = 200, form: dict | None = None,
          filters: dict | None = None):
    filters = filters or _filters(None, None, None)
    try:
        listed, refresh = _listed(request, filters)
    except UserError:
        if error is None:
            raise
        # the form's own error first (no database yet, say); the list when there is one
        listed, refresh = {"jobs": [], "query": ""}, REFRESH_S
    return page(request, "jobs.html", status=status, error=error, fields=form_fields(form or {}),
                filters=filters,
                states=lifecycle.JOB_STATES, refresh=refresh, **listed)


@router.post("/jobs", response_class=HTMLResponse)
async def submit_form(request: Request):
    """The jobs page's form, the fields of `tuner submit` (tuner/api/submit_form.py; a logged-in
    session's, guard.py checked its Origin); a --model's several jobs: the first one's page."""
    typed = typed_values(await request.form())
    try:
        job_ids = await run_in_threadpool(coordinator.submit_all, settings_of(request), request_of(typed))
    except UserError as exc:
        return await run_in_threadpool(_jobs, request, str(exc), status_of(exc), typed)
    except ValidationError as exc:
        return await run_in_threadpool(_jobs, request, validation_message(exc), 422, typed)
    return RedirectResponse(f"/jobs/{job_ids[0]}", status_code=303)


def _job(request: Request, job_id: str) -> tuple[dict, float | None]:
    st = coordinator.status(settings_of(request), job_id[:64])
    return {"job": st, "measurement": _measurement(st)}, REFRESH_S if st["state"] not in lifecycle.END_STATES else None


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str):
    shown, refresh = _job(request, job_id)
    return page(request, "job.html", refresh=refresh, **shown)


@router.get("/jobs/{job_id}/fragment", response_class=HTMLResponse)
def job_fragment(request: Request, job_id: str):
    shown, refresh = _job(request, job_id)
    return fragment(request, "job_body.html", refresh, **shown)


@router.post("/jobs/{job_id}/cancel")
def cancel_form(request: Request, job_id: str):
    """The job page's cancel button: a logged-in session's (guard.py checked its Origin), as
    POST /v1/jobs/{id}/cancel with the token; a job that ended meanwhile is a 409 page."""
    job = coordinator.status(settings_of(request), job_id[:64])["job"]
    coordinator.cancel(settings_of(request), job)
    return RedirectResponse(f"/jobs/{job}", status_code=303)


def _measurement(st: dict) -> str:
    from harness.protocol import Measurement

    return Measurement.from_json(st.get("measurement")).describe()


def _key(request: Request, kernel: str, key_hash: str, device_class: Optional[str]) -> tuple[dict, float | None]:
    settings = settings_of(request)
    view = key_view(settings, kernel[:100], key_hash[:32], device_class)
    classes = sorted({t["device_class"] for t in view["trials"]} | {b["device_class"] for b in view["history"]})
    shown = {"view": view, "plot": _key_plot(settings, view, device_class), "timing": display.timing_label(classes),
             "device_class": device_class}
    return shown, REFRESH_S if view["searching"] else None  # an unfinished job's search adds points


@router.get("/keys/{kernel}/{key_hash}", response_class=HTMLResponse)
def key_page(request: Request, kernel: str, key_hash: str, device_class: Optional[str] = None):
    shown, refresh = _key(request, kernel, key_hash, device_class)
    return page(request, "key.html", refresh=refresh, **shown)


@router.get("/keys/{kernel}/{key_hash}/fragment", response_class=HTMLResponse)
def key_fragment(request: Request, kernel: str, key_hash: str, device_class: Optional[str] = None):
    shown, refresh = _key(request, kernel, key_hash, device_class)
    return fragment(request, "key_live.html", refresh, **shown)


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
def retune_page(request: Request, run: Optional[str] = None, offset: int = 0):
    """A retune run's report (the latest by default), and every run as a list linking to its own."""
    from tuner.browse import retune_runs
    from tuner.reports.retune import figure, report

    settings = settings_of(request)
    # the report and the list of runs held on one count of the state (they read the same jobs and
    # keys): grouping 1,000 retune jobs' runs took 14 ms of every request at fleet scale
    now = partial(held, token=state(settings, "retune"))
    result, error = _attempt(now, "retune", report, settings, run[:64] if run else None)
    svg = _drawn("retune", result, figure) if result and result["keys"] else None
    runs = now("retune-runs", retune_runs, settings, max(0, min(offset, 1_000_000)))
    return page(request, "retune.html", result=result, error=error, plot=svg, runs=runs, offset=offset)


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
