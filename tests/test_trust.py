"""A worker trusts the job's rows, not the message: a message that disagrees with the message its
job's rows make is refused before anything is measured. Judged by the trials run (the rows
are the database's), in one real worker service with its benchmark process, on SQLite; the
broker is not needed to hand a message to `WorkerService.handle`."""
from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import func, select

from db import lifecycle, models
from db.session import session_scope
from devices.fingerprint import live_fingerprint
from devices.probe import probe
from harness.protocol import Measurement
from search_spaces import registry
from tuner.db_open import upgrade_schema
from tuner import settings as settings_mod
from tuner.worker_process import worker_config
from workers.batch import batch_message
from workers.service import WorkerService


def _trials(url: str, job: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(models.TuningTrial).where(models.TuningTrial.job_id == job))


@pytest.fixture
def service(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    upgrade_schema(url)
    dc, _ = probe("cpu")
    sent: list = []
    svc = WorkerService(worker_config(settings_mod.get(), url, "cpu", "w@test"), dc, live_fingerprint(dc), sent.append)
    yield url, svc, sent
    svc.stop()


def test_a_message_that_disagrees_with_its_rows_runs_no_trial(service):
    url, svc, sent = service
    key = registry.get("trivial").make_key({"N": 16}, "float32")
    request = {"kernel": "trivial", "keys": [key.to_json()], "trials": 4, "sampler": "random", "seed": 0,
               "measurement": Measurement().to_json(), "batch_trials": 2}
    with session_scope(url) as s:
        job, (key_id,) = lifecycle.create_job(
            s, kind="tune", origin="queued", kernel="trivial", kernel_version=key.version, keys=[key.to_json()],
            key_hashes=[key.stable_hash], sampler="random", seed=0, budget_trials=4, request=request,
            device_selector="cpu-interpreter")
    with session_scope(url) as s:
        rows = batch_message(s.get(models.Job, job), s.get(models.JobKey, key_id))
    forged = [replace(rows, budget_trials=40), replace(rows, batch_trials=1), replace(rows, seed=7),
              replace(rows, sampler="grid")]
    for msg in forged:
        svc.handle(msg)
        assert _trials(url, job) == 0, f"a message that disagrees with its rows ran trials: {msg}"
    assert sent == []  # nor was anything sent on its behalf
    svc.handle(rows)  # the job's own message runs its batch: the refusals above were not for another reason
    assert 0 < _trials(url, job) <= rows.batch_trials
    assert sent == [rows]  # its next batch, built from the rows
