"""`tuner worker`: probe the device, register, and consume the queues of its device class."""
from __future__ import annotations

import logging
import os
import socket

from tuner.database import open_for_write
from tuner.settings import Settings


def run_worker(settings: Settings, device: str | None, name: str | None, loglevel: str = "INFO") -> None:
    from tuner.coordinator import broker_app
    from tuner.devices import live_identity
    from workers.app import CONTROL_QUEUE
    from workers.device import queue_names

    dc, fp, device_str = live_identity(settings, device)
    app = broker_app(settings)
    db_url = open_for_write(settings)

    from workers import tasks
    from workers.service import WorkerConfig, WorkerService

    node = name or f"{dc.slug}-{device_str.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"
    cfg = WorkerConfig(db_url=db_url, device=device_str, name=node, heartbeat_s=settings.heartbeat_s,
                       stall_s=settings.stall_s, trial_timeout_s=settings.trial_timeout_s,
                       dead_after_s=settings.worker_dead_after_s)

    def send(msg) -> None:
        app.send_task("tuner.trial_batch", args=[msg.to_json()], queue=msg.queue)

    service = WorkerService(cfg, dc, fp, send)
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
