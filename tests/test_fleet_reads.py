"""Reads that a fleet-sized database made slow, answered from what was computed before while what
they read stands (issue 33, point 6; bench/api_latency.py --scale): a finished key's tally of
trials (its job's status) and count (its page), the compare and shapes reports, and the compare
page's tables cut to a page each. Each held answer must change as soon as what it reads does.

The rows are written straight through db.store (tests/rows.py, tests/test_job_status.py's job:
five trials of one key, one of each outcome and two correct)."""
import contextlib
import warnings

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from db import lifecycle, models, store
from db.session import session_scope
from keys import config_hash
from tests import rows
from tests.test_job_status import DIMS, SLUG, a_job, settings
from tuner import coordinator
from tuner.api.routes import key_view

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def url(tmp_path):
    return rows.schema(f"sqlite:///{tmp_path}/tuner.db")


@contextlib.contextmanager
def statements():
    """The SQL statements run in the block."""
    seen: list[str] = []

    def listener(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", listener)


def a_later_trial(url, job: str, ms: float) -> int:
    """A trial stored after its key finished (a straggler of the batch): its row id."""
    with session_scope(url) as s:
        jk = s.query(models.JobKey).filter_by(job_id=job).one()
        t = s.query(models.TuningTrial).filter_by(job_key_id=jk.id).first()
        config = {**rows.CONFIG, "BLOCK_M": 16}
        row = store.record_trial(s, job_id=job, job_key_id=jk.id, kernel="matmul", key_hash=jk.key_hash,
                                 device_class_id=t.device_class_id, fingerprint_id=t.fingerprint_id, study_name="s",
                                 config=config, config_hash=config_hash(config), status="ok", median_ms=ms)
        s.flush()
        return row.id


def test_a_finished_keys_tally_is_held_until_a_later_trial(url, tmp_path):
    """Grouping a key's 100,000 trials took 30 ms of every status read: once the key is finished
    they are grouped once; a trial stored later is counted at the next read; a running key's are
    grouped at every read."""
    st, job = settings(url, tmp_path), a_job(url)
    assert coordinator.status(st, job)["keys"][0]["trials_run"] == 5
    with statements() as seen:
        (k,) = coordinator.status(st, job)["keys"]
    assert not [q for q in seen if "GROUP BY" in q]  # held
    assert k["outcomes"] == {"ok": 2, "invalid": 1, "failed": 1, "timeout": 1} and k["best_ms_so_far"] == 1.0

    a_later_trial(url, job, 0.5)
    (k,) = coordinator.status(st, job)["keys"]
    assert k["outcomes"] == {"ok": 3, "invalid": 1, "failed": 1, "timeout": 1} and k["trials_run"] == 6
    assert k["best_ms_so_far"] == 0.5 and k["best_config_so_far"]["BLOCK_M"] == 16

    # while workers store a key's trials they commit out of id order: nothing is held
    running = a_job(url, job_state="running", key_state="running", stored=False)
    coordinator.status(st, running)
    with statements() as seen:
        coordinator.status(st, running)
    assert [q for q in seen if "GROUP BY" in q]


def test_an_ended_jobs_keys_are_built_once_until_a_trial_or_a_best_comes(url, tmp_path):
    """An ended job's status read five to eight statements per key at every read (8 ms at fleet
    scale): once the job and its keys have ended, its keys are built once per state of what they
    read, one statement telling whether anything did; a later trial, a new best of the key (its
    stored result is no longer current) show at the next read."""
    st, job = settings(url, tmp_path), a_job(url)
    (k,) = coordinator.status(st, job)["keys"]
    assert k["result"]["current"] is True and k["trials_run"] == 5
    with statements() as seen:
        assert coordinator.status(st, job)["keys"] == [k]
    # the job, its keys, the token, the live workers of its class
    assert len(seen) == 4, "\n".join(seen)

    rows.best(url, SLUG, DIMS, 0.25)  # another job's best supersedes the one this job stored
    (k,) = coordinator.status(st, job)["keys"]
    assert (k["result"]["current"], k["result"]["changed"]) == (False, True)
    a_later_trial(url, job, 0.5)
    assert coordinator.status(st, job)["keys"][0]["trials_run"] == 6

    running = a_job(url, job_state="running", key_state="running", stored=False)
    coordinator.status(st, running)
    with statements() as seen:
        coordinator.status(st, running)
    assert len(seen) > 4  # a running job's keys: afresh at every read


def test_a_finished_keys_workers_are_named_again_when_a_worker_is_pruned(url, tmp_path):
    """Pruning a gone worker empties its trials' worker_id; on SQLite the next worker to register
    takes the deleted row's id. The held tally must not name that newcomer as the key's worker."""
    from db.clock import utcnow
    from workers.janitor import prune_workers

    st, job = settings(url, tmp_path), a_job(url)
    rows.live_worker(url, "w-old", SLUG)
    with session_scope(url) as s:
        old = s.query(models.Worker).filter_by(name="w-old").one()
        jk = s.query(models.JobKey).filter_by(job_id=job).one()
        s.query(models.TuningTrial).filter_by(job_key_id=jk.id).update({"worker_id": old.id})
        old.stopped_at = utcnow()
    assert coordinator.status(st, job)["keys"][0]["workers"] == ["w-old"]
    with session_scope(url) as s:
        assert prune_workers(s, keep_days=0, dead_after_s=60) == 1
    rows.live_worker(url, "w-new", SLUG)  # the id w-old had
    (k,) = coordinator.status(st, job)["keys"]
    assert k["workers"] == [] and k["trials_run"] == 5


def test_a_finished_keys_page_is_held_until_a_later_trial_or_best(url, tmp_path):
    """The key page's count of 100,000 trials took 30 ms a read, and its five statements 10 ms of
    every read at fleet scale: while no job runs the key the page is built once per state of its
    rows, one statement telling whether anything changed; a later trial or a new best shows at the
    next read; a running key's page is built at every read."""
    st, job = settings(url, tmp_path), a_job(url)
    key_hash = coordinator.status(st, job)["keys"][0]["key_hash"]
    first = key_view(st, "matmul", key_hash, None)
    assert first["trials_total"] == 5 and first["searching"] is False
    with statements() as seen:
        view = key_view(st, "matmul", key_hash, None)
    assert view["trials_total"] == 5 and len(seen) == 1, seen

    newest = a_later_trial(url, job, 0.5)
    view = key_view(st, "matmul", key_hash, None)
    assert (view["trials_total"], view["last_trial"]) == (6, newest) and view["trials"][-1]["id"] == newest
    assert key_view(st, "matmul", key_hash, SLUG)["trials_total"] == 6  # per class: its own count

    before = [b["median_ms"] for b in view["history"]]
    rows.best(url, SLUG, DIMS, 0.25)  # supersedes the current best: a row more in the history
    view = key_view(st, "matmul", key_hash, None)
    assert [b["median_ms"] for b in view["history"]] == [0.25, *before]
    assert [b["median_ms"] for b in view["current"]] == [0.25]

    # another job runs the key again: built at every read while it runs
    a_job(url, job_state="running", key_state="running", stored=False)
    with statements() as seen:
        view = key_view(st, "matmul", key_hash, None)
    assert view["trials_total"] == 11 and view["searching"] is True
    assert [q for q in seen if "count(" in q.lower() and "tuning_trials" in q]


def test_a_key_left_open_in_a_cancelled_job_is_not_searched_but_not_held(url, tmp_path):
    """A cancelled job's key may stay `running` until its last batch comes back: no job searches
    it (the page stops refreshing), but a straggler may still store a trial, so nothing is held."""
    st = settings(url, tmp_path)
    job = a_job(url, job_state="cancelled", key_state="running")
    key_hash = coordinator.status(st, job)["keys"][0]["key_hash"]
    view = key_view(st, "matmul", key_hash, None)
    assert view["searching"] is False and view["trials_total"] == 5
    with statements() as seen:
        key_view(st, "matmul", key_hash, None)
    assert len(seen) > 1
    a_later_trial(url, job, 0.5)
    assert key_view(st, "matmul", key_hash, None)["trials_total"] == 6


def test_compare_and_shapes_reports_stand_until_a_best_or_a_class_is_stored(url, tmp_path):
    """They read best rows and device classes only: a trial or a job changing state leaves them
    held (counting jobs' and keys' states took most of a compare page's time at fleet scale); a new
    best or a new class (a family name may now name it too) computes them again."""
    from tuner.reports.held import held

    st = settings(url, tmp_path)
    calls = []

    def report(settings, *args):
        calls.append(args)
        return len(calls)

    rows.best(url, SLUG, DIMS, 0.5)
    assert [held(kind, report, st, "x") for kind in ("compare", "shapes", "compare")] == [1, 2, 1]
    job = a_job(url, stored=False)  # a job with trials, its state changed
    a_later_trial(url, job, 0.4)
    assert (held("compare", report, st, "x"), held("shapes", report, st, "x")) == (1, 2)
    assert held("retune", report, st, "x") == 3  # the retune report reads jobs: computed
    rows.best(url, SLUG, {**DIMS, "M": 64}, 0.5)  # a new best
    assert held("compare", report, st, "x") == 4
    with session_scope(url) as s:
        rows.identity(s, "mi300x-192gb")  # a new class
    assert held("compare", report, st, "x") == 5 and held("compare", report, st, "x") == 5


def test_a_held_report_asks_whether_anything_changed_in_one_statement(url, tmp_path):
    """The jobs list's token took five round trips (bests, classes, newest trial, jobs and keys by
    state), most of a held jobs page's reads at fleet scale: one statement now, and a job or a key
    changing state still computes the report again."""
    from tuner.reports.held import held

    st, job = settings(url, tmp_path), a_job(url, job_state="running", key_state="running")
    calls = []

    def report(settings, *args):
        calls.append(args)
        return len(calls)

    assert held("jobs", report, st) == 1
    with statements() as seen:
        assert held("jobs", report, st) == 1
    assert len(seen) == 1, seen
    with session_scope(url) as s:
        s.get(models.Job, job).state = lifecycle.DONE  # the counts by state are the same but one
    assert held("jobs", report, st) == 2
    with session_scope(url) as s:
        s.query(models.JobKey).filter_by(job_id=job).one().state = lifecycle.DONE
    assert held("jobs", report, st) == 3


def test_the_current_bests_are_held_until_a_best_is_stored(url, tmp_path):
    """GET /v1/best decoded a hundred best rows at every request: held on the best rows and classes,
    a trial leaves it, a new best is in the next answer."""
    from tests.test_api import make_client

    rows.best(url, SLUG, DIMS, 0.5)
    api = make_client(tmp_path / "home", db_url=url)
    assert len(api.get("/v1/best").json()) == 1
    a_later_trial(url, a_job(url, stored=False), 0.4)
    with statements() as seen:
        assert len(api.get("/v1/best").json()) == 1
    assert not [q for q in seen if "ORDER BY best_configs.created_at DESC" in q]  # held
    rows.best(url, SLUG, {**DIMS, "M": 64}, 0.25)
    assert sorted(e["median_ms"] for e in api.get("/v1/best").json()) == [0.25, 0.5]


def test_the_compare_page_shows_a_page_of_each_table(url, tmp_path):
    """Classes hold thousands of keys: rendering them all took 130 ms a request, and hashing them
    for the plot's cache 45 ms. The page shows each table's first rows, plots those, and says how
    many more are in /v1/compare, which answers every one."""
    from tuner.api.app import create_app
    from tuner.api.pages import COMPARE_ROWS

    with session_scope(url) as s:
        for slug, n in (("h100-sxm-80gb", COMPARE_ROWS + 3), ("mi300x-192gb", COMPARE_ROWS + 2)):
            dc_id, fp_id = rows.identity(s, slug)
            for m in range(n):
                key = rows.registry.get("matmul").make_key({**DIMS, "M": 16 * (m + 1)}, "float16")
                store.write_best(s, kernel="matmul", kernel_version=key.version, key_hash=key.stable_hash,
                                 key=key.to_json(), dtype="float16", device_class_id=dc_id, fingerprint_id=fp_id,
                                 config=rows.CONFIG, config_hash=config_hash(rows.CONFIG), median_ms=0.5,
                                 default_ms=None, speedup=None, cv=0.01, trials=10, job_id=None)
    client = TestClient(create_app(settings(url, tmp_path)), base_url="http://localhost",
                        headers={"authorization": f"Bearer {'t' * 40}"}, raise_server_exceptions=False)
    full = client.get("/v1/compare", params={"device_class": ["h100", "mi300x"]}).json()
    assert (len(full["keys"]), len(full["only_a"])) == (COMPARE_ROWS + 2, 1)
    html = client.get("/compare?a=h100&b=mi300x").text
    assert html.split('id="compare"')[1].split("</table>")[0].count("<tr>") == 1 + COMPARE_ROWS  # header, a page
    assert html.split('id="only-a"')[1].split("</table>")[0].count("<tr>") == 2  # a short table: whole
    assert "2 more on both" in html and 'href="/v1/compare?device_class=h100&amp;device_class=mi300x"' in html
    assert "<svg" in html


def test_the_retune_pages_list_of_runs_shows_a_run_queued_since(url, tmp_path):
    """The list of retune runs is held per state like the report: a run queued since is listed."""
    from tuner.api.app import create_app

    key = rows.registry.get("matmul").make_key(DIMS, "float16")

    def a_run(name: str) -> None:
        with session_scope(url) as s:
            lifecycle.create_job(s, kind="retune", origin="queued", kernel="matmul", kernel_version=key.version,
                             keys=[key.to_json()], key_hashes=[key.stable_hash], sampler="auto", seed=0,
                             budget_trials=4, request={"retune_run": name}, device_selector="h100")

    client = TestClient(create_app(settings(url, tmp_path)), base_url="http://localhost",
                        headers={"authorization": f"Bearer {'t' * 40}"}, raise_server_exceptions=False)
    a_run("run-one")

    def listed() -> str:
        page = client.get("/retune")
        assert page.status_code == 200
        return page.text.split('<table id="runs">')[1].split("</table>")[0]

    assert "run-one" in listed() and "run-two" not in listed()
    a_run("run-two")
    assert "run-two" in listed() and "run-one" in listed()


def test_the_jobs_list_is_held_until_a_trial_or_a_job_changes(url, tmp_path):
    """Counting a hundred jobs' trials (one with 100,000) took most of every /jobs page, its
    fragment and GET /v1/jobs: the list is held per state of the database, and a trial stored or a
    job made since is in the next answer."""
    from tests.test_api import make_client

    job = a_job(url)
    api = make_client(tmp_path / "home", db_url=url)
    assert [j["trials"] for j in api.get("/v1/jobs").json()] == [4]  # the invalid one is not counted
    with statements() as seen:
        assert [j["trials"] for j in api.get("/v1/jobs").json()] == [4]
    assert not [q for q in seen if "GROUP BY tuning_trials.job_id" in q]  # held
    a_later_trial(url, job, 0.5)
    assert [j["trials"] for j in api.get("/v1/jobs").json()] == [5]
    a_job(url, job_state="running", key_state="running", stored=False)
    assert len(api.get("/v1/jobs").json()) == 2 and "No jobs yet" not in api.get("/jobs").text


def test_healthz_checks_the_database_once_a_second(url, tmp_path, monkeypatch):
    """A check (a connection and the schema's revision) answers the probes of the next second; an
    older one is made again, so a database that went away is a 503 a second later."""
    from tests.test_api import make_client
    from tuner.api import app

    api = make_client(tmp_path / "home", db_url=url, TUNER_METRICS_CACHE_S="60")
    monkeypatch.setattr(app, "HEALTH_HELD_S", 60.0)
    assert api.get("/healthz").json() == {"status": "ok"}
    with statements() as seen:
        assert api.get("/healthz").json() == {"status": "ok"}
    assert seen == []  # the check a moment ago answers
    monkeypatch.setattr(app, "HEALTH_HELD_S", 0.0)
    with statements() as seen:
        assert api.get("/healthz").status_code == 200
    assert seen  # checked again
