"""What a newcomer sees in a terminal or a CI log (output piped, 80 columns): every table fits,
a configuration is one word, nothing is cut with an ellipsis, and the final re-measurement is
announced instead of a silent pause."""
import json
import re

import pytest

from tests.cli_helpers import run_tuner
from tuner.display import config_word

SHAPE = ["--shape", "M=64,N=64,K=64", "--dtype", "float32"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    proc = run_tuner(["tune", "matmul", *SHAPE, "--trials", "3", "--seed", "1", "--device", "cpu"], home)
    assert proc.returncode == 0, proc.stderr
    return home, proc


def fits(text: str) -> None:
    assert text.strip()
    assert all(len(line) <= 80 for line in text.splitlines()), "\n" + text
    assert "…" not in text, "\n" + text  # rich cuts what it cannot fit with an ellipsis


def test_tune_table_and_the_final_phase(tuned):
    home, proc = tuned
    fits(proc.stdout)
    best = json.loads(run_tuner(["best", "matmul", *SHAPE, "--json"], home).stdout)[0]["config"]
    assert config_word(best) in proc.stdout and "BLOCK_M" not in proc.stdout
    assert re.search(r"re-measuring the fastest configurations of M=64,N=64,K=64 float32 against the default",
                     " ".join(proc.stderr.split()))


@pytest.mark.parametrize("args", [["best", "matmul", *SHAPE], ["history", "matmul", *SHAPE], ["jobs"],
                                  ["kernels"], ["devices"], ["status", "JOB"]])
def test_read_tables_fit_80_columns(tuned, args):
    home, _ = tuned
    if args == ["status", "JOB"]:
        args = ["status", json.loads(run_tuner(["jobs", "--json"], home).stdout)[0]["job"]]
    proc = run_tuner(args, home)
    assert proc.returncode == 0, proc.stderr
    fits(proc.stdout)


def test_config_word():
    assert config_word({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4,
                        "num_stages": 2}) == "128x64x32 g8 w4 s2"
    assert config_word({"BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_K": 16, "GROUP_M": 4, "num_warps": 8, "num_stages": 2,
                        "waves_per_eu": 2, "matrix_instr_nonkdim": 16, "kpack": 1}) == "256x256x16 g4 w8 s2 wpe2 mi16 kp1"
    assert config_word({"BLOCK_SIZE": 1024, "ROWS": 4, "num_warps": 4}) == "1024 r4 w4"
    assert config_word({"P": 3, "Q": 4}) == "P=3 Q=4"
    assert config_word(None) == "-"
