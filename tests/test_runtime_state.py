"""tuner/runtime/cache.py's State in this process (fast): what it reads and opens when it starts
(settings, plug-ins, device, source, miss sink and its timer), how it tells what went wrong
(once per cause, by name), and what it asks the source (an unreachable source, a stale
fingerprint, a row the kernel refuses, a kernel that cannot be answered). Written against the
survivors of bench/mutation.py."""
import logging
import threading
import time

import pytest

from tests.services import wait_for
from tests.test_runtime import _entry, _key, _live_fp, _write_bundle, live_env  # noqa: F401
from tuner import runtime, settings
from tuner.runtime import cache


NEAR = {"BLOCK": 64, "num_warps": 4}


def _near_row():
    """The one stored row of most of these tests: tiles at N=100, so N=50 is answered "nearest"."""
    return [_entry(_key("tiles", N=100), NEAR, _live_fp())]


def _fifo_bundle(monkeypatch, live_env, tmp_path, **env):  # noqa: F811
    """A runtime whose bundle is a FIFO: its read waits until the test writes it (_unblock), so a
    question stays in flight as long as the test wants; TUNER_<NAME>=value for each of env."""
    import os

    fifo = tmp_path / "b.json"
    os.mkfifo(fifo)
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(fifo))
    for name, value in env.items():
        monkeypatch.setenv(f"TUNER_{name}", str(value))
    live_env()
    return fifo


def _serving(monkeypatch, live_env, tmp_path, entries, **env):  # noqa: F811
    """A runtime reading a bundle of these entries, with TUNER_<NAME>=value for each of env."""
    _write_bundle(tmp_path / "b.json", entries)
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(tmp_path / "b.json"))
    for name, value in env.items():
        monkeypatch.setenv(f"TUNER_{name}", value)
    live_env()


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "tuner.runtime"]


def _unblock(fifo, text='{"format": "tuner-bundle", "entries": []}'):
    """Write a FIFO bundle from a thread (its reader, the resolver, is blocked opening it)."""
    threading.Thread(target=lambda: fifo.write_text(text), daemon=True).start()


def test_each_bad_setting_is_one_warning_of_its_own(live_env, monkeypatch, caplog):  # noqa: F811
    """Two settings with the same bad value are two problems, each told once, each given its default."""
    monkeypatch.setenv("TUNER_RUNTIME_CACHE_SIZE", "abc")
    monkeypatch.setenv("TUNER_RUNTIME_RETRY_S", "abc")
    live_env()
    _, problems = settings.lenient()
    assert len(problems) == 2
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        st = cache.state()
    assert _messages(caplog) == [f"tuner: {p}; using its default" for p in problems]
    assert (st.size, st.retry_s) == (settings.DEFAULTS["runtime_cache_size"], settings.DEFAULTS["runtime_retry_s"])


def test_plug_ins_that_cannot_be_configured_are_one_warning_and_built_ins_still_answer(live_env, monkeypatch,  # noqa: F811
                                                                                       caplog, tmp_path):
    def broken(_settings):
        raise RuntimeError("no module named 'mine'\nTraceback ...")

    monkeypatch.setattr(settings, "configure_plugins", broken)
    _serving(monkeypatch, live_env, tmp_path, [])
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        answer = runtime.explain("matmul", M=64, N=64, K=64, dtype="float32")
    assert answer.config  # a built-in is served all the same
    assert _messages(caplog) == ["tuner: cannot configure plug-in modules (RuntimeError: no module named 'mine')"]


def test_a_default_served_at_the_deadline_says_the_deadline_in_milliseconds(live_env, monkeypatch, tmp_path):  # noqa: F811
    fifo = _fifo_bundle(monkeypatch, live_env, tmp_path, RUNTIME_DEADLINE_MS=50)
    try:
        answer = runtime.explain("tiles", N=100, dtype="float32")
        assert answer.reason == (f"waiting for bundle {fifo} (deadline 50 ms); the answer replaces this when it comes")
    finally:
        _unblock(fifo)
        assert runtime.settle(30)


def test_an_unknown_device_opens_no_source_starts_no_thread_and_counts_nothing(live_env, monkeypatch,  # noqa: F811
                                                                               tmp_path):
    _serving(monkeypatch, live_env, tmp_path, [_entry(_key("tiles", N=64), {"BLOCK": 128, "num_warps": 4}, _live_fp())],
             MISS_FILE=str(tmp_path / "m.jsonl"), MISS_FLUSH_S="3600", DEVICE="cuda:7")  # no such GPU here
    st = cache.state()
    assert (st.identity.device_class, st.source, st.counter, st.thread) == (None, None, None, None)
    assert runtime.explain("tiles", N=64, dtype="float32").reason == "the device could not be probed"
    assert runtime.flush_misses() == 0 and not (tmp_path / "m.jsonl").exists()


def test_the_source_checks_rows_for_the_live_device_and_warns_through_the_state(live_env, monkeypatch,  # noqa: F811
                                                                                tmp_path):
    _serving(monkeypatch, live_env, tmp_path, [])
    st = cache.state()
    assert st.source.target is st.identity.target and st.source.warn == st.warn
    assert st.thread.name == "tuner-runtime"  # what a thread dump of a model server shows


def test_a_bundle_deployment_counts_misses_into_the_homes_file_by_default(live_env, monkeypatch, tmp_path):  # noqa: F811
    import json

    _serving(monkeypatch, live_env, tmp_path, _near_row(), MISS_FLUSH_S="3600")
    runtime.lookup("tiles", N=50, dtype="float32")
    assert runtime.flush_misses() == 1
    [record] = [json.loads(line) for line in (tmp_path / "misses.jsonl").read_text().splitlines()]
    assert (record["kernel"], record["count"], record["level"]) == ("tiles", 1, "nearest")


def test_no_flush_interval_means_no_miss_counting(live_env, monkeypatch, tmp_path):  # noqa: F811
    _serving(monkeypatch, live_env, tmp_path, _near_row(), MISS_FILE=str(tmp_path / "m.jsonl"), MISS_FLUSH_S="0")
    for _ in range(3):
        runtime.lookup("tiles", N=50, dtype="float32")
    assert cache.state().counter is None and runtime.flush_misses() == 0
    assert not (tmp_path / "m.jsonl").exists()


def test_misses_are_written_on_the_flush_interval_without_being_asked(live_env, monkeypatch, tmp_path):  # noqa: F811
    """A sub-second interval is an interval: the flusher writes on its own."""
    import json

    misses = tmp_path / "m.jsonl"
    _serving(monkeypatch, live_env, tmp_path, _near_row(), MISS_FILE=str(misses), MISS_FLUSH_S="0.2")
    runtime.lookup("tiles", N=50, dtype="float32")
    wait_for(lambda: misses.exists() and misses.read_text().strip(), 20, "the flusher's record", poll_s=0.05)
    assert [json.loads(line)["count"] for line in misses.read_text().splitlines()] == [1]


def test_a_written_winner_has_its_key_asked_again_at_once(live_env, monkeypatch, tmp_path):  # noqa: F811
    """A drop-in's reported winner, once written, has the resolver ask the source for its key again
    (not after the refresh period): the answer then served is the stored one."""
    from tuner.runtime import reported

    bundle, exact = tmp_path / "b.json", {"BLOCK": 32, "num_warps": 1}
    _write_bundle(bundle, _near_row())
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(bundle))
    monkeypatch.setenv("TUNER_MISS_FILE", str(tmp_path / "m.jsonl"))
    monkeypatch.setenv("TUNER_MISS_FLUSH_S", "3600")
    monkeypatch.setenv("TUNER_RUNTIME_REFRESH_S", "3600")
    monkeypatch.setenv("TUNER_RUNTIME_RETRY_S", "0")  # the bundle is read again at every question
    live_env()
    assert runtime.explain("tiles", N=50, dtype="float32").level == "nearest"
    assert runtime.explain("tiles", N=100, dtype="float32").level == "exact"
    names = ("N", "dtype")
    assert reported.report("tiles", names, (100, "float32"), exact, 1.5) is False  # not a miss: nothing counts
    _write_bundle(bundle, [_entry(_key("tiles", N=100), {"BLOCK": 64, "num_warps": 4}, _live_fp()),
                           _entry(_key("tiles", N=50), exact, _live_fp())])
    assert reported.report("tiles", names, (50, "float32"), exact, 1.5) is True
    wait_for(lambda: runtime.explain("tiles", N=50, dtype="float32").level == "exact", 20, "the stored answer",
             poll_s=0.05)


def _refusing_split(monkeypatch, *kernels):
    from search_spaces import registry

    def split(config, vendor):
        raise ValueError("boom\nsecond line")

    for kernel in kernels:
        monkeypatch.setattr(registry.get(kernel), "split_config", split)


def test_a_kernel_that_cannot_be_answered_is_told_once_per_kernel_and_nothing_waits_on_it(live_env, monkeypatch,  # noqa: F811
                                                                                         tmp_path, caplog):
    _serving(monkeypatch, live_env, tmp_path, [], RUNTIME_DEADLINE_MS="3000")
    _refusing_split(monkeypatch, "tiles", "matmul")
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        for kernel, dims in (("tiles", {"N": 64}), ("matmul", {"M": 64, "N": 64, "K": 64}), ("tiles", {"N": 65})):
            with pytest.raises(ValueError, match="^boom"):  # the kernel's own bug, raised on the caller's thread
                runtime.lookup(kernel, dtype="float32", **dims)
    labels = [_key("tiles", N=64).label(), _key("matmul", M=64, N=64, K=64).label()]
    assert [m for m in _messages(caplog) if "cannot answer" in m] == [
        f"tuner: cannot answer tiles {labels[0]} (ValueError: boom)",
        f"tuner: cannot answer matmul {labels[1]} (ValueError: boom)"]
    assert runtime.settle(5) is True  # no question is left waiting


def test_a_re_ask_that_cannot_be_answered_leaves_the_resolver_answering(live_env, monkeypatch, tmp_path):  # noqa: F811
    """A refresh of a cached key that raises (no caller waits on it) costs that refresh only."""
    _serving(monkeypatch, live_env, tmp_path, _near_row(), RUNTIME_REFRESH_S="0.1", RUNTIME_DEADLINE_MS="5000")
    assert runtime.explain("tiles", N=50, dtype="float32").level == "nearest"  # asked again in 0.1 s
    st = cache.state()
    from search_spaces import registry

    spec = registry.get("tiles")
    real, failed = spec.split_config, []

    def split(config, vendor):
        failed.append(1)
        raise ValueError("boom")
    monkeypatch.setattr(spec, "split_config", split)
    wait_for(lambda: failed, 20, "the refresh to fail", poll_s=0.02)
    monkeypatch.setattr(spec, "split_config", real)
    assert runtime.explain("tiles", N=100, dtype="float32").level == "exact"  # answered, not the deadline's default
    assert st.thread.is_alive()


def test_a_source_down_serves_later_keys_the_default_saying_when_it_is_asked_again(live_env, monkeypatch):  # noqa: F811
    import re

    from search_spaces import registry

    monkeypatch.setenv("TUNER_DB_URL", "postgresql+psycopg://u:pw@127.0.0.1:1/none")
    monkeypatch.setenv("TUNER_RUNTIME_RETRY_S", "120")
    live_env()
    first = runtime.explain("matmul", M=64, N=64, K=64, dtype="float32")
    later = runtime.explain("matmul", M=96, N=64, K=64, dtype="float32")
    spec, st = registry.get("matmul"), cache.state()
    where = st.source.describe()
    cause = re.fullmatch(re.escape(where) + r" unreachable \((\w+: .+)\)", first.reason)
    assert cause and "connection" in cause.group(1).lower(), first.reason
    assert re.fullmatch(re.escape(f"{where} unreachable ({cause.group(1)}); asked again in ") + r"(119|120) s",
                        later.reason), later.reason
    for answer, key in ((first, _key("matmul", M=64, N=64, K=64)), (later, _key("matmul", M=96, N=64, K=64))):
        assert (answer.level, answer.unreachable, answer.device_class) == ("default", True, "cpu-interpreter")
        assert answer.config == spec.default(key, st.identity.target)


def test_configurations_of_another_stack_are_told_once_per_kernel_and_exact_ones_never(live_env, monkeypatch,  # noqa: F811
                                                                                       tmp_path, caplog):
    fp, old = _live_fp(), "0" * 16
    cfg = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 4, "num_stages": 1}
    _serving(monkeypatch, live_env, tmp_path, [_entry(_key("tiles", N=200), {"BLOCK": 32, "num_warps": 1}, fp),
                                        _entry(_key("tiles", N=100), {"BLOCK": 64, "num_warps": 4}, old),
                                        _entry(_key("matmul", M=64, N=64, K=64), cfg, old)])
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        assert runtime.explain("tiles", N=200, dtype="float32").level == "exact"
        assert _messages(caplog) == []
        for _ in range(2):
            assert runtime.explain("tiles", N=100, dtype="float32").level == "other_fingerprint"
        assert runtime.explain("matmul", M=64, N=64, K=64, dtype="float32").level == "other_fingerprint"
    assert _messages(caplog) == [
        f"tuner: {k} configurations on cpu-interpreter were tuned under another stack fingerprint than the live "
        f"{fp}; serving them until a retune" for k in ("tiles", "matmul")]


def test_a_stored_row_the_kernel_refuses_is_told_and_the_source_stays_up(live_env, monkeypatch, tmp_path,  # noqa: F811
                                                                        caplog):
    _serving(monkeypatch, live_env, tmp_path, [_entry(_key("tiles", N=64), {"BLOCK": 48, "num_warps": 1}, _live_fp()),
                                        _entry(_key("tiles", N=200), {"BLOCK": 32, "num_warps": 1}, _live_fp())])
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        assert runtime.explain("tiles", N=64, dtype="float32").level == "nearest"  # 48 is not a BLOCK of tiles
    told = _messages(caplog)
    assert len(told) == 1 and "tiles" in told[0] and "served the next level" in told[0], told
    assert runtime.explain("tiles", N=200, dtype="float32").level == "exact"


def test_the_fingerprint_override_decides_which_rows_are_exact(live_env, monkeypatch, tmp_path, caplog):  # noqa: F811
    from devices.fingerprint import live_fingerprint
    from devices.probe import probe

    override = "driver=999.1"
    fp = live_fingerprint(probe("cpu")[0], override).hash
    assert fp != _live_fp()
    _serving(monkeypatch, live_env, tmp_path, [_entry(_key("tiles", N=64), {"BLOCK": 32, "num_warps": 1}, fp)],
             FINGERPRINT_OVERRIDE=override)
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        assert runtime.explain("tiles", N=64, dtype="float32").level == "exact"
    assert cache.state().identity.fingerprint == fp and _messages(caplog) == []


def test_an_unknown_kernel_is_the_same_error_every_time(live_env):  # noqa: F811
    said = []
    for _ in range(2):
        with pytest.raises(LookupError) as err:
            runtime.lookup("no_such_kernel", N=1, dtype="float32")
        said.append(str(err.value))
    assert "no_such_kernel" in said[0] and said[1] == said[0]


def test_clearing_the_cache_never_waits_for_a_sink_that_hangs(live_env, monkeypatch, tmp_path):  # noqa: F811
    """clear_cache() (after a retune, from a model's thread) hands the last write to the flusher and
    returns: a miss file that blocks (a FIFO nobody reads) holds the flusher, not the caller."""
    import os

    fifo = tmp_path / "m.jsonl"
    os.mkfifo(fifo)
    _serving(monkeypatch, live_env, tmp_path, _near_row(), MISS_FILE=str(fifo), MISS_FLUSH_S="3600")
    runtime.lookup("tiles", N=50, dtype="float32")  # a miss: the flusher thread starts
    counter = cache.state().counter
    t0 = time.monotonic()
    runtime.clear_cache()
    took = time.monotonic() - t0
    reader = threading.Thread(target=lambda: open(fifo).read(), daemon=True)  # let the flusher finish
    reader.start()
    counter._thread.join(20)
    assert took < 0.9, took  # counter.close(1) would take a second, close(None) until a reader comes
    assert not counter._thread.is_alive()
