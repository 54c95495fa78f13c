"""Model presets: the shipped models, what a model expands to at a tensor-parallel size, and
`tuner tune/submit --model` through the real CLI."""
import json
import sqlite3

import pytest

from search_spaces.fused_moe_vllm import BATCH_SIZES
from tests.cli_helpers import run_json, run_tuner
from tests.test_cli_errors import assert_one_line_error
from tuner import presets
from tuner.errors import UserError

TINY = """
name = "tiny-moe"
dtype = "float32"
lora_ranks = [8, 16]   # a field another part may read: kept, not refused

[[moe]]
name = "experts"
E = 4
N = 64
K = 32
topk = 2

[[dense]]
name = "qkv_proj"
N = 64
K = 32
split = "N"
divides = [4, 2]
"""


def test_the_shipped_presets():
    names = presets.names()
    assert {"mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v2-lite", "llama-3-8b"} <= set(names)
    moe = {m.name: [dict(la.dims) for la in m.layers if la.kind == "moe"] for m in presets.all_models()}
    assert moe["mixtral-8x7b"] == [{"E": 8, "N": 14336, "K": 4096, "topk": 2}]
    assert moe["qwen3-30b-a3b"] == [{"E": 128, "N": 768, "K": 2048, "topk": 8}]
    assert moe["deepseek-v2-lite"] == [{"E": 64, "N": 1408, "K": 2048, "topk": 6}]
    assert moe["llama-3-8b"] == []


def test_a_model_expands_to_every_layer_at_tp_and_batch_size():
    mixtral = presets.load("mixtral-8x7b")
    keys = mixtral.keys(2)
    # vLLM names the TP=2 file E=8,N=7168: the intermediate size is split across ranks
    assert keys["fused_moe"] == [{"E": 8, "N": 7168, "K": 4096, "topk": 2, "M": m} for m in BATCH_SIZES]
    assert {"N": 3072, "K": 4096, "M": 1} in keys["matmul"]  # qkv: 6144 columns over 2 ranks
    assert {"N": 4096, "K": 2048, "M": 1} in keys["matmul"]  # o_proj: its 4096 rows over 2 ranks
    assert len(keys["matmul"]) == 2 * len(BATCH_SIZES)
    llama = presets.load("llama-3-8b").keys(1, (16,))
    assert set(llama) == {"matmul"} and len(llama["matmul"]) == 4
    assert mixtral.serves("fused_moe", {"E": 8, "N": 3584, "K": 4096, "topk": 2, "M": 5})  # tp 4
    assert not mixtral.serves("fused_moe", {"E": 8, "N": 3000, "K": 4096, "topk": 2, "M": 5})


@pytest.mark.parametrize("tp, expected", [(3, "--tp 3 does not divide 14336"), (16, "--tp 16 does not divide 8"),
                                          (0, "--tp 0 is impossible")])
def test_a_tp_that_does_not_divide_the_model_is_refused(tp, expected):
    with pytest.raises(UserError, match=expected):
        presets.load("mixtral-8x7b").keys(tp)


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_a_model_file_of_ones_own(tiny):
    model = presets.load(str(tiny))
    assert model.raw["lora_ranks"] == [8, 16]
    assert model.keys(2, (1, 4)) == {"fused_moe": [{"E": 4, "N": 32, "K": 32, "topk": 2, "M": 1},
                                                   {"E": 4, "N": 32, "K": 32, "topk": 2, "M": 4}],
                                     "matmul": [{"N": 32, "K": 32, "M": 1}, {"N": 32, "K": 32, "M": 4}]}


def test_lora_ranks_add_the_adapters_keys_of_every_dense_layer():
    """--lora-ranks: each dense layer's shrink (over its input, split by tp where the layer splits
    K) and expand (onto its widest slice, split by tp where it splits N), at every rank and batch
    size; LORAS is --max-loras at every batch size, as vLLM looks it up (tests/test_vllm_lora_files.py)."""
    llama = presets.load("llama-3-8b")
    keys = llama.lora_keys(2, (1, 16), (8, 64), max_loras=4)
    assert set(keys) == {"lora_shrink", "lora_expand"}
    # qkv_proj: q, k and v of 4096, 1024 and 1024 columns, split over 2 ranks: tuned at the widest
    assert {"M": 16, "K": 4096, "RANK": 64, "SLICES": 3, "LORAS": 4} in keys["lora_shrink"]
    assert {"M": 16, "N": 2048, "RANK": 64, "SLICES": 3, "LORAS": 4} in keys["lora_expand"]
    # down_proj splits its 14336 input rows: the shrink reads half, the expand writes all 4096
    assert {"M": 1, "K": 7168, "RANK": 8, "SLICES": 1, "LORAS": 4} in keys["lora_shrink"]
    assert {"M": 1, "N": 4096, "RANK": 8, "SLICES": 1, "LORAS": 4} in keys["lora_expand"]
    assert {"M": 1, "N": 14336 // 2, "RANK": 8, "SLICES": 2, "LORAS": 4} in keys["lora_expand"]  # gate, up
    # four layers' shrinks; o_proj's and down_proj's expands are one key (N 4096, one slice)
    assert len(keys["lora_shrink"]) == 4 * 2 * 2 and len(keys["lora_expand"]) == 3 * 2 * 2
    assert llama.serves("lora_expand", {"M": 3, "N": 1024, "RANK": 16, "SLICES": 3, "LORAS": 1})  # tp 4
    assert not llama.serves("lora_expand", {"M": 3, "N": 1000, "RANK": 16, "SLICES": 2, "LORAS": 1})
    assert not llama.serves("lora_expand", {"M": 3, "N": 1024, "RANK": 16, "SLICES": 4, "LORAS": 1})
    assert not llama.serves("lora_shrink", {"M": 3, "K": 1000, "RANK": 16, "SLICES": 1, "LORAS": 1})


def test_submit_a_model_with_lora_ranks_queues_the_lora_keys_with_the_dense_ones(tmp_path):
    home = tmp_path / "home"
    out = run_json(["submit", "--model", "llama-3-8b", "--lora-ranks", "8,16,64", "--batch-sizes", "1,16",
                    "--device-class", "cpu", "--trials", "2"], home)
    assert len(out["jobs"]) == 3
    with sqlite3.connect(home / "tuner.db") as conn:
        jobs = {kernel: json.loads(request) for kernel, request in conn.execute("select kernel, request from jobs")}
    assert set(jobs) == {"matmul", "lora_shrink", "lora_expand"}
    expected = presets.load("llama-3-8b").lora_keys(1, (1, 16), (8, 16, 64))
    for kernel in ("lora_shrink", "lora_expand"):
        assert sorted(json.dumps(k["dims"], sort_keys=True) for k in jobs[kernel]["keys"]) == sorted(
            json.dumps(d, sort_keys=True) for d in expected[kernel])
        assert {k["dims"]["RANK"] for k in jobs[kernel]["keys"]} == {8, 16, 64}
        assert {k["dtype"] for k in jobs[kernel]["keys"]} == {"bfloat16"}


def test_tuner_models_lists_the_presets(tmp_path):
    rows = run_json(["models"], tmp_path / "home")
    mixtral = next(r for r in rows if r["name"] == "mixtral-8x7b")
    assert {"kind": "moe", "name": "experts", "E": 8, "N": 14336, "K": 4096, "topk": 2} in mixtral["layers"]
    assert not (tmp_path / "home").exists()


BAD = {
    "unknown model": (["tune", "--model", "gpt-17"], "unknown model 'gpt-17'"),
    "tp that does not divide": (["tune", "--model", "mixtral-8x7b", "--tp", "3"], "--tp 3 does not divide 14336"),
    "tp on submit": (["submit", "--model", "qwen3-30b-a3b", "--tp", "3", "--device-class", "h100"],
                     "--tp 3 does not divide"),
    "model and shape": (["tune", "matmul", "--model", "llama-3-8b", "--shape", "M=1,N=1,K=1"], "drop --shape"),
    "kernel the model lacks": (["tune", "fused_moe", "--model", "llama-3-8b"], "has no layer on fused_moe"),
    "bad batch sizes": (["tune", "--model", "mixtral-8x7b", "--batch-sizes", "1,two"], "--batch-sizes '1,two'"),
    "tp without a model": (["tune", "matmul", "--shape", "M=8,N=8,K=8", "--tp", "2"], "go with --model"),
    "routing a dense kernel": (["tune", "matmul", "--shape", "M=8,N=8,K=8", "--routing", "skewed"],
                               "does not apply to matmul"),
    "no kernel and no model": (["tune"], "give a kernel"),
    "lora ranks without a model": (["tune", "matmul", "--shape", "M=8,N=8,K=8", "--lora-ranks", "8"],
                                   "go with --model"),
    "bad lora ranks": (["submit", "--model", "llama-3-8b", "--lora-ranks", "8,sixteen", "--device-class", "cpu"],
                       "--lora-ranks '8,sixteen': write positive integers"),
    "max loras without ranks": (["tune", "--model", "llama-3-8b", "--max-loras", "4"], "needs --lora-ranks"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_model_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    args, expected = BAD[case]
    home = tmp_path / "home"
    assert_one_line_error(run_tuner(args, home), expected)
    assert not home.exists()


def test_a_malformed_model_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[dense]]\nN = 96\nK = 8\nslices = [48, 48]\n')  # tp 32 divides N, not a slice
    assert_one_line_error(run_tuner(["tune", "--model", str(bad), "--tp", "32", "--lora-ranks", "8"], tmp_path / "home"),
                          "--tp 32 does not divide 48, a slice of x's dense1")
    bad.write_text('name = "x"\n[[moe]]\nE = 4\nN = "wide"\nK = 8\ntopk = 1\n')
    assert_one_line_error(run_tuner(["tune", "--model", str(bad)], tmp_path / "home"), "N must be a positive integer")
    bad.write_text('name = "x"\n[[dense]]\nN = 64\nK = 8\nslices = [32, 16]\n')
    assert_one_line_error(run_tuner(["tune", "--model", str(bad)], tmp_path / "home"), "add up to 48, not N = 64")
    bad.write_text('name = "x"\n[[moe]]\nE = 4\nN = 8\nK = 8\ntopk = 1\n')
    assert_one_line_error(run_tuner(["tune", "--model", str(bad), "--lora-ranks", "8"], tmp_path / "home"),
                          "has no dense layer for LoRA adapters")
    bad.write_text("name = [")
    assert_one_line_error(run_tuner(["tune", "--model", str(bad)], tmp_path / "home"), "is not valid TOML")
    assert not (tmp_path / "home").exists()


def test_submit_a_model_queues_a_job_per_kernel_with_every_key(tiny, tmp_path):
    home = tmp_path / "home"
    out = run_json(["submit", "--model", str(tiny), "--tp", "2", "--batch-sizes", "1,4", "--device-class", "cpu",
                    "--trials", "2", "--routing", "skewed"], home)
    assert len(out["jobs"]) == 2
    with sqlite3.connect(home / "tuner.db") as conn:
        jobs = {kernel: json.loads(request) for kernel, request in conn.execute("select kernel, request from jobs")}
    assert {k: [key["dims"] for key in r["keys"]] for k, r in jobs.items()} == {
        "fused_moe": [{"E": 4, "N": 32, "K": 32, "topk": 2, "M": 1}, {"E": 4, "N": 32, "K": 32, "topk": 2, "M": 4}],
        "matmul": [{"N": 32, "K": 32, "M": 1}, {"N": 32, "K": 32, "M": 4}]}
    assert {key["dtype"] for r in jobs.values() for key in r["keys"]} == {"float32"}  # the model's dtype
    # the routing is the MoE layers' measurement; the dense projections are timed as always
    assert jobs["fused_moe"]["measurement"]["routing"] == "skewed"
    assert "routing" not in jobs["matmul"]["measurement"]


@pytest.mark.slow
def test_tune_a_model_here(tiny, tmp_path):
    home = tmp_path / "home"
    proc = run_tuner(["tune", "--model", str(tiny), "--tp", "2", "--batch-sizes", "2", "--trials", "1",
                      "--device", "cpu", "--json"], home)
    assert proc.returncode == 0, proc.stderr
    outs = json.loads(proc.stdout)
    assert {o["kernel"]: [k["dims"] for k in o["keys"]] for o in outs} == {
        "fused_moe": [{"E": 4, "N": 32, "K": 32, "topk": 2, "M": 2}], "matmul": [{"N": 32, "K": 32, "M": 2}]}
    assert all(k["config"] for o in outs for k in o["keys"])
