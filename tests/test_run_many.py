"""The compile pool of Harness.run_many, driven on the CPU by kernels with a `compile` hook
(real kernels have nothing to compile in the interpreter, so run_many skips the pool there).
On a GPU the same code paths run with Triton compiling into its on-disk cache."""
import pytest

from harness.harness import Harness
from harness.protocol import TrialRequest
from search_spaces import registry


def request(kernel, config, timeout_s=60.0, **kw):
    key = registry.get(kernel).make_key({"N": 1000}, "float32")
    return TrialRequest(kernel=kernel, key=key.to_json(), config=config, device="cpu", arch="interpreter",
                        warmup=0, reps=2, timeout_s=timeout_s, **kw)


@pytest.fixture(scope="module")
def harness():
    with Harness(compile_workers=2, precompile=True) as h:
        h.start("cpu")
        yield h


def test_same_binary_is_benchmarked_once_and_failures_never_launch(harness):
    before = harness.benchmarked
    reqs = [request("twin_add", {"BLOCK": 64, "SKEW": 0}),
            request("twin_add", {"BLOCK": 128, "SKEW": 0}),
            request("twin_add", {"BLOCK": 64, "SKEW": 1}),  # builds what the first built
            request("broken_oor_compile", {"BLOCK": 64}),
            request("twin_add", {"BLOCK": 999, "SKEW": 0})]
    results = harness.run_many(reqs)
    assert [r.status for r in results] == ["ok", "ok", "ok", "out_of_resources", "invalid"]
    assert [r.config for r in results] == [r.config for r in reqs]
    assert harness.benchmarked - before == 2  # the twin, the OOR and the invalid one never launched
    # the twins are measured once, whichever build finished first; the other carries a note
    (noted,) = [r for r in (results[0], results[2]) if "same compiled binary" in r.message]
    assert results[2].median_ms == results[0].median_ms and noted.median_ms is not None
    assert "shared memory" in results[3].message and "BLOCK" in results[4].message
    assert results[0].compile_s is not None


def test_a_crashed_compiler_leaves_the_verdict_to_the_benchmark(harness):
    pool = harness._pool("cpu")
    restarts = pool.restarts
    crashed, after = harness.run_many([request("crash_compile", {"BLOCK": 64, "SKEW": 0}),
                                       request("twin_add", {"BLOCK": 128, "SKEW": 1})])
    assert crashed.status == "ok" and after.status == "ok"  # the launch itself is fine
    harness.run_many([request("twin_add", {"BLOCK": 64, "SKEW": 1}), request("twin_add", {"BLOCK": 64, "SKEW": 0})])
    assert pool.restarts == restarts + 1  # the dead compile process was replaced on its next use


def test_a_hanging_compile_times_out(harness):
    (r,) = harness.run_many([request("hang_compile", {"BLOCK": 64, "SKEW": 0}, timeout_s=2.0)])
    assert r.status == "timeout" and "compiling took longer than 2 s" in r.message
    assert "it was at broken.py:" in r.message and "in compile" in r.message, r.message


@pytest.mark.parametrize("module, kernel_name, dims, config, other", [
    ("matmul", "matmul_kernel", {"M": 300, "N": 200, "K": 100},
     {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}, {"GROUP_M": 4}),
    ("softmax", "_softmax_kernel", {"M": 30, "N": 1000},
     {"BLOCK_SIZE": 1024, "ROWS": 2, "num_warps": 4}, {"ROWS": 4}),
])
def test_compile_builds_the_specialization_its_launch_uses(monkeypatch, module, kernel_name, dims, config, other):
    """No GPU here: a stand-in kernel records what launch passes and what compile warms up with;
    they must agree argument for argument (tensors by dtype), or the launch would miss the cache."""
    import importlib
    import types

    import torch

    from devices.targets import target_for

    calls = {}

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kw: calls.update(launch=(grid, args, kw))

        def warmup(self, *args, grid, **kw):
            calls["warmup"] = (grid, args, kw)
            md = types.SimpleNamespace(num_warps=kw["num_warps"], num_ctas=1, shared=0, cluster_dims=(1, 1, 1))
            return types.SimpleNamespace(kernel=repr((args, kw)).encode(), metadata=md, _init_handles=lambda: None)

    mod = importlib.import_module(f"search_spaces.{module}")
    monkeypatch.setattr(mod, kernel_name, Recorder())
    monkeypatch.setattr(mod, "require_launchable", lambda on_cpu: None)
    spec = registry.get(module)
    key = spec.make_key(dims, "float16")
    spec.launch(config, spec.make_inputs(key, "cpu", 0))
    ident = spec.compile(config, key, target_for("sm_90"))
    (lgrid, largs, lkw), (wgrid, wargs, wkw) = calls["launch"], calls["warmup"]
    assert lgrid == wgrid and lkw == wkw
    assert [a.dtype if isinstance(a, torch.Tensor) else a for a in largs] == list(wargs)
    assert ident == spec.compile(config, key, target_for("sm_90"))
    assert ident != spec.compile({**config, **other}, key, target_for("sm_90"))
    assert spec.compile(config, key, target_for("interpreter")) is None


def test_the_search_keeps_the_pool_busy(harness, tmp_path):
    """run_batch keeps as many trials in flight as the pool compiles at once, proposes the next
    as each is told, and stores each result."""
    from sqlalchemy import select

    from db import models, store
    from db.clock import utcnow
    from db.session import session_scope
    from search.loop import SearchContext, run_batch
    from devices.targets import target_for
    from tuner.db_open import upgrade_schema

    url = f"sqlite:///{tmp_path}/t.db"
    upgrade_schema(url)  # ours and Optuna's tables
    key = registry.get("twin_add").make_key({"N": 1000}, "float32")
    with session_scope(url) as s:
        dc = store.get_or_create_device_class(s, slug="cpu-interpreter", vendor="cpu", arch="interpreter",
                                              name="cpu", compute_units=1, memory_gb=1)
        fp = store.get_or_create_fingerprint(s, hash="f" * 16, driver="none", runtime="none", triton="3.6.0",
                                             torch="2.13.0", fields={})
        s.add(models.Job(id="j", kind="tune", origin="local", kernel="twin_add", kernel_version=key.version,
                         state="running", sampler="grid", budget_trials=4, request={}, created_at=utcnow()))
        s.flush()
        job_key = models.JobKey(job_id="j", key_hash=key.stable_hash, key=key.to_json(), study_name="s",
                                state="running")
        s.add(job_key)
        s.flush()
        ids = dc.id, fp.id, job_key.id
    ctx = SearchContext(db_url=url, job_id="j", job_key_id=ids[2], key=key, device="cpu",
                        target=target_for("interpreter"), device_class_id=ids[0], fingerprint_id=ids[1],
                        study_name="s", sampler="grid", seed=0, budget_trials=4, trial_timeout_s=120,
                        heartbeat_s=10, grace_s=60)
    events, stream = [], harness.stream

    def watched(take, depth, **kw):
        def taken():
            item = take()
            events.append("take" if item else "end")
            return item
        for tag, result in stream(taken, depth, **kw):
            events.append("told")
            yield tag, result

    harness.stream = watched
    try:
        assert harness.width("cpu") == 2
        assert run_batch(ctx, harness, max_trials=10).ran == 4  # the budget, not max_trials, ends it
    finally:
        del harness.stream
    # two in flight from the start; each later proposal follows a told result
    assert events == ["take", "take", "told", "take", "told", "take", "told", "end", "told"]
    with session_scope(url) as s:
        stored = s.scalars(select(models.TuningTrial.status).where(models.TuningTrial.job_id == "j")).all()
    assert sorted(stored) == ["ok"] * 4


def test_the_benchmark_process_starts_alongside_the_compile_pool(monkeypatch):
    """Its startup (torch, triton, a device context) overlaps the pool's instead of following it."""
    def started(pid):  # clock ticks since boot (/proc/PID/stat field 22)
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])

    with Harness(compile_workers=1, precompile=True) as h:
        assert h.width("cpu") == 1  # starts the pool and waits for it
        (bench,) = h._spawned.values()  # already on its way, no trial asked for it
        (compiler,) = h._pool("cpu")._all
        assert started(bench.proc.pid) <= started(compiler.proc.pid)
        (r,) = h.run_many([request("twin_add", {"BLOCK": 64, "SKEW": 0})])
        assert r.status == "ok" and h.restarts == 0 and not h._spawned
    assert bench.proc.poll() is not None and compiler.proc.poll() is not None
