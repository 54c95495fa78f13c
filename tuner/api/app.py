"""The FastAPI app and `tuner serve`: uvicorn on the same database and broker as the CLI.

OpenAPI docs at /docs, Swagger UI from fastapi-offline's packaged files (no CDN: it works with no
internet, and no third party's script runs beside the dashboard's forms); /healthz for a
container's healthcheck (no token, so it says only ok or not; the reason to an operator).
"""
from __future__ import annotations

import gc
import importlib
import logging
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from tuner.api import auth, browse_pages, errors, metrics, pages, routes
from tuner.api.guard import Guard
from tuner.settings import Settings

STATIC = Path(__file__).parent / "static"


def policy_of(settings: Settings) -> auth.Policy:
    return auth.Policy(settings.api_token, settings.runtime_token, settings.api_open_reads)


# a check of the database (a connection and the schema revision, ~16 ms) answers /healthz for a
# second (or TUNER_METRICS_CACHE_S, if shorter): probes from every balancer and dashboard at once
# queued past 200 ms at fleet scale
HEALTH_HELD_S = 1.0


def import_kernel_modules() -> None:
    """The configured kernel modules (TUNER_KERNEL_MODULES) imported as the server starts, not by
    the first request that names one of their kernels: a drop-in kernel's module imports torch and
    triton (seconds), which held a runtime's first POST /v1/misses past its 5 s timeout, and the
    batch, a reported winner with it, was dropped. A module that fails to import costs only its
    own kernels: one warning, and the requests that name them get the registry's error."""
    from search_spaces import registry
    from keys import SpecError

    try:
        registry.names()
    except SpecError as exc:
        logging.getLogger("tuner.api").warning("%s", exc)


def create_app(settings: Settings, host: str = "127.0.0.1") -> FastAPI:
    """The app as served on `host` (a Host header must name it, the loopback or
    TUNER_API_ALLOWED_HOSTS)."""
    # fastapi-offline mounts its Swagger UI files at static_url; /docs itself is pages.docs, whose
    # start-up script is a file (the CSP forbids an inline one)
    app = FastAPIOffline(title="tuner", version="1", docs_url=None, redoc_url=None, static_url="/static/docs",
                         description="Triton kernel autotuning service: jobs, workers, best configurations, "
                                     "reports. Send `Authorization: Bearer <TUNER_API_TOKEN>`; inference hosts' "
                                     "`TUNER_RUNTIME_TOKEN` may only GET /v1/bundle and POST /v1/misses.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    import_kernel_modules()
    app.state.settings = settings
    app.state.sessions = auth.Sessions()
    app.state.metrics = metrics.registry_for(settings)
    app.state.health, app.state.health_lock = (-HEALTH_HELD_S, None), threading.Lock()  # /healthz's last check
    app.state.bundles = {}  # GET /v1/bundle's last answers (tuner/api/routes.py)
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(metrics.router)
    app.include_router(pages.router)
    app.include_router(browse_pages.router)

    @app.get("/healthz", tags=["health"])
    def healthz(request: Request):
        """200 while the database answers at the schema this server needs, else 503; the reason
        only to a caller with TUNER_API_TOKEN (it names the database)."""
        from tuner.db_open import open_for_read

        state = request.app.state
        with state.health_lock:  # checked once a second at most, by one request; the others take it
            checked_at, error = state.health
            if time.monotonic() - checked_at >= min(HEALTH_HELD_S, state.settings.metrics_cache_s):
                try:
                    open_for_read(state.settings, recheck=True)
                    error = None
                except Exception as exc:
                    error = errors.one_line(str(exc))
                state.health = (time.monotonic(), error)
        if error is not None:
            body = {"status": "unavailable"}
            if getattr(request.state, "role", None) == "operator":
                body["error"] = error
            return JSONResponse(body, status_code=503)
        return {"status": "ok"}

    app.add_middleware(Guard, policy=policy_of(settings), hosts=auth.allowed_hosts(host, settings.api_allowed_hosts),
                       sessions=app.state.sessions)
    metrics.instrument(app)  # outermost: it counts what the guard refuses too
    return app


def serve(settings: Settings, host: str, port: int, log_level: str = "info") -> None:
    """Run the API until interrupted. Refuses a non-loopback address without a long enough
    TUNER_API_TOKEN, or with open reads, and checks the database first (creating the embedded
    default), so a misconfigured server fails at start with one line. No address grants anything
    (auth.py), so uvicorn's reading of X-Forwarded-For changes only what its log shows."""
    import uvicorn

    from tuner.db_open import open_for_write

    auth.check_bind(host, policy_of(settings))
    open_for_write(settings)
    app = create_app(settings, host)
    for name in LAZY_HEAVY:  # imported now: a first page never waits on them, and they are frozen too
        importlib.import_module(name)
    routes.kernels()  # every kernel's space sizes, once per process (1.2 s): not on a first request
    freeze_startup_heap()
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower())


# what routes import on first use (the CLI needs none of them): matplotlib for the plots, Celery for
# the queues' depths and submits, the reports; ~0.5 s each on a first page otherwise
LAZY_HEAVY = ("matplotlib.figure", "tuner.reports.figures", "tuner.reports.compare", "tuner.reports.retune",
              "tuner.reports.shapes", "tuner.reports.trials", "tuner.formats.bundle", "workers.app")


def freeze_startup_heap() -> None:
    """Keep what start-up made (torch, Triton, the kernel modules, SQLAlchemy's mappers: millions of
    objects that live as long as the server) out of the garbage collector's full passes: each of
    those passes walked all of it and stalled every request in flight for up to 183 ms, the p95
    tail of whichever routes it hit (10 full passes, 1.1 s, in one bench/api_latency.py --scale
    run). What requests make is still collected as before (gc.freeze, as CPython's docs advise
    for long-lived servers)."""
    gc.collect()
    gc.freeze()
