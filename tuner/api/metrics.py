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

The miss series name registered kernels and known device classes only (fleet.labelled_misses).
"""
from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from db.session import session_scope
from tuner import fleet
from tuner.database import open_for_read
from tuner.settings import Settings

log = logging.getLogger("tuner.api")
router = APIRouter()


class FleetCollector:
    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self):
        settings = self.settings
        try:
            url = open_for_read(settings)
            with session_scope(url) as s:
                jobs = fleet.jobs_by_state(s)
                names = fleet.queue_names(s)
                workers = fleet.workers(s, settings.worker_dead_after_s)
                rate = fleet.trials_last_minute(s)
                outcomes = fleet.trial_outcomes(s)
                stale = fleet.stale_keys(s, settings.worker_dead_after_s)
                misses = fleet.labelled_misses(s, include_tuned=True)  # counted ever: a counter only grows
                untuned = fleet.labelled_misses(s)
        except Exception as exc:  # a scrape answers what it can; the database's state is the first gauge
            log.warning("metrics: database unavailable: %s", exc)
            yield gauge("tuner_database_up", "1 if the database answered this scrape", [], {(): 0})
            return
        yield gauge("tuner_database_up", "1 if the database answered this scrape", [], {(): 1})
        yield gauge("tuner_jobs", "Jobs by state", ["state"],
                    {(state,): jobs.get(state, 0) for state in ("queued", "running", "done", "failed", "cancelled")})
        depths = fleet.queue_depths(settings, names)
        yield gauge("tuner_broker_up", "1 if the broker answered this scrape", [], {(): 0 if depths is None else 1})
        if depths is not None:
            yield gauge("tuner_queue_depth", "Messages waiting per class queue", ["queue"],
                        {(q,): n for q, n in depths.items()})
        live: dict[tuple[str, str], int] = {}
        for w in workers:
            if w["alive"]:
                k = (w["device_class"] or "", w["fingerprint"] or "")
                live[k] = live.get(k, 0) + 1
        yield gauge("tuner_workers_live", "Live workers per device class and stack fingerprint",
                    ["device_class", "fingerprint"], live)
        yield gauge("tuner_trials_per_minute", "Measured trials stored in the last minute", ["device_class"],
                    {(dc,): n for dc, n in rate.items()})
        yield gauge("tuner_trials", "Trials stored, by outcome", ["device_class", "status"], outcomes,
                    CounterMetricFamily)
        yield gauge("tuner_stale_keys", "Current bests tuned under a stack no live worker of the class runs",
                    ["device_class"], {(dc,): n for dc, n in stale.items()})
        launches: dict[tuple[str, str, str], int] = {}
        for m in misses:
            k = (m["device_class"], m["kernel"], m["level"])
            launches[k] = launches.get(k, 0) + m["count"]
        yield gauge("tuner_runtime_misses", "Launches runtimes served from a fallback level (as they report them)",
                    ["device_class", "kernel", "level"], launches, CounterMetricFamily)
        keys: dict[tuple[str], int] = {}
        for m in untuned:
            keys[(m["device_class"],)] = keys.get((m["device_class"],), 0) + 1
        yield gauge("tuner_runtime_missed_keys", "Keys served from a fallback level and not tuned since",
                    ["device_class"], keys)


def gauge(name: str, text: str, labels: list[str], values: dict[tuple, float], kind=GaugeMetricFamily):
    """A metric family of these labelled values, in a stable order."""
    family = kind(name, text, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family


def registry_for(settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(settings))
    return registry


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
