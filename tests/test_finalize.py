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
from search_spaces.base import config_hash


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
                         study_name="s")


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
