"""workers/service.py in this process: the worker's row (kept under its name, its device name
checked before it is stored), its heartbeat (what it writes, its sweep, a failure logged in one
line), a benchmark process that does not start, stopping, and a batch's longest time. The
fixtures and the harness stand-in are tests/test_worker_service.py's."""
from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from sqlalchemy import select

from db import models, store
from db.session import session_scope
from devices.fingerprint import live_fingerprint
from devices.probe import probe
from keys import SpecError
from search.finalize import MAX_RUNS
from tests.services import wait_for
from tests.test_worker_service import Harness, _config, svc, template, url  # noqa: F401
from workers import service as service_mod
from workers.service import WorkerService, longest_batch_s


def _row(url, name="w@test"):
    with session_scope(url) as s:
        return s.scalars(select(models.Worker).where(models.Worker.name == name)).one()


def test_a_worker_started_again_under_its_name_keeps_its_row(url, svc):
    service, _ = svc
    first = _row(url)
    assert first.started_at is not None and first.heartbeat_at == first.started_at and first.stopped_at is None
    assert (first.id, first.device) == (service.worker_id, "cpu")
    service.stop()
    assert _row(url).stopped_at is not None
    again = WorkerService(_config(url), service.dc, service.fp, lambda m: None)
    again.harness = Harness()
    try:
        row = _row(url)
        assert again.worker_id == service.worker_id == row.id and row.stopped_at is None
    finally:
        again.stop()
    other = WorkerService(_config(url, name="w2@test"), service.dc, service.fp, lambda m: None)
    other.harness = Harness()
    try:
        assert other.worker_id != service.worker_id and _row(url, "w2@test").id == other.worker_id
    finally:
        other.stop()


def test_a_device_name_that_is_no_safe_file_name_is_refused_before_it_is_stored(url):
    dc, _ = probe("cpu")
    with pytest.raises(SpecError, match="is not a safe file name"):
        WorkerService(_config(url), replace(dc, device_name="../../etc"), live_fingerprint(dc), lambda m: None)
    with session_scope(url) as s:
        assert s.scalars(select(models.Worker)).all() == []


def test_the_heartbeat_writes_what_the_worker_holds_and_sweeps_with_its_settings(url, monkeypatch):
    dc, _ = probe("cpu")
    swept = []
    monkeypatch.setattr(service_mod, "sweep", lambda *a, **kw: swept.append((a, kw)))
    cfg = _config(url, heartbeat_s=0.05, stall_s=11.0, dead_after_s=12.0, trial_timeout_s=13.0, batch_trials=3,
                  misses_keep_days=14.0, workers_keep_days=15.0)
    sent = []
    w = WorkerService(cfg, dc, live_fingerprint(dc), sent.append)
    w.harness = Harness()
    try:
        started = _row(url).heartbeat_at
        with session_scope(url) as s:  # a row whose stack was written by another process under this name
            _, other_fp = store.store_identity(s, dc.to_json(), {**live_fingerprint(dc).to_json(), "hash": "e" * 16})
            s.get(models.Worker, w.worker_id).fingerprint_id = other_fp
        w.start()
        assert (w._thread.name, w._thread.daemon, w.harness.started) == ("tuner-heartbeat", True, ["cpu"])
        wait_for(lambda: (r := _row(url)).fingerprint_id == w.fp_id and r.heartbeat_at > started, 10,
                 "a beat that stamps the time and this worker's stack", poll_s=0.02)
        wait_for(lambda: len(swept) >= 2, 10, "two beats", poll_s=0.02)
        assert _row(url).holding_key_id is None
        w.hold(7)
        wait_for(lambda: _row(url).holding_key_id == 7, 10, "the held key written", poll_s=0.02)
        (args, kw) = swept[0]
        assert args == (url, dc.slug, sent.append) and kw == {
            "holder": "w@test", "stall_s": 11.0, "dead_after_s": 12.0, "heartbeat_s": 0.05,
            "abandon_s": (2 * 3 + MAX_RUNS) * 13.0, "misses_keep_days": 14.0, "workers_keep_days": 15.0}
        w._stop.set()
        w._thread.join(10)  # its last beat wrote the held key
        assert not w._thread.is_alive() and _row(url).holding_key_id == 7
    finally:
        w.stop()
    row = _row(url)
    assert row.stopped_at is not None and row.holding_key_id is None and w.harness.closed


def test_a_heartbeat_that_fails_logs_one_line_for_a_database_blip_and_the_trace_otherwise(url, monkeypatch, caplog):
    from sqlalchemy.exc import OperationalError

    dc, _ = probe("cpu")
    first_line = "the database went away " + "x" * 400
    errors = [OperationalError("SELECT 1", {}, Exception(first_line + "\nsecond line")), ValueError("bug")]

    def sweep(*a, **kw):
        if errors:
            raise errors.pop(0)
    monkeypatch.setattr(service_mod, "sweep", sweep)
    w = WorkerService(_config(url, heartbeat_s=0.05), dc, live_fingerprint(dc), lambda m: None)
    w.harness = Harness()
    with caplog.at_level(logging.WARNING, logger="tuner.worker"):
        try:
            w.start()
            wait_for(lambda: not errors and len([r for r in caplog.records if r.name == "tuner.worker"]) >= 2, 10,
                     "both failures logged", poll_s=0.02)
        finally:
            w.stop()
    blip, bug = [r for r in caplog.records if r.name == "tuner.worker"][:2]
    assert blip.levelno == logging.WARNING and blip.exc_info is None
    assert blip.getMessage() == "heartbeat failed: " + ("(builtins.Exception) " + first_line)[:300]
    assert (bug.getMessage(), bug.levelno, bug.exc_info[0]) == ("heartbeat failed", logging.ERROR, ValueError)


def test_a_benchmark_process_that_does_not_start_is_logged_and_the_worker_runs_on(url, caplog):
    dc, _ = probe("cpu")
    w = WorkerService(_config(url, heartbeat_s=60.0), dc, live_fingerprint(dc), lambda m: None)

    class NoStart(Harness):
        def start(self, device):
            raise RuntimeError("no device\nmore")
    w.harness = NoStart()
    with caplog.at_level(logging.WARNING, logger="tuner.worker"):
        try:
            w.start()
            assert w._thread.is_alive()
        finally:
            w.stop()
    assert [r.getMessage() for r in caplog.records if r.name == "tuner.worker"] == \
        ["benchmark process for cpu did not start: no device\nmore"]


def test_wait_returns_at_once_once_stopped(url, svc):
    import time

    service, _ = svc
    service.wait(0.01)  # a short wait ends by itself
    service.stop()
    t0 = time.monotonic()
    service.wait(30)
    assert time.monotonic() - t0 < 5


def test_a_batch_may_run_two_timeouts_a_trial_and_the_finalization_s_runs():
    assert longest_batch_s(4, 10.0) == (2 * 4 + MAX_RUNS) * 10.0
    assert longest_batch_s(1, 2.5) == (2 + MAX_RUNS) * 2.5
