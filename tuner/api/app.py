"""The FastAPI app and `tuner serve`: uvicorn on the same database and broker as the CLI.

OpenAPI docs at /docs; /healthz for a container's healthcheck (no token, never a secret in it).
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tuner.api import auth, errors, metrics, pages, routes
from tuner.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="tuner", version="1",
                  description="Triton kernel autotuning service: jobs, workers, best configurations, reports. "
                              "Writes need `Authorization: Bearer <TUNER_API_TOKEN>`; reads are open on the "
                              "loopback interface and need the token from anywhere else.")
    app.state.settings = settings
    app.state.metrics = metrics.registry_for(settings)
    app.state.bundles = {}  # GET /v1/bundle's last answers (tuner/api/routes.py)
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(metrics.router)
    app.include_router(pages.router)

    @app.get("/healthz", tags=["health"])
    def healthz(request: Request):
        """200 while the database answers at the schema this server needs; 503 with the reason otherwise."""
        from tuner.database import open_for_read

        try:
            open_for_read(request.app.state.settings, recheck=True)
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "error": errors.one_line(str(exc))}, status_code=503)
        return {"status": "ok"}

    app.add_middleware(errors.Guard, token=settings.api_token)
    metrics.instrument(app)
    return app


def serve(settings: Settings, host: str, port: int, log_level: str = "info") -> None:
    """Run the API until interrupted. Refuses a non-loopback address without TUNER_API_TOKEN, and
    checks the database first (creating the embedded default), so a misconfigured server fails at
    start with one line. Behind a reverse proxy on this host, uvicorn takes the client's address
    from X-Forwarded-For (it trusts that header from 127.0.0.1 only), so the proxy's clients are
    not taken for local ones."""
    import uvicorn

    from tuner.database import open_for_write

    auth.check_bind(host, settings.api_token)
    open_for_write(settings)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level.lower())
