"""`tuner worker`: probe the device, register, and consume the queues of its device class."""
from __future__ import annotations

import logging
import os
import socket

from search_spaces.base import SpecError
from tuner.database import open_for_write
from tuner.errors import UserError
from tuner.settings import Settings


def run_worker(settings: Settings, device: str | None, name: str | None, loglevel: str = "INFO") -> None:
    from workers.app import CONTROL_QUEUE, make_app
    from workers.device import probe, queue_names
    from workers.fingerprint import live_fingerprint

    try:
        dc, _ = probe(device or settings.device)
        fp = live_fingerprint(dc, settings.fingerprint_override)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    db_url = open_for_write(settings)
    app = make_app(settings.broker_url)
    _check_broker(app, settings)

    from workers import tasks
    from workers.service import WorkerConfig, WorkerService

    device_str = "cpu" if dc.target.is_interpreter else (device if device and ":" in device else "cuda:0")
    node = name or f"{dc.slug}-{device_str.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"
    cfg = WorkerConfig(db_url=db_url, device=device_str, name=node, heartbeat_s=settings.heartbeat_s,
                       stall_s=settings.stall_s, trial_timeout_s=settings.trial_timeout_s)

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


def _check_broker(app, settings: Settings) -> None:
    from db.session import redact
    from workers.app import check_broker

    try:
        check_broker(app)
    except ConnectionError as exc:
        raise UserError(f"cannot reach broker {redact(settings.broker_url)}: {exc}; start it or set "
                        "TUNER_BROKER_URL") from None
