"""tuner/runtime/cache.py in this process on the CPU (fast): the cache's bound at its smallest, the
errors of a bound lookup, what is asked again after the refresh period, and a runtime with no
state or a closed one. Written against the survivors of bench/mutation.py."""
import pytest

from tests.services import wait_for
from tests.test_runtime import _entry, _key, _live_fp, _write_bundle, live_env  # noqa: F401
from tuner import runtime
from tuner.runtime import cache
from tuner.runtime.cache import CACHE


def test_a_cache_of_one_key_keeps_the_key_just_answered(live_env, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TUNER_RUNTIME_CACHE_SIZE", "1")
    live_env()
    runtime.lookup("tiles", N=1, dtype="float32")
    second = runtime.lookup("tiles", N=2, dtype="float32")
    assert [values for _, _, values in CACHE] == [(2, "float32")]
    assert runtime.lookup("tiles", N=2, dtype="float32") is second


def test_a_bound_lookup_says_how_it_is_called(live_env):  # noqa: F811
    for names in ((), (64,), ("M", 64)):
        with pytest.raises(LookupError) as err:
            runtime.bind("matmul", *names)
        assert str(err.value) == ("bind('matmul', ...) takes the key's names as strings, e.g. "
                                  "bind('matmul', 'M', 'N', 'K', 'dtype')")
    get = runtime.bind("matmul", "M", "N", "K", "dtype")
    with pytest.raises(LookupError) as err:
        get(64, 64, 64)
    assert str(err.value) == "the lookup bound to matmul (M, N, K, dtype) takes 4 values, got 3"
    assert get(64, 64, 64, "float32") is runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32")
    assert get(64, 64, 64, "float32") is runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32")  # warm


def test_an_answer_from_a_fallback_level_is_asked_again_after_the_refresh_period(live_env, monkeypatch,  # noqa: F811
                                                                                  tmp_path):
    fp, bundle = _live_fp(), tmp_path / "b.json"
    near, exact = {"BLOCK": 64, "num_warps": 4}, {"BLOCK": 32, "num_warps": 1}
    _write_bundle(bundle, [_entry(_key("tiles", N=100), near, fp)])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(bundle))
    monkeypatch.setenv("TUNER_RUNTIME_REFRESH_S", "0.3")
    monkeypatch.setenv("TUNER_RUNTIME_RETRY_S", "0")  # the bundle is read again at every question
    live_env()
    assert runtime.explain("tiles", N=50, dtype="float32").level == "nearest"
    _write_bundle(bundle, [_entry(_key("tiles", N=100), near, fp), _entry(_key("tiles", N=50), exact, fp)])
    wait_for(lambda: runtime.lookup("tiles", N=50, dtype="float32") == exact, 30, "the exact configuration",
             poll_s=0.05)
    assert runtime.explain("tiles", N=50, dtype="float32").level == "exact"


def test_without_a_state_nothing_waits_and_nothing_is_written(live_env):  # noqa: F811
    runtime.clear_cache()
    assert cache._state is None
    assert runtime.settle(0) is True and runtime.flush_misses() == 0
    assert cache._state is None  # neither made one


def test_a_cleared_state_is_closed_and_no_longer_fills_the_cache(live_env):  # noqa: F811
    from search_spaces import registry
    from tuner.runtime.levels import default_answer

    old = cache.state()
    assert cache.state() is old  # one per process
    runtime.clear_cache()
    assert old.closed and cache._state is None
    spec = registry.get("tiles")
    key = spec.make_key({"N": 8}, "float32")
    entry = old.insert(("tiles", ("N", "dtype"), (8, "float32")), spec, key,
                       default_answer(spec, key, old.identity, "test"))
    assert entry.config == spec.default(key, old.identity.target) and len(CACHE) == 0
    assert cache.state() is not old
