"""The service's front door over HTTP (`tuner serve`): the JSON API under /v1 (routes.py), the
dashboard's pages (pages.py, templates/), Prometheus metrics (metrics.py), the token rules
(auth.py) and the error answers (errors.py); app.py puts them together and runs uvicorn. It reads
and writes through the same owners as the CLI (tuner.coordinator, tuner.queries, tuner.reports,
tuner.formats, tuner.fleet)."""
