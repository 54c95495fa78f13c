"""Two Triton tutorial kernels with only their decorator changed to tuner.runtime.autotune
(tests/kernels/dropin.py), from a production launch to a tuned one, on the real PostgreSQL, Redis
and a `tuner worker` process: a model process launches a key nobody tuned (the first config,
correct output, the miss and its launch signature reach the database), the key is tuned from the
misses (`tuner tune NAME --from-misses` here, and `tuner retune --misses` with a CPU worker for
the fleet: both chains for both kernels) with no KernelSpec written, and a fresh process launches
the stored best (its best_config is `tuner best`'s), output still correct."""
import json
import subprocess
import sys

import pytest
from sqlalchemy import text

from tests.cli_helpers import ROOT
from tests.kernels.dropin import LAYER_NORM, MATMUL
from tests.services import WorkerProc, fleet_world, wait_for
from tests.test_runtime_loop import tuner_json

pytestmark = pytest.mark.integration

LAUNCH = r"""
import json, sys, torch
from tests.kernels import dropin
from tuner import runtime
from search_spaces.dropin import config_dict

which, dims = sys.argv[1], [int(v) for v in sys.argv[2:]]
if which == "matmul":
    m, n, k = dims
    a, b = torch.randn(m, k, dtype=torch.float16), torch.randn(k, n, dtype=torch.float16)
    run = lambda: dropin.matmul(a, b)
    want = (a.float() @ b.float())
    kernel, atol, key = dropin.matmul_kernel, 1e-2, dict(M=m, N=n, K=k, dtype="float16")
else:
    m, n = dims
    x, w, bias = torch.randn(m, n), torch.rand(n), torch.rand(n)
    run = lambda: dropin.layer_norm(x, w, bias)
    want = torch.nn.functional.layer_norm(x, (n,), w, bias, 1e-5)
    kernel, atol, key = dropin._layer_norm_fwd_fused, 1e-4, dict(N=n, dtype="float32")
run()
runtime.settle(60)  # the first launch may have had the default while the database was opened
for _ in range(2):
    out = run()
    assert torch.allclose(out.float(), want, atol=atol, rtol=atol), (out.float() - want).abs().max()
print(json.dumps({"level": runtime.explain(kernel.name, **key).level, "best_config": config_dict(kernel.best_config)}))
"""  # the misses are written at exit


def launch(env, which: str, *dims: int) -> dict:
    done = subprocess.run([sys.executable, "-c", LAUNCH, which, *map(str, dims)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_config(kernel) -> dict:
    from search_spaces.dropin import config_dict

    return config_dict(kernel.configs[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with fleet_world(tmp_path_factory.mktemp("dropin"), TUNER_KERNEL_MODULES="tests.kernels.dropin",
                     TUNER_RETUNE_MISSES_TRIALS="3") as world:
        yield world


def _signature(engine, kernel: str, dims: dict) -> dict:
    with engine.connect() as c:
        keys = [json.loads(k) if isinstance(k, str) else k for k in c.execute(
            text("select key from runtime_misses where kernel = :k"), {"k": kernel}).scalars().all()]
    (key,) = [k for k in keys if k["dims"] == dims]
    return key["signature"]


def _f(*shape: int, dtype: str = "float32") -> dict:
    """A contiguous tensor's signature entry."""
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    return {"shape": list(shape), "strides": strides, "dtype": dtype}


# per kernel: (launch arguments, key dims, dtype, `tuner best` --shape, what the recorded signature holds)
# for each chain (tuned here, tuned by the worker), each chain its own key so that neither serves the other
CASES = {
    ("matmul", "here"): ((48, 80, 32), {"M": 48, "N": 80, "K": 32}, "float16", "M=48,N=80,K=32"),
    ("matmul", "worker"): ((40, 64, 32), {"M": 40, "N": 64, "K": 32}, "float16", "M=40,N=64,K=32"),
    ("layer_norm", "here"): ((5, 240), {"N": 240}, "float32", "N=240"),
    ("layer_norm", "worker"): ((6, 200), {"N": 200}, "float32", "N=200"),
}


def _check_signature(which: str, launched: tuple, sig: dict) -> None:
    if which == "matmul":
        m, n, k = launched
        args = sig["args"]
        assert (args["a_ptr"], args["b_ptr"], args["c_ptr"]) == (_f(m, k, dtype="float16"), _f(k, n, dtype="float16"),
                                                                 _f(m, n, dtype="float16"))
        assert (args["stride_am"], args["stride_ak"]) == ({"value": k}, {"value": 1})
        assert args["ACTIVATION"] == {"value": ""} and len(sig["grids"]) == 24
    else:
        rows, n = launched
        args = sig["args"]
        assert (args["X"], args["Y"]) == (_f(rows, n), _f(rows, n))
        assert (args["W"], args["B"], args["Mean"], args["Rstd"]) == (_f(n), _f(n), _f(rows), _f(rows))
        assert (args["stride"], args["N"], args["eps"]) == ({"value": n}, {"value": n}, {"value": 1e-5})
        assert "BLOCK_SIZE" not in args and sig["grid"] == [rows]  # a tuple grid: kept as launched


def _tuned_here(env, name: str, dims: dict, dtype: str) -> None:
    tuned = tuner_json(env, "tune", name, "--from-misses", "--trials", "3", "--device", "cpu")
    (key,) = tuned["keys"]
    assert (key["dims"], key["dtype"], key["trials"]) == (dims, dtype, 3)


def _tuned_by_a_worker(world, name: str, dims: dict, dtype: str) -> None:
    env = world["env"]
    if not world["workers"]:  # one CPU worker for the module's worker chains
        world["workers"].append(WorkerProc("dropin-worker", env, world["home"]))
    wait_for(lambda: tuner_json(env, "retune", "--misses", "--dry-run", "--kernel", name)["jobs"], 180,
             "the worker to register")
    queued = tuner_json(env, "retune", "--misses", "--kernel", name)
    assert [(j["key"], j["dtype"]) for j in queued["jobs"]] == [(dims, dtype)]
    job = queued["jobs"][0]["job"]
    wait_for(lambda: tuner_json(env, "status", job)["state"] in ("done", "failed"), 300, "the miss job")
    assert tuner_json(env, "status", job)["state"] == "done"


@pytest.mark.slow
@pytest.mark.parametrize("chain", ["here", "worker"])
@pytest.mark.parametrize("which", ["matmul", "layer_norm"])
def test_a_tutorial_kernel_is_tuned_from_its_misses(world, which, chain):
    """launch (the first config; the miss and its signature stored) -> tuned from the misses here
    (`tuner tune --from-misses`) or by a CPU worker (`tuner retune --misses`) -> a fresh process
    launches the stored best."""
    from tests.kernels import dropin

    env, engine = world["env"], world["engine"]
    launched, dims, dtype, shape = CASES[which, chain]
    name, kernel = {"matmul": (MATMUL, dropin.matmul_kernel),
                    "layer_norm": (LAYER_NORM, dropin._layer_norm_fwd_fused)}[which]
    with engine.connect() as c:  # the kernel's other chain, run first, left a best for another key
        tuned = c.execute(text("select count(*) from best_configs where kernel = :k"), {"k": name}).scalar()
    served = launch(env, which, *launched)
    if tuned:  # the nearest tuned key's best is served, and the miss still recorded
        assert served["level"] == "nearest"
    else:
        assert served == {"level": "default", "best_config": first_config(kernel)}
    _check_signature(which, launched, _signature(engine, name, dims))

    if chain == "here":
        _tuned_here(env, name, dims, dtype)
    else:
        _tuned_by_a_worker(world, name, dims, dtype)
    (best,) = tuner_json(env, "best", name, "--shape", shape, "--dtype", dtype)
    assert launch(env, which, *launched) == {"level": "exact", "best_config": best["config"]}
    if which == "layer_norm":  # keyed by N only: other rows are served the same best
        assert launch(env, which, launched[0] + 1, launched[1])["best_config"] == best["config"]


@pytest.mark.slow
def test_a_stack_change_retunes_a_drop_in_through_a_worker(world):
    """A worker of another stack registers, and `tuner retune --stale-only` queues the drop-in's
    bests: the job's keys carry their recorded launch signature (a best row's key has none), so the
    worker rebuilds the inputs and the retune ends done, not with every trial failed."""
    env, engine = world["env"], world["engine"]
    launch(env, "layer_norm", 4, 160)
    tuner_json(env, "tune", LAYER_NORM, "--from-misses", "--trials", "3", "--device", "cpu")
    stack = dict(env, TUNER_FINGERPRINT_OVERRIDE="driver=999.1")
    world["workers"].append(WorkerProc("dropin-new-stack", stack, world["home"]))
    wait_for(lambda: tuner_json(env, "retune", "--stale-only", "--dry-run", "--kernel", LAYER_NORM)["jobs"], 180,
             "the worker of the new stack to register")
    queued = tuner_json(env, "retune", "--stale-only", "--kernel", LAYER_NORM)
    assert queued["skipped"] == [] and {"N": 160, "dtype": "float32"} in queued["jobs"][0]["keys"]
    job = queued["jobs"][0]["job"]
    with engine.connect() as c:
        keys = [json.loads(k) if isinstance(k, str) else k for k in c.execute(
            text("select key from job_keys where job_id = :j"), {"j": job}).scalars().all()]
    assert all(k["signature"]["args"]["X"]["shape"][1] == k["dims"]["N"] for k in keys)
    wait_for(lambda: tuner_json(env, "status", job)["state"] in ("done", "failed"), 420, "the retune job")
    assert tuner_json(env, "status", job)["state"] == "done"
