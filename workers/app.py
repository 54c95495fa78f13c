"""The Celery app: JSON only, late acks, one message at a time per worker.

The coordinator builds the same app with only a broker URL and sends tasks by name, so a
machine that submits jobs imports no kernel, no torch and no GPU stack.
"""
from __future__ import annotations

from celery import Celery

from db.urls import scrub
from workers.queues import BATCH_TASK, DEFAULT_QUEUE

SQLITE_BROKER_LOCK_WAIT_S = 60.0
# Redis re-delivers an unacknowledged message after this; a worker gives its own, from its batch
# size and trial timeout (workers.service.longest_batch_s), so a live batch is never re-delivered
DEFAULT_VISIBILITY_TIMEOUT_S = 6 * 3600.0


def make_app(broker_url: str, visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S) -> Celery:
    app = Celery("tuner", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,  # a batch killed with its worker is delivered again
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker holds one batch; others take the rest
        task_ignore_result=True,  # state lives in the database, not in a result backend
        task_default_queue=DEFAULT_QUEUE,
        broker_connection_retry=True, broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # survive a broker restart
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5,
                                   "interval_max": 2.0},
        worker_hijack_root_logger=False,
        worker_send_task_events=True, task_send_sent_event=True,  # for Flower
    )
    if broker_url.startswith(("redis://", "rediss://")):
        # an unacked message of a worker killed with SIGKILL comes back after this, which must be
        # longer than the longest batch; the janitor re-sends a key whose worker is gone sooner
        app.conf.broker_transport_options = {"visibility_timeout": visibility_timeout_s}
    elif broker_url.startswith("sqla+sqlite:"):
        # A worker polls the file with BEGIN IMMEDIATE; on a busy machine a sender's first write
        # (kombu creates its tables then) can wait past SQLite's 5 s default, and kombu's publish
        # retry then fails on the channel it closed ("'NoneType' object has no attribute
        # 'client'"). Let SQLite wait for the lock instead.
        app.conf.broker_transport_options = {"connect_args": {"timeout": SQLITE_BROKER_LOCK_WAIT_S}}
    return app


def send_batch(app: Celery, msg) -> None:
    """Send a trial-batch message (a workers.batch.BatchMessage) to the queue it names."""
    app.send_task(BATCH_TASK, args=[msg.to_json()], queue=msg.queue)


class BrokerUnreachable(ConnectionError):
    """The broker did not answer; `transient` when waiting may cure it (down, refusing, a name not
    resolved yet), not a missing directory or a refused login."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def check_broker(app: Celery, timeout: float = 3.0) -> None:
    """Raise BrokerUnreachable (a ConnectionError) with a one-line reason when the broker cannot be
    reached."""
    url = str(app.conf.broker_url or "")
    if url.startswith("sqla+sqlite:"):  # kombu opens the file only when the first message is sent
        from db.session import sqlite_path

        path = sqlite_path(url[len("sqla+"):])
        if path is not None and not path.parent.is_dir():
            raise BrokerUnreachable(f"the directory {path.parent} of its SQLite file does not exist; create it")
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    except Exception as exc:  # kombu raises transport-specific types
        from redis.exceptions import AuthenticationError

        from workers.faults import chain, infrastructure

        transient = infrastructure(exc) and not any(isinstance(e, AuthenticationError) for e in chain(exc))
        raise BrokerUnreachable(f"{type(exc).__name__}: {scrub(_first_line(exc), url)}", transient) from None


def queue_depths(app: Celery, names, timeout: float = 2.0) -> dict[str, int]:
    """Messages waiting in each named queue (the dashboard's and /metrics' queue depth).
    ConnectionError, as check_broker's, when the broker cannot be reached."""
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
            channel = conn.default_channel
            out = {}
            for name in names:
                try:
                    out[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except Exception as exc:  # Redis keeps no empty list: a queue with nothing waiting is "not found"
                    if "NOT_FOUND" not in str(exc):
                        raise
                    out[name] = 0
            return out
    except Exception as exc:
        raise ConnectionError(f"{type(exc).__name__}: {scrub(_first_line(exc), app.conf.broker_url)}") from None
