"""What a job says of its keys (`tuner status`, GET /v1/jobs/{id}, the job page): a finished key
shows what its final re-measurement stored, not the search's best so far; progress counts every
trial run by outcome; a key's state follows its job's while the job is queued or cancelled.

The rows are written straight through db.store (tests/rows.py): a search whose fastest trial (A)
lost the final interleaved re-measurement to another configuration (B), which is what was stored.
"""
import warnings

import pytest

from db import lifecycle, models, store
from db.session import session_scope
from search_spaces import registry
from keys import config_hash
from tests import rows
from tests.cli_helpers import tuner_env
from tests.services import run_cli
from tuner import coordinator
from tuner import settings as settings_mod
from tuner.display import config_word

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SLUG = "h100-sxm-80gb"
DIMS = {"M": 512, "N": 512, "K": 512}
A = {**rows.CONFIG, "BLOCK_M": 64}  # the search's fastest trial
B = {**rows.CONFIG, "BLOCK_N": 64}  # the final re-measurement's winner, stored
TOKEN = "t" * 40


def settings(url, home):
    return settings_mod.from_env({"TUNER_HOME": str(home), "TUNER_DB_URL": url, "TUNER_API_TOKEN": TOKEN})


def a_job(url, *, job_state="done", key_state="done", stored=True) -> str:
    key = registry.get("matmul").make_key(DIMS, "float16")
    with session_scope(url) as s:
        dc_id, fp_id = rows.identity(s, SLUG)
        job_id, (key_id,) = lifecycle.create_job(
            s, kind="tune", origin="queued", kernel="matmul", kernel_version=key.version, keys=[key.to_json()],
            key_hashes=[key.stable_hash], sampler="auto", seed=1, budget_trials=4, request={},
            device_selector="h100", state=job_state)
        common = dict(job_id=job_id, job_key_id=key_id, kernel="matmul", key_hash=key.stable_hash,
                      device_class_id=dc_id, fingerprint_id=fp_id, study_name="s")
        for config, status, ms in ((A, "ok", 1.0), (B, "ok", 1.1), ({**A, "BLOCK_K": 16}, "invalid", None),
                                   ({**A, "num_warps": 8}, "compile_error", None), ({**A, "num_stages": 5}, "timeout", None)):
            store.record_trial(s, config=config, config_hash=config_hash(config), status=status, median_ms=ms, **common)
        s.get(models.JobKey, key_id).state = key_state
        if stored:
            store.write_best(s, kernel="matmul", kernel_version=key.version, key_hash=key.stable_hash,
                             key=key.to_json(), dtype="float16", device_class_id=dc_id, fingerprint_id=fp_id,
                             config=B, config_hash=config_hash(B), median_ms=1.05, default_ms=2.1, speedup=2.0,
                             cv=0.01, trials=4, job_id=job_id)
    return job_id


@pytest.fixture
def url(tmp_path):
    return rows.schema(f"sqlite:///{tmp_path}/tuner.db")


def test_a_finished_key_shows_what_was_stored_not_the_best_so_far(url, tmp_path):
    job = a_job(url)
    (k,) = coordinator.status(settings(url, tmp_path), job)["keys"]
    assert k["best_config_so_far"] == A  # the search's fastest trial is still said, as such
    r = k["result"]
    assert (r["config"], r["median_ms"], r["speedup"], r["changed"]) == (B, 1.05, 2.0, True)

    from tuner.api.app import create_app

    client = TestClient(create_app(settings(url, tmp_path)), base_url="http://localhost", raise_server_exceptions=False)
    page = client.get(f"/jobs/{job}", headers={"authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200, page.text[:300]
    assert config_word(B) in page.text and "the key's new best" in page.text
    assert config_word(A) not in page.text  # the page the form redirects to shows the stored one only
    assert "2.00x" in page.text

    cli = run_cli(tuner_env(tmp_path, TUNER_DB_URL=url), "status", job)
    assert cli.returncode == 0, cli.stderr
    assert config_word(B) in cli.stdout and config_word(A) not in cli.stdout and "kept its current best" not in cli.stderr


def test_a_key_whose_current_best_stayed_shows_that_best(url, tmp_path):
    rows.best(url, SLUG, DIMS, 0.9, config=A, default_ms=1.8)  # an earlier job's best, which stays
    job = a_job(url, stored=False)
    r = coordinator.status(settings(url, tmp_path), job)["keys"][0]["result"]
    assert (r["config"], r["median_ms"], r["changed"]) == (A, 0.9, False)
    cli = run_cli(tuner_env(tmp_path, TUNER_DB_URL=url), "status", job)
    assert config_word(A) in cli.stdout and "kept its current best" in " ".join(cli.stderr.split())


def test_progress_counts_every_trial_by_outcome(url, tmp_path):
    (k,) = coordinator.status(settings(url, tmp_path), a_job(url))["keys"]
    assert k["outcomes"] == {"ok": 2, "invalid": 1, "failed": 1, "timeout": 1}
    assert k["trials_run"] == sum(k["outcomes"].values()) == 5
    assert k["trials_done"] == 4  # what the budget counts: all but the ones check() refused


@pytest.mark.parametrize("job_state", ["queued", "cancelled"])
def test_a_keys_state_follows_its_queued_or_cancelled_job(url, tmp_path, job_state):
    job = a_job(url, job_state=job_state, key_state="running", stored=False)
    (k,) = coordinator.status(settings(url, tmp_path), job)["keys"]
    assert k["state"] == job_state and k["result"] is None
