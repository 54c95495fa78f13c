"""bench/gpu_suite.py end to end on the interpreter, and `tuner report suite` over its output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import run_tuner

pytestmark = pytest.mark.slow  # tunes and times four contenders in the interpreter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def suite_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "suite.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--device", "cpu", "--smoke",
                           "--trials", "4", "--rounds", "1", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_contender_is_measured_and_checked(suite_results):
    doc = json.loads(suite_results.read_text())
    assert doc["timing"].startswith("triton-interpreter") and len(doc["rows"]) == 2
    for row in doc["rows"]:
        for name in ("tuned", "default", "autotune", "torch"):
            assert row[name]["ms"] > 0 and row[name]["correct"], (name, row[name])
        assert row["tuned"]["trials"] == 4 and row["autotune"]["trials"] == 8  # the tutorial's list
    assert doc["summary"]["geomean_speedup_over_default"] > 0
    assert suite_results.with_suffix(".md").read_text().startswith("# Shape suite")


def test_report_suite_prints_plots_and_says_json(suite_results, tmp_path):
    png = tmp_path / "suite.png"
    r = run_tuner(["report", "suite", str(suite_results), "--plot", str(png)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "tuned vs default" in r.stdout and png.stat().st_size > 1000
    r = run_tuner(["report", "suite", str(suite_results), "--json"], tmp_path)
    assert json.loads(r.stdout)["summary"]["all_correct"] is True


@pytest.mark.parametrize("content", [None, "{not json", '{"format": "other"}'])
def test_report_suite_bad_file_is_one_line_exit_2(tmp_path, content):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    r = run_tuner(["report", "suite", str(path)], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
