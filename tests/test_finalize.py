"""The final re-measurement's rules, each checked by the case that tells a weaker rule apart:
`faster` replaces the current best only when faster in every round AND by more than the noise in
the median; `remeasure` starts each round one place later, so no configuration always runs first.

`remeasure` is driven here by a harness stand-in that records the order of its runs: what is
checked is the schedule, which no timing can show reliably."""
from __future__ import annotations

import pytest

from devices.classes import CPU_INTERPRETER
from harness.protocol import TrialResult
from search import finalize
from search.finalize import NOISE, ROUNDS, faster, remeasure
from search.loop import SearchContext
from search_spaces import registry
from keys import config_hash


@pytest.mark.parametrize("new, old, why", [
    ([0.995, 0.995, 0.995], [1.0, 1.0, 1.0], "within 1%: inside the noise"),
    ([0.5, 0.5, 1.2], [1.0, 1.0, 1.0], "faster in the median, slower in one round"),
    ([0.97, 0.97, 1.0], [1.0, 1.0, 1.0], "as fast in one round"),
    ([], [], "never measured together"),
])
def test_a_leader_that_is_not_faster_beyond_noise_never_replaces_the_best(new, old, why):
    assert not faster(new, old), why


def test_a_leader_faster_in_every_round_and_beyond_noise_replaces_the_best():
    old = [1.0, 1.1, 0.9]
    new = [v * (1 - 2 * NOISE) for v in old]  # twice the noise faster, in every round
    assert faster(new, old)
    assert not faster(old, new)


def test_every_round_counts_not_only_those_of_the_shorter_list():
    # a leader whose first rounds are faster but that dropped out later is judged on the rounds
    # the two were measured in together, and a single slower shared round still decides
    assert faster([0.5, 0.5], [1.0, 1.0, 1.0])
    assert not faster([0.5, 1.5], [1.0, 1.0, 1.0])


class RecordingHarness:
    """Runs nothing: answers each request with a fixed time and records the order."""

    def __init__(self, ms: dict[str, float]):
        self.ms, self.order = ms, []

    def run(self, request):
        h = config_hash(request.config)
        self.order.append(h)
        return TrialResult("ok", median_ms=self.ms[h], cv=0.01, config=request.config)


def _ctx() -> SearchContext:
    spec = registry.get("tiles")
    return SearchContext(db_url="sqlite://", job_id="j", job_key_id=1, key=spec.make_key({"N": 64}, "float32"),
                         device="cpu", target=CPU_INTERPRETER.target, device_class_id=1, fingerprint_id=1,
                         study_name="s", budget_trials=20, trial_timeout_s=120, heartbeat_s=10, grace_s=60)


def test_each_round_starts_one_place_later():
    configs = [{"BLOCK": b, "num_warps": 1} for b in (16, 32, 64)]
    hashes = [config_hash(c) for c in configs]
    harness = RecordingHarness({h: 1.0 + i for i, h in enumerate(hashes)})
    timed = remeasure(_ctx(), harness, configs)
    n = len(configs)
    rounds = [harness.order[i * n:(i + 1) * n] for i in range(ROUNDS)]
    assert len(harness.order) == ROUNDS * n
    for r, order in enumerate(rounds):
        assert order == hashes[r % n:] + hashes[:r % n], (r, order)
    assert {h: rounds_ms for h, (rounds_ms, _) in timed.items()} == {h: [1.0 + i] * ROUNDS for i, h in enumerate(hashes)}


def test_a_leader_that_fails_in_a_later_round_is_dropped():
    configs = [{"BLOCK": b, "num_warps": 1} for b in (16, 32)]
    bad = config_hash(configs[1])

    class FailingSecondTime(RecordingHarness):
        def run(self, request):
            out = super().run(request)
            if config_hash(request.config) == bad and self.order.count(bad) == 2:
                return TrialResult("error", "staged")
            return out

    timed = remeasure(_ctx(), FailingSecondTime({config_hash(c): 1.0 for c in configs}), configs)
    assert set(timed) == {config_hash(configs[0])}
    assert timed[config_hash(configs[0])] == ([1.0] * ROUNDS, 0.01)  # the others keep every round, and the cv


def test_a_leader_that_fails_first_leaves_the_others_every_round():
    configs = [{"BLOCK": b, "num_warps": 1} for b in (16, 32, 64)]

    class FailingFirst(RecordingHarness):
        def run(self, request):
            out = super().run(request)
            return TrialResult("error", "staged") if request.config == configs[0] else out

    timed = remeasure(_ctx(), FailingFirst({config_hash(c): 1.0 for c in configs}), configs)
    assert {h: len(rounds) for h, (rounds, _) in timed.items()} == {config_hash(c): ROUNDS for c in configs[1:]}
    assert remeasure(_ctx(), RecordingHarness({}), []) == {}


def test_a_wrong_result_that_carries_a_time_is_dropped_too():
    configs = [{"BLOCK": b, "num_warps": 1} for b in (16, 32)]

    class Wrong(RecordingHarness):
        def run(self, request):
            out = super().run(request)
            return TrialResult("wrong_result", median_ms=0.1) if request.config == configs[1] else out

    assert set(remeasure(_ctx(), Wrong({config_hash(c): 1.0 for c in configs}), configs)) == {config_hash(configs[0])}


def test_exactly_the_noise_is_not_beyond_it():
    assert not faster([1.0 - NOISE] * 3, [1.0] * 3)


def test_the_final_cv_is_the_job_s_when_stricter():
    from dataclasses import replace

    from harness.protocol import Measurement

    seen = []

    class Cv(RecordingHarness):
        def run(self, request):
            seen.append(request.max_cv)
            return super().run(request)

    config = {"BLOCK": 16, "num_warps": 1}
    remeasure(replace(_ctx(), measurement=Measurement(max_cv=0.03)), Cv({config_hash(config): 1.0}), [config])
    remeasure(_ctx(), Cv({config_hash(config): 1.0}), [config])
    assert seen == [0.03] * ROUNDS + [finalize.FINAL_MAX_CV] * ROUNDS


# ---- finalize() on a real database (SQLite), the harness replaced by fixed times per configuration ----

B = {b: {"BLOCK": b, "num_warps": 4} for b in (16, 32, 64, 128)}  # the default of tiles is BLOCK 16, 1 warp
DEFAULT = {"BLOCK": 16, "num_warps": 1}


class TimedHarness:
    """Each configuration's time per run, in the order of its runs (a list per config); a missing
    configuration fails."""

    def __init__(self, times: dict[str, list[float]]):
        self.times, self.runs = times, {h: 0 for h in times}

    def run(self, request):
        h = config_hash(request.config)
        if h not in self.times:
            return TrialResult("error", "staged failure", config=request.config)
        ms = self.times[h][min(self.runs[h], len(self.times[h]) - 1)]
        self.runs[h] += 1
        return TrialResult("ok", median_ms=ms, cv=0.01, config=request.config)


@pytest.fixture
def study(tmp_path):
    """A key's study with trials stored: BLOCK 32 timed fastest in the search, then 64, then 128."""
    from dataclasses import replace

    from db import lifecycle, store
    from db.session import session_scope, upgrade

    url = f"sqlite:///{tmp_path}/t.db"
    upgrade(url)
    with session_scope(url) as s:
        dc, fp = store.store_identity(s, CPU_INTERPRETER.to_json(), {"hash": "f" * 16, "driver": "none",
                                                                    "runtime": "none", "triton": "3.6.0",
                                                                    "torch": "2.13.0"})
        job, _ = lifecycle.create_job(s, kind="tune", origin="local", kernel="tiles", kernel_version="v", keys=[], key_hashes=[],
                                  sampler="auto", seed=0, budget_trials=1, request={})
        ctx = replace(_ctx(), db_url=url, job_id=job, device_class_id=dc, fingerprint_id=fp)
        # ties (64 twice at one time, 128 as fast as 64; a slower 128 after) must not matter
        for n, (b, ms, status) in enumerate([(32, 0.5, "ok"), (64, 0.6, "ok"), (128, 0.6, "ok"), (16, 0.1, "invalid"),
                                             (64, 0.4, "wrong_result"), (64, 0.6, "ok"), (128, 0.9, "ok")]):
            store.record_trial(s, kernel="tiles", key_hash=ctx.key.stable_hash, device_class_id=dc, fingerprint_id=fp,
                               study_name=ctx.study_name, optuna_number=n, config=B[b], config_hash=config_hash(B[b]),
                               status=status, median_ms=ms)
    return ctx


def _current(ctx):
    return finalize.current_best(ctx)


def _write_current(ctx, config, ms):
    from db import store
    from db.session import session_scope

    with session_scope(ctx.db_url) as s:
        row = store.write_best(s, kernel="tiles", kernel_version=ctx.key.version, key_hash=ctx.key.stable_hash,
                               key=ctx.key.to_json(), dtype="float32", device_class_id=ctx.device_class_id,
                               fingerprint_id=ctx.fingerprint_id, config=config, config_hash=config_hash(config),
                               median_ms=ms, default_ms=None, speedup=None, cv=0.0, trials=1, job_id=None)
        s.flush()
        return row.id


def _h(b):
    return config_hash(B[b])


def test_the_leaders_are_the_fastest_distinct_ok_trials(study):
    top, counted = finalize.leaders(study.db_url, study.study_name)
    assert top == [B[32], B[64], B[128]]  # ok trials only, each configuration once, fastest first
    assert counted == 6  # the invalid trial is not counted
    assert finalize.leaders(study.db_url, study.study_name, k=1)[0] == [B[32]]


def test_the_re_measurement_decides_and_is_stored_with_the_default_s_time(study):
    harness = TimedHarness({_h(32): [0.9], _h(64): [0.5], _h(128): [0.8], config_hash(DEFAULT): [1.0]})
    done = finalize.finalize(study, harness, "cpu-interpreter")
    assert done.config == B[64] and done.median_ms == 0.5 and done.default_ms == 1.0 and done.speedup == 2.0
    assert not done.kept and done.trials == 6
    assert all(n == ROUNDS for n in harness.runs.values())
    current = _current(study)
    assert current.id == done.best_id and current.config == B[64] and current.median_ms == 0.5
    assert current.config_hash == _h(64) and current.key == study.key.to_json() and current.trials == 6
    assert (current.default_ms, current.speedup, current.cv, done.cv) == (1.0, 2.0, 0.01, 0.01)
    assert current.job_id == study.job_id


def test_a_default_that_fails_is_reported_as_no_time(study):
    harness = TimedHarness({_h(32): [0.5], _h(64): [0.9], _h(128): [0.8]})
    done = finalize.finalize(study, harness, "cpu-interpreter")
    assert done.config == B[32] and done.default_ms is None and done.speedup is None
    assert _current(study).speedup is None
    kept = finalize.finalize(study, harness, "cpu-interpreter")
    assert kept.kept and kept.default_ms is None and kept.speedup is None


def test_leaders_re_measured_alike_are_ranked_without_comparing_configurations(study):
    harness = TimedHarness({_h(32): [0.7], _h(64): [0.7], _h(128): [0.7], config_hash(DEFAULT): [1.0]})
    assert finalize.finalize(study, harness, "cpu-interpreter").config == B[32]  # the search's order breaks the tie


def test_a_best_on_another_class_with_the_same_stack_is_not_this_class_s(study):
    from dataclasses import replace

    from db import store
    from db.session import session_scope
    from devices.classes import KNOWN_DEVICES

    h100 = next(d for d in KNOWN_DEVICES if d.slug == "h100-sxm-80gb")
    with session_scope(study.db_url) as s:
        dc = store.get_or_create_device_class(s, slug=h100.slug, vendor=h100.vendor, arch=h100.arch, name=h100.name,
                                              compute_units=h100.compute_units, memory_gb=h100.memory_gb)
        s.flush()
        other = replace(study, device_class_id=dc.id)
    _write_current(other, B[128], 0.1)
    assert _current(study) is None


def test_the_default_wins_when_it_re_measures_fastest(study):
    harness = TimedHarness({_h(32): [0.9], _h(64): [0.7], _h(128): [0.8], config_hash(DEFAULT): [0.6]})
    done = finalize.finalize(study, harness, "cpu-interpreter")
    assert done.config == DEFAULT and done.median_ms == 0.6 and done.speedup == 1.0


def test_a_current_best_within_noise_stays(study):
    old = _write_current(study, B[128], 0.8)
    harness = TimedHarness({_h(32): [0.795], _h(64): [0.9], _h(128): [0.8], config_hash(DEFAULT): [1.0]})
    done = finalize.finalize(study, harness, "cpu-interpreter")
    assert done.kept and done.config == B[128] and done.best_id == old and done.median_ms == 0.8
    assert (done.default_ms, done.speedup, done.cv, done.trials) == (1.0, 1.0 / 0.8, 0.01, 6)
    assert _current(study).id == old


def test_a_current_best_that_is_no_leader_is_measured_in_the_same_rounds(study):
    """The current best came from an earlier study (not a leader here): it is re-measured with the
    leaders, and stays when they are not faster beyond noise."""
    old = _write_current(study, B[16], 0.1)  # its stored time is not what decides
    harness = TimedHarness({_h(32): [0.795], _h(64): [0.9], _h(128): [0.95], _h(16): [0.8],
                            config_hash(DEFAULT): [1.0]})
    done = finalize.finalize(study, harness, "cpu-interpreter")
    assert harness.runs[_h(16)] == ROUNDS
    assert done.kept and done.config == B[16] and done.best_id == old and done.median_ms == 0.8


def test_the_best_of_another_key_is_not_this_key_s(study):
    from dataclasses import replace

    other = replace(study, key=registry.get("tiles").make_key({"N": 128}, "float32"))
    _write_current(other, B[128], 0.1)
    assert _current(study) is None
    harness = TimedHarness({_h(32): [0.5], _h(64): [0.9], _h(128): [0.8], config_hash(DEFAULT): [1.0]})
    assert not finalize.finalize(study, harness, "cpu-interpreter").kept


def test_a_default_as_fast_as_the_best_leader_leaves_the_leader(study):
    harness = TimedHarness({_h(32): [0.6], _h(64): [0.9], _h(128): [0.8], config_hash(DEFAULT): [0.6]})
    assert finalize.finalize(study, harness, "cpu-interpreter").config == B[32]


def test_a_best_written_meanwhile_is_measured_against(study):
    """Another finalizer writes the key's best while this one re-measures: this one measures again
    against it, and gives up with a clear error when that keeps happening."""
    class Racing(TimedHarness):
        def __init__(self, times, writes):
            super().__init__(times)
            self.writes = writes

        def run(self, request):
            if self.writes and sum(self.runs.values()) % (4 * ROUNDS) == 0:
                self.writes -= 1
                _write_current(study, B[128], 0.8)
            return super().run(request)

    times = {_h(32): [0.5], _h(64): [0.9], _h(128): [0.8], config_hash(DEFAULT): [1.0]}
    with pytest.raises(RuntimeError, match=f"changed {finalize.MAX_REMEASURES} times while it was re-measured"):
        finalize.finalize(study, Racing(times, finalize.MAX_REMEASURES), "cpu-interpreter")
    raced = Racing(times, 1)
    done = finalize.finalize(study, raced, "cpu-interpreter")
    assert not done.kept and done.config == B[32] and _current(study).id == done.best_id
    assert sum(raced.runs.values()) == 2 * 4 * ROUNDS  # measured again against the row written meanwhile


def test_a_current_best_beaten_in_every_round_is_replaced(study):
    old = _write_current(study, B[128], 0.8)
    harness = TimedHarness({_h(32): [0.5], _h(64): [0.9], _h(128): [0.8], config_hash(DEFAULT): [1.0]})
    done = finalize.finalize(study, harness, "cpu-interpreter")
    assert not done.kept and done.config == B[32] and done.best_id != old
    assert _current(study).id == done.best_id


def test_a_current_best_beaten_in_the_median_only_stays(study):
    old = _write_current(study, B[128], 0.8)
    harness = TimedHarness({_h(32): [0.5, 0.5, 0.9], _h(64): [0.9], _h(128): [0.8], config_hash(DEFAULT): [1.0]})
    done = finalize.finalize(study, harness, "cpu-interpreter")
    assert done.kept and _current(study).id == old


def test_nothing_is_stored_when_no_leader_runs(study):
    assert finalize.finalize(study, TimedHarness({config_hash(DEFAULT): [1.0]}), "cpu-interpreter") is None
    assert _current(study) is None


def test_a_guard_that_refuses_writes_nothing(study):
    from sqlalchemy.orm import Session

    asked = []

    def guard(answer):
        def check(s):
            asked.append(isinstance(s, Session))
            return answer
        return check

    harness = TimedHarness({_h(32): [0.5], _h(64): [0.9], _h(128): [0.8], config_hash(DEFAULT): [1.0]})
    with pytest.raises(finalize.Superseded):
        finalize.finalize(study, harness, "cpu-interpreter", guard=guard(False))
    assert _current(study) is None
    done = finalize.finalize(study, harness, "cpu-interpreter", guard=guard(True))
    assert not done.kept and _current(study).id == done.best_id
    with pytest.raises(finalize.Superseded):  # kept (the current best is the winner): the guard is asked too
        finalize.finalize(study, harness, "cpu-interpreter", guard=guard(False))
    assert finalize.finalize(study, harness, "cpu-interpreter", guard=guard(True)).kept
    assert _current(study).id == done.best_id
    assert asked == [True] * 4


def test_the_default_re_measured_is_the_kernel_s_for_this_key_and_target(study, monkeypatch):
    """A kernel's default depends on the key and the target (tiles' does not, so this one stands in
    for it): the default re-measured beside the leaders is the one for this key on this target."""
    def default(key, target):
        return DEFAULT if (key, target) == (study.key, study.target) else B[128]

    monkeypatch.setattr(registry.get("tiles"), "default", default)
    harness = TimedHarness({_h(32): [0.5], _h(64): [0.9], _h(128): [0.8], config_hash(DEFAULT): [1.0]})
    done = finalize.finalize(study, harness, "cpu-interpreter")
    assert done.config == B[32] and done.default_ms == 1.0 and done.speedup == 2.0
    assert harness.runs[config_hash(DEFAULT)] == ROUNDS
