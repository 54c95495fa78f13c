"""Two Triton tutorial kernels with only their decorator changed to tuner.runtime.autotune
(tests/kernels/dropin.py), from a production launch to a tuned one, on the real PostgreSQL, Redis
and a `tuner worker` process: a model process launches a key nobody tuned (the first config,
correct output, the miss and its launch signature reach the database), the key is tuned from the
misses (`tuner tune NAME --from-misses` here; `tuner retune --misses` and a CPU worker for the
fleet) with no KernelSpec written, and a fresh process launches the stored best (its best_config
is `tuner best`'s), output still correct."""
import json
import subprocess
import sys

import pytest
from sqlalchemy import text

from tests.cli_helpers import ROOT
from tests.kernels.dropin import LAYER_NORM, MATMUL
from tests.services import WorkerProc, fleet_world, run_cli, wait_for
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


def _signature(engine, kernel: str) -> dict:
    with engine.connect() as c:
        (key,) = c.execute(text("select key from runtime_misses where kernel = :k"), {"k": kernel}).scalars().all()
    return (json.loads(key) if isinstance(key, str) else key)["signature"]


@pytest.mark.slow
def test_the_tutorial_matmul_is_tuned_from_its_misses_here(world):
    from tests.kernels import dropin

    env, engine = world["env"], world["engine"]
    served = launch(env, "matmul", 48, 80, 32)
    assert served == {"level": "default", "best_config": first_config(dropin.matmul_kernel)}
    sig = _signature(engine, MATMUL)
    assert sig["args"]["a_ptr"] == {"shape": [48, 32], "strides": [32, 1], "dtype": "float16"}
    assert sig["args"]["ACTIVATION"] == {"value": ""} and len(sig["grids"]) == 24

    tuned = tuner_json(env, "tune", MATMUL, "--from-misses", "--trials", "3", "--device", "cpu")
    (key,) = tuned["keys"]
    assert (key["dims"], key["dtype"], key["trials"]) == ({"M": 48, "N": 80, "K": 32}, "float16", 3)
    (best,) = tuner_json(env, "best", MATMUL, "--shape", "M=48,N=80,K=32", "--dtype", "float16")
    assert best["config"] == key["config"]
    assert launch(env, "matmul", 48, 80, 32) == {"level": "exact", "best_config": best["config"]}


@pytest.mark.slow
def test_the_tutorial_layer_norm_is_tuned_by_a_cpu_worker_from_its_misses(world):
    from tests.kernels import dropin

    env, engine = world["env"], world["engine"]
    served = launch(env, "layer_norm", 6, 200)
    assert served == {"level": "default", "best_config": first_config(dropin._layer_norm_fwd_fused)}
    assert _signature(engine, LAYER_NORM)["grid"] == [6]  # a tuple grid: kept as launched
    world["workers"].append(WorkerProc("dropin-worker", env, world["home"]))
    wait_for(lambda: tuner_json(env, "retune", "--misses", "--dry-run", "--kernel", LAYER_NORM)["jobs"], 180,
             "the worker to register")
    queued = tuner_json(env, "retune", "--misses", "--kernel", LAYER_NORM)
    assert [(j["key"], j["dtype"]) for j in queued["jobs"]] == [({"N": 200}, "float32")]
    job = queued["jobs"][0]["job"]
    wait_for(lambda: tuner_json(env, "status", job)["state"] in ("done", "failed"), 300, "the miss job")
    assert tuner_json(env, "status", job)["state"] == "done"
    (best,) = tuner_json(env, "best", LAYER_NORM, "--shape", "N=200", "--dtype", "float32")
    assert launch(env, "layer_norm", 6, 200) == {"level": "exact", "best_config": best["config"]}
    assert launch(env, "layer_norm", 3, 200)["best_config"] == best["config"]  # keyed by N only
