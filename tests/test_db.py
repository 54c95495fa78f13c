"""Migrations and storage on SQLite and on the real PostgreSQL, each test in its own database."""
import threading
import time
from datetime import timezone

import optuna
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text

from db import models, store
from db.clock import utcnow
from db.session import (
    VERSION_TABLE,
    DatabaseError,
    check_reachable,
    current_revision,
    downgrade,
    ensure_schema,
    head_revision,
    make_engine,
    session_scope,
    upgrade,
)


def _identity(s):
    dc = store.get_or_create_device_class(s, slug="h100-sxm-80gb", vendor="nvidia", arch="sm_90",
                                          name="NVIDIA H100 SXM", compute_units=132, memory_gb=80)
    fp = store.get_or_create_fingerprint(s, hash="a" * 16, driver="550.54", runtime="cuda-12.4",
                                         triton="3.6.0", torch="2.13.0", fields={"driver": "550.54"})
    s.flush()
    return dc.id, fp.id


def _best(s, dc_id, fp_id, ms):
    return store.write_best(s, kernel="matmul", kernel_version="v1", key_hash="k" * 16,
                            key={"kernel": "matmul", "version": "v1", "dims": {"M": 1}, "dtype": "float16"},
                            dtype="float16", device_class_id=dc_id, fingerprint_id=fp_id, config={"BLOCK_M": 64},
                            config_hash="c", median_ms=ms, default_ms=2.0, speedup=2.0 / ms, cv=0.01, trials=10,
                            job_id=None)


def _bests(db_url):
    with session_scope(db_url) as s:
        current = store.best_configs(s, kernel="matmul", device_classes=["h100-sxm-80gb"])
        history = store.best_configs(s, kernel="matmul", key_hash="k" * 16, device_classes=["h100-sxm-80gb"],
                                     current=False)
    return [b.median_ms for b, _, _ in current], [b.median_ms for b, _, _ in history]


def _revisions():
    from alembic.script import ScriptDirectory

    from db.session import MIGRATIONS

    return [r.revision for r in reversed(list(ScriptDirectory(str(MIGRATIONS)).walk_revisions()))]


def test_upgrade_downgrade_upgrade(db_url):
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    downgrade(db_url, "base")
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()


def test_every_revision_steps_up_and_down_keeping_rows(db_url):
    revisions = _revisions()
    upgrade(db_url, revisions[0])
    # rows written as the first revision's columns (the models describe only the newest)
    now = utcnow()
    with make_engine(db_url).begin() as conn:
        conn.execute(text("INSERT INTO device_classes (id, slug, vendor, arch, name, compute_units, memory_gb, "
                          "created_at) VALUES (1, 'h100-sxm-80gb', 'nvidia', 'sm_90', 'NVIDIA H100 SXM', 132, 80, :now)"),
                     {"now": now})
        conn.execute(text("INSERT INTO stack_fingerprints (id, hash, driver, runtime, triton, torch, fields, created_at) "
                          "VALUES (1, 'aaaaaaaaaaaaaaaa', '550.54', 'cuda-12.4', '3.6.0', '2.13.0', '{}', :now)"),
                     {"now": now})
        dc_id = fp_id = 1
        conn.execute(text("INSERT INTO jobs (id, kind, origin, kernel, kernel_version, state, sampler, "
                          "budget_trials, request, created_at) VALUES ('j', 'tune', 'local', 'matmul', 'v1', "
                          "'running', 'tpe', 4, '{}', :now)"), {"now": now})
        conn.execute(text("INSERT INTO job_keys (id, job_id, key_hash, key, study_name, state, trials_done) "
                          "VALUES (1, 'j', 'k', '{}', '', 'running', 0)"))
        conn.execute(text("INSERT INTO tuning_trials (job_id, job_key_id, kernel, key_hash, device_class_id, "
                          "fingerprint_id, config, config_hash, status, created_at) VALUES ('j', 1, 'matmul', "
                          "'k', :dc, :fp, '{}', 'c', 'ok', :now)"), {"dc": dc_id, "fp": fp_id, "now": now})
    for rev in revisions[1:]:
        upgrade(db_url, rev)
        assert current_revision(db_url) == rev
    for rev in reversed(revisions[:-1]):
        # SQLite drops a column by copying the table: that must not cascade to the trials
        downgrade(db_url, rev)
        assert current_revision(db_url) == rev
        with make_engine(db_url).connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM tuning_trials")) == 1
    upgrade(db_url)
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(models.TuningTrial)) == 1


def test_migrations_create_exactly_the_models(db_url):
    upgrade(db_url)
    with make_engine(db_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        assert compare_metadata(context, models.Base.metadata) == []


def test_optuna_shares_the_database(db_url):
    upgrade(db_url)
    storage = optuna.storages.RDBStorage(db_url)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with session_scope(db_url) as s:
        dc_id, fp_id = _identity(s)
        _best(s, dc_id, fp_id, 1.0)
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2
    assert current_revision(db_url) == head_revision()
    assert _bests(db_url) == ([1.0], [1.0])
    storage.engine.dispose()  # lets the PostgreSQL fixture drop the database


def test_concurrent_upgrades_both_succeed(db_url):
    errors, barrier = [], threading.Barrier(4)

    def run():
        try:
            barrier.wait()
            ensure_schema(db_url, auto_upgrade=True)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and current_revision(db_url) == head_revision()


def test_get_or_create_is_idempotent(db_url):
    upgrade(db_url)
    with session_scope(db_url) as s:
        first = _identity(s)
    with session_scope(db_url) as s:
        assert _identity(s) == first
        assert s.scalar(select(func.count()).select_from(models.DeviceClass)) == 1
        assert s.scalar(select(func.count()).select_from(models.StackFingerprint)) == 1


def test_timestamps_read_back_as_aware_utc(db_url):
    upgrade(db_url)
    with session_scope(db_url) as s:
        dc_id, _ = _identity(s)
    with session_scope(db_url) as s:
        created = s.get(models.DeviceClass, dc_id).created_at
    assert created.tzinfo is not None and created.utcoffset() == timezone.utc.utcoffset(None)


def test_best_is_superseded_never_overwritten(db_url):
    upgrade(db_url)
    with session_scope(db_url) as s:
        dc_id, fp_id = _identity(s)
        _best(s, dc_id, fp_id, 1.0)
    with session_scope(db_url) as s:
        _best(s, dc_id, fp_id, 0.5)
    current, history = _bests(db_url)
    assert current == [0.5] and history == [0.5, 1.0]
    with session_scope(db_url) as s:
        old, _, _ = store.best_configs(s, kernel="matmul", key_hash="k" * 16, device_classes=["h100-sxm-80gb"],
                                       current=False)[1]
        assert old.superseded_at is not None


@pytest.mark.parametrize("existing", [False, True], ids=["first-best", "replacing"])
def test_concurrent_writers_leave_one_current_best(db_url, existing):
    upgrade(db_url)
    with session_scope(db_url) as s:
        dc_id, fp_id = _identity(s)
        if existing:
            _best(s, dc_id, fp_id, 2.0)
    errors = []

    def second():
        try:
            with session_scope(db_url) as s:
                _best(s, dc_id, fp_id, 0.5)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with session_scope(db_url) as s:
        _best(s, dc_id, fp_id, 1.0)
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)  # the second writer now waits on our uncommitted row
    t.join(60)
    current, history = _bests(db_url)
    assert errors == []
    assert current == [0.5] and history == [0.5, 1.0] + ([2.0] if existing else [])


def test_unreachable_database_message_hides_the_password():
    with pytest.raises(DatabaseError) as err:
        check_reachable("postgresql+psycopg://nobody:secret@127.0.0.1:1/x")
    message = str(err.value)
    assert "secret" not in message and "\n" not in message and "***" in message
    assert "TUNER_DB_URL" in message


def test_missing_postgres_database_says_how_to_create_it(db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    with pytest.raises(DatabaseError, match="createdb"):
        check_reachable(db_url.rsplit("/", 1)[0] + "/tuner_no_such_db")


def test_sqlite_in_a_missing_directory(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        check_reachable(f"sqlite:///{tmp_path}/no/such/t.db")
    assert not (tmp_path / "no").exists()
    check_reachable(f"sqlite:///{tmp_path}/home/t.db", create_dir=True)  # the embedded default
    assert (tmp_path / "home").is_dir()


def test_schema_behind_says_which_command_fixes_it(db_url):
    with pytest.raises(DatabaseError, match="tuner db upgrade"):
        ensure_schema(db_url, auto_upgrade=False)
    ensure_schema(db_url, auto_upgrade=True)
    assert current_revision(db_url) == head_revision()


def test_schema_from_a_newer_tuner_is_refused(db_url):
    upgrade(db_url)
    with make_engine(db_url).begin() as conn:
        conn.execute(text("UPDATE tuner_alembic_version SET version_num = '9999'"))
    for call in (lambda: ensure_schema(db_url, auto_upgrade=True), lambda: upgrade(db_url)):
        with pytest.raises(DatabaseError, match="upgrade tuner"):
            call()


def test_unknown_revision_is_a_database_error(db_url):
    with pytest.raises(DatabaseError, match="bogus"):
        upgrade(db_url, "bogus")
