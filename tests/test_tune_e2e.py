"""The local path end to end, through the real CLI: tune, continue, best, export, runtime."""
import json
import sqlite3
import subprocess
import sys

import pytest

from tests.cli_helpers import ROOT, run_json, run_tuner, tuner_env

SHAPE = ["--shape", "M=64,N=64,K=64", "--dtype", "float32"]


@pytest.fixture(scope="module")
def tuned_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    first = run_json(["tune", "matmul", *SHAPE, "--trials", "4", "--seed", "1", "--device", "cpu"], home)
    return home, first


def test_tune_stores_trials_and_best(tuned_home):
    home, result = tuned_home
    assert result["timing"].startswith("triton-interpreter")
    (key,) = result["keys"]
    assert key["trials"] == 4 and key["config"] and key["median_ms"] > 0 and key["speedup"] > 0
    with sqlite3.connect(home / "tuner.db") as conn:
        statuses = [r[0] for r in conn.execute("select status from tuning_trials")]
        assert sum(s != "invalid" for s in statuses) == 4
        assert conn.execute("select count(*) from best_configs where superseded_at is null").fetchone()[0] == 1
        assert conn.execute("select state from jobs").fetchone()[0] == "done"


def test_running_again_continues_the_study(tuned_home):
    home, _ = tuned_home
    again = run_json(["tune", "matmul", *SHAPE, "--trials", "3", "--seed", "1", "--device", "cpu"], home)
    assert again["keys"][0]["trials"] == 3
    with sqlite3.connect(home / "tuner.db") as conn:
        (studies,) = conn.execute("select count(*) from studies").fetchone()
        (optuna_trials,) = conn.execute("select count(*) from trials").fetchone()
        (current,) = conn.execute("select count(*) from best_configs where superseded_at is null").fetchone()
        (history,) = conn.execute("select count(*) from best_configs").fetchone()
    assert studies == 1 and optuna_trials >= 7
    # the first run's best was re-measured beside the new leaders: it stays unless beaten beyond noise
    kept = again["keys"][0]["kept_current_best"]
    assert current == 1 and history == (1 if kept else 2)
    best = run_json(["best", "matmul", *SHAPE], home)
    assert best[0]["config"] and best[0]["trials"] == (4 if kept else 7)


def test_read_commands_have_json(tuned_home):
    home, _ = tuned_home
    names = [k["name"] for k in run_json(["kernels"], home)]
    assert {"matmul", "softmax"} <= set(names)
    devices = run_json(["devices"], home)
    assert devices[0]["device_class"] == "cpu-interpreter"


def test_export_bundle_and_runtime_lookup(tuned_home, tmp_path):
    home, _ = tuned_home
    stored = run_json(["best", "matmul", *SHAPE], home)[0]["config"]
    bundle = tmp_path / "bundle.json"
    assert run_tuner(["export", "--format", "bundle", "-o", str(bundle)], home).returncode == 0
    assert json.loads(bundle.read_text())["entries"][0]["config"] == stored
    code = ("from tuner.runtime import lookup, settle; import json; lookup('matmul', M=64, N=64, K=64, dtype='float32'); "
            "settle(); print(json.dumps(lookup('matmul', M=64, N=64, K=64, dtype='float32')))")
    for extra in ({}, {"TUNER_CONFIG_BUNDLE": str(bundle), "TUNER_DB_URL": "postgresql+psycopg://x@127.0.0.1:1/x"}):
        out = subprocess.run([sys.executable, "-c", code], env=tuner_env(home, TUNER_DEVICE="cpu", **extra),
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert json.loads(out) == stored


def test_tuned_matmul_runs_with_the_stored_config(tuned_home):
    home, _ = tuned_home
    stored = run_json(["best", "matmul", *SHAPE], home)[0]["config"]
    code = r'''
import json, torch, triton
from search_spaces import matmul
from tuner.runtime import settle, tuned

seen = []
kernel = tuned("matmul", key=["M", "N", "K"])(matmul.matmul_kernel)
a, b = torch.randn(64, 64), torch.randn(64, 64)
c = torch.empty(64, 64)
def grid(cfg):
    seen.append(cfg)
    return (triton.cdiv(64, cfg["BLOCK_M"]) * triton.cdiv(64, cfg["BLOCK_N"]),)
args = (a, b, c, 64, 64, 64, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1))
kernel[grid](*args, DOT_IN_FP32=False)
settle()  # the first launch may have had the default while the database was opened
kernel[grid](*args, DOT_IN_FP32=False)
assert torch.allclose(c, a @ b, atol=1e-3, rtol=1e-3)
print(json.dumps(seen[-1]))
'''
    out = subprocess.run([sys.executable, "-c", code], env=tuner_env(home, TUNER_DEVICE="cpu", TRITON_INTERPRET="1"),
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == stored


@pytest.mark.slow
def test_measurement_options_reach_every_trial_and_keep_a_study_of_their_own(tmp_path):
    home = tmp_path / "home"
    plain = ["tune", "matmul", *SHAPE, "--trials", "2", "--seed", "1", "--device", "cpu"]
    run_json(plain, home)
    out = run_json([*plain, "--rotate-buffers", "2", "--max-cv", "0.5"], home)
    assert out["measurement"] == {"rotate_buffers": 2, "cuda_graph": False, "max_cv": 0.5}
    assert out["keys"][0]["trials"] == 2  # a study of its own: the plain one's trials are not continued
    with sqlite3.connect(home / "tuner.db") as conn:
        names = sorted(r[0] for r in conn.execute("select study_name from studies"))
        rotated = conn.execute("select message from tuning_trials where status = 'ok' "
                               "and study_name like '%+rot2'").fetchall()
        (request,) = conn.execute("select request from jobs order by created_at desc limit 1").fetchone()
    assert len(names) == 2 and names[1] == names[0] + "+rot2"
    assert rotated and all("timed over 2 rotating input sets" in m for (m,) in rotated)
    assert json.loads(request)["measurement"]["rotate_buffers"] == 2
