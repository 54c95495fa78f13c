"""A worker's own Prometheus metrics (prometheus-client), served on TUNER_METRICS_PORT of
TUNER_METRICS_HOST (the loopback interface unless told otherwise: the port answers anyone who
reaches it, without a token):

    tuner_worker_trials_total{device_class,status}    trials this worker measured, by outcome
    tuner_worker_trial_failures_total{device_class}    of those, the ones that failed (compile error,
                                                       out of resources, wrong result, timeout, crash)
    tuner_worker_trial_seconds{device_class}           wall time per trial (histogram): from the batch's
                                                       start or the previous result to this result

The service's whole state (jobs, queues, live workers) is the API's /metrics, read from the
database; these are what only the worker process sees. `serve` starts the HTTP server and returns
the factory that WorkerService.handle calls at each batch for its on_trial callback.
"""
from __future__ import annotations

import time
from typing import Callable

from prometheus_client import Counter, Histogram, start_http_server

TRIALS = Counter("tuner_worker_trials", "Trials this worker measured, by outcome", ["device_class", "status"])
FAILURES = Counter("tuner_worker_trial_failures", "Trials that failed (not ok, not refused as invalid)",
                   ["device_class"])
SECONDS = Histogram("tuner_worker_trial_seconds", "Wall time per trial, from the previous result", ["device_class"],
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))


def observer(device_class: str) -> Callable[[], Callable]:
    """A factory of on_trial callbacks, one per batch: each times its trials from the batch's start."""
    def batch() -> Callable:
        last = time.perf_counter()

        def on_trial(config, result) -> None:
            nonlocal last
            now = time.perf_counter()
            TRIALS.labels(device_class, result.status).inc()
            if result.status != "invalid":  # refused before anything ran: no time, no failure
                SECONDS.labels(device_class).observe(now - last)
                if result.status != "ok":
                    FAILURES.labels(device_class).inc()
            last = now
        return on_trial
    return batch


def serve(host: str, port: int, device_class: str) -> Callable[[], Callable]:
    start_http_server(port, addr=host)
    return observer(device_class)
