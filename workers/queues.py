"""Names on the broker, written once: the queue of a device class and the tasks workers run.

The coordinator sends to `queue_for(selector)`; a worker consumes `queue_names(its class)`;
both name tasks by the constants here. Imports no celery: a message is built without it.
"""
from __future__ import annotations

from devices.classes import DeviceClass, resolve_device_class

QUEUE_PREFIX = "tune."
CONTROL_QUEUE = QUEUE_PREFIX + "control"  # every worker listens: the nightly retune lands on any of them
DEFAULT_QUEUE = QUEUE_PREFIX + "default"
BATCH_TASK = "tuner.trial_batch"
RETUNE_TASK = "tuner.retune_stale"


def queue_for(selector: str) -> str:
    """The queue a job for this device class (an alias or a slug, as a user wrote it) is sent to."""
    return QUEUE_PREFIX + resolve_device_class(selector)


def queue_names(dc: DeviceClass) -> tuple[str, ...]:
    """The queues a worker of this class consumes: its exact slug first, then its families."""
    return (QUEUE_PREFIX + dc.slug,) + tuple(QUEUE_PREFIX + a for a in dc.aliases)


def is_class_queue(name: object) -> bool:
    return isinstance(name, str) and name.startswith(QUEUE_PREFIX) and name not in (CONTROL_QUEUE, DEFAULT_QUEUE)
