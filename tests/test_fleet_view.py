"""The operator's view of the fleet (issue 33, points 2 and 4), through the app in-process on a real
database and the embedded broker: the parts of pages that refresh alone (fragment routes), every
queue with messages (a class with no live worker flagged), workers with what they run and how
they went (crash or clean stop), pruned after TUNER_WORKERS_KEEP_DAYS (the janitor and `tuner
workers prune`, on PostgreSQL, whose foreign keys hold), the job page's cancel button and the
job filters of /jobs and GET /v1/jobs.
"""
import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from db import lifecycle, models, store
from db.clock import utcnow
from db.session import session_scope
from tests import rows
from tests.cli_helpers import run_tuner
from tests.services import pg_database
from tests.test_api import AUTH, SAME_ORIGIN, TOKEN, make_client

pytestmark = pytest.mark.integration
KEY = {"kind": "trivial", "dims": {"N": 16}, "dtype": "float32", "version": "v"}


def job(url: str, *, state: str = "running", kernel: str = "trivial", selector: str | None = "cpu",
        key_hash: str = "k" * 16, key: dict | None = None) -> tuple[str, int]:
    """A job of one key written as the coordinator writes it: (job id, its key's row id)."""
    with session_scope(url) as s:
        job_id, (key_id,) = lifecycle.create_job(s, kind="tune", origin="queued", kernel=kernel, kernel_version="v",
                                             keys=[key or KEY], key_hashes=[key_hash], sampler="auto", seed=None,
                                             budget_trials=4, request={}, device_selector=selector, state=state)
    return job_id, key_id


def worker(url: str, name: str, *, beat_ago_s: float = 0, stopped: bool = False, holding: int | None = None,
           slug: str = "h100-sxm-80gb") -> int:
    rows.live_worker(url, name, slug)
    with session_scope(url) as s:
        w = s.scalar(select(models.Worker).where(models.Worker.name == name))
        w.heartbeat_at = w.started_at = utcnow() - timedelta(seconds=beat_ago_s)
        w.stopped_at = w.heartbeat_at if stopped else None
        w.holding_key_id = holding
        return w.id


# ---- point 2: the parts that change, alone -----------------------------------------------------

def test_pages_refresh_through_fragments_not_whole(tmp_path):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    key_hash = rows.best(url, "h100-sxm-80gb", {"M": 64, "N": 64, "K": 64}, 0.5)
    running, _ = job(url, kernel="matmul", key_hash=key_hash,
                     key={"kind": "matmul", "dims": {"M": 64, "N": 64, "K": 64}, "dtype": "float16", "version": "v"})
    api = make_client(tmp_path / "home", db_url=url)

    # every page is whole without JavaScript (no meta refresh wipes a form); the script is a file
    for path in ("/", "/jobs", f"/jobs/{running}", f"/keys/matmul/{key_hash}"):
        html = api.get(path).text
        assert 'http-equiv="refresh"' not in html and '<script src="/static/refresh.js" defer></script>' in html
        assert re.search(f'<a href="{re.escape(path)}">[Rr]eload</a>', html), path
    js = api.get("/static/refresh.js")
    assert js.status_code == 200 and "X-Refresh-After" in js.text

    # the jobs list alone: the page's region names it; no form in it, so nothing typed is swapped out
    page = api.get("/jobs").text
    assert 'id="jobs-live" data-fragment="/jobs/fragment"' in page and 'data-every="3"' in page
    listed = api.get("/jobs/fragment")
    assert listed.status_code == 200 and listed.headers["x-refresh-after"] == "3"  # a listed job runs
    assert f'data-job="{running}"' in listed.text and "<form" not in listed.text and "<html" not in listed.text
    assert listed.headers["cache-control"] == "no-store"

    # the job's keys alone, with its cancel button while it runs; once ended: nothing more to ask
    part = api.get(f"/jobs/{running}/fragment")
    assert part.headers["x-refresh-after"] == "3" and 'id="state"' in part.text and 'id="cancel"' in part.text
    assert "<html" not in part.text
    # the key's plot alone, refreshed while a job searches the key
    plot = api.get(f"/keys/matmul/{key_hash}/fragment")
    assert plot.headers["x-refresh-after"] == "3" and 'id="trials-plot"' in plot.text and "<svg" in plot.text
    assert 'data-fragment="/keys/matmul/' in api.get(f"/keys/matmul/{key_hash}").text

    assert api.post(f"/v1/jobs/{running}/cancel", headers=AUTH).status_code == 200
    part = api.get(f"/jobs/{running}/fragment")
    assert part.headers["x-refresh-after"] == "0" and "cancelled" in part.text and 'id="cancel"' not in part.text
    assert api.get(f"/keys/matmul/{key_hash}/fragment").headers["x-refresh-after"] == "0"
    assert api.get("/jobs/fragment").headers["x-refresh-after"] == "15"  # nothing listed runs: less often
    assert 'data-every="0"' in api.get(f"/jobs/{running}").text

    fleet = api.get("/fleet/fragment")
    assert fleet.status_code == 200 and 'id="workers"' in fleet.text and "<html" not in fleet.text
    assert fleet.headers["x-refresh-after"] == "9"
    assert api.get("/jobs/" + "f" * 32 + "/fragment").status_code == 404
    # a fragment is a read like its page: without a login or the token, refused
    assert make_client(tmp_path / "home", db_url=url, auth=False).get("/jobs/fragment").status_code == 401


# ---- point 4: queues, workers, pruning, cancel, filters ----------------------------------------

def test_queued_work_of_a_class_without_workers_is_listed_and_flagged(tmp_path):
    """A job for h100 with no H100 worker ever registered: /metrics counted its queue's messages
    while the fleet page and /v1/device-classes showed nothing of them."""
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    rows.live_worker(url, "w-mi300x@test", "mi300x-192gb")  # a class with a live worker, nothing queued
    api = make_client(tmp_path / "home", db_url=url)
    r = api.post("/v1/jobs", json={"kernel": "trivial", "shapes": ["N=16", "N=32"], "device_class": "h100"},
                 headers=AUTH)
    assert r.status_code == 201, r.text
    depth = [float(line.split()[-1]) for line in api.get("/metrics").text.splitlines()
             if line.startswith('tuner_queue_depth{queue="tune.h100"}')]
    assert depth and depth[0] > 0  # what /metrics said while the pages said nothing
    classes = {c["slug"]: c for c in api.get("/v1/device-classes").json()}
    h100 = classes["h100"]
    assert h100["registered"] is False and h100["live_workers"] == 0 and h100["no_live_worker"] is True
    assert h100["queues"] == {"tune.h100": depth[0]} and h100["waiting"] == depth[0]
    assert classes["mi300x-192gb"]["no_live_worker"] is False and classes["mi300x-192gb"]["registered"] is True

    html = api.get("/").text
    queues = re.search(r'<table id="queues">(.*?)</table>', html, re.S).group(1)
    assert "tune.h100" in queues and "no live worker takes this queue" in queues
    assert re.search(r'<tr class="bad" data-class="h100">', html)

    # a worker of the class comes: the queue is served, nothing flagged
    rows.live_worker(url, "w-h100@test", "h100-sxm-80gb")
    classes = {c["slug"]: c for c in api.get("/v1/device-classes").json()}
    assert "h100" not in classes and classes["h100-sxm-80gb"]["queues"]["tune.h100"] == depth[0]
    assert classes["h100-sxm-80gb"]["no_live_worker"] is False
    assert "no live worker takes this queue" not in api.get("/").text


def test_workers_show_what_they_run_and_whether_they_crashed_or_stopped(tmp_path):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    running, key_id = job(url)
    worker(url, "busy@test", holding=key_id)
    worker(url, "silent@test", beat_ago_s=600, holding=key_id)  # heartbeat lapsed, never deregistered
    worker(url, "done@test", beat_ago_s=600, stopped=True)
    api = make_client(tmp_path / "home", db_url=url)
    found = {w["name"]: w for w in api.get("/v1/workers").json()}
    assert found["busy@test"]["state"] == "live" and found["busy@test"]["job"] == running
    assert found["busy@test"]["key_hash"] == "k" * 16 and found["busy@test"]["key"] == {"N": 16}
    assert found["busy@test"]["kernel"] == "trivial"
    assert found["silent@test"]["state"] == "crashed" and found["silent@test"]["job"] == running
    assert found["done@test"]["state"] == "stopped" and found["done@test"]["job"] is None

    html = api.get("/").text
    row = re.search(r'<tr data-worker="busy@test">(.*?)</tr>', html, re.S).group(1)
    assert f'href="/jobs/{running}"' in row and f'href="/keys/trivial/{"k" * 16}"' in row and "N=16" in row
    assert re.search(r'data-worker="silent@test">.*?worker-state bad">crashed<', html, re.S)
    assert re.search(r'data-worker="done@test">.*?worker-state muted">stopped<', html, re.S)


def test_the_fleet_view_is_read_once_a_second_and_shared(tmp_path, monkeypatch):
    """Eight clients on a fleet page at fleet scale queued past 200 ms on its seven queries: a read
    serves the requests that come while it is younger than pages.FLEET_HELD_S, and no others."""
    from tuner.api import pages

    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    worker(url, "first@test")
    api = make_client(tmp_path / "home", db_url=url, TUNER_METRICS_CACHE_S="60")
    monkeypatch.setattr(pages, "FLEET_HELD_S", 60.0)
    assert 'data-worker="first@test"' in api.get("/").text
    worker(url, "second@test")
    assert 'data-worker="second@test"' not in api.get("/").text  # the held read answers
    monkeypatch.setattr(pages, "FLEET_HELD_S", 0.0)  # the read has aged past it
    assert 'data-worker="second@test"' in api.get("/").text


@pytest.fixture(scope="module")
def pg():
    from tuner.db_open import upgrade_schema

    with pg_database() as url:
        upgrade_schema(url)  # Optuna's tables too: a janitor round recovers its trials
        yield url


def test_gone_workers_are_pruned_after_the_days_kept(pg, tmp_path):
    """On PostgreSQL, whose foreign keys hold: a gone worker's trials keep their results."""
    from workers.janitor import PRUNE_WORKERS_BATCH, prune_gone_workers, prune_in_batches, prune_workers, sweep

    _, key_id = job(pg)
    old_stop = worker(pg, "old-stop@test", beat_ago_s=9 * 86400, stopped=True)
    old_crash = worker(pg, "old-crash@test", beat_ago_s=9 * 86400)
    worker(pg, "new-stop@test", beat_ago_s=86400, stopped=True)
    worker(pg, "live@test")
    with session_scope(pg) as s:
        dc_id, fp_id = rows.identity(s, "h100-sxm-80gb")
        s.add(models.TuningTrial(job_key_id=key_id, kernel="trivial", key_hash="k" * 16, device_class_id=dc_id,
                                 fingerprint_id=fp_id, worker_id=old_stop, config={"BLOCK": 16}, config_hash="c" * 16,
                                 status="ok", median_ms=0.5))
    with session_scope(pg) as s:
        assert prune_workers(s, 7, 60) == 2
        assert set(s.scalars(select(models.Worker.name))) == {"new-stop@test", "live@test"}
        (trial,) = s.scalars(select(models.TuningTrial).where(models.TuningTrial.key_hash == "k" * 16))
        assert trial.worker_id is None and trial.median_ms == 0.5
        assert s.get(models.Worker, old_crash) is None
    # never a live worker, whatever the days kept; the janitor prunes once an hour across the fleet
    with session_scope(pg) as s:
        assert prune_workers(s, 0, 60) == 1  # new-stop
        s.execute(update(models.Worker).values(stopped_at=utcnow() - timedelta(days=30)))
        s.execute(update(models.Worker).where(models.Worker.name == "live@test").values(stopped_at=None))
    worker(pg, "gone@test", beat_ago_s=30 * 86400, stopped=True)
    # a worker's janitor round (under its class's lease) prunes with the days its settings keep
    sweep(pg, "h100-sxm-80gb", lambda message: None, holder="live@test", stall_s=120, dead_after_s=60,
          heartbeat_s=10, abandon_s=600, misses_keep_days=30, workers_keep_days=7)
    worker(pg, "gone2@test", beat_ago_s=30 * 86400, stopped=True)
    assert prune_gone_workers(pg, 7, 60) == 0  # the lease `prune-workers` holds for an hour
    with session_scope(pg) as s:
        assert set(s.scalars(select(models.Worker.name))) == {"live@test", "gone2@test"}

    # a backlog is pruned a batch a transaction; the janitor's round stops within its budget
    with session_scope(pg) as s:
        for i in range(PRUNE_WORKERS_BATCH + 10):
            s.add(models.Worker(name=f"backlog-{i}@test", started_at=utcnow() - timedelta(days=30),
                                heartbeat_at=utcnow() - timedelta(days=30), stopped_at=utcnow() - timedelta(days=30)))
    assert prune_in_batches(pg, 7, 60, budget_s=0) == PRUNE_WORKERS_BATCH
    assert prune_in_batches(pg, 7, 60) == 10 + 1  # and gone2, which the lease kept from the janitor
    worker(pg, "gone3@test", beat_ago_s=30 * 86400, stopped=True)

    # `tuner workers prune`: now, under no lease; a bad --keep-days is one line and exit 2
    home = tmp_path / "home"
    proc = run_tuner(["workers", "prune", "--json"], home, TUNER_DB_URL=pg, TUNER_WORKERS_KEEP_DAYS="10")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"pruned": 1, "keep_days": 10.0}
    for bad in ("-1", "nan", "x"):
        proc = run_tuner(["workers", "prune", "--keep-days", bad], home, TUNER_DB_URL=pg)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (bad, proc.stderr)
        assert proc.stderr.startswith("error:"), proc.stderr
    proc = run_tuner(["workers", "prune"], home, TUNER_DB_URL=pg, TUNER_WORKERS_KEEP_DAYS="-2")
    assert proc.returncode == 2 and "TUNER_WORKERS_KEEP_DAYS" in proc.stderr
    with session_scope(pg) as s:
        assert set(s.scalars(select(models.Worker.name))) == {"live@test"}


def test_the_job_page_cancels_its_job_with_a_session(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    url = rows.schema(f"sqlite:///{home}/tuner.db")
    running, _ = job(url)
    browser = make_client(home, auth=False)
    assert browser.post("/login", data={"token": TOKEN}, headers=SAME_ORIGIN).status_code == 200
    assert f'action="/jobs/{running}/cancel"' in browser.get(f"/jobs/{running}").text
    # a form posted from another site (or with no Origin) is refused, and nothing changes
    assert browser.post(f"/jobs/{running}/cancel", headers={"origin": "http://evil.example"}).status_code == 403
    assert browser.post(f"/jobs/{running}/cancel").status_code == 403
    assert make_client(home, auth=False).post(f"/jobs/{running}/cancel", headers=SAME_ORIGIN).status_code == 401
    assert browser.get(f"/v1/jobs/{running}").json()["state"] == "running"
    r = browser.post(f"/jobs/{running}/cancel", headers=SAME_ORIGIN, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{running}"
    assert browser.get(f"/v1/jobs/{running}").json()["state"] == "cancelled"
    assert 'id="cancel"' not in browser.get(f"/jobs/{running}").text
    with session_scope(url) as s:
        s.execute(update(models.Job).where(models.Job.id == running).values(state="done"))
    r = browser.post(f"/jobs/{running}/cancel", headers={**SAME_ORIGIN, "accept": "text/html"})
    assert r.status_code == 409 and "already ended (done)" in r.text


def test_jobs_are_filtered_by_state_kernel_and_class(tmp_path):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    a, _ = job(url, state="done", kernel="trivial", selector="cpu")
    b, _ = job(url, state="running", kernel="trivial", selector="h100")
    c, _ = job(url, state="running", kernel="matmul", selector="h100",
               key={"kind": "matmul", "dims": {"M": 64, "N": 64, "K": 64}, "dtype": "float16", "version": "v"})
    api = make_client(tmp_path / "home", db_url=url)

    def listed(path: str, **params) -> set[str]:
        return {j["job"] for j in api.get(path, params=params).json()}

    assert listed("/v1/jobs") == {a, b, c}
    assert listed("/v1/jobs", state="running") == {b, c}
    assert listed("/v1/jobs", kernel="trivial") == {a, b}
    assert listed("/v1/jobs", device_class="h100", kernel="matmul") == {c}
    assert listed("/v1/jobs", state="done", device_class="h100") == set()
    r = api.get("/v1/jobs", params={"state": "sleeping"})
    assert r.status_code == 400 and "unknown job state 'sleeping'" in r.json()["error"]

    def shown(path: str, **params) -> set[str]:
        return set(re.findall(r'<tr class="job" data-job="([0-9a-f]+)"', api.get(path, params=params).text))

    assert shown("/jobs", state="running", kernel="") == {b, c}  # an empty field filters nothing
    assert shown("/jobs", device_class="cpu") == {a}
    page = api.get("/jobs", params={"state": "running", "kernel": "matmul"}).text
    assert 'data-fragment="/jobs/fragment?state=running&amp;kernel=matmul"' in page
    assert "<option selected>running</option>" in page and 'value="matmul"' in page
    assert shown("/jobs/fragment", state="running", kernel="matmul") == {c}
    assert "No job matches these filters" in api.get("/jobs/fragment", params={"kernel": "softmax"}).text

    # `tuner jobs` takes the same filters
    home = tmp_path / "home"
    proc = run_tuner(["jobs", "--state", "running", "--device-class", "h100", "--json"], home, TUNER_DB_URL=url)
    assert proc.returncode == 0, proc.stderr
    assert {j["job"] for j in json.loads(proc.stdout)} == {b, c}
    proc = run_tuner(["jobs", "--state", "sleeping"], home, TUNER_DB_URL=url)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: unknown job state 'sleeping'; one of queued, running, done, failed, cancelled"]
