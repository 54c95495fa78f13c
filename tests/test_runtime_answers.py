"""tuner/runtime/cache.py's answers in this process (fast): a default served while the source is
asked becomes the real answer's miss record (its launches, a drop-in's signature and winner),
what is asked again and when (and what is not), the cache's second chance on every path, and a
key asked once however many callers ask. Written against the survivors of bench/mutation.py."""
import json
import threading
import time

from tests.services import wait_for
from tests.test_runtime import _entry, _key, _live_fp, _write_bundle, live_env  # noqa: F401
from tests.test_runtime_state import NEAR, _fifo_bundle, _near_row, _serving
from tuner import runtime
from tuner.runtime import cache
from tuner.runtime.cache import CACHE

NAMES = ("N", "dtype")


def _ck(n):
    return ("tiles", NAMES, (n, "float32"))


def _kept():
    return {values[0] for _, _, values in CACHE}


def _asked_slowly(monkeypatch, live_env, tmp_path):  # noqa: F811
    """A bundle that is a FIFO (its read waits until the test writes it), deadline 0: every first
    lookup is served the default while the source is asked; misses counted into a file."""
    misses = tmp_path / "m.jsonl"
    return _fifo_bundle(monkeypatch, live_env, tmp_path, MISS_FILE=misses, MISS_FLUSH_S=3600, RUNTIME_DEADLINE_MS=0), misses


def test_launches_served_while_the_source_was_asked_join_the_answers_miss_record(live_env, monkeypatch,  # noqa: F811
                                                                                  tmp_path):
    """Deadline 0: the default is served while the bundle is read; its launches, the signature a
    drop-in recorded meanwhile and the winner it reported all go to the nearest answer's record."""
    from tuner.runtime import reported

    fifo, misses = _asked_slowly(monkeypatch, live_env, tmp_path)
    for _ in range(3):
        assert runtime.explain("tiles", N=50, dtype="float32").level == "default"  # waiting
    signature = {"args": [{"kind": "tensor", "dtype": "float32", "shape": [50]}]}
    CACHE[_ck(50)].tally.signature = signature  # as a drop-in's first launch records it
    winner = {"BLOCK": 32, "num_warps": 1}
    assert reported.report("tiles", NAMES, (50, "float32"), winner, 2.5) is True
    threading.Thread(target=lambda: _write_bundle(fifo, _near_row()), daemon=True).start()
    assert runtime.settle(30) is True
    assert runtime.explain("tiles", N=50, dtype="float32").level == "nearest"  # one launch more
    runtime.flush_misses()  # (the winner woke the flusher: part may be written already)
    records = [json.loads(line) for line in misses.read_text().splitlines()]
    key, fp = _key("tiles", N=50), _live_fp()
    assert {(r["kernel"], r["kernel_version"], r["key_hash"], r["dtype"], r["device_class"], r["fingerprint"],
             r["level"]) for r in records} == {("tiles", key.version, key.stable_hash, "float32", "cpu-interpreter",
                                                fp, "nearest")}
    assert records[0]["key"]["dims"] == {"N": 50}
    assert sum(r["count"] for r in records) == 4
    assert [r["signature"] for r in records if r.get("signature")][:1] == [signature]
    assert [r["reported"] for r in records if r.get("reported")] == [{"config": winner, "median_ms": 2.5}]


def test_launches_served_while_waiting_for_an_exact_answer_are_no_misses(live_env, monkeypatch, tmp_path):  # noqa: F811
    fifo, misses = _asked_slowly(monkeypatch, live_env, tmp_path)
    for _ in range(3):
        runtime.lookup("tiles", N=50, dtype="float32")
    assert _ck(50) in CACHE  # the default waits in the cache: the next launch is a hit
    threading.Thread(target=lambda: _write_bundle(fifo, [_entry(_key("tiles", N=50), NEAR, _live_fp())]),
                     daemon=True).start()
    assert runtime.settle(30) is True
    assert runtime.lookup("tiles", N=50, dtype="float32") == NEAR
    assert runtime.flush_misses() == 0 and not misses.exists()


def test_a_key_the_caller_got_wrong_is_never_a_miss(live_env, monkeypatch, tmp_path):  # noqa: F811
    _serving(monkeypatch, live_env, tmp_path, [], MISS_FILE=str(tmp_path / "m.jsonl"), MISS_FLUSH_S="3600")
    for _ in range(3):
        assert runtime.explain("tiles", N=0, dtype="float32").level == "default"  # a dim below 1
    assert runtime.flush_misses() == 0


def test_a_hit_through_tuned_s_lookup_gets_its_second_chance(live_env, monkeypatch):  # noqa: F811
    """entry_for (what @tuned and a bound lookup's first call use) marks a warm hit as lookup() does."""
    monkeypatch.setenv("TUNER_RUNTIME_CACHE_SIZE", "2")
    live_env()
    first = cache.entry_for("tiles", NAMES, (1, "float32"))
    cache.entry_for("tiles", NAMES, (2, "float32"))
    assert cache.entry_for("tiles", NAMES, (1, "float32")) is first  # a hit
    cache.entry_for("tiles", NAMES, (3, "float32"))
    assert _kept() == {1, 3}


def test_a_second_chance_is_given_once_and_keeps_the_entry(live_env, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TUNER_RUNTIME_CACHE_SIZE", "2")
    live_env()
    one = runtime.lookup("tiles", N=1, dtype="float32")
    runtime.lookup("tiles", N=2, dtype="float32")
    runtime.lookup("tiles", N=1, dtype="float32")  # a hit
    runtime.lookup("tiles", N=3, dtype="float32")  # 2 goes, 1 gets its second chance
    assert _kept() == {1, 3} and CACHE[_ck(1)].config is one
    runtime.lookup("tiles", N=4, dtype="float32")
    runtime.lookup("tiles", N=5, dtype="float32")  # 1 not hit since its chance: it goes now
    assert _kept() == {4, 5}


def test_the_key_just_answered_stays_when_every_other_was_hit(live_env, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TUNER_RUNTIME_CACHE_SIZE", "1")
    live_env()
    runtime.lookup("tiles", N=1, dtype="float32")
    runtime.lookup("tiles", N=1, dtype="float32")  # hit: its second chance puts the new key first in line
    second = runtime.lookup("tiles", N=2, dtype="float32")
    assert _kept() == {2} and runtime.lookup("tiles", N=2, dtype="float32") is second


def test_a_key_asked_while_its_question_waits_is_the_same_question(live_env, monkeypatch, tmp_path):  # noqa: F811
    from search_spaces import registry

    _serving(monkeypatch, live_env, tmp_path, [])
    st, spec = cache.state(), registry.get("tiles")
    with cache._lock:
        asked = [st.ask(_ck(7), spec, _key("tiles", N=7)) for _ in range(2)]
    assert asked[0] is asked[1]
    assert asked[0].done.wait(30)


def test_a_miss_for_a_key_another_thread_just_answered_returns_that_answer(live_env, monkeypatch, tmp_path):  # noqa: F811
    _serving(monkeypatch, live_env, tmp_path, [])
    runtime.lookup("tiles", N=7, dtype="float32")
    held = CACHE[_ck(7)]
    assert cache.cold(_ck(7), "tiles", {"N": 7, "dtype": "float32"}) is held


def test_the_split_served_is_the_live_vendors(live_env, monkeypatch, tmp_path):  # noqa: F811
    """On AMD the knobs of its backend are launch options; elsewhere they are dropped."""
    from dataclasses import replace

    from devices.targets import target_for
    from search_spaces import registry
    from tuner.runtime.answer import Answer, ReadOnlyConfig

    _serving(monkeypatch, live_env, tmp_path, [])
    st, spec = cache.state(), registry.get("tiles")
    config = {"BLOCK": 32, "num_warps": 4, "waves_per_eu": 2}
    answer = Answer("tiles", ReadOnlyConfig(config), "exact", "bundle", "cpu-interpreter")
    st.identity = replace(st.identity, target=target_for("gfx942", 304))
    with cache._lock:
        entry = st.insert(_ck(9), spec, _key("tiles", N=9), answer)
    assert entry.split == ({"BLOCK": 32}, {"num_warps": 4, "waves_per_eu": 2})


def _counting_resolve(monkeypatch):
    asked: list[int] = []
    real = cache.resolve

    def resolve(spec, key, *rest):
        asked.append(key.dim_map["N"])
        return real(spec, key, *rest)
    monkeypatch.setattr(cache, "resolve", resolve)
    return asked


def test_exact_answers_are_not_asked_again_and_a_zero_refresh_asks_nothing_again(live_env, monkeypatch,  # noqa: F811
                                                                                tmp_path):
    _serving(monkeypatch, live_env, tmp_path, _near_row(), RUNTIME_REFRESH_S="0.05")
    asked = _counting_resolve(monkeypatch)
    assert runtime.explain("tiles", N=100, dtype="float32").level == "exact"
    time.sleep(0.5)  # ten refresh periods
    assert asked == [100]
    monkeypatch.setenv("TUNER_RUNTIME_REFRESH_S", "0")  # off
    live_env()
    assert runtime.explain("tiles", N=50, dtype="float32").level == "nearest"
    time.sleep(0.5)
    assert asked == [100, 50]


def test_a_fallback_answer_is_asked_again_every_refresh_period_however_short(live_env, monkeypatch,  # noqa: F811
                                                                             tmp_path):
    """A nearest answer stays a miss, so it is asked again each period: a period of 50 ms is about
    40 questions in two seconds (more than 6 however loaded the machine), never one a second."""
    _serving(monkeypatch, live_env, tmp_path, _near_row(), RUNTIME_REFRESH_S="0.05")
    asked = _counting_resolve(monkeypatch)
    assert runtime.explain("tiles", N=50, dtype="float32").level == "nearest"
    time.sleep(2)
    assert asked.count(50) > 6, asked


def test_a_key_dropped_from_the_cache_is_not_asked_again(live_env, monkeypatch, tmp_path):  # noqa: F811
    fp = _live_fp()
    _serving(monkeypatch, live_env, tmp_path, [_entry(_key("tiles", N=n), NEAR, fp) for n in (64, 200, 300, 400)],
             RUNTIME_CACHE_SIZE="2", RUNTIME_REFRESH_S="0.2")
    assert runtime.explain("tiles", N=50, dtype="float32").level == "nearest"  # asked again in 0.2 s
    runtime.lookup("tiles", N=200, dtype="float32")
    runtime.lookup("tiles", N=300, dtype="float32")  # 50 is dropped
    st = cache.state()
    wait_for(lambda: not st.later, 20, "the refresh to come due", poll_s=0.02)
    runtime.lookup("tiles", N=400, dtype="float32")  # answered after the refresh was handled
    assert 50 not in _kept(), _kept()


def test_the_resolver_sleeps_until_its_next_refresh_is_due(live_env, monkeypatch, tmp_path):  # noqa: F811
    """A model server's runtime burns no CPU while it waits: with a refresh due in a minute, the
    resolver thread uses (almost) no CPU time for two seconds."""
    _serving(monkeypatch, live_env, tmp_path, _near_row(), RUNTIME_REFRESH_S="60")
    assert runtime.explain("tiles", N=50, dtype="float32").level == "nearest"
    st = cache.state()
    assert st.later  # a refresh is due later
    clock = time.pthread_getcpuclockid(st.thread.ident)  # that thread's own CPU time
    t0 = time.clock_gettime(clock)
    time.sleep(2)
    assert time.clock_gettime(clock) - t0 < 0.25


def test_a_waiting_default_s_launches_add_to_what_the_keys_tally_already_holds(live_env, monkeypatch,  # noqa: F811
                                                                                tmp_path):
    """A key counted before (answered, dropped from the cache, asked again while the source is slow):
    the launches served meanwhile are added to its tally, not put in place of its count."""
    from search_spaces import registry
    from tuner.runtime.answer import Answer, ReadOnlyConfig
    from tuner.runtime.levels import default_answer

    misses = tmp_path / "m.jsonl"
    _serving(monkeypatch, live_env, tmp_path, [], MISS_FILE=str(misses), MISS_FLUSH_S="3600")
    st, spec, key = cache.state(), registry.get("tiles"), _key("tiles", N=50)
    nearest = Answer("tiles", ReadOnlyConfig(NEAR), "nearest", "bundle", "cpu-interpreter")
    with cache._lock:
        st.insert(_ck(50), spec, key, nearest)
    for _ in range(3):
        runtime.lookup("tiles", N=50, dtype="float32")
    with cache._lock:  # dropped and asked again: the default waits for the answer
        st.insert(_ck(50), spec, key, default_answer(spec, key, st.identity, "waiting"), waiting=True)
    for _ in range(2):
        runtime.lookup("tiles", N=50, dtype="float32")
    with cache._lock:
        st.insert(_ck(50), spec, key, nearest)
    assert runtime.flush_misses() == 1
    assert [json.loads(line)["count"] for line in misses.read_text().splitlines()] == [5]
