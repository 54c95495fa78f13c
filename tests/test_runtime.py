"""The runtime lookup: fallback order and provenance, sources, the cache (bounded, read-only,
split kept with the answer), checks on fallback rows, and staying light and silent."""
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
    # these tests check answers, not the deadline: a lookup waits for its answer (the deadline
    # tests set their own), and counts no misses unless a test asks
    monkeypatch.setenv("TUNER_RUNTIME_DEADLINE_MS", "60000")
    monkeypatch.setenv("TUNER_MISS_FLUSH_S", "0")

    def reset():
        settings.get.cache_clear()
        runtime.clear_cache()
    reset()
    yield reset
    reset()


def _entry(key, config, fp, tuned_at=None):
    return {"kernel": key.kernel, "kernel_version": key.version, "key_hash": key.stable_hash, "key": key.to_json(),
            "dtype": key.dtype, "device_class": "cpu-interpreter", "fingerprint": fp, "config": config,
            "tuned_at": tuned_at}


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


def test_a_bound_lookup_is_lookup_without_keywords(live_env):
    """bind() serves what lookup() serves, from the same cache entry; a wrong count of values is
    the caller's programming error, one clear LookupError."""
    from tuner.runtime.cache import CACHE

    get = runtime.bind("matmul", "M", "N", "K", "dtype")
    first = get(64, 64, 64, "float32")
    assert runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32") is first
    assert get(64, 64, 64, "float32") is first and len(CACHE) == 1
    with pytest.raises(LookupError, match=r"takes 4 values, got 3"):
        get(64, 64, 64)
    with pytest.raises(LookupError, match=r"names as strings"):
        runtime.bind("matmul", 64)


def test_a_tuned_launch_by_position_or_by_keyword_gets_one_entry(live_env):
    """@tuned's positional fast path builds the same cache key as a launch that names its
    arguments, and as lookup() with the same key: one entry, one answer."""
    import torch

    from tests.kernels.tiles import tile_kernel
    from tuner.runtime import tuned
    from tuner.runtime.cache import CACHE

    kernel = tuned("tiles", key=["N"], dtype_arg="out_ptr")(tile_kernel)
    out, seen = torch.empty(256, dtype=torch.float32), torch.zeros(16, dtype=torch.int64)
    by_position = kernel.config_for((out, seen, 256), {})  # the first may take the slow path (a new dtype)
    assert kernel.config_for((out, seen, 256), {}) is by_position
    assert kernel.config_for((out,), {"seen_ptr": seen, "N": 256}) is by_position
    assert runtime.lookup("tiles", N=256, dtype="float32") is by_position
    assert len(CACHE) == 1
    as_double = kernel.config_for((out.double(), seen, 256), {})  # the dtype is the key's
    assert as_double is not by_position
    # the second launch of the new dtype takes the fast path: it must key by that dtype too
    assert kernel.config_for((out.double(), seen, 256), {}) is as_double
    assert runtime.lookup("tiles", N=256, dtype="float64") is as_double
    assert len(CACHE) == 2


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
            "bad = [m for m in ('celery', 'optuna', 'sqlalchemy', 'psycopg', 'torch', 'triton', 'typer', 'urllib.request', "
            "'http.client', 'httpx') if m in sys.modules]; "
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


def _live_fp():
    return live_fingerprint(probe("cpu")[0]).hash


def _key(kernel, dtype="float32", **dims):
    from search_spaces import registry

    return registry.get(kernel).make_key(dims, dtype)


def test_every_launch_runs_the_tiles_its_grid_was_computed_for(live_env, monkeypatch, tmp_path):
    """A bundle that changes between two configurations, read afresh after clear_cache() as after a
    retune: the kernel must run the BLOCK its grid was computed for, every launch (the split of
    a configuration used to be cached by id(), which CPython reuses for a freed dict)."""
    import torch
    import triton

    from tests.kernels.tiles import tile_kernel
    from tuner.runtime import tuned

    key, fp = _key("tiles", N=256), _live_fp()
    bundle = tmp_path / "tiles.json"
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(bundle))
    kernel = tuned("tiles", key=["N"], dtype_arg="out_ptr")(tile_kernel)
    out, seen = torch.empty(256, dtype=torch.float32), torch.zeros(16, dtype=torch.int64)
    wrong = []
    for i in range(200):
        _write_bundle(bundle, [_entry(key, {"BLOCK": (16, 128)[i % 2], "num_warps": 1}, fp)])
        runtime.clear_cache()
        blocks = []

        def grid(cfg):
            blocks.append(cfg["BLOCK"])
            return (triton.cdiv(256, cfg["BLOCK"]),)

        seen.zero_()
        kernel[grid](out, seen, 256)
        programs = triton.cdiv(256, blocks[0])
        if blocks[0] != (16, 128)[i % 2]:  # the new bundle's tiles, not the cached ones
            wrong.append((i, "stale", blocks[0]))
        elif set(seen[:programs].tolist()) != {blocks[0]} or not torch.equal(out, torch.arange(256.0)):
            wrong.append((i, blocks[0], seen[:programs].tolist()))
    assert wrong == [], f"{len(wrong)} of 200 launches ran other tiles than their grid's: {wrong[:3]}"


def test_clear_cache_serves_the_new_source(live_env, monkeypatch, tmp_path):
    """After a retune the bundle changes and clear_cache() is called: every lookup after it, by
    keyword, through bind() and through @tuned, serves the new bundle's configuration."""
    import torch

    from tests.kernels.tiles import tile_kernel
    from tuner.runtime import tuned

    key, fp = _key("tiles", N=256), _live_fp()
    bundle = tmp_path / "tiles.json"
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(bundle))
    get = runtime.bind("tiles", "N", "dtype")
    kernel = tuned("tiles", key=["N"], dtype_arg="out_ptr")(tile_kernel)
    out, seen = torch.empty(256, dtype=torch.float32), torch.zeros(16, dtype=torch.int64)
    for block in (16, 128, 32, 64, 16):
        config = {"BLOCK": block, "num_warps": 1}
        _write_bundle(bundle, [_entry(key, config, fp)])
        runtime.clear_cache()
        assert runtime.lookup("tiles", N=256, dtype="float32") == config
        assert get(256, "float32") == config
        assert kernel.config_for((out, seen, 256), {}) == config


def test_a_returned_configuration_is_read_only(live_env):
    cfg = runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32")
    before = dict(cfg)
    for mutate in (lambda c: c.__setitem__("BLOCK_M", 1), lambda c: c.update(BLOCK_M=1), lambda c: c.pop("BLOCK_M"),
                   lambda c: c.clear(), lambda c: c.setdefault("X", 1)):
        with pytest.raises(TypeError, match="read-only"):
            mutate(cfg)
    assert runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32") == before
    mine = dict(cfg)  # a copy is the caller's to change
    mine["BLOCK_M"] = 1
    assert json.loads(json.dumps(cfg)) == before and runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32") == before


def test_the_cache_is_bounded_and_keeps_what_is_used(live_env, monkeypatch):
    from tuner.runtime.cache import CACHE

    monkeypatch.setenv("TUNER_RUNTIME_CACHE_SIZE", "4")
    live_env()
    for n in (1, 2, 3, 4):
        runtime.lookup("tiles", N=n)
    runtime.lookup("tiles", N=1)  # used since it was cached: kept over the keys not used since
    for n in (5, 6, 7):
        runtime.lookup("tiles", N=n)
        assert len(CACHE) <= 4
    kept = {dict(zip(names, values))["N"] for _, names, values in CACHE}
    assert 1 in kept and {2, 3} & kept == set(), kept
    for n in range(8, 200):
        runtime.lookup("tiles", N=n)
    assert len(CACHE) == 4


def test_fallback_rows_are_served_only_if_the_kernel_accepts_them(live_env, monkeypatch, tmp_path):
    """tutorial_softmax holds a whole row in one block: a nearest shape's BLOCK_SIZE computes the
    softmax of part of a longer row, so check() refuses it and the default is served."""
    import torch

    from tests.kernels.tutorial import softmax_kernel
    from tuner.runtime import tuned

    fp = _live_fp()
    near = _key("tutorial_softmax", M=64, N=128)
    stale = _key("tutorial_softmax", M=8, N=512)
    near_cfg = {"BLOCK_SIZE": 128, "num_warps": 1, "num_stages": 1, "PROGRAMS": 16}
    bad_stale = dict(near_cfg)  # stored for N=512 under another stack, yet only 128 wide
    bundle = tmp_path / "b.json"
    _write_bundle(bundle, [_entry(near, near_cfg, fp), _entry(stale, bad_stale, "0" * 16)])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(bundle))
    live_env()
    # M differs, N alike: the nearest row fits and is served
    assert runtime.explain("tutorial_softmax", M=32, N=128, dtype="float32").level == "nearest"
    for m, n in ((64, 256), (8, 512)):
        answer = runtime.explain("tutorial_softmax", M=m, N=n, dtype="float32")
        assert answer.level == "default" and "check" in answer.reason, answer
        assert answer.config["BLOCK_SIZE"] == n
        kernel = tuned("tutorial_softmax", key={"M": "n_rows", "N": "n_cols"})(softmax_kernel)
        x = torch.randn(m, n)
        y = torch.empty_like(x)
        kernel[lambda cfg: (min(cfg["PROGRAMS"], m),)](y, x, x.stride(0), y.stride(0), m, n)
        assert torch.allclose(y, torch.softmax(x, -1), atol=1e-5)


def test_a_failed_device_probe_serves_defaults_never_stored_rows(live_env, monkeypatch, tmp_path, caplog):
    key = _key("tiles", N=64)
    bundle = tmp_path / "b.json"
    _write_bundle(bundle, [_entry(key, {"BLOCK": 128, "num_warps": 4}, _live_fp())])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(bundle))
    monkeypatch.setenv("TUNER_DEVICE", "cuda:7")  # no such GPU here: the probe fails
    live_env()
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        for _ in range(3):
            answer = runtime.explain("tiles", N=64, dtype="float32")
    assert answer.config == {"BLOCK": 16, "num_warps": 1} and answer.level == "default"
    assert answer.device_class is None and "probed" in answer.reason
    assert sum("cannot probe the device" in r.message for r in caplog.records) == 1


def test_explain_says_which_level_answered_from_where_and_how_old(live_env, monkeypatch, tmp_path):
    fp = _live_fp()
    cfg = {"BLOCK": 64, "num_warps": 4}
    _write_bundle(tmp_path / "b.json", [_entry(_key("tiles", N=100), cfg, fp, "2026-01-01T00:00:00+00:00"),
                                        _entry(_key("tiles", N=300), dict(cfg, BLOCK=32), "f" * 16)])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(tmp_path / "b.json"))
    live_env()
    exact = runtime.explain("tiles", N=100, dtype="float32")
    assert (exact.level, exact.source, exact.fingerprint, exact.config) == ("exact", "bundle", fp, cfg)
    assert exact.age_s > 86400 and "tuned" in exact.describe()
    other = runtime.explain("tiles", N=300, dtype="float32")
    assert (other.level, other.fingerprint) == ("other_fingerprint", "f" * 16)
    near = runtime.explain("tiles", N=25, dtype="float32")
    assert (near.level, near.dims, near.distance) == ("nearest", {"N": 100}, 2.0)
    assert runtime.lookup("tiles", N=25, dtype="float32") is near.config
    default = runtime.explain("tiles", N=100, dtype="float16")  # not a dtype tiles is tuned for
    assert default.level == "default" and default.source == "default" and "dtype float16" in default.reason
    assert set(exact.to_json()) >= {"level", "source", "age_s", "distance", "reason", "config"}


def test_a_late_answer_replaces_the_default_served_meanwhile(live_env, monkeypatch, tmp_path):
    """With a deadline of 0 no launch waits: the first is served the default, and the stored
    configuration from the moment it has been read."""
    import os

    cfg = {"BLOCK": 128, "num_warps": 4}
    staged = tmp_path / "staged.json"
    _write_bundle(staged, [_entry(_key("tiles", N=100), cfg, _live_fp())])
    # the bundle is a named pipe: its reader blocks until the test writes it, so the first lookup
    # is answered, deterministically, while the read is still in flight
    fifo = tmp_path / "b.json"
    os.mkfifo(fifo)
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(fifo))
    monkeypatch.setenv("TUNER_RUNTIME_DEADLINE_MS", "0")
    live_env()
    first = runtime.explain("tiles", N=100, dtype="float32")
    assert first.level == "default" and "waiting for bundle" in first.reason
    fifo.write_text(staged.read_text())  # opens once the reader has: the answer arrives now
    assert runtime.settle(30)
    assert runtime.explain("tiles", N=100, dtype="float32").level == "exact"
    assert runtime.lookup("tiles", N=100, dtype="float32") == cfg


def test_defaults_served_while_the_source_was_unreachable_are_asked_again(live_env, monkeypatch, tmp_path):
    from tests.services import wait_for

    bundle = tmp_path / "late.json"
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(bundle))
    monkeypatch.setenv("TUNER_RUNTIME_RETRY_S", "0.2")
    live_env()
    first = runtime.explain("tiles", N=100, dtype="float32")
    assert first.level == "default" and "unreachable" in first.reason
    cfg = {"BLOCK": 128, "num_warps": 4}
    _write_bundle(bundle, [_entry(_key("tiles", N=100), cfg, _live_fp())])  # the source is back
    wait_for(lambda: runtime.lookup("tiles", N=100, dtype="float32") == cfg, 30, "the stored configuration",
             poll_s=0.05)
