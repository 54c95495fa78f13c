"""GET /metrics: the service's state for Prometheus (prometheus-client), read from the database
and the broker at each scrape by a custom collector, so the API keeps no counters of its own and
any number of API processes report the same values.

    tuner_jobs{state}                               jobs by state
    tuner_queue_depth{queue}                        messages waiting per class queue (absent while the broker is down)
    tuner_broker_up                                 1 if the broker answered this scrape
    tuner_workers_live{device_class,fingerprint}    live workers per class and stack
    tuner_trials_per_minute{device_class}           measured trials stored in the last minute
    tuner_trials_total{device_class,status}         trials ever stored, by outcome
    tuner_stale_keys{device_class}                  current bests no live stack of the class has retuned
    tuner_runtime_misses_total{device_class,kernel,level}  launches runtimes served from a fallback level
    tuner_runtime_missed_keys{device_class}         keys served from a fallback level and not tuned since
    tuner_worker_heartbeat_age_seconds{worker,device_class}  seconds since each not-stopped worker's heartbeat
    tuner_workers_dead                              workers silent past the grace that never stopped cleanly
    tuner_queue_consumers{queue}                    live workers consuming each class queue
    tuner_queue_oldest_seconds{queue}               age of the oldest batch of a job no worker has started
    tuner_job_duration_seconds{kind}                histogram of ended jobs' creation-to-end times
    tuner_api_requests_total{route,method,status}   requests this API process answered (its own counter)
    tuner_api_request_seconds{route,method}         their latency (histogram)

Every gauge has a sample even when it is zero (a class with no trial in the last minute, no stale
key), so an alert on it can tell "zero" from "absent".

The miss series name registered kernels and known device classes only (fleet.labelled).
"""
from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
import threading
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from db import lifecycle
from db.session import session_scope
from tuner import fleet
from tuner.db_open import open_for_read
from tuner.settings import Settings

log = logging.getLogger("tuner.api")
router = APIRouter()
# a job runs from seconds (a small interpreter tune) to hours (a model's keys on a fleet)
JOB_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600, 24 * 3600)


class FleetCollector:
    """The families of one scrape, read from the database and the broker. A scrape is answered from
    the last reading while it is younger than TUNER_METRICS_CACHE_S, and a reading older than that is renewed
    by one background thread while scrapes keep getting the last one: at fleet scale a reading
    takes seconds (a million trials grouped, a hundred thousand misses), any number of scrapers
    and API processes must not each pay it, and a Prometheus scrape times out at 10 s."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._reading: tuple[float, list] | None = None  # (monotonic time read, families)
        self._renewing = False

    def collect(self):
        if self.settings.metrics_cache_s <= 0:
            return list(self._read())
        now = time.monotonic()
        reading = self._reading
        if reading is None:
            with self._lock:  # the first scrape of a process reads; those meanwhile wait for it
                if self._reading is None:
                    self._reading = (time.monotonic(), list(self._read()))
            return self._reading[1]
        if now - reading[0] > self.settings.metrics_cache_s:
            with self._lock:
                start, self._renewing = not self._renewing, True
            if start:
                threading.Thread(target=self._renew, name="tuner-metrics", daemon=True).start()
        return reading[1]

    def _renew(self) -> None:
        try:
            self._reading = (time.monotonic(), list(self._read()))
        finally:
            self._renewing = False

    def _read(self):
        settings = self.settings
        try:
            url = open_for_read(settings)
            with session_scope(url) as s:
                jobs = fleet.jobs_by_state(s)
                names = fleet.queue_names(s)
                live = fleet.live_by_class(s, settings.worker_dead_after_s)
                counts = fleet.worker_counts(s, settings.worker_dead_after_s)
                rate = fleet.trials_last_minute(s)
                outcomes = fleet.trial_outcomes(s)
                stale = fleet.stale_keys(s, settings.worker_dead_after_s)
                launches = fleet.miss_counts(s)  # counted ever: a counter only grows
                keys = fleet.missed_keys(s)
                ages = fleet.heartbeat_ages(s)
                consumers = fleet.queue_consumers(s, settings.worker_dead_after_s, names)
                oldest = fleet.queue_oldest(s)
                durations = fleet.job_durations(s)
                classes = sorted(set(live) | set(stale) | set(rate))
        except Exception as exc:  # a scrape answers what it can; the database's state is the first gauge
            log.warning("metrics: database unavailable: %s", exc)
            yield gauge("tuner_database_up", "1 if the database answered this scrape", [], {(): 0})
            return
        yield gauge("tuner_database_up", "1 if the database answered this scrape", [], {(): 1})
        yield gauge("tuner_jobs", "Jobs by state", ["state"],
                    {(state,): jobs.get(state, 0) for state in lifecycle.JOB_STATES})
        depths = fleet.queue_depths(settings, names)
        yield gauge("tuner_broker_up", "1 if the broker answered this scrape", [], {(): 0 if depths is None else 1})
        if depths is not None:
            yield gauge("tuner_queue_depth", "Messages waiting per class queue", ["queue"],
                        {(q,): n for q, n in depths.items()})
        yield gauge("tuner_workers_live", "Live workers per device class and stack fingerprint",
                    ["device_class", "fingerprint"],
                    {(dc, fp): n for dc, per_fp in live.items() for fp, n in per_fp.items()})
        yield gauge("tuner_trials_per_minute", "Measured trials stored in the last minute", ["device_class"],
                    {(dc,): rate.get(dc, 0) for dc in classes})
        yield gauge("tuner_trials", "Trials stored, by outcome", ["device_class", "status"],
                    {(dc, "ok"): 0 for dc in classes} | outcomes, CounterMetricFamily)
        yield gauge("tuner_stale_keys", "Current bests tuned under a stack no live worker of the class runs",
                    ["device_class"], {(dc,): stale.get(dc, 0) for dc in classes})
        yield gauge("tuner_runtime_misses", "Launches runtimes served from a fallback level (as they report them)",
                    ["device_class", "kernel", "level"], launches, CounterMetricFamily)
        yield gauge("tuner_runtime_missed_keys", "Keys served from a fallback level and not tuned since",
                    ["device_class"], {(dc,): keys.get(dc, 0) for dc in sorted(set(classes) | set(keys))})
        yield gauge("tuner_worker_heartbeat_age_seconds", "Seconds since the heartbeat of each worker that has "
                    "not stopped cleanly", ["worker", "device_class"], ages)
        yield gauge("tuner_workers_dead", "Workers silent past the heartbeat grace that never stopped cleanly", [],
                    {(): counts["crashed"]})
        yield gauge("tuner_queue_consumers", "Live workers consuming each class queue", ["queue"],
                    {(q,): n for q, n in consumers.items()})
        yield gauge("tuner_queue_oldest_seconds", "Age of the oldest batch of a job that no worker has started",
                    ["queue"], {(q,): oldest.get(q, 0.0) for q in names})
        yield histogram("tuner_job_duration_seconds", "Ended jobs, creation to end", "kind", durations, JOB_BUCKETS)


def gauge(name: str, text: str, labels: list[str], values: dict[tuple, float], kind=GaugeMetricFamily):
    """A metric family of these labelled values, in a stable order."""
    family = kind(name, text, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family


def histogram(name: str, text: str, label: str, samples: list[tuple[str, float]], buckets: tuple[float, ...]):
    """A histogram family of (label value, observation) pairs, cumulative buckets as Prometheus
    expects them; a family with no sample still says so (an empty `kind` series is not emitted)."""
    family = HistogramMetricFamily(name, text, labels=[label])
    for value in sorted({v for v, _ in samples}):
        seen = [x for v, x in samples if v == value]
        counts = [(str(float(b)), sum(1 for x in seen if x <= b)) for b in buckets] + [("+Inf", len(seen))]
        family.add_metric([value], counts, sum(seen))
    return family


def registry_for(settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(settings))
    return registry


def instrument(app) -> None:
    """Count and time every request this process answers, by route template (never the raw path:
    a job id in a label would make a series per job), method and status."""
    registry = app.state.metrics
    requests = Counter("tuner_api_requests", "Requests answered by this API process", ["route", "method", "status"],
                       registry=registry)
    seconds = Histogram("tuner_api_request_seconds", "Time to answer a request", ["route", "method"],
                        registry=registry)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            requests.labels(name, request.method, str(status)).inc()
            seconds.labels(name, request.method).observe(time.perf_counter() - start)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
