"""The runtime lookup: fallback order, sources, caching, and staying light and silent."""
import json
import logging
import subprocess
import sys

import pytest

from devices.fingerprint import live_fingerprint
from devices.probe import probe
from tests.cli_helpers import ROOT, tuner_env
from tuner import runtime, settings


@pytest.fixture
def live_env(monkeypatch, tmp_path):
    """A runtime reading TUNER_HOME=tmp_path, re-read after each env change."""
    for k in list(__import__("os").environ):
        if k.startswith("TUNER_") and k != "TUNER_KERNEL_MODULES":  # the test kernels stay registered
            monkeypatch.delenv(k)
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    monkeypatch.setenv("TUNER_DEVICE", "cpu")

    def reset():
        settings.get.cache_clear()
        runtime.clear_cache()
    reset()
    yield reset
    reset()


def _entry(key, config, fp):
    return {"kernel": key.kernel, "kernel_version": key.version, "key_hash": key.stable_hash, "key": key.to_json(),
            "dtype": key.dtype, "device_class": "cpu-interpreter", "fingerprint": fp, "config": config}


def _write_bundle(path, entries):
    path.write_text(json.dumps({"format": "tuner-bundle", "version": 1, "entries": entries}))


def test_fallback_order_with_a_bundle(live_env, monkeypatch, tmp_path, caplog):
    from search_spaces import registry

    spec = registry.get("matmul")
    dc, _ = probe("cpu")
    fp = live_fingerprint(dc).hash
    exact = spec.make_key({"M": 256, "N": 256, "K": 256}, "float32")
    stale = spec.make_key({"M": 128, "N": 128, "K": 128}, "float32")
    near = spec.make_key({"M": 1024, "N": 1024, "K": 1024}, "float32")
    c_exact = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 1, "num_warps": 4, "num_stages": 1}
    c_stale = dict(c_exact, BLOCK_K=32)
    c_near = dict(c_exact, BLOCK_M=64)
    bundle = tmp_path / "b.json"
    _write_bundle(bundle, [_entry(exact, c_exact, fp), _entry(stale, c_stale, "0" * 16),
                           _entry(near, c_near, fp)])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(bundle))
    live_env()
    assert runtime.lookup("matmul", M=256, N=256, K=256, dtype="float32") == c_exact
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        assert runtime.lookup("matmul", M=128, N=128, K=128, dtype="float32") == c_stale
        assert runtime.lookup("matmul", M=128, N=128, K=128, dtype="float16") != c_stale  # other dtype: default
    assert sum("another stack fingerprint" in r.message for r in caplog.records) == 1
    # nearest stored shape of the class: 900 is nearer to 1024 than to 256 in log space
    assert runtime.lookup("matmul", M=900, N=1000, K=1100, dtype="float32") == c_near
    default = spec.default(spec.make_key({"M": 8, "N": 8, "K": 8}, "float16"), dc.target)
    assert runtime.lookup("matmul", M=8, N=8, K=8, dtype="float16") == default


def test_warm_lookup_is_a_cache_hit(live_env):
    first = runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32")
    assert runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32") is first


def test_unreadable_sources_serve_defaults_with_one_warning(live_env, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TUNER_DB_URL", "postgresql+psycopg://u:pw@127.0.0.1:1/none")
    live_env()
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        a = runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32")
        b = runtime.lookup("matmul", M=96, N=64, K=64, dtype="float32")
    assert a and b
    warnings = [r for r in caplog.records if "serving kernel defaults" in r.message]
    assert len(warnings) == 1 and "pw" not in warnings[0].message.replace("postgresql", "")
    monkeypatch.setenv("TUNER_DB_URL", "")
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(tmp_path / "missing.json"))
    live_env()
    assert runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32") == a


def test_default_sqlite_database_is_never_created_by_a_lookup(live_env, tmp_path):
    runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32")
    assert not (tmp_path / "tuner.db").exists()


def test_import_is_light():
    code = ("import sys, tuner.runtime; "
            "bad = [m for m in ('celery', 'optuna', 'sqlalchemy', 'psycopg', 'torch', 'triton', 'typer') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], env=tuner_env(ROOT / ".nohome"), cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing tuner.runtime loaded {out}"


def test_lookup_loads_neither_celery_nor_optuna(tmp_path):
    code = ("import sys; from tuner.runtime import lookup; "
            "lookup('matmul', M=64, N=64, K=64, dtype='float32'); "
            "print(','.join(m for m in ('celery', 'optuna', 'psycopg') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=tuner_env(tmp_path, TUNER_DEVICE="cpu"), cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
