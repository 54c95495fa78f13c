"""Trials in flight, on SQLite and the real PostgreSQL: a configuration claimed by one trial is
refused to every other (so no configuration is measured twice), and the trial of a dead worker
is failed, its claim released and its configuration proposed again.

The second test asks through a sampler that never proposes the dead trial's configuration:
only the re-enqueue of the heartbeat's callback can bring it back (a seeded sampler that
happens to propose it first again would hide a lost callback)."""
from __future__ import annotations

import threading

import optuna
import pytest

from db import lifecycle, models, store
from db.session import session_scope, upgrade
from search import studies
from tests.services import wait_for

STUDY = "tiles:v:k:cpu-interpreter:f"


def _claim(url, number: int, config_hash: str = "c1") -> bool:
    with session_scope(url) as s:
        return store.claim_config(s, study_name=STUDY, config_hash=config_hash, trial_number=number,
                                  job_key_id=None, worker_id=None)


def test_a_claimed_configuration_is_refused_to_every_other_trial(db_url):
    upgrade(db_url)
    assert _claim(db_url, 0)
    assert not _claim(db_url, 1), "a configuration held by a trial in flight was granted to another"
    assert not _claim(db_url, 0), "a claim is taken once, even by its own trial"
    assert _claim(db_url, 1, "c2")  # another configuration is free
    with session_scope(db_url) as s:
        assert store.release_claims(s, STUDY, [0]) == 1
    assert _claim(db_url, 2)  # released (its trial failed as dead): free again


def test_a_result_is_stored_only_by_the_trial_whose_claim_it_is(db_url):
    """The stored row fills the claim once, and only for its own trial: a second measurement of the
    configuration (another trial's, or the same trial's again) is dropped."""
    from devices.classes import CPU_INTERPRETER

    upgrade(db_url)
    with session_scope(db_url) as s:
        dc, fp = store.store_identity(s, CPU_INTERPRETER.to_json(), {"hash": "f" * 16, "driver": "none",
                                                                    "runtime": "none", "triton": "3.6.0",
                                                                    "torch": "2.13.0"})
    fields = dict(kernel="tiles", key_hash="k" * 16, device_class_id=dc, fingerprint_id=fp, study_name=STUDY,
                  config={"BLOCK": 16}, config_hash="c1", status="ok", median_ms=1.0)
    with session_scope(db_url) as s:
        assert store.record_claimed_trial(s, optuna_number=0, **fields) is None  # never claimed
    assert _claim(db_url, 0)
    with session_scope(db_url) as s:
        assert store.record_claimed_trial(s, optuna_number=1, **fields) is None  # another trial's claim
    with session_scope(db_url) as s:
        row = store.record_claimed_trial(s, optuna_number=0, **fields)
        assert row is not None
        stored = row.id
    with session_scope(db_url) as s:
        assert store.record_claimed_trial(s, optuna_number=0, **fields) is None  # filled already
        claim = s.query(models.TrialClaim).filter_by(study_name=STUDY, config_hash="c1").one()
        assert claim.trial_row_id == stored
        assert s.query(models.TuningTrial).count() == 1
        assert store.release_claims(s, STUDY, [0]) == 0  # a filled claim is never released
        assert store.release_claims(s, STUDY, []) == 0


def test_racing_claims_grant_a_configuration_once(db_url):
    upgrade(db_url)
    start, won = threading.Barrier(6), []

    def race(number):
        start.wait()
        if _claim(db_url, number):
            won.append(number)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 1, won


class FirstChoice(optuna.samplers.BaseSampler):
    """Always the first value of every parameter: never the dead trial's (the last)."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        return distribution.to_external_repr(0)


CHOICES = [1, 2, 3, 4]


def test_a_dead_worker_s_trial_is_failed_and_its_configuration_proposed_again(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    upgrade(url)
    studies.upgrade_storage(url)
    st = studies.storage(url, heartbeat_s=1, grace_s=2)
    study = optuna.create_study(study_name=STUDY, storage=st, sampler=FirstChoice())
    study.enqueue_trial({"P": CHOICES[-1]})
    dead = study.ask()
    assert dead.suggest_categorical("P", CHOICES) == CHOICES[-1]
    st.record_heartbeat(studies.trial_id(dead))  # its worker beat once, then died
    assert _claim(url, dead.number, "dead-config")

    def failed():
        studies.recover(study, url, grace_s=2)
        return study.trials[dead.number].state == optuna.trial.TrialState.FAIL
    wait_for(failed, 60, "the dead trial to be failed", poll_s=0.5)
    with session_scope(url) as s:
        assert s.query(models.TrialClaim).filter_by(config_hash="dead-config").count() == 0  # released
    again = study.ask()
    assert again.suggest_categorical("P", CHOICES) == CHOICES[-1], "the dead trial's configuration was not proposed again"
    fresh = study.ask()
    assert fresh.suggest_categorical("P", CHOICES) == CHOICES[0]  # the sampler itself never proposes it
    st.engine.dispose()


def test_claims_belong_to_their_study_and_say_who_holds_them(db_url):
    """Two studies (two classes, or two stacks) claim the same configuration independently; a
    claim records the job key and worker that hold it, and when."""
    from devices.classes import CPU_INTERPRETER
    from tests import rows

    upgrade(db_url)
    rows.live_worker(db_url, "w1", "h100-sxm-80gb")
    other = STUDY + "+rot2"
    with session_scope(db_url) as s:
        dc, fp = store.store_identity(s, CPU_INTERPRETER.to_json(), {"hash": "f" * 16, "driver": "none",
                                                                    "runtime": "none", "triton": "3.6.0",
                                                                    "torch": "2.13.0"})
        job, (key_id,) = lifecycle.create_job(s, kind="tune", origin="local", kernel="tiles", kernel_version="v",
                                          keys=[{}], key_hashes=["k" * 16], sampler="auto", seed=0, budget_trials=1,
                                          request={})
        worker = s.query(models.Worker).one().id
        assert store.claim_config(s, study_name=STUDY, config_hash="c1", trial_number=0, job_key_id=key_id,
                                  worker_id=worker)
        assert store.claim_config(s, study_name=other, config_hash="c1", trial_number=0, job_key_id=None,
                                  worker_id=None)
    with session_scope(db_url) as s:
        claim = s.query(models.TrialClaim).filter_by(study_name=STUDY).one()
        assert (claim.job_key_id, claim.worker_id) == (key_id, worker) and claim.claimed_at is not None
        fields = dict(kernel="tiles", key_hash="k" * 16, device_class_id=dc, fingerprint_id=fp, config={"BLOCK": 16},
                      status="ok", median_ms=1.0, optuna_number=0)
        assert store.record_claimed_trial(s, study_name=other, config_hash="c1", **fields) is not None
        assert store.record_claimed_trial(s, study_name=STUDY, config_hash="c2", **fields) is None  # c2: unclaimed
    with session_scope(db_url) as s:
        assert s.query(models.TrialClaim).filter_by(study_name=STUDY).one().trial_row_id is None  # the other's
        assert store.release_claims(s, other, [0]) == 0  # filled
        assert store.release_claims(s, STUDY, [0]) == 1
        assert s.query(models.TrialClaim).filter_by(study_name=other).count() == 1
