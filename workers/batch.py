"""The trial-batch message: what the coordinator and workers send each other, schema-checked.

A message names a registered kernel and a key; it never carries code. Anything that does
not validate is rejected before it is used. Every message is built from the job's rows
(`batch_message`), and a worker compares what it receives with what the rows say before it
uses any of it: a message is a pointer to a job key, never a source of its facts.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from search import strategies
from search_spaces import registry
from keys import SpecError, TuningKey
from workers.job_request import JobRequest
from workers.queues import is_class_queue, queue_for

SCHEMA = 1
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class BatchMessage:
    job_id: str
    job_key_id: int
    key: dict[str, Any]  # TuningKey JSON
    sampler: str
    seed: int | None
    budget_trials: int
    batch_trials: int
    queue: str
    schema: int = SCHEMA

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def tuning_key(self) -> TuningKey:
        return TuningKey.from_json(self.key)

    @classmethod
    def from_json(cls, data: Any) -> "BatchMessage":
        """Validate a received payload; ValueError says what is wrong with it."""
        if not isinstance(data, dict):
            raise ValueError(f"batch message must be a JSON object, got {type(data).__name__}")
        fields = set(cls.__dataclass_fields__)
        missing, extra = fields - set(data) - {"schema"}, set(data) - fields
        if missing or extra:
            raise ValueError(f"batch message fields: missing {sorted(missing)}, unexpected {sorted(extra)}")
        if data.get("schema", SCHEMA) != SCHEMA:
            raise ValueError(f"batch message schema {data.get('schema')!r}, this worker speaks {SCHEMA}")
        checks = [
            (isinstance(data["job_id"], str) and _JOB_ID.match(data["job_id"]), "job_id must be 32 hex chars"),
            (type(data["job_key_id"]) is int and data["job_key_id"] > 0, "job_key_id must be a positive int"),
            (isinstance(data["sampler"], str) and data["sampler"] in strategies.names(),
             f"sampler must be one of {', '.join(strategies.names())}"),
            (data["seed"] is None or type(data["seed"]) is int, "seed must be an int or null"),
            (type(data["budget_trials"]) is int and data["budget_trials"] > 0, "budget_trials must be > 0"),
            (type(data["batch_trials"]) is int and 0 < data["batch_trials"] <= 1000, "batch_trials out of range"),
            (is_class_queue(data["queue"]), "queue must be tune.<class>"),
            (isinstance(data["key"], dict), "key must be an object"),
        ]
        for ok, why in checks:
            if not ok:
                raise ValueError(f"malformed batch message: {why}")
        try:
            key = TuningKey.from_json(data["key"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed batch message key: {exc!r}") from None
        try:
            spec = registry.get(key.kernel)  # only registered kernels ever run
            spec.make_key(key.dim_map, key.dtype)
        except SpecError as exc:
            raise ValueError(f"rejected batch message: {exc}") from None
        if key.version != spec.version:
            raise ValueError(f"rejected batch message: kernel {key.kernel} version {key.version} is not the "
                             f"version this worker runs ({spec.version}); deploy the same kernel code")
        return cls(**{k: data[k] for k in fields if k in data})


def key_budget(job, key_hash: str) -> int:
    """A job key's budget of counted trials (a retune sets one per key): from the job row."""
    return JobRequest.of(job).budget(key_hash)


def batch_message(job, key_row) -> BatchMessage:
    """The next batch of a job key (db.models.Job and JobKey rows), every field from the rows: what
    the coordinator, the retune, the janitor and a worker send, and what a received one must say.
    The batch size is the one the job was queued with (TUNER_BATCH_TRIALS then): no default here."""
    request = JobRequest.of(job)
    if request.batch_trials is None:
        raise ValueError(f"job {job.id} was not queued (its request has no batch size): no batch is sent for it")
    budget = request.budget(key_row.key_hash)
    return BatchMessage(job_id=job.id, job_key_id=key_row.id, key=key_row.key, sampler=job.sampler,
                        seed=job.seed, budget_trials=budget, batch_trials=min(request.batch_trials, budget),
                        queue=queue_for(job.device_selector))


def disagreements(received: BatchMessage, rows: BatchMessage) -> list[str]:
    """The fields in which a received message differs from the one its job's rows make."""
    return [f for f in BatchMessage.__dataclass_fields__ if getattr(received, f) != getattr(rows, f)]
