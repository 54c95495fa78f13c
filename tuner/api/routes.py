"""The JSON API under /v1: thin, as the CLI is. Each endpoint validates with the same functions as
the matching command (tuner.request, tuner.coordinator, tuner.queries, tuner.reports,
tuner.formats) and answers what they return; errors are mapped in tuner/api/errors.py.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Optional, Union

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from db.session import session_scope
from tuner import coordinator, fleet, queries
from tuner.api.errors import MAX_BODY
from tuner.db_open import open_for_read
from tuner.errors import InvalidRequest, NotFound, UserError
from tuner.runtime.miss_tally import POST_BATCH
from tuner.settings import Settings

router = APIRouter(prefix="/v1", max_body_size=MAX_BODY)  # FastAPI refuses more with 413, before parsing
Text = Annotated[str, StringConstraints(max_length=200)]
Shape = Union[Text, dict[Annotated[str, StringConstraints(max_length=40)], Union[int, Text]]]
# every list endpoint answers at most `limit` rows (default 100), so no answer grows with a table
Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many rows (1 to 1000)")]
DEFAULT_LIMIT = 100


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def _job_schema() -> type[BaseModel]:
    """The body of POST /v1/jobs, derived from the request's fields (tuner/request_fields.py) as
    `tuner submit`'s options are: a field declared there is a field here. Shapes may also be
    written as objects ({"M": 4096, ...}); strings and lists are bounded so a body stays small."""
    from tuner.request_fields import fields_of

    def field(f):
        kind = Shape if f.name == "shapes" else (Text if f.kind is str else f.kind)
        kind = list[kind] if f.many else kind
        kind = Optional[kind] if f.optional else kind
        extra = {k: v for k, v in (("minimum", f.lo), ("maximum", f.hi)) if v is not None}
        return kind, Field(default=f.default, description=f.help, max_length=f.max_items,
                           json_schema_extra=extra or None)

    return create_model("JobIn", __config__=ConfigDict(extra="forbid"),
                        __doc__="A tuning job, as `tuner submit` takes it: one key per shape and dtype, or a "
                                "--model's layers.",
                        **{f.name: field(f) for f in fields_of("submit")})


JobIn = _job_schema()


def shape_text(shape) -> str:
    return shape if isinstance(shape, str) else ",".join(f"{k}={v}" for k, v in shape.items())


def request_values(job: BaseModel) -> dict:
    """The request fields' values of a body (or a form), as `tuner submit` passes them on."""
    values = job.model_dump()
    model = values.get("model")
    if model is not None and (model.endswith(".toml") or "/" in model or "\\" in model):
        # a model file is read where the command runs: the server's files are not the caller's to name
        raise InvalidRequest(f"model {model[:80]!r}: the API takes a model preset by name (`tuner models` lists "
                             "them); a model file goes to `tuner submit --model` on your own host")
    return {**values, "shapes": [shape_text(s) for s in values["shapes"]]}


# ---- writes ---------------------------------------------------------------------------------

@router.post("/jobs", status_code=201, tags=["jobs"])
def submit_job(job: JobIn, request: Request) -> dict:
    """Queue a tuning job for a device class (needs the token). 201 with the job id."""
    job_ids = coordinator.submit_all(settings_of(request), request_values(job))
    # one job, as before --model; a --model's several: every id, the first one's as `job`
    return {"job": job_ids[0], "url": f"/v1/jobs/{job_ids[0]}",
            **({"jobs": job_ids} if len(job_ids) > 1 else {})}


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(job_id: Annotated[str, StringConstraints(max_length=64)], request: Request) -> dict:
    """Cancel a job: workers stop after their trial in flight. 409 if it has already ended."""
    return {"job": job_id, "state": coordinator.cancel(settings_of(request), job_id)}


class MissesIn(BaseModel):
    """Counted runtime misses, as a runtime with TUNER_CONFIG_URL posts them: records in the form
    of tuner.runtime.miss_tally.record (its JSON lines)."""
    model_config = ConfigDict(extra="forbid")
    records: list[dict] = Field(min_length=1, max_length=POST_BATCH)


@router.post("/misses", tags=["fleet"])
def post_misses(misses: MissesIn, request: Request) -> dict:
    """Add a runtime's counted misses (needs the token). Every record is checked before any is
    stored; counts add up. 200 with the records taken and the rows they touched."""
    from tuner.miss_intake import record_posted

    records, rows = record_posted(settings_of(request), misses.records)
    return {"records": records, "rows": rows}


# ---- reads ----------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _kernels() -> list[dict]:
    return queries.kernel_rows()  # the registry does not change while the server runs


@router.get("/kernels", tags=["registry"])
def kernels() -> list[dict]:
    """The registered kernels, their keys, dtypes and space sizes."""
    return _kernels()


@router.get("/device-classes", tags=["fleet"])
def device_classes(request: Request, limit: Limit = DEFAULT_LIMIT) -> list[dict]:
    """Stored device classes with their live workers, trials per minute and queue depths, then
    the queues with messages that no stored class consumes (`registered` false: no worker of
    theirs ever came); `no_live_worker`: messages wait and no live worker will take them."""
    settings = settings_of(request)
    with session_scope(open_for_read(settings)) as s:
        depths = fleet.queue_depths(settings, fleet.queue_names(s))
        return fleet.device_classes(s, settings.worker_dead_after_s, depths)[:limit]


@router.get("/workers", tags=["fleet"])
def workers(request: Request, limit: Limit = DEFAULT_LIMIT) -> list[dict]:
    """Registered workers: state (live, crashed: silent past the grace, stopped: deregistered),
    class, stack fingerprint, last heartbeat, and the job and key each one runs now."""
    settings = settings_of(request)
    with session_scope(open_for_read(settings)) as s:
        return fleet.workers(s, settings.worker_dead_after_s, limit)


@router.get("/jobs", tags=["jobs"])
def jobs(request: Request, limit: Limit = DEFAULT_LIMIT,
         state: Annotated[Optional[str], Query(max_length=16, description="queued, running, done, failed "
                                                "or cancelled")] = None,
         kernel: Annotated[Optional[str], Query(max_length=100)] = None,
         device_class: Annotated[Optional[str], Query(max_length=80)] = None) -> list[dict]:
    """Recent jobs, newest first; of a state, kernel and device class when given."""
    from tuner.reports.held import held

    # held per state of the database, as the jobs page's list is: each job's trials are counted
    return held("jobs", coordinator.jobs, settings_of(request), limit, state, kernel, device_class)


@router.get("/jobs/{job_id}", tags=["jobs"])
def job(job_id: Annotated[str, StringConstraints(max_length=64)], request: Request) -> dict:
    """A job and its keys' progress: trials against budget, best so far against the default."""
    return coordinator.status(settings_of(request), job_id)


@router.get("/best", tags=["results"])
def best(request: Request, kernel: Annotated[Optional[str], Query(max_length=100)] = None,
         device_class: Annotated[Optional[str], Query(max_length=80)] = None,
         shape: Annotated[list[str], Query(max_length=256)] = [],
         dtype: Annotated[list[str], Query(max_length=8)] = [], limit: Limit = DEFAULT_LIMIT) -> list[dict]:
    """Current best configurations: of the given shapes (a row with config null where none is
    stored), or every one of the kernel and class, as bundle entries."""
    if shape:
        if kernel is None:
            raise UserError("give kernel= with shape=")
        return queries.best_rows(settings_of(request), kernel, shape, dtype or ["float32"], device_class,
                                 live_class=False)[:limit]
    from tuner.formats import current_entries
    from tuner.reports.held import held

    # held while no best row or class is stored (a best is never changed in place): a hundred
    # entries' rows, decoded, took 16 ms a request at fleet scale, near the 200 ms p95 under 8 clients
    return held("best", current_entries, settings_of(request), kernel, device_class, False, None, limit)


@router.get("/history", tags=["results"])
def history(request: Request, kernel: Annotated[str, Query(max_length=100)],
            shape: Annotated[list[str], Query(min_length=1, max_length=256)],
            dtype: Annotated[list[str], Query(max_length=8)] = [],
            device_class: Annotated[Optional[str], Query(max_length=80)] = None,
            limit: Limit = DEFAULT_LIMIT) -> list[dict]:
    """Every best configuration the keys have had, superseded ones too, newest first."""
    return queries.best_rows(settings_of(request), kernel, shape, dtype or ["float32"], device_class,
                             current_only=False, live_class=False)[:limit]


@router.get("/keys/{kernel}/{key_hash}", tags=["results"])
def key(kernel: Annotated[str, StringConstraints(max_length=100)],
        key_hash: Annotated[str, StringConstraints(max_length=32)], request: Request,
        device_class: Annotated[Optional[str], Query(max_length=80)] = None,
        limit: Annotated[int, Query(ge=1, le=queries.MAX_TRIALS_PAGE)] = queries.TRIALS_PAGE,
        after: Annotated[Optional[int], Query(ge=0)] = None) -> dict:
    """One key: its trials (on the class, or all) a page at a time, oldest first (`next`: the
    `after` of the page after; `trials_total`: how many), its current bests and their history
    across stacks."""
    return key_view(settings_of(request), kernel, key_hash, device_class, limit, after)


def key_view(settings: Settings, kernel: str, key_hash: str, device_class: str | None,
             limit: int = queries.TRIALS_PAGE, after: int | None = None) -> dict:
    url = open_for_read(settings)
    slugs = queries.device_class_slugs(url, device_class, None)
    with session_scope(url) as s:
        found = queries.key_page(s, kernel, key_hash, slugs, limit, after)
    if found is None:
        raise NotFound(f"nothing stored for {kernel[:40]} key {key_hash[:32]}; the job pages link to their keys")
    return found


@router.get("/retune", tags=["reports"])
def retune(request: Request, run: Annotated[Optional[str], Query(max_length=64)] = None) -> dict:
    """A retune run's report (the latest by default), regressions flagged."""
    from tuner.reports.held import held
    from tuner.reports.retune import report

    return held("retune", report, settings_of(request), run)


@router.get("/compare", tags=["reports"])
def compare(request: Request, device_class: Annotated[list[str], Query(max_length=2)],
            kernel: Annotated[Optional[str], Query(max_length=100)] = None) -> dict:
    """Two device classes on the keys tuned on both: times, TFLOP/s, ratio, cost per million launches."""
    from tuner.reports.compare import report
    from tuner.reports.held import held

    return held("compare", report, settings_of(request), device_class, kernel)


@router.get("/shapes", tags=["reports"])
def shapes(request: Request, kernel: Annotated[str, Query(max_length=100)],
           vary: Annotated[str, Query(max_length=100)], device_class: Annotated[str, Query(max_length=80)],
           shape: Annotated[Optional[str], Query(max_length=200)] = None,
           dtype: Annotated[str, Query(max_length=16)] = "float32") -> dict:
    """Tuned speed against one varied dimension: powers of two marked, dips named."""
    from tuner.reports.held import held
    from tuner.reports.shapes import report

    return held("shapes", report, settings_of(request), kernel, vary, shape, device_class, dtype)


MAX_CACHED_BUNDLES = 64  # (kernel, class) pairs whose last bundle an app keeps (app.state.bundles)


@router.get("/bundle", tags=["results"], responses={304: {"description": "unchanged since the ETag given"}})
def bundle(request: Request, device_class: Annotated[str, Query(max_length=80)],
           kernel: Annotated[Optional[str], Query(max_length=100)] = None):
    """The bundle (tuner/formats/bundle.py) of a device class's current bests, and the winners
    drop-in kernels reported, for runtimes without database access. Send its ETag back in
    If-None-Match: 304 while nothing changed."""
    from tuner.formats import current_entries, reported_entries
    from tuner.formats.bundle import digest, document

    settings, bundles = settings_of(request), request.app.state.bundles  # (kernel, class) -> (version, ETag, body)
    version = (current_entries(settings, kernel, device_class, version=True),
               reported_entries(settings, kernel, device_class, version=True))
    cached = bundles.get((kernel, device_class))
    if cached is None or cached[0] != version:  # rebuilt only when a best was written since
        if len(bundles) >= MAX_CACHED_BUNDLES:
            bundles.clear()
        doc = document(current_entries(settings, kernel, device_class),
                       reported_entries(settings, kernel, device_class))
        # weak: two bundles with one ETag hold the same entries, made at different times
        cached = bundles[(kernel, device_class)] = (version, f'W/"{digest(doc)}"', json.dumps(doc).encode())
    _, tag, body = cached
    if tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"ETag": tag})
    return Response(body, media_type="application/json", headers={"ETag": tag, "Cache-Control": "no-cache"})


@router.get("/runtime-misses", tags=["fleet"])
def runtime_misses(request: Request, kernel: Annotated[Optional[str], Query(max_length=100)] = None,
                   device_class: Annotated[Optional[str], Query(max_length=80)] = None,
                   limit: Limit = DEFAULT_LIMIT) -> list[dict]:
    """Keys runtimes were served from a fallback level and not tuned since, most frequent first
    (`tuner misses`)."""
    from tuner.miss_intake import list_misses

    return list_misses(settings_of(request), kernel, device_class, limit)


@router.get("/seeds", tags=["results"])
def seeds(request: Request, kernel: Annotated[Optional[str], Query(max_length=100)] = None,
          device_class: Annotated[Optional[str], Query(max_length=80)] = None,
          after: Annotated[Optional[int], Query(ge=0, description="the `next` of the page before")] = None,
          limit: Limit = DEFAULT_LIMIT) -> dict:
    """Imported configurations (`tuner import`), oldest first: seeds a search tries first, never
    measured bests (the /seeds page)."""
    from tuner import browse

    return browse.seeds(settings_of(request), kernel, device_class, after, limit)


@router.get("/retune-runs", tags=["reports"])
def retune_runs(request: Request, offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
                limit: Limit = DEFAULT_LIMIT) -> dict:
    """Every retune run, newest first, with its jobs and keys and how many have ended (the list of
    /retune; `GET /v1/retune?run=RUN` is one run's report)."""
    from tuner import browse

    return browse.retune_runs(settings_of(request), offset, limit)
