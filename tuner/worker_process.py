"""`tuner worker`: probe the device, register, and consume the queues of its device class."""
from __future__ import annotations

import logging
import os
import socket

from devices.probe import live_identity
from tuner.db_open import open_for_write, open_studies
from tuner.settings import Settings


def worker_app(settings: Settings):
    """The worker's Celery app: the broker must not re-deliver a message while its batch may
    still run, so its visibility timeout exceeds the longest batch these settings allow."""
    from tuner.coordinator import broker_app
    from workers.service import longest_batch_s

    return broker_app(settings, visibility_timeout_s=1.25 * longest_batch_s(settings.batch_trials,
                                                                            settings.trial_timeout_s))


def run_worker(settings: Settings, device: str | None, name: str | None, loglevel: str = "INFO",
               wait_s: float | None = None) -> None:
    from tuner.coordinator import await_services
    from workers import tasks
    from workers.app import send_batch
    from workers.queues import CONTROL_QUEUE, queue_names
    from workers.service import WorkerConfig, WorkerService

    dc, fp, device_str = live_identity(device or settings.device, settings.fingerprint_override)
    await_services(settings, wait_s)  # a fleet restarted during an outage waits, not crash-loops
    app = worker_app(settings)
    db_url = open_for_write(settings)
    open_studies(settings, db_url)  # Optuna's tables, created by `tuner db upgrade`, never here
    node = name or f"{dc.slug}-{device_str.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"
    cfg = worker_config(settings, db_url, device_str, node)
    service = WorkerService(cfg, dc, fp, lambda msg: send_batch(app, msg))
    if settings.metrics_port:
        from workers import metrics

        service.observe = metrics.serve(settings.metrics_host, settings.metrics_port, dc.slug)
    tasks.register(app, service)
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tuner.worker").info("worker %s: class %s, fingerprint %s, queues %s",
                                           node, dc.slug, fp.hash, ",".join(queue_names(dc)))
    service.start()
    try:
        # solo pool: the task runs in this process, the kernel in the harness's child process
        app.worker_main(["worker", "--pool", "solo", "--queues", ",".join((*queue_names(dc), CONTROL_QUEUE)),
                         "--hostname", node, "--loglevel", loglevel, "--without-mingle",
                         "--without-gossip"])
    finally:
        service.stop()


def worker_config(settings: Settings, db_url: str, device: str, name: str):
    """A worker's configuration, its timings and batch size from the settings (their one owner)."""
    from workers.service import WorkerConfig

    return WorkerConfig(db_url=db_url, device=device, name=name, heartbeat_s=settings.heartbeat_s,
                        stall_s=settings.stall_s, trial_timeout_s=settings.trial_timeout_s,
                        dead_after_s=settings.worker_dead_after_s, batch_trials=settings.batch_trials,
                        misses_keep_days=settings.misses_keep_days, workers_keep_days=settings.workers_keep_days)
