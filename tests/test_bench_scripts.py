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


TARGET = 0.97  # README: auto reaches 0.97 of the optimum within 10% of the valid space


def test_the_replay_takes_a_subset_of_the_sweeps_and_meets_the_target(tmp_path):
    """The figure, not the line: auto's median fraction of the optimum at 10% of the space, read
    from the JSON, against the target; the summary says what the figure says. (The attention sweep
    is the quickest to replay; the others' replay takes 25 minutes.)"""
    import json

    out = tmp_path / "subset"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "search_efficiency.py"), "--replay", "--seeds", "2",
                           "--strategies", "auto,random", "--sweeps", "sweep-flash_attention-*", "--out", str(out)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = json.loads(out.with_suffix(".json").read_text())["sweeps"]
    assert sweeps and all(s["sweep"].startswith("sweep-flash_attention-") for s in sweeps)
    for s in sweeps:
        tenth = str(max(1, s["valid_configs"] // 10))
        figure = s["strategies"]["auto"]["median_fraction_of_optimum"][tenth]
        assert figure >= TARGET, f"{s['sweep']}: auto reached {figure} of the optimum at 10% of the space"
        assert f"10% of the space: {figure} -> met" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("figure, word", [(0.9699, "NOT met"), (TARGET, "met"), (1.0, "met")])
def test_the_summary_says_met_only_when_the_figure_reaches_the_target(figure, word):
    import importlib.util

    spec = importlib.util.spec_from_file_location("search_efficiency", ROOT / "bench" / "search_efficiency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fractions = {str(b): 1.0 for b in (*bench.BUDGETS, 10)}
    sweep = {"valid_configs": 100, "strategies": {"auto": {"median_fraction_of_optimum": {**fractions, "10": figure}},
                                                  "random": {"median_fraction_of_optimum": fractions}}}
    (line, _) = bench.verdict(sweep)
    assert line.endswith(f": {figure} -> {word}"), line


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
