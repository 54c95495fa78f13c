"""tuner/runtime/cache.py in this process on the CPU (fast): the cache's bound at its smallest, the
errors of a bound lookup, what is asked again after the refresh period, and a runtime with no
state or a closed one. Written against the survivors of bench/mutation.py."""
import pytest

from tests.services import wait_for
from tests.test_runtime import _entry, _key, _live_fp, _write_bundle, live_env  # noqa: F401
from tests.test_runtime_state import _fifo_bundle, _unblock
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
    cache._at_exit()  # what atexit runs: nothing to write, and nothing raised
    assert cache._state is None  # none of them made one


def test_settle_waits_ten_seconds_unless_told(live_env, monkeypatch):  # noqa: F811
    live_env()
    cache.state()
    asked = []
    monkeypatch.setattr(cache.State, "settle", lambda self, timeout_s: asked.append(timeout_s) or True)
    assert runtime.settle() is True and asked == [10.0]


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


def test_a_key_hit_through_bind_gets_its_second_chance(live_env, monkeypatch):  # noqa: F811
    """bind()'s warm path (its own code) marks a hit as lookup() does: the bound key outlives keys
    not hit since."""
    monkeypatch.setenv("TUNER_RUNTIME_CACHE_SIZE", "4")
    live_env()
    get = runtime.bind("tiles", "N", "dtype")
    for n in (1, 2, 3, 4):
        get(n, "float32")
    get(1, "float32")  # a hit
    for n in (5, 6, 7):
        get(n, "float32")
    kept = {values[0] for _, _, values in CACHE}
    assert 1 in kept and {2, 3} & kept == set(), kept


def test_settle_gives_up_at_its_timeout_while_a_question_is_stuck(live_env, monkeypatch, tmp_path):  # noqa: F811
    import time

    fifo = _fifo_bundle(monkeypatch, live_env, tmp_path, RUNTIME_DEADLINE_MS=0)  # its read blocks until written
    assert runtime.explain("tiles", N=100, dtype="float32").level == "default"  # the question is in flight
    t0 = time.monotonic()
    assert runtime.settle(0.3) is False
    assert time.monotonic() - t0 < 10  # not the question's own end
    _unblock(fifo)
    assert runtime.settle(60) is True


def test_settle_waits_within_its_timeout_for_an_answer_on_its_way(live_env, monkeypatch, tmp_path):  # noqa: F811
    """A timeout under a second is a wait too: the answer that comes meanwhile is waited for."""
    import threading

    fifo = _fifo_bundle(monkeypatch, live_env, tmp_path, RUNTIME_DEADLINE_MS=0)
    assert runtime.explain("tiles", N=100, dtype="float32").level == "default"  # the question is in flight
    answer = threading.Timer(0.05, lambda: fifo.write_text('{"format": "tuner-bundle", "entries": []}'))
    answer.daemon = True
    answer.start()
    assert runtime.settle(0.99) is True


def test_counted_misses_are_written_at_exit(live_env, monkeypatch, tmp_path):  # noqa: F811
    import json

    misses = tmp_path / "m.jsonl"
    _write_bundle(tmp_path / "b.json", [_entry(_key("tiles", N=64), {"BLOCK": 64, "num_warps": 4}, _live_fp())])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(tmp_path / "b.json"))
    monkeypatch.setenv("TUNER_MISS_FILE", str(misses))
    monkeypatch.setenv("TUNER_MISS_FLUSH_S", "3600")
    live_env()
    for _ in range(3):
        runtime.lookup("tiles", N=100, dtype="float32")
    cache._at_exit()  # what atexit runs
    assert [json.loads(line)["count"] for line in misses.read_text().splitlines()] == [3]


def test_a_forked_child_answers_new_keys_with_threads_of_its_own(live_env, monkeypatch, tmp_path):  # noqa: F811
    """A model server that forks workers after a lookup: the child's resolver thread is gone, and
    a new key in the child is answered (by a thread it starts), within the deadline."""
    import json
    import os

    cfg = {"BLOCK": 32, "num_warps": 1}
    _write_bundle(tmp_path / "b.json", [_entry(_key("tiles", N=200), cfg, _live_fp())])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(tmp_path / "b.json"))
    monkeypatch.setenv("TUNER_MISS_FILE", str(tmp_path / "m.jsonl"))
    monkeypatch.setenv("TUNER_MISS_FLUSH_S", "3600")
    live_env()
    runtime.lookup("tiles", N=100, dtype="float32")  # the parent's state, its threads started
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        try:
            out = {"level": runtime.explain("tiles", N=200, dtype="float32").level,
                   "config": dict(runtime.lookup("tiles", N=200, dtype="float32")),
                   "thread": cache._state.thread.is_alive(), "pending": len(cache._state.pending)}
            runtime.lookup("tiles", N=150, dtype="float32")  # a miss of the child's own
            out["flushed"] = runtime.flush_misses()  # that one record: the parent's counts are the parent's
        except BaseException as exc:  # noqa: BLE001 - the parent asserts on it
            out = {"error": repr(exc)}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        got = json.loads(f.read() or '{"error": "no report"}')
    os.waitpid(pid, 0)
    assert got == {"level": "exact", "config": cfg, "thread": True, "pending": 0, "flushed": 1}, got


def test_what_a_forked_child_runs_starts_afresh_keeping_what_was_answered(live_env, monkeypatch,  # noqa: F811
                                                                         tmp_path):
    """cache._after_fork (what os.register_at_fork runs in a child), called here where mutmut sees it:
    new locks, no question in flight, no resolver thread (the child's is gone) until a new key
    starts one; the answers cached before stay."""
    cfg = {"BLOCK": 32, "num_warps": 1}
    _write_bundle(tmp_path / "b.json", [_entry(_key("tiles", N=200), cfg, _live_fp())])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(tmp_path / "b.json"))
    live_env()
    assert runtime.explain("tiles", N=100, dtype="float32").level == "nearest"  # answered, its thread started
    st, lock, state_lock, parent = cache._state, cache._lock, cache._state_lock, cache._state.thread
    assert parent is not None and parent.is_alive()
    cache._after_fork()
    assert cache._state is st and cache._lock is not lock and cache._state_lock is not state_lock
    assert (st.thread, st.pending, st.later) == (None, {}, []) and st.queue.empty()
    assert any(k[0] == "tiles" and k[2][0] == 100 for k in CACHE)  # what was answered stays
    assert runtime.explain("tiles", N=200, dtype="float32").level == "exact"  # a thread of its own answers
    assert st.thread is not None and st.thread is not parent and st.thread.is_alive()


def test_a_kernel_whose_default_raises_is_one_clear_lookup_error(live_env, monkeypatch, caplog,  # noqa: F811
                                                                 tmp_path):
    import logging
    import os

    from search_spaces import registry

    _write_bundle(tmp_path / "b.json", [])  # a source that answers: the default is the answer
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(tmp_path / "b.json"))
    monkeypatch.setenv("TUNER_KERNEL_MODULES", os.environ["TUNER_KERNEL_MODULES"] + ",tests.kernels.slow")
    live_env()
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        for _ in range(2):
            with pytest.raises(LookupError) as err:
                runtime.lookup("nofinal", N=64, dtype="float32")
            label = registry.get("nofinal").make_key({"N": 64}, "float32").label()
            assert str(err.value) == (f"nofinal has no default for {label}: RuntimeError: nofinal has no default: "
                                      "a staged finalization failure")
    # the kernel's fault, not the source's: the bundle is not reported unreadable (which would serve
    # every kernel defaults for TUNER_RUNTIME_RETRY_S)
    assert not [r for r in caplog.records if "cannot read" in r.getMessage()], caplog.text
    assert [r.getMessage() for r in caplog.records if "cannot answer" in r.getMessage()] == [
        f"tuner: cannot answer nofinal {label} (RuntimeError: nofinal has no default: a staged finalization failure)"]


def test_a_default_that_is_no_configuration_is_one_clear_lookup_error(live_env, monkeypatch, tmp_path):  # noqa: F811
    """Not only a default() that raises: one that returns what is no configuration names its own error."""
    from search_spaces import registry

    _write_bundle(tmp_path / "b.json", [])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(tmp_path / "b.json"))
    live_env()
    monkeypatch.setattr(registry.get("tiles"), "default", lambda key, target: None)
    with pytest.raises(LookupError, match=r"^tiles has no default for .+: TypeError: 'NoneType' object is not iterable$"):
        runtime.lookup("tiles", N=0, dtype="float32")  # a dim below 1: the default, asked of no source
