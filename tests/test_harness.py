"""Every way a kernel can fail costs one trial with its status, and the harness goes on."""
import pytest

from search_spaces import registry
from workers.harness import Harness
from workers.messages import STATUSES, TrialRequest, TrialResult
from workers.timing import summarize

MODULES = "tests.kernels.broken"


def request(kernel, config=None, timeout_s=60.0, **kw):
    spec = registry.get(kernel, modules=MODULES)
    key = spec.make_key({"N": 1000}, "float32")
    return TrialRequest(kernel=kernel, key=key.to_json(), config=config or {"BLOCK": 64}, device="cpu",
                        arch="interpreter", warmup=1, reps=3, timeout_s=timeout_s, **kw)


@pytest.fixture(scope="module")
def harness():
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNER_KERNEL_MODULES", MODULES)  # the child inherits it
    with Harness() as h:
        yield h
    mp.undo()


def test_good_kernel_is_timed(harness):
    r = harness.run(request("good_add"))
    assert r.status == "ok", r.message
    assert r.median_ms > 0 and r.p20_ms <= r.median_ms <= r.p80_ms and r.reps >= 3 and r.cv >= 0
    assert r.compile_s is not None and r.max_abs_err == 0.0


@pytest.mark.parametrize("kernel,status,text", [
    ("broken_raise", "crashed", "RuntimeError: this kernel raises on purpose"),
    ("broken_wrong", "wrong_result", "max abs error 1"),
    ("broken_compile", "compile_error", "undefined_name"),
    ("broken_oor", "out_of_resources", "shared memory"),
])
def test_failures_are_one_trial_each(harness, kernel, status, text):
    r = harness.run(request(kernel))
    assert (r.status, text in r.message) == (status, True), r
    assert harness.run(request("good_add")).status == "ok"


def test_invalid_config_never_launches(harness):
    r = harness.run(request("good_add", {"BLOCK": 999}))
    assert r.status == "invalid" and "BLOCK" in r.message


def test_crash_restarts_the_child(harness):
    before = harness.restarts
    r = harness.run(request("broken_crash"))
    assert r.status == "crashed" and "SIGSEGV" in r.message
    assert harness.run(request("good_add")).status == "ok"
    assert harness.restarts == before + 1


def test_hang_times_out_and_restarts(harness):
    r = harness.run(request("broken_hang", timeout_s=3.0))
    assert r.status == "timeout" and "3 s" in r.message
    assert harness.run(request("good_add")).status == "ok"


def test_early_stop(harness):
    r = harness.run(request("good_add", early_stop_ms=1e-6))
    assert r.status == "ok" and r.early_stopped and r.reps == 1


def test_messages_round_trip_and_reject_malformed():
    req = request("good_add")
    assert TrialRequest.from_json(req.to_json()) == req
    res = TrialResult(status="ok", median_ms=1.0, config={"BLOCK": 64})
    assert TrialResult.from_json(res.to_json()) == res
    for bad in ({}, {**req.to_json(), "reps": -1}, {**req.to_json(), "device": "tpu"},
                {**req.to_json(), "extra": 1}, "text"):
        with pytest.raises(ValueError):
            TrialRequest.from_json(bad)
    with pytest.raises(ValueError):
        TrialResult.from_json({"status": "great"})
    assert set(STATUSES) == {"ok", "invalid", "compile_error", "out_of_resources", "wrong_result", "timeout", "crashed"}


def test_summarize():
    median, p20, p80, cv = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (median, p20, p80) == (3.0, 1.8, 4.2)
    assert cv == pytest.approx(0.4714, rel=1e-3)
