"""The schema is created by `tuner db upgrade` alone (Optuna's tables included), and the database
roles are least-privilege (issue 18, items 5 and 9), on the real PostgreSQL; `redact` hides a
whole password."""
import json
import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from db.models import OPTUNA_TABLES
from db.urls import redact
from tests.cli_helpers import ROOT
from tests.services import PG_ADMIN, WorkerProc, pg_database, redis_url, run_cli, service_env

pytestmark = pytest.mark.integration


def tables(url) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return set(c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
    finally:
        engine.dispose()


def test_db_upgrade_creates_optuna_s_tables_too(tmp_path):
    """Workers opening the study storage on a fresh database raced to create Optuna's tables; now
    `tuner db upgrade` creates them, at Optuna's newest schema."""
    import optuna

    with pg_database() as url:
        env = service_env(tmp_path, url, None)
        proc = run_cli(env, "db", "upgrade")
        assert proc.returncode == 0, proc.stderr
        assert set(OPTUNA_TABLES) <= tables(url)
        st = optuna.storages.RDBStorage(url, skip_table_creation=True)
        assert st.get_current_version() == st.get_head_version()
        st.engine.dispose()


def test_a_worker_never_creates_the_schema(tmp_path):
    """A worker on a database that has our tables but not Optuna's refuses to start, with one line
    that says what to run, and creates nothing."""
    from db.session import dispose_all, upgrade

    with pg_database() as url:
        upgrade(url)  # ours only, as a `tuner db upgrade` of an older tuner left it
        dispose_all()
        before = tables(url)
        env = service_env(tmp_path, url, redis_url())
        proc = subprocess.run([sys.executable, "-m", "tuner.cli", "worker", "--device", "cpu", "--name", "w@test"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "run `tuner db upgrade`" in lines[0], proc.stderr
        assert tables(url) == before


@pytest.fixture
def roles():
    """A fresh database at head (ours and Optuna's tables), and a worker and a runtime role of unique names (roles are
    cluster-wide) granted as `tuner db upgrade` grants; the roles are dropped afterwards."""
    from db.roles import grant
    from db.session import dispose_all
    from tuner.db_open import upgrade_schema

    worker, runtime, api = (f"tuner_test_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("worker", "runtime", "api"))
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with pg_database() as url:
            upgrade_schema(url)
            owner = create_engine(url)
            with owner.begin() as c:
                for role in (worker, runtime, api):
                    c.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'not-checked-by-trust-auth'"))
                assert sorted(grant(c, worker=worker, runtime=runtime, api=api)) == sorted([worker, runtime, api])
            owner.dispose()
            try:
                yield {"url": url, "worker": url.replace("postgres@", f"{worker}@"),
                       "runtime": url.replace("postgres@", f"{runtime}@"), "api": url.replace("postgres@", f"{api}@")}
            finally:
                dispose_all()
    finally:
        with admin.connect() as c:
            for role in (worker, runtime, api):
                c.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def refused(url: str, sql: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(text(sql))
        return False
    except ProgrammingError as exc:
        return "permission denied" in str(exc) or "must be owner" in str(exc)
    finally:
        engine.dispose()


def test_the_worker_role_writes_rows_and_nothing_else(roles):
    import optuna

    from datetime import timedelta

    from db import models, store
    from db.clock import utcnow
    from db.session import session_scope
    from search.studies import Heartbeats, storage
    from workers.janitor import prune_workers

    url = roles["worker"]
    with session_scope(url) as s:
        dc, fp = store.store_identity(s, {"slug": "cpu-interpreter", "vendor": "cpu", "arch": "interpreter",
                                          "name": "cpu", "compute_units": 1, "memory_gb": 1},
                                      {"hash": "f" * 16, "driver": "none", "runtime": "none", "triton": "3.6.0",
                                       "torch": "2.13.0"})
        job, (key,) = store.create_job(s, kind="tune", origin="queued", kernel="trivial", kernel_version="v",
                                       keys=[{"dims": {"N": 1}}], key_hashes=["k" * 16], sampler="random", seed=0,
                                       budget_trials=1, request={}, device_selector="cpu")
        assert store.claim_config(s, study_name="s", config_hash="c", trial_number=0, job_key_id=key, worker_id=None)
        assert store.record_claimed_trial(s, job_id=job, job_key_id=key, kernel="trivial", key_hash="k" * 16,
                                          device_class_id=dc, fingerprint_id=fp, study_name="s", optuna_number=0,
                                          config={"P": 1}, config_hash="c", status="ok", median_ms=1.0)
        assert store.write_best(s, kernel="trivial", kernel_version="v", key_hash="k" * 16, key={}, dtype="float32",
                                device_class_id=dc, fingerprint_id=fp, config={"P": 1}, config_hash="c",
                                median_ms=1.0, default_ms=2.0, speedup=2.0, cv=None, trials=1, job_id=job,
                                replaces=None) is not None
        assert store.acquire_lock(s, "l", "me", ttl_s=5)
        store.release_lock(s, "l", "me")
        assert store.release_claims(s, "s", [1]) == 0
        assert store.finish_job(s, job) is None
        s.add(models.Worker(name="gone@test", started_at=utcnow() - timedelta(days=30),
                            heartbeat_at=utcnow() - timedelta(days=30), stopped_at=utcnow() - timedelta(days=30)))
    with session_scope(url) as s:
        assert prune_workers(s, 7, 60) == 1  # the janitor prunes the rows of workers long gone
    st = storage(url, 1, 2)  # the study storage: ask, heartbeat, tell
    study = optuna.create_study(study_name="s", storage=st)
    trial = study.ask()
    with Heartbeats(st) as beats:
        beats.add(trial)
    study.tell(trial, 1.0)
    assert optuna.load_study(study_name="s", storage=st).trials[0].value == 1.0
    st.engine.dispose()
    for sql in ("DROP TABLE jobs", "CREATE TABLE mine (x integer)", "ALTER TABLE jobs ADD COLUMN x integer",
                "TRUNCATE tuning_trials", "DELETE FROM tuning_trials", "DELETE FROM best_configs",
                "DELETE FROM jobs", "UPDATE tuner_alembic_version SET version_num = 'x'", "DROP TABLE trials",
                "UPDATE version_info SET schema_version = 0"):
        assert refused(url, sql), sql


def test_the_runtime_role_reads_bests_and_writes_miss_counts_only(roles):
    from db import store
    from db.clock import utcnow
    from db.reported import record_reported, reported_configs
    from db.session import session_scope

    url = roles["runtime"]
    now = utcnow()
    miss = {"kernel": "trivial", "kernel_version": "v", "key_hash": "k" * 16, "device_class": "cpu-interpreter",
            "fingerprint": "f" * 16, "level": "default", "key": {"N": 1}, "dtype": "float32", "count": 1,
            "first_seen": now, "last_seen": now}
    won = {**miss, "reported": {"config": {"P": 1}, "median_ms": 1.0}}  # a drop-in's winner, first wins
    with session_scope(url) as s:
        assert store.best_configs(s, kernel="trivial") == []
        assert store.record_misses(s, [miss]) == 1  # an insert
        assert store.record_misses(s, [miss]) == 1  # then an update of the same row
        assert record_reported(s, [won]) == 1
        assert record_reported(s, [{**won, "reported": {"config": {"P": 2}, "median_ms": 0.5}}]) == 1  # ignored
        (row,) = reported_configs(s, kernel="trivial", kernel_version="v", key_hash="k" * 16,
                                  device_class="cpu-interpreter")
        assert row.config == {"P": 1}
    for sql in ("SELECT * FROM jobs", "SELECT * FROM tuning_trials", "SELECT * FROM workers", "SELECT * FROM trials",
                "INSERT INTO device_classes (slug, vendor, arch, name, compute_units, memory_gb, created_at) "
                "VALUES ('x', 'x', 'x', 'x', 1, 1, now())", "UPDATE best_configs SET median_ms = 0",
                "DELETE FROM runtime_misses", "CREATE TABLE mine (x integer)",
                "UPDATE reported_configs SET config = '{}'", "DELETE FROM reported_configs"):
        assert refused(url, sql), sql


def test_the_api_role_serves_the_api_and_cannot_write_bests(roles, tmp_path):
    """`tuner serve` as the tuner_api role (issue 31, item 8): every read, a job queued and
    cancelled, misses posted; and no best, trial, worker or device name can be written with it."""
    from fastapi.testclient import TestClient

    from tests import rows
    from tests.test_api import AUTH, TOKEN, miss
    from tuner import settings as settings_mod
    from tuner.api.app import create_app

    rows.best(roles["url"], "h100-sxm-80gb", {"M": 64, "N": 64, "K": 64}, 0.5)  # as a worker would have
    rows.live_worker(roles["url"], "w1@test", "h100-sxm-80gb")
    env = {"TUNER_HOME": str(tmp_path / "home"), "TUNER_API_TOKEN": TOKEN, "TUNER_DB_URL": roles["api"],
           "TUNER_BROKER_URL": redis_url(), "TUNER_KERNEL_MODULES": "tests.kernels.trivial"}
    api = TestClient(create_app(settings_mod.from_env(env)), base_url="http://localhost", raise_server_exceptions=False)
    job = api.post("/v1/jobs", json={"kernel": "trivial", "shapes": ["N=16"], "device_class": "cpu", "trials": 2},
                   headers=AUTH)
    assert job.status_code == 201, job.text
    assert api.post(f"{job.json()['url']}/cancel", headers=AUTH).json()["state"] == "cancelled"
    assert api.post("/v1/misses", json={"records": [miss()]}, headers=AUTH).json() == {"records": 1, "rows": 1}
    from devices.classes import class_for
    from search_spaces import registry
    from tests.test_api import MISS_DIMS

    spec = registry.get("matmul")  # a drop-in's winner posted alone (its launches went out before)
    won = spec.default(spec.make_key(MISS_DIMS, "float16"), class_for("h100-sxm-80gb").target)
    posted = api.post("/v1/misses", json={"records": [miss(count=0, reported={"config": won, "median_ms": 0.1})]},
                      headers=AUTH)
    assert posted.json() == {"records": 1, "rows": 0}, posted.text
    assert [e["config"] for e in api.get("/v1/bundle?device_class=h100-sxm-80gb", headers=AUTH).json()["reported"]
            ] == [won]
    for path in ("/v1/jobs", job.json()["url"], "/v1/workers", "/v1/device-classes", "/v1/best?kernel=matmul",
                 "/v1/runtime-misses", "/v1/bundle?device_class=h100-sxm-80gb", "/metrics", "/healthz", "/"):
        r = api.get(path, headers=AUTH)
        assert r.status_code == 200, (path, r.text[:300])
    from db.roles import writes_bests

    assert writes_bests(roles["api"]) is None  # `tuner serve` warns when its role could write bests
    assert writes_bests(roles["worker"]) == roles["worker"].split("://")[1].split("@")[0]
    for sql in ("UPDATE best_configs SET median_ms = 0", "INSERT INTO best_configs (id) VALUES (999)",
                "UPDATE tuning_trials SET median_ms = 0", "UPDATE workers SET name = 'x'",
                "UPDATE device_classes SET device_names = '[]'", "INSERT INTO stack_fingerprints (id) VALUES (999)",
                "DELETE FROM jobs", "DELETE FROM runtime_misses", "UPDATE tuner_locks SET holder = 'x'",
                "UPDATE trials SET state = 'FAIL'", "CREATE TABLE mine (x integer)",
                "UPDATE reported_configs SET config = '{}'", "DELETE FROM reported_configs"):
        assert refused(roles["api"], sql), sql


@pytest.mark.slow
def test_a_fleet_runs_as_the_worker_role(roles, tmp_path):
    """What the worker role must do, done for real: a job submitted and tuned by a worker process
    that connect as it."""
    env = service_env(tmp_path, roles["worker"], redis_url())
    w = WorkerProc("as-role", env, tmp_path)
    try:
        proc = run_cli(env, "submit", "trivial", "--shape", "N=16", "--dtype", "float32", "--device-class", "cpu",
                       "--trials", "4", "--json")
        assert proc.returncode == 0, proc.stderr
        job = json.loads(proc.stdout)["job"]
        end = time.monotonic() + 240
        while time.monotonic() < end:
            st = json.loads(run_cli(env, "status", job, "--json").stdout)
            if st["state"] in ("done", "failed"):
                break
            time.sleep(1)
        assert st["state"] == "done", (st, w.text()[-3000:])
    finally:
        w.stop()


@pytest.mark.parametrize("url, secret", [
    ("postgresql+psycopg://tuner:pw1@ss2@db.example:5432/tuner", "pw1@ss2"),
    ("postgresql+psycopg://tuner:pw1/x@ss2@db.example/tuner", "pw1/x@ss2"),
    ("redis://:s3cret@@redis:6379/0", "s3cret@"),
    ("postgresql+psycopg://tuner:plain7@db/tuner", "plain7"),
])
def test_redact_hides_the_whole_password(url, secret):
    """A password with an unencoded '@' was cut at the first one by the URL parser, and its tail
    shown (tuner:p@ss@host showed `ss`)."""
    shown = redact(url)
    assert "***" in shown and shown.endswith(url.rsplit("@", 1)[1])
    assert not any(part and part in shown for part in secret.split("@")), shown


def test_the_worker_role_cannot_upgrade_but_the_owner_grants(roles):
    """`tuner db upgrade` as the worker role changes nothing and grants nothing; as the owner it
    re-applies the grants (to the default role names, absent here)."""
    from db.roles import grant_if_owner

    assert grant_if_owner(roles["worker"]) == []
    assert refused(roles["worker"], "CREATE ROLE another_one")
