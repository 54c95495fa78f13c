"""workers/service.py in this process, on SQLite, with a harness stand-in that measures nothing (a
configuration's time is P + Q ms, the trivial kernel's optimum at P = Q = 1): the batches of a
job and who finalizes it, every outcome of a finalization, the refusals, where a key is measured
(a retune's stacks, a study pinned by another stack); the worker's row and heartbeat:
tests/test_worker_rows.py. Written
against the survivors of bench/mutation.py (tests/test_service.py runs workers in processes of
their own, where no mutant is seen)."""
from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from sqlalchemy import select

from db import lifecycle, models, store
from db.clock import utcnow
from db.session import session_scope
from devices.fingerprint import live_fingerprint
from devices.probe import probe
from harness.protocol import Measurement, TrialResult
from search.finalize import Finalized, Superseded
from search.loop import study_name
from search_spaces import registry
from tuner import settings as settings_mod
from tuner.db_open import upgrade_schema
from tuner.worker_process import worker_config
from workers import service as service_mod
from workers.batch import batch_message
from workers.job_request import WarmStart
from workers.service import WorkerService

KEY = registry.get("trivial").make_key({"N": 16}, "float32")


class Harness:
    """Measures nothing: P + Q ms a configuration; records each request."""

    def __init__(self):
        self.requests, self.started, self.closed = [], [], False

    def width(self, device):
        return 1

    def stream(self, take, depth, early_stop_factor=None, precompile=True):
        while (item := take()) is not None:
            tag, request = item
            yield tag, self.run(request)

    def run(self, request):
        self.requests.append(request)
        return TrialResult("ok", median_ms=float(request.config["P"] + request.config["Q"]), cv=0.01,
                           config=request.config)

    def start(self, device):
        self.started.append(device)

    def close(self):
        self.closed = True


def _config(url, name="w@test", **change):
    return replace(worker_config(settings_mod.get(), url, "cpu", name), **change)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A database upgraded once; each test gets a copy (an upgrade per test is most of its time)."""
    from db.session import dispose_all

    path = tmp_path_factory.mktemp("template") / "t.db"
    upgrade_schema(f"sqlite:///{path}")
    dispose_all()  # its connections closed: the file holds every table (none left in a WAL beside it)
    return path


def _fresh(template, path):
    import shutil

    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def url(template, tmp_path):
    return _fresh(template, tmp_path / "t.db")


@pytest.fixture
def svc(url):
    dc, _ = probe("cpu")
    sent: list = []
    # timings unlike SearchContext's defaults, so a context that drops one is told apart
    s = WorkerService(_config(url, heartbeat_s=3.0, dead_after_s=45.0, trial_timeout_s=77.0), dc,
                      live_fingerprint(dc), sent.append)
    s.harness = Harness()
    yield s, sent
    s.stop()


def _job(url, trials=4, batch=2, kind="tune", selector="cpu-interpreter", warm=None, seed=0, sampler="random",
         study="", signature=None, measurement=Measurement()):
    key = {**KEY.to_json(), **({"signature": signature} if signature else {})}
    request = {"kernel": "trivial", "keys": [key], "trials": trials, "sampler": sampler, "seed": seed,
               "measurement": measurement.to_json(), "batch_trials": batch}
    if warm:
        request["warm"] = {KEY.stable_hash: warm.to_json()}
    with session_scope(url) as s:
        job, (key_id,) = lifecycle.create_job(
            s, kind=kind, origin="queued", kernel="trivial", kernel_version=KEY.version, keys=[key],
            key_hashes=[KEY.stable_hash], sampler=sampler, seed=seed, budget_trials=trials, request=request,
            device_selector=selector, study_names=[study])
    with session_scope(url) as s:
        return batch_message(s.get(models.Job, job), s.get(models.JobKey, key_id))


def _key(url, msg):
    with session_scope(url) as s:
        k = s.get(models.JobKey, msg.job_key_id)
        return k.state, k.error, k.finalize_attempts


def _job_state(url, msg):
    with session_scope(url) as s:
        return s.get(models.Job, msg.job_id).state


def _trials(url, msg):
    with session_scope(url) as s:
        return s.scalars(select(models.TuningTrial).where(models.TuningTrial.job_key_id == msg.job_key_id)
                         .order_by(models.TuningTrial.id)).all()


def _warm(fingerprints):
    return WarmStart(old_best_id=1, old_config={"P": 2, "Q": 2, "num_warps": 1}, old_ms=4.0, old_fingerprint="a" * 16,
                     new_fingerprints=fingerprints, old_trials=2)


def _live_worker(url, name, fp_hash, slug=None):
    """Another worker's row, beating now, on a stack of its own (and this class, unless slug)."""
    dc, _ = probe("cpu")
    fp = live_fingerprint(dc)
    with session_scope(url) as s:
        dc_json = dc.to_json() if slug is None else {**dc.to_json(), "slug": slug}
        dc_id, fp_id = store.store_identity(s, dc_json, {**fp.to_json(), "hash": fp_hash})
        s.add(models.Worker(name=name, device_class_id=dc_id, fingerprint_id=fp_id, heartbeat_at=utcnow()))


# ---- a job, batch by batch ----------------------------------------------------------------------
def test_a_job_runs_batch_by_batch_and_the_worker_that_spends_the_budget_finalizes(url, svc):
    service, sent = svc
    msg = _job(url, trials=3, batch=2)
    assert service.handle(msg) == "ran 2, next batch sent"
    assert sent == [msg]  # the next batch: the same message
    assert _key(url, msg) == (lifecycle.RUNNING, None, 0) and _job_state(url, msg) == lifecycle.RUNNING
    assert service.handle(msg) == "ran 1, finalized"  # the budget (3) bounds the second batch
    assert sent == [msg]
    assert _key(url, msg) == (lifecycle.DONE, None, 1) and _job_state(url, msg) == lifecycle.DONE
    trials = _trials(url, msg)
    assert len(trials) == 3 and {t.worker_id for t in trials} == {service.worker_id}
    # every measurement on this worker's device, in the study of this class and stack
    assert {r.device for r in service.harness.requests} == {"cpu"}
    with session_scope(url) as s:
        key_row = s.get(models.JobKey, msg.job_key_id)
        assert key_row.study_name == study_name(KEY, service.dc.slug, service.fp.hash, Measurement())
        best = s.scalars(select(models.BestConfig)).one()
    assert best.config == min((t.config for t in trials), key=lambda c: c["P"] + c["Q"])


def test_a_seeded_job_proposes_the_same_configurations_on_any_worker(template, tmp_path):
    dc, _ = probe("cpu")
    seen = []
    for n in range(2):
        u = _fresh(template, tmp_path / f"seed{n}.db")
        w = WorkerService(_config(u), dc, live_fingerprint(dc), lambda m: None)
        w.harness = Harness()
        try:
            msg = _job(u, trials=6, batch=6, seed=7)
            w.handle(msg)
            seen.append([t.config for t in _trials(u, msg)])
        finally:
            w.stop()
    assert len(seen[0]) == 6 and seen[0] == seen[1]


def test_a_key_s_launch_signature_reaches_every_trial(url, svc):
    service, _ = svc
    signature = {"args": [{"kind": "tensor", "dtype": "float32", "shape": [16]}]}
    service.handle(_job(url, trials=2, batch=2, signature=signature))
    service.handle(_job(url, trials=1, batch=1))
    assert [r.signature for r in service.harness.requests[:2]] == [signature, signature]
    assert service.harness.requests[-1].signature is None


def test_what_a_key_s_batches_measure_first_is_decided_once(url, svc, monkeypatch):
    service, _ = svc
    asked = []
    real = service_mod.seed_configs
    monkeypatch.setattr(service_mod, "seed_configs", lambda ctx, first=(): asked.append(ctx.job_key_id) or real(ctx, first))
    msg = _job(url, trials=3, batch=1)
    for _ in range(3):
        service.handle(msg)
    assert asked == [msg.job_key_id]


def test_the_seeds_of_at_most_257_keys_are_kept(url, svc):
    service, _ = svc
    service._first.update({-n: [] for n in range(1, 257)})  # 256 keys' seeds
    service.handle(_job(url, trials=2, batch=1))
    assert len(service._first) == 257
    service.handle(_job(url, trials=2, batch=1))  # one more: forgotten, all but the new key's
    assert len(service._first) == 1


def test_the_trials_of_a_batch_are_observed(url, svc):
    service, _ = svc
    observed = []
    service.observe = lambda: lambda config, result: observed.append((config, result.median_ms))
    msg = _job(url, trials=2, batch=2)
    service.handle(msg)
    assert observed == [(t.config, t.median_ms) for t in _trials(url, msg)] and len(observed) == 2


def test_a_job_cancelled_during_a_batch_stops_it(url, svc):
    service, sent = svc
    msg = _job(url, trials=10, batch=10)

    def cancel_after_the_first(config, result):
        with session_scope(url) as s:
            lifecycle.cancel_job(s, msg.job_id)
    service.observe = lambda: cancel_after_the_first
    assert service.handle(msg) == "cancelled"
    assert len(_trials(url, msg)) == 1 and sent == []


def test_when_another_worker_claims_the_finalization_this_one_leaves_it(url, svc):
    service, sent = svc
    msg = _job(url, trials=2, batch=2)

    def claim(config, result):
        with session_scope(url) as s:
            lifecycle.claim_finalize(s, msg.job_key_id)
    service.observe = lambda: claim
    assert service.handle(msg) == "ran 2, another worker finalizes"
    assert _key(url, msg)[0] == lifecycle.FINALIZING and sent == []


# ---- the finalization's outcomes ---------------------------------------------------------------
def _finalizing(monkeypatch, outcome):
    calls = []

    def finalize(ctx, harness, slug, guard=None):
        calls.append((ctx, harness, slug))
        return outcome(ctx, guard)
    monkeypatch.setattr(service_mod, "finalize", finalize)
    return calls


def test_the_finalization_ends_the_key_in_its_guard_with_this_worker_s_context(url, svc, monkeypatch):
    service, _ = svc

    def done(ctx, guard):
        with session_scope(url) as s:
            assert guard(s)  # the key ends with the finalizer's write, while its attempt is the key's
        return Finalized({"P": 1, "Q": 1, "num_warps": 1}, 2.0, 64.0, 32.0, 0.01, 2, 1)
    calls = _finalizing(monkeypatch, done)
    rotating = Measurement(rotate_buffers=2, max_cv=0.05)
    msg = _job(url, trials=2, batch=2, measurement=rotating)
    assert service.handle(msg) == "ran 2, finalized"
    (ctx, harness, slug), = calls
    assert harness is service.harness and slug == service.dc.slug
    assert (ctx.job_id, ctx.job_key_id, ctx.device, ctx.worker_id, ctx.budget_trials, ctx.seed, ctx.sampler) == \
        (msg.job_id, msg.job_key_id, "cpu", service.worker_id, 2, 0, "random")
    assert (ctx.heartbeat_s, ctx.grace_s, ctx.trial_timeout_s) == (3.0, 45.0, 77.0)
    assert ctx.measurement == rotating  # the job's, and its study of its own
    assert ctx.study_name == study_name(KEY, service.dc.slug, service.fp.hash, rotating) and ctx.study_name.endswith("+rot2")
    with session_scope(url) as s:
        assert s.get(models.JobKey, msg.job_key_id).study_name == ctx.study_name
    assert _key(url, msg) == (lifecycle.DONE, None, 1) and _job_state(url, msg) == lifecycle.DONE


def test_a_kept_best_a_superseded_finalizer_and_no_result_each_say_so(url, svc, monkeypatch):
    service, _ = svc
    kept = Finalized({"P": 1, "Q": 1, "num_warps": 1}, 2.0, None, None, None, 2, 1, kept=True)
    _finalizing(monkeypatch, lambda ctx, guard: kept)
    assert service.handle(_job(url, trials=2, batch=2)) == "ran 2, finalized (the current best stays)"

    def superseded(ctx, guard):
        raise Superseded()
    _finalizing(monkeypatch, superseded)
    msg = _job(url, trials=2, batch=2)
    assert service.handle(msg) == "ran 2, another finalizer took the key over"
    assert _key(url, msg)[0] == lifecycle.FINALIZING  # the other finalizer ends it

    _finalizing(monkeypatch, lambda ctx, guard: None)
    msg = _job(url, trials=2, batch=2)
    assert service.handle(msg) == "ran 2, finalized: no configuration ran correctly"
    assert _key(url, msg) == (lifecycle.FAILED, None, 1) and _job_state(url, msg) == lifecycle.FAILED


def test_a_failing_finalization_is_tried_again_then_fails_the_key_with_its_reason(url, svc, monkeypatch, caplog):
    service, sent = svc

    def boom(ctx, guard):
        raise ValueError("boom " + "x" * 400 + "\nthe second line")
    _finalizing(monkeypatch, boom)
    reason = "ValueError: boom " + "x" * 295
    msg = _job(url, trials=2, batch=2)
    with caplog.at_level(logging.ERROR, logger="tuner.worker"):
        assert service.handle(msg) == f"ran 2, finalization 1 of 3 failed ({reason}); tried again"
    logged = [r for r in caplog.records if r.name == "tuner.worker"]
    assert [(r.getMessage(), r.levelno, r.exc_info[0]) for r in logged] == \
        [(f"finalization 1 of job {msg.job_id} key {msg.job_key_id} failed", logging.ERROR, ValueError)]
    assert sent == [msg] and _key(url, msg) == (lifecycle.RUNNING, reason, 1)
    assert service.handle(msg) == f"ran 0, finalization 2 of 3 failed ({reason}); tried again"
    assert service.handle(msg) == f"ran 0, finalization failed 3 times; key failed: {reason}"
    assert sent == [msg, msg]
    assert _key(url, msg) == (lifecycle.FAILED, f"finalization failed 3 times, last: {reason}", 3)
    assert _job_state(url, msg) == lifecycle.FAILED

    def silent(ctx, guard):
        raise KeyError()
    _finalizing(monkeypatch, silent)
    msg = _job(url, trials=2, batch=2)
    assert service.handle(msg) == "ran 2, finalization 1 of 3 failed (KeyError: ); tried again"


def test_a_database_that_drops_during_the_finalization_puts_the_message_back(url, svc, monkeypatch):
    from sqlalchemy.exc import OperationalError

    service, sent = svc

    def dropped(ctx, guard):
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    _finalizing(monkeypatch, dropped)
    msg = _job(url, trials=2, batch=2)
    with pytest.raises(OperationalError):
        service.handle(msg)
    assert sent == [] and _key(url, msg) == (lifecycle.FINALIZING, None, 1)  # the janitor gives it back


# ---- refusals -----------------------------------------------------------------------------------
def test_a_message_naming_a_key_of_another_job_or_no_job_is_refused(url, svc):
    service, sent = svc
    a, b = _job(url), _job(url)
    assert service.handle(replace(a, job_key_id=b.job_key_id)) == f"refused: no job {a.job_id} with key {b.job_key_id}"
    assert service.handle(replace(a, job_id="nope")) == f"refused: no job nope with key {a.job_key_id}"
    assert service.handle(replace(a, job_key_id=10 ** 6)) == f"refused: no job {a.job_id} with key {10 ** 6}"
    assert service.handle(replace(a, seed=9, budget_trials=40)) == \
        f"refused: the message disagrees with job {a.job_id} on seed, budget_trials"
    assert _trials(url, a) == [] and sent == []


def test_a_job_of_another_class_is_refused(url, svc):
    service, _ = svc
    msg = _job(url, selector="h100")
    assert service.handle(msg) == f"refused: job {msg.job_id} is for device class h100, this worker is {service.dc.slug}"
    assert _trials(url, msg) == []


def test_an_ended_job_or_key_runs_nothing(url, svc):
    service, _ = svc
    msg = _job(url)
    with session_scope(url) as s:
        lifecycle.cancel_job(s, msg.job_id)
        s.get(models.JobKey, msg.job_key_id).state = lifecycle.RUNNING  # the job ended, its key not (yet)
    assert service.handle(msg) == "job cancelled, key running"
    msg = _job(url)
    with session_scope(url) as s:
        s.get(models.JobKey, msg.job_key_id).state = lifecycle.DONE
    assert service.handle(msg) == "job queued, key done"
    assert _trials(url, msg) == []


# ---- where a key is measured ------------------------------------------------------------------
def test_a_retune_key_for_another_live_stack_goes_back_to_the_queue(url, svc, monkeypatch):
    service, sent = svc
    monkeypatch.setattr(service_mod, "DEFER_S", 0.01)
    _live_worker(url, "other@test", "b" * 16)
    warm = _warm(("b" * 16, "c" * 16))
    msg = _job(url, kind="retune", warm=warm)
    assert service.handle(msg) == (f"retune key queued for stack {'b' * 16},{'c' * 16}, this worker runs "
                                   f"{service.fp.hash}; re-sent")
    assert sent == [msg] and _trials(url, msg) == [] and _key(url, msg)[0] == lifecycle.RUNNING


def test_a_retune_key_whose_stacks_are_all_gone_fails(url, svc):
    service, sent = svc
    _live_worker(url, "elsewhere@test", "b" * 16, slug="h100-sxm-80gb")  # its stack lives on another class only
    warm = _warm(("c" * 16, "b" * 16))
    msg = _job(url, kind="retune", warm=warm)
    error = (f"no live worker runs stack {'b' * 16},{'c' * 16} any more; the next `tuner retune` queues the key "
             "again while it is stale")
    assert service.handle(msg) == f"failed: {error}"
    assert sent == [] and _key(url, msg) == (lifecycle.FAILED, error, 0) and _job_state(url, msg) == lifecycle.FAILED


def test_a_retune_key_for_this_stack_or_a_tune_key_is_measured_here(url, svc):
    service, _ = svc
    _live_worker(url, "other@test", "b" * 16)
    warm = _warm(("b" * 16, service.fp.hash))
    retune, tune = _job(url, kind="retune", warm=warm, trials=2, batch=1), _job(url, trials=2, batch=1)
    cold = _job(url, kind="retune", trials=2, batch=1)  # a retune key with no warm start: any stack
    for msg in (retune, tune, cold):
        assert service.handle(msg) == "ran 1, next batch sent"
    assert _trials(url, retune)[0].config == warm.old_config  # a retune starts from the old best


def test_a_key_pinned_to_the_study_of_another_live_stack_is_left_to_it(url, svc, monkeypatch):
    service, sent = svc
    monkeypatch.setattr(service_mod, "DEFER_S", 0.01)
    _live_worker(url, "other@test", "b" * 16)
    rotating = Measurement(rotate_buffers=2)
    theirs = study_name(KEY, service.dc.slug, "b" * 16, rotating)
    msg = _job(url, study=theirs, measurement=rotating)
    assert service.handle(msg) == f"key measured in study {theirs} by live workers of another stack or class; re-sent"
    assert sent == [msg] and _trials(url, msg) == []
    gone = _job(url, study=study_name(KEY, service.dc.slug, "d" * 16, Measurement()), trials=2, batch=1)
    assert service.handle(gone) == "ran 1, next batch sent"  # no live worker of that stack: measured here
