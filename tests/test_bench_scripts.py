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
