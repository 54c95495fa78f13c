"""Search strategies through the same `propose` the live search uses, on a synthetic sweep."""
import statistics

import pytest

from search import replay, strategies
from search.strategies.base import STARTUP_TRIALS
from keys import TuningKey
from devices.targets import target_for

STRATEGIES = strategies.names()


@pytest.fixture(scope="module")
def sweep():
    rows = []
    for p in range(1, 13):
        for q in range(1, 13):
            if (p + q) % 7 == 0:
                continue  # not valid on this "device": absent from the sweep
            status = "crashed" if (p, q) == (2, 2) else "ok"
            rows.append([p, q, 1, 1.0 + (p - 9) ** 2 + 0.5 * (q - 4) ** 2 + 0.1 * p * q, status])
    doc = {"kernel": "trivial", "params": ["P", "Q", "num_warps"], "rows": rows,
           "key": {"kernel": "trivial", "version": "x", "dims": {"N": 16}, "dtype": "float32"}}
    spec = replay.SweepSpec(doc)
    yield spec, TuningKey.from_json(doc["key"]), target_for("interpreter")


def test_the_builtin_strategies_are_registered_default_first():
    assert STRATEGIES[:4] == ["auto", "tpe", "random", "grid"] and strategies.DEFAULT == "auto"


@pytest.mark.parametrize("name", STRATEGIES)
def test_only_valid_points_are_evaluated_and_replay_is_deterministic(sweep, name):
    spec, key, target = sweep
    a = replay.replay_one(spec, key, target, name, seed=3, budget=30)
    b = replay.replay_one(spec, key, target, name, seed=3, budget=30)
    assert a == b and len(a) == 30
    assert all(x >= y for x, y in zip(a, a[1:]))  # best-so-far never gets worse


def test_grid_covers_the_valid_space(sweep):
    spec, key, target = sweep
    curve = replay.replay_one(spec, key, target, "grid", seed=0, budget=len(spec.times))
    assert curve[-1] == min(t for t in spec.times.values() if t is not None)


def test_auto_beats_random(sweep):
    spec, key, target = sweep
    opt = min(t for t in spec.times.values() if t is not None)

    def median_at(name, n):
        return statistics.median(opt / replay.replay_one(spec, key, target, name, s, n)[-1] for s in range(8))
    assert median_at("auto", 20) > median_at("random", 20)


def test_warm_start_takes_the_nearest_stored_shapes(tmp_path):
    from db import store
    from db.session import session_scope, upgrade
    from search.loop import nearest_bests
    from search_spaces import registry

    url = f"sqlite:///{tmp_path}/t.db"
    upgrade(url)
    spec = registry.get("matmul")
    with session_scope(url) as s:
        dc = store.get_or_create_device_class(s, slug="cpu-interpreter", vendor="cpu", arch="interpreter",
                                              name="cpu", compute_units=1, memory_gb=0)
        fp = store.get_or_create_fingerprint(s, hash="f" * 16, driver="none", runtime="none", triton="3.6",
                                             torch="2.13", fields={})
        s.flush()
        for m in (64, 256, 1024, 4096):
            key = spec.make_key({"M": m, "N": 512, "K": 512}, "float32")
            store.write_best(s, kernel="matmul", kernel_version=key.version, key_hash=key.stable_hash,
                             key=key.to_json(), dtype="float32", device_class_id=dc.id, fingerprint_id=fp.id,
                             config={"M_was": m}, config_hash=str(m), median_ms=1.0, default_ms=None,
                             speedup=None, cv=None, trials=1, job_id=None)
        dc_id = dc.id
    want = spec.make_key({"M": 300, "N": 512, "K": 512}, "float32")
    assert [c["M_was"] for c in nearest_bests(url, want, dc_id, k=2)] == [256, 1024]
    assert nearest_bests(url, spec.make_key({"M": 300, "N": 512, "K": 512}, "float16"), dc_id) == []


def test_seeds_that_do_not_fit_the_shape_start_from_their_nearest_fit():
    from search_spaces import registry
    spec, target = registry.get("matmul"), target_for("sm_90")
    key = spec.make_key({"M": 16, "N": 4096, "K": 4096}, "bfloat16")
    warm = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
    assert spec.check(warm, key, target) is not None  # a tile eight times taller than the problem
    seeds = strategies.make("auto", 0).seeds(spec, key, target, [warm])
    assert all(spec.check(c, key, target) is None for c in seeds)
    assert seeds[1] == {**warm, "BLOCK_M": 16}  # after the default: the warm start, shrunk to fit
    # the kernel's lists, shrunk the same way, follow instead of being dropped: their likeliest
    # first, as many as TPE would otherwise draw at random
    assert all(c["BLOCK_M"] == 16 for c in seeds[1:])
    listed = spec.known_good(key, target)
    assert len(listed) > STARTUP_TRIALS and len(seeds) <= 2 + STARTUP_TRIALS
    assert all(c in seeds for c in listed[:STARTUP_TRIALS] if c != seeds[1])


def test_a_sweep_of_format_2_keeps_every_round_and_reports_the_noise(sweep):
    doc = {"kernel": "trivial", "params": ["P", "Q", "num_warps"], "rounds": 2,
           "columns": ["P", "Q", "num_warps", "ms", "status", "round_ms"],
           "rows": [[1, 1, 1, 2.0, "ok", [2.0, 3.0]], [1, 2, 1, 1.0, "ok", [1.0, 1.1]], [2, 1, 1, None, "crashed", []]]}
    spec = replay.SweepSpec(doc)
    assert sorted(spec.times.values(), key=str) == [1.0, 2.0, None]
    assert replay.noise(doc) == {"rounds": 2, "median_round_spread": 0.3}


def test_proposals_in_flight_never_repeat(sweep):
    spec, key, target = sweep
    curve = replay.replay_one(spec, key, target, "auto", seed=1, budget=40, width=8)
    assert len(curve) == 40 and all(x >= y for x, y in zip(curve, curve[1:]))
    grid = replay.replay_one(spec, key, target, "grid", seed=0, budget=len(spec.times), width=8)
    assert grid[-1] == min(t for t in spec.times.values() if t is not None)  # every point, each once


def test_with_trials_in_flight_auto_steps_around_the_incumbent(sweep):
    """Before TPE models anything, a proposal made while others are in flight is a neighbour of
    the best told so far, not a random draw; with nothing in flight nothing changes."""
    from keys import config_hash

    spec, key, target = sweep
    best, other = {"P": 9, "Q": 4, "num_warps": 1}, {"P": 1, "Q": 1, "num_warps": 1}
    seen = {config_hash(best): ("ok", 1.0), config_hash(other): ("ok", 70.0),
            config_hash({"P": 5, "Q": 5, "num_warps": 1}): ("pending", None)}
    auto = strategies.make("auto", 0)
    step = auto.next_config(spec, key, target, seen, counted=3)
    assert step is not None and sum(step[p] != best[p] for p in best) == 1
    assert auto.next_config(spec, key, target, {k: v for k, v in seen.items() if v[0] == "ok"}, counted=2) is None
    assert strategies.make("tpe", 0).next_config(spec, key, target, seen, counted=3) is None


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_space_with_few_valid_points_is_measured_whole_with_few_asks(sweep, name):
    """12 of 144 points valid (as a small M leaves 16 of 4,800 on sm_90): every strategy measures
    all 12, then stops; a proposal that is invalid or measured is repaired, not asked again."""
    import optuna

    from search.propose import propose
    from keys import config_hash

    _, key, target = sweep
    rows = [[p, q, 1, 1.0 + abs(p - 7) + 0.1 * q, "ok"] for p in range(1, 13) for q in range(1, 13)
            if q == p or (p, q) == (12, 1)]  # the diagonal, and (12, 1) so Q spans 1..12 with P
    spec = replay.SweepSpec({"kernel": "trivial", "params": ["P", "Q", "num_warps"], "rows": rows})
    assert len(spec.times) == 13 and len(spec.valid_configs(key, target)) == 13
    strategy = strategies.make(name, 0)
    study = optuna.create_study(sampler=strategy.sampler(), direction="minimize")
    for c in strategy.seeds(spec, key, target):
        study.enqueue_trial(c)
    seen, measured = {}, 0
    while (proposal := propose(study, strategy, spec, key, target, seen, measured)) is not None:
        trial, config = proposal
        t = spec.times[config_hash(config)]
        seen[config_hash(config)] = ("ok", t)
        study.tell(trial, t)
        measured += 1
    assert measured == 13 and len(study.trials) <= 3 * 13, len(study.trials)


class _StoppedBetweenAskAndSuggest:
    """A study whose first asked trial is failed, as stale, before this process suggests its
    parameters: what another worker's heartbeat check does to a worker that was stopped (SIGSTOP,
    a starved host) between `ask` and `suggest` for longer than the heartbeat's grace."""

    def __init__(self, study):
        self.study, self.failed = study, None

    def ask(self):
        trial = self.study.ask()
        if self.failed is None:
            import optuna

            self.failed = trial.number
            self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # the other worker
        return trial

    def __getattr__(self, name):
        return getattr(self.study, name)


def test_a_trial_failed_as_stale_before_it_was_suggested_is_asked_again(sweep):
    """Seen in the chaos test: the resumed worker's `suggest` raised UpdateFinishedTrialError and
    the whole batch ended in a traceback; now the proposal asks again."""
    import optuna

    from search.propose import propose

    spec, key, target = sweep
    strategy = strategies.make("random", 0)
    study = _StoppedBetweenAskAndSuggest(optuna.create_study(sampler=strategy.sampler(), direction="minimize"))
    trial, config = propose(study, strategy, spec, key, target, {}, 0)
    assert study.failed is not None and trial.number != study.failed
    assert spec.check(config, key, target) is None
