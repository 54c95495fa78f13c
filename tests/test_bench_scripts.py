"""The harness benchmarks that the GPU session runs (bench/startup.py, bench/search_rate.py), end
to end on the interpreter with the smallest settings, so they still run when a GPU is lent."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script, args, want", [
    ("startup.py", ["--pools", "1", "--rounds", "1"], "| 1 |"),
    ("search_rate.py", ["--shape", "M=64,N=64,K=64", "--trials", "4", "--depths", "1,2", "--rounds", "1"], "| 2 |"),
])
def test_bench_script_writes_its_table(tmp_path, script, args, want):
    out = tmp_path / "out.md"
    env = {**os.environ, "TUNER_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--results", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "triton-interpreter (CPU" in text and want in text, text


def test_the_gpu_script_parses_and_refuses_an_unknown_step(tmp_path):
    """bench/gpu_run.sh runs only on a lent GPU, where a syntax error would cost device time."""
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_run.sh")]).returncode == 0
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_run.sh"), "nosuchstep"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "OUT": str(tmp_path / "out")})
    assert proc.returncode == 2 and "usage: bash bench/gpu_run.sh" in proc.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_every_bench_script_answers_help_without_running(script):
    """`--help` must print the options, never run the benchmark and overwrite its results."""
    results = ROOT / "bench" / "results"
    before = {p: p.stat().st_mtime_ns for p in results.iterdir()}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in results.iterdir()} == before


def test_the_replay_takes_a_subset_of_the_sweeps(tmp_path):
    # the LoRA and attention sweeps were replayed on their own: the others' replay takes 25 minutes
    out = tmp_path / "subset"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "search_efficiency.py"), "--replay", "--seeds", "2",
                           "--strategies", "auto,random", "--sweeps", "sweep-lora_expand-*", "--out", str(out)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    sweeps = [s["sweep"] for s in json.loads(out.with_suffix(".json").read_text())["sweeps"]]
    assert sweeps and all(s.startswith("sweep-lora_expand-") for s in sweeps)
    assert "target auto >= 0.97" in out.with_suffix(".md").read_text()


def test_a_recorded_sweep_measures_the_configurations_near_the_fastest_again(tmp_path):
    """--refine: the configurations within 10% of the fastest get that many more rounds, all of
    them alike (their order decides the targets); the others keep their first rounds. The replay
    reads the sweep back from the same --data folder."""
    import gzip
    import json
    script = [sys.executable, str(ROOT / "bench" / "search_efficiency.py"), "--data", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNER_HOME": str(tmp_path / "home")}
    proc = subprocess.run([*script, "--record", "softmax", "--shape", "M=4,N=64", "--rounds", "1", "--refine", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("sweep-softmax-*.json.gz")
    with gzip.open(path, "rt") as f:
        doc = json.load(f)
    ms, rounds = doc["columns"].index("ms"), doc["columns"].index("round_ms")
    fastest = min(r[rounds][0] for r in doc["rows"])
    near = [r for r in doc["rows"] if r[rounds][0] <= fastest * 1.1]
    assert doc["refined"] == {"rounds": 2, "within": 0.1, "configs": len(near)} and len(near) < len(doc["rows"])
    assert all(len(r[rounds]) == (3 if r in near else 1) and abs(r[ms] - min(r[rounds])) < 1e-3
               for r in doc["rows"])  # rounds are stored to 4 decimals
    proc = subprocess.run([*script, "--replay", "--seeds", "1", "--strategies", "grid", "--out", str(tmp_path / "r")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"the {len(near)} within 10% of the fastest measured 2 rounds more" in (tmp_path / "r.md").read_text()
