"""Every way a kernel can fail costs one trial with its status, and the harness goes on."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.harness import Harness
from harness.protocol import STATUSES, Measurement, TrialRequest, TrialResult
from harness.timing import summarize
from search_spaces import registry

ROOT = Path(__file__).resolve().parent.parent


def request(kernel, config=None, timeout_s=60.0, **kw):
    spec = registry.get(kernel)
    key = spec.make_key({"N": 1000}, "float32")
    kw = {"warmup": 1, "reps": 3, **kw}
    return TrialRequest(kernel=kernel, key=key.to_json(), config=config or {"BLOCK": 64}, device="cpu",
                        arch="interpreter", timeout_s=timeout_s, **kw)


@pytest.fixture(scope="module")
def harness():
    with Harness() as h:
        yield h


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


def test_stale_kernel_version_is_refused(harness):
    req = request("good_add")
    r = harness.run(TrialRequest.from_json({**req.to_json(), "key": {**req.key, "version": "0" * 12}}))
    assert r.status == "invalid" and "kernel changed since the study was created" in r.message


def test_request_for_another_arch_is_refused(harness):
    r = harness.run(TrialRequest.from_json({**request("good_add").to_json(), "arch": "sm_90"}))
    assert r.status == "invalid" and "request for arch sm_90 reached a interpreter device" in r.message


def test_kernel_prints_never_reach_the_protocol(harness):
    r = harness.run(request("chatty_add"))
    assert r.status == "ok" and r.median_ms > 0 and "forged" not in r.message, r


@pytest.mark.parametrize("kernel,how", [("broken_crash", "killed by signal SIGSEGV"),
                                        ("broken_exit", "exit status 7")])
def test_a_dead_child_costs_one_trial_and_is_restarted(harness, kernel, how):
    before = harness.restarts
    r = harness.run(request(kernel))
    assert r.status == "crashed" and how in r.message, r
    if kernel == "broken_crash":
        assert "about to crash" in r.message  # the last lines of the child's stderr
    assert harness.run(request("good_add")).status == "ok"
    assert harness.restarts == before + 1


def test_a_poisoned_context_is_replaced_before_the_next_trial(harness):
    before = harness.restarts
    for _ in range(3):  # the next trial never meets the exiting process
        r = harness.run(request("broken_poison"))
        assert r.status == "crashed" and r.message == ("RuntimeError: CUDA error: an illegal memory access "
                                                       "was encountered"), r
        assert harness.run(request("good_add")).status == "ok"
    assert harness.restarts == before + 3


def test_child_environment(monkeypatch):
    import harness.children as harness_module

    envs = {}

    def popen(args, env, **kw):
        envs[args[-1], env.get("TRITON_INTERPRET")] = env
        raise OSError("not started in this test")

    monkeypatch.setattr(harness_module.subprocess, "Popen", popen)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("TUNER_DB_URL", "postgresql+psycopg://tuner:secret@db/tuner")
    monkeypatch.setenv("TUNER_BROKER_URL", "redis://:secret@redis:6379/0")
    for device in ("cpu", "cuda:0"):
        with pytest.raises(OSError):
            harness_module.Child(device)
    assert set(envs) == {("harness.benchmark", "1"), ("harness.benchmark", None)}
    for env in envs.values():  # a GPU child compiles for real; both import the test kernels
        assert str(ROOT) in env["PYTHONPATH"].split(harness_module.os.pathsep)
        # third-party kernel code runs there: no credentials, and no setting it could misread
        assert not [k for k in env if k.startswith("TUNER_")], env


def test_error_messages_keep_the_line_that_says_what_went_wrong():
    import ast

    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    from harness.benchmark import classify_error, error_message

    cuda = RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
                        "asynchronously reported\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
                        "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.")
    assert (classify_error(cuda), error_message(cuda)) == (
        "crashed", "RuntimeError: CUDA error: an illegal memory access was encountered")
    node = ast.parse("y = undefined_name").body[0]
    compile_error = CompilationError("y = undefined_name", node, "NameError('undefined_name is not defined')")
    assert (classify_error(compile_error), error_message(compile_error)) == (
        "compile_error", "CompilationError: NameError('undefined_name is not defined')")
    assert classify_error(OutOfResources(300000, 232448, "shared memory")) == "out_of_resources"
    assert classify_error(RuntimeError("CUDA error: too many resources requested for launch")) == "out_of_resources"
    assert classify_error(RuntimeError("Triton Error [CUDA]: out of memory")) == "out_of_resources"


def test_hang_times_out_and_restarts(harness):
    r = harness.run(request("broken_hang", timeout_s=3.0))
    assert r.status == "timeout" and "3 s" in r.message, r
    # the process said where it hung (a faulthandler dump, asked for before the kill): innermost first
    assert "it was at broken.py:" in r.message and "in launch <- benchmark.py:" in r.message, r.message
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
    for bad in ({"status": "great"}, {"status": "ok", "reps": "3"}, {"status": "ok", "early_stopped": 1},
                {"status": "ok", "config": [64]}, {"status": "ok", "median_ms": "1.0"}, ["ok"]):
        with pytest.raises(ValueError):
            TrialResult.from_json(bad)
    assert set(STATUSES) == {"ok", "invalid", "compile_error", "out_of_resources", "wrong_result", "timeout", "crashed"}


def test_summarize():
    median, p20, p80, cv = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (median, p20, p80) == (3.0, 1.8, 4.2)
    assert cv == pytest.approx(0.4714, rel=1e-3)


# ---- batches: run_many on the interpreter (no compile pool) ----------------------------------
def test_run_many_answers_in_order_and_measures_a_repeated_config_once(harness):
    before = harness.benchmarked
    reqs = [request("good_add", {"BLOCK": 64}), request("good_add", {"BLOCK": 128}),
            request("good_add", {"BLOCK": 64}), request("broken_raise"), request("good_add", {"BLOCK": 999})]
    results = harness.run_many(reqs)
    assert [r.status for r in results] == ["ok", "ok", "ok", "crashed", "invalid"]
    assert [r.config for r in results] == [r.config for r in reqs]
    assert harness.benchmarked - before == 4  # the repeated BLOCK=64 was not measured again
    assert results[2].median_ms == results[0].median_ms and "measured once" in results[2].message
    assert harness.run_many([]) == []


def test_run_many_tightens_early_stop_to_the_best_so_far(harness):
    reqs = [request("good_add", {"BLOCK": 64}), request("slow_add", {"BLOCK": 64})]
    fast, slow = harness.run_many(reqs, early_stop_factor=1.5)
    assert fast.status == slow.status == "ok"
    assert slow.early_stopped and slow.reps == 1  # its first 100 ms rep is far beyond 1.5x good_add


def test_the_next_trial_is_measured_while_the_caller_handles_a_result(harness):
    reqs = iter(enumerate([request("good_add", {"BLOCK": 64}), request("good_add", {"BLOCK": 128})]))
    before, sent = harness.benchmarked, []
    for i, r in harness.stream(lambda: next(reqs, None), depth=2):
        assert r.status == "ok" and r.config == {"BLOCK": 64 * (i + 1)}
        sent.append(harness.benchmarked - before)
    assert sent == [2, 2]  # at the first result the second was already in the benchmark process


def test_an_abandoned_stream_leaves_no_answer_behind(harness):
    """A caller that stops while the next trial is in the benchmark process must not get that
    trial's answer for its own next request: the process is replaced."""
    reqs = iter(enumerate([request("good_add"), request("slow_add", reps=20)]))
    restarts = harness.restarts
    for i, r in harness.stream(lambda: next(reqs, None), depth=2):
        break  # slow_add is in the benchmark process now
    r = harness.run(request("good_add", {"BLOCK": 128}))
    assert r.status == "ok" and r.config == {"BLOCK": 128} and r.reps == 3
    assert harness.restarts == restarts + 1


# ---- measurement quality ---------------------------------------------------------------------
def test_rotating_input_sets_are_timed(harness):
    r = harness.run(request("good_add", rotate_buffers=3))
    assert r.status == "ok" and r.reps >= 3 and "3 rotating input sets" in r.message, r


def test_rotation_launches_each_input_set_in_turn(monkeypatch):
    from harness.benchmark import run_trial
    from tests.kernels.broken import SpyAdd

    SpyAdd.seen.clear()
    r = run_trial(request("spy_add", warmup=0, reps=6, rotate_buffers=3))
    assert r.status == "ok", r.message
    check, *timed = SpyAdd.seen
    assert len(timed) == 6 and len(set(timed)) == 3 and timed[:3] == timed[3:]
    assert check == timed[0]  # the output is checked on the first set


def test_time_cpu_cycles_through_launches():
    from harness.timing import time_cpu

    calls = []
    samples, stopped = time_cpu([lambda: calls.append("a"), lambda: calls.append("b")], warmup=1, reps=4)
    assert calls == ["a", "b", "a", "b", "a"] and len(samples) == 4 and not stopped


def test_noisy_trial_is_remeasured_once(harness):
    r = harness.run(request("noisy_add", max_cv=0.05))
    assert r.status == "ok" and r.remeasured == 1 and "re-measured: cv" in r.message, r
    assert r.reps in (3, 6)  # the first measurement or the second, twice as long
    steady = harness.run(request("noisy_add", max_cv=100.0))
    assert steady.remeasured == 0 and "re-measured" not in steady.message
    assert harness.run(request("noisy_add")).remeasured == 0  # no max_cv: never


def test_cuda_graph_is_ignored_on_the_cpu_with_a_note(harness):
    r = harness.run(request("good_add", cuda_graph=True))
    assert r.status == "ok" and "cuda_graph ignored" in r.message



def test_a_measurement_round_trips_and_names_what_changes_the_time_scale():
    assert Measurement.from_json(None) == Measurement()  # a job stored before there were options
    m = Measurement(rotate_buffers=4, cuda_graph=True, max_cv=0.05)
    assert Measurement.from_json(m.to_json()) == m
    assert (Measurement().tag, m.tag, Measurement(max_cv=0.05).tag) == ("", "+graph+rot4", "")
    for bad in ({"rotate_buffers": 0}, {"cuda_graph": 1}, {"max_cv": -1}, {"max_cv": float("inf")}, {"warmup": 3}):
        with pytest.raises(ValueError):
            Measurement.from_json(bad)

def test_messages_without_the_new_fields_still_parse():
    old_req = {"kernel": "good_add", "key": {"kernel": "good_add", "version": "x", "dims": {"N": 8},
                                             "dtype": "float32"},
               "config": {"BLOCK": 64}, "device": "cpu", "arch": "interpreter", "seed": 0, "warmup": 1,
               "reps": 10, "min_time_s": 0.0, "early_stop_ms": None, "timeout_s": 120.0}
    req = TrialRequest.from_json(old_req)
    assert (req.rotate_buffers, req.cuda_graph, req.max_cv) == (1, False, None)
    old_res = {"status": "ok", "message": "", "median_ms": 1.0, "p20_ms": 0.9, "p80_ms": 1.1, "cv": 0.01,
               "reps": 10, "compile_s": 0.1, "max_abs_err": 0.0, "early_stopped": False, "config": {"BLOCK": 64}}
    assert TrialResult.from_json(old_res).remeasured == 0
    for bad in ({"rotate_buffers": 0}, {"rotate_buffers": 1.5}, {"rotate_buffers": 17}, {"cuda_graph": "yes"},
                {"max_cv": 0}, {"max_cv": "high"}, {"max_cv": float("nan")}):
        with pytest.raises(ValueError):
            TrialRequest.from_json({**old_req, **bad})
    with pytest.raises(ValueError):
        TrialResult.from_json({**old_res, "remeasured": -1})


# ---- the GPU paths: run where a GPU is visible, skipped elsewhere -----------------------------
def _gpu() -> bool:
    import torch
    return torch.cuda.is_available()


gpu = pytest.mark.skipif(not _gpu(), reason="needs a CUDA/ROCm GPU")


def gpu_request(kernel, n=1 << 20, **kw):
    from devices.probe import probe

    key = registry.get(kernel).make_key({"N": n}, "float32")
    # a timeout well inside the test's own: a hang is answered with where the process was stuck
    kw = {"warmup": 3, "reps": 20, "config": {"BLOCK": 128}, "timeout_s": 40.0, **kw}
    return TrialRequest(kernel=kernel, key=key.to_json(), device="cuda:0", arch=probe("cuda:0")[0].arch, **kw)


@pytest.fixture(scope="module")
def gpu_harness():
    with Harness(precompile=False) as h:
        yield h


@gpu
def test_gpu_trial_is_timed_with_events_graphs_and_rotation(gpu_harness):
    for extra in ({}, {"cuda_graph": True}, {"rotate_buffers": 3}, {"cuda_graph": True, "rotate_buffers": 2}):
        r = gpu_harness.run(gpu_request("good_add", **extra))
        assert r.status == "ok" and r.reps >= 20 and 0 < r.p20_ms <= r.median_ms <= r.p80_ms, (extra, r)
        assert "ignored" not in r.message and r.max_abs_err == 0.0
        print(extra, f"median {r.median_ms * 1e3:.1f} us, cv {r.cv:.3f}, compile {r.compile_s:.3f} s")


@gpu
def test_gpu_compiler_failures_are_classified(gpu_harness):
    r = gpu_harness.run(gpu_request("broken_compile"))
    assert r.status == "compile_error" and "undefined_name" in r.message, r
    r = gpu_harness.run(gpu_request("greedy_dot", n=1024))
    assert r.status == "out_of_resources" and "shared memory" in r.message, r


@gpu
def test_gpu_illegal_access_crashes_one_trial_and_the_context_is_replaced(gpu_harness):
    gpu_harness.run(gpu_request("good_add"))
    before = gpu_harness.restarts
    r = gpu_harness.run(gpu_request("broken_illegal"))
    assert r.status == "crashed" and "illegal memory access" in r.message, r
    assert gpu_harness.run(gpu_request("good_add")).status == "ok"
    assert gpu_harness.restarts == before + 1  # the poisoned process exited after answering


# ---- the interpreter never runs a GPU trial -------------------------------------------------
def test_the_test_kernel_modules_leave_the_interpreter_alone():
    """tests/__init__.py once set TRITON_INTERPRET=1, so a GPU benchmark process that imported
    tests.kernels.broken turned every kernel in it into an interpreted one (on an H200 the GPU
    tests ran past their timeouts). Only conftest.py, which pytest alone imports, sets it now."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import os, triton, tests.kernels.broken, tests.kernels.trivial, tests.kernels.external\n"
            "assert 'TRITON_INTERPRET' not in os.environ and not triton.knobs.runtime.interpret\n"
            "assert type(tests.kernels.broken._add_kernel).__name__ == 'JITFunction'")
    subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, check=True)


def test_a_gpu_trial_is_refused_where_the_interpreter_is_on(monkeypatch):
    """Here, as in every test, TRITON_INTERPRET=1: a trial for a GPU would be timed interpreted."""
    from harness.benchmark import run_trial
    from harness.compile_pool import compile_one

    req = dataclasses.replace(request("good_add"), device="cuda:0", arch="sm_90")
    r = run_trial(req)
    assert r.status == "crashed" and "TRITON_INTERPRET=1 is set in the process running cuda:0" in r.message, r
    answer = compile_one(req)
    assert answer["status"] == "crashed" and "TRITON_INTERPRET=1" in answer["message"]
