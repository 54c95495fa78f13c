"""Migrations and storage on SQLite and on the real PostgreSQL, each test in its own database."""
import optuna
import pytest
from sqlalchemy import func, select

from db import models, store
from db.session import (DatabaseError, check_reachable, current_revision, downgrade, ensure_schema,
                        head_revision, session_scope, upgrade)


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


def test_upgrade_downgrade_upgrade(db_url):
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    downgrade(db_url, "base")
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()


def test_optuna_shares_the_database(db_url):
    upgrade(db_url)
    study = optuna.create_study(storage=db_url, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with session_scope(db_url) as s:
        dc_id, fp_id = _identity(s)
        _best(s, dc_id, fp_id, 1.0)
    assert len(optuna.load_study(study_name="s", storage=db_url).trials) == 2
    assert current_revision(db_url) == head_revision()


def test_get_or_create_is_idempotent(db_url):
    upgrade(db_url)
    with session_scope(db_url) as s:
        first = _identity(s)
    with session_scope(db_url) as s:
        assert _identity(s) == first
        assert s.scalar(select(func.count()).select_from(models.DeviceClass)) == 1


def test_best_is_superseded_never_overwritten(db_url):
    upgrade(db_url)
    with session_scope(db_url) as s:
        dc_id, fp_id = _identity(s)
        _best(s, dc_id, fp_id, 1.0)
    with session_scope(db_url) as s:
        _best(s, dc_id, fp_id, 0.5)
    with session_scope(db_url) as s:
        current = store.current_bests(s, kernel="matmul", device_class_slug="h100-sxm-80gb")
        history = store.best_history(s, kernel="matmul", key_hash="k" * 16, device_class_slug="h100-sxm-80gb")
    assert [b.median_ms for b in current] == [0.5]
    assert [b.median_ms for b in history] == [0.5, 1.0] and history[1].superseded_at is not None


def test_unreachable_database_message_hides_the_password():
    with pytest.raises(DatabaseError) as err:
        check_reachable("postgresql+psycopg://nobody:secret@127.0.0.1:1/x")
    assert "secret" not in str(err.value) and "\n" not in str(err.value)


def test_sqlite_in_a_missing_directory(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        check_reachable(f"sqlite:///{tmp_path}/no/such/t.db")
    assert not (tmp_path / "no").exists()


def test_schema_behind_says_which_command_fixes_it(db_url):
    with pytest.raises(DatabaseError, match="tuner db upgrade"):
        ensure_schema(db_url, auto_upgrade=False)
    ensure_schema(db_url, auto_upgrade=True)
    assert current_revision(db_url) == head_revision()
