"""The Celery task a worker runs: one trial batch, its message validated before any use.

An infrastructure fault (the database or the broker unreachable, workers/faults.py) never
acknowledges a message as done: after a back-off pause the message is rejected with requeue, so
it goes back to its queue (late acks: Celery would acknowledge a task that raised).
"""
from __future__ import annotations

import logging

from celery import Celery
from celery.exceptions import Reject

from workers.batch import BatchMessage
from workers.faults import Backoff, infrastructure
from workers.queues import BATCH_TASK, RETUNE_TASK

log = logging.getLogger("tuner.worker")
# what a nightly retune message carries, every one of them: tuner.scheduler.retune_args sends them
RETUNE_FIELDS = ("dead_after_s", "budget_fraction", "batch_trials", "misses", "misses_max_jobs", "misses_trials",
                 "parallel")


def register(app: Celery, service) -> None:
    backoff = Backoff()

    @app.task(name=BATCH_TASK, bind=True)
    def trial_batch(task, payload=None, *args, **kwargs):
        key_id = payload.get("job_key_id") if isinstance(payload, dict) else None
        # held from receipt: validating a message may import its kernel (seconds, the first time),
        # and the janitor must not take that for a stall
        service.hold(key_id if type(key_id) is int else None)
        try:
            return run(task, payload, args, kwargs)
        finally:
            service.hold(None)

    def run(task, payload, args, kwargs):
        try:
            if args or kwargs:
                raise ValueError("trial_batch takes exactly one JSON object")
            msg = BatchMessage.from_json(payload)
        except ValueError as exc:
            # a bad message is dropped (acked) and logged; it never reaches the harness
            log.error("rejected message %s: %s", task.request.id, exc)
            return {"rejected": str(exc)}
        try:
            outcome = service.handle(msg)
        except Exception as exc:
            if not infrastructure(exc):
                raise
            pause = backoff.next_s()
            log.warning("job %s key %s: %s: %s; the message goes back to its queue in %.0f s", msg.job_id,
                        msg.job_key_id, type(exc).__name__, str(exc).splitlines()[0][:300], pause)
            service.wait(pause)
            raise Reject(f"infrastructure fault: {type(exc).__name__}", requeue=True) from None
        backoff.reset()
        if outcome.startswith("refused"):
            log.warning("refused message %s: job %s key %s: %s", task.request.id, msg.job_id, msg.job_key_id, outcome)
        else:
            log.info("job %s key %s: %s", msg.job_id, msg.job_key_id, outcome)
        return {"outcome": outcome}

    @app.task(name=RETUNE_TASK, bind=True)
    def retune_stale(task, *args, **fields):
        """The nightly retune, sent by `tuner scheduler` with every field (tuner.scheduler.retune_args,
        from the settings: a field missing is refused, never defaulted here): stale keys, then (when
        `misses`) up to `misses_max_jobs` jobs for the most frequent runtime misses; idempotent and
        safe to run twice at once."""
        from workers.miss_jobs import enqueue_misses
        from workers.stale_jobs import enqueue_stale

        try:
            if args:
                raise ValueError(f"{len(args)} positional argument(s): the fields go by name")
            dead_after_s, budget_fraction, batch_trials, misses, misses_max_jobs, misses_trials, parallel = (
                retune_fields(fields).values())
        except (TypeError, ValueError) as exc:
            log.error("rejected message %s: malformed retune message: %s", task.request.id, exc)
            return {"rejected": str(exc)}
        result = enqueue_stale(service.cfg.db_url, service.send, holder=service.cfg.name,
                               dead_after_s=dead_after_s, budget_fraction=budget_fraction,
                               batch_trials=batch_trials, parallel=parallel)
        log.info("nightly retune %s: %d job(s)%s", result["run"], len(result["jobs"]),
                 " (another scheduler holds the lease)" if result.get("locked_by_other") else "")
        _log_skipped("nightly retune", result)
        jobs, skipped = [j.get("job") for j in result["jobs"]], list(result["skipped"])
        if misses and misses_max_jobs > 0:
            found = enqueue_misses(service.cfg.db_url, service.send, holder=service.cfg.name,
                                   dead_after_s=dead_after_s, trials=misses_trials, top=misses_max_jobs,
                                   max_jobs=misses_max_jobs, batch_trials=batch_trials,
                                   parallel=parallel)
            log.info("nightly retune of runtime misses %s: %d job(s)%s", found["run"], len(found["jobs"]),
                     " (another scheduler holds the lease)" if found.get("locked_by_other") else "")
            _log_skipped("nightly retune of runtime misses", found)
            jobs += [j.get("job") for j in found["jobs"]]
            skipped += found["skipped"]
        return {"run": result["run"], "jobs": jobs, "skipped": skipped}


def retune_fields(fields: dict) -> dict:
    """A nightly retune message's fields, in RETUNE_FIELDS' order, checked: every one must be there
    (none is defaulted here: TUNER_* settings decide them where the message is sent); ValueError
    or TypeError says what is wrong."""
    missing, unknown = set(RETUNE_FIELDS) - set(fields), set(fields) - set(RETUNE_FIELDS)
    if missing or unknown:
        raise ValueError(f"fields: missing {sorted(missing)}, unexpected {sorted(unknown)}")
    out = {"dead_after_s": float(fields["dead_after_s"]), "budget_fraction": float(fields["budget_fraction"]),
           "batch_trials": int(fields["batch_trials"]), "misses": fields["misses"],
           "misses_max_jobs": int(fields["misses_max_jobs"]), "misses_trials": int(fields["misses_trials"]),
           "parallel": int(fields["parallel"])}
    if not (0 < out["budget_fraction"] <= 1 and out["dead_after_s"] > 0 and 0 < out["batch_trials"] <= 1000
            and isinstance(out["misses"], bool) and 0 <= out["misses_max_jobs"] <= 10000
            and 0 < out["misses_trials"] <= 100000 and 0 < out["parallel"] <= 64):
        raise ValueError("values out of range")
    return out


def _log_skipped(what: str, result: dict) -> None:
    for sk in result["skipped"]:
        dims = ",".join(f"{k}={v}" for k, v in sk["key"].items())
        log.info("%s %s skipped %s %s %s on %s: %s", what, result["run"], sk["kernel"], dims, sk["dtype"],
                 sk["device_class"], sk["reason"])
