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
    assert {"mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v2-lite", "llama-3-8b", "deepseek-v3", "deepseek-r1",
            "kimi-k2", "qwen3-235b-a22b", "llama-4-scout", "llama-4-maverick"} <= set(names)
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


@pytest.mark.parametrize("tp, expected", [(3, "--tp 3 does not divide 14336"), (64, "--tp 64 does not divide 32"),
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
    assert {"kind": "moe", "name": "experts", "E": 8, "N": 14336, "K": 4096, "topk": 2,
            "kernel": "fused_moe"} in mixtral["layers"]
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


# ---- the MoE models served most, keyed as vLLM's benchmark_moe.py keys them --------------------
# Their config.json fields (Hugging Face), written here apart from the presets' TOML files.
CONFIGS = {
    "deepseek-v3": {"architectures": ["DeepseekV3ForCausalLM"], "n_routed_experts": 256, "num_experts_per_tok": 8,
                    "moe_intermediate_size": 2048, "hidden_size": 7168,
                    "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
    "kimi-k2": {"architectures": ["DeepseekV3ForCausalLM"], "n_routed_experts": 384, "num_experts_per_tok": 8,
                "moe_intermediate_size": 2048, "hidden_size": 7168,
                "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
    "qwen3-235b-a22b": {"architectures": ["Qwen3MoeForCausalLM"], "num_experts": 128, "num_experts_per_tok": 8,
                        "moe_intermediate_size": 1536, "hidden_size": 4096},
    "qwen3-30b-a3b": {"architectures": ["Qwen3MoeForCausalLM"], "num_experts": 128, "num_experts_per_tok": 8,
                      "moe_intermediate_size": 768, "hidden_size": 2048},
    "llama-4-scout": {"architectures": ["Llama4ForConditionalGeneration"], "text_config": {
        "num_local_experts": 16, "num_experts_per_tok": 1, "intermediate_size": 8192, "hidden_size": 5120}},
    "llama-4-maverick": {"architectures": ["Llama4ForConditionalGeneration"], "text_config": {
        "num_local_experts": 128, "num_experts_per_tok": 1, "intermediate_size": 8192, "hidden_size": 5120}},
}
CONFIGS["deepseek-r1"] = CONFIGS["deepseek-v3"]


def benchmark_moe_file(config, tp, device="NVIDIA H100 80GB HBM3"):
    """(E, N, K, topk) and the file name vLLM's benchmarks/kernels/benchmark_moe.py writes for a model
    (vllm-project/vllm 71acd375, main(): E, topk and the intermediate size per architecture, the
    DeepSeek-V3 and Qwen3-MoE branches and the default one through get_text_config() for Llama-4;
    shard_intermediate_size = 2 * intermediate_size // tp; save_configs names the file by
    shard_intermediate_size // 2, the dtype `--dtype fp8_w8a8` gives _get_config_dtype_str and the
    block shape get_weight_block_size_safety reads from quantization_config.weight_block_size;
    get_config_file_name in fused_moe.py joins them, the block shape without spaces)."""
    arch = config["architectures"][0]
    if arch in ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"):
        e, inter = config["n_routed_experts"], config["moe_intermediate_size"]
    elif arch in ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
        e, inter = config["num_experts"], config["moe_intermediate_size"]
    else:
        config = config.get("text_config", config)
        e, inter = config["num_local_experts"], config["intermediate_size"]
    assert inter % tp == 0  # ensure_divisibility
    n = 2 * inter // tp // 2
    quant = config.get("quantization_config", {})
    dtype = "fp8_w8a8" if quant.get("quant_method") == "fp8" else None
    block = quant.get("weight_block_size")
    name = f"E={e},N={n},device_name={device.replace(' ', '_')}" + (f",dtype={dtype}" if dtype else "") + \
        (f",block_shape={block}".replace(" ", "") if block else "")
    return (e, n, config["hidden_size"], config["num_experts_per_tok"]), name + ".json"


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_moe_presets_key_what_benchmark_moe_computes(name, tp):
    """Each preset's MoE key at tp, in its dtype, and the vLLM file it exports to, are those
    benchmark_moe.py computes and writes for the model's own config.json (fp8 block-quantized for
    DeepSeek-V3/R1 and Kimi-K2, as released)."""
    from tuner.formats.vllm import block_shape, dtype_selector, file_name

    dims, expected = benchmark_moe_file(CONFIGS[name], tp)
    model = presets.load(name)
    keys = model.keys(tp, (1, 64))
    kernel = "fused_moe_quant" if "quantization_config" in CONFIGS[name] else "fused_moe"
    assert [tuple(d[x] for x in ("E", "N", "K", "topk")) for d in keys[kernel]] == [dims, dims]
    assert file_name(*dims[:2], "NVIDIA H100 80GB HBM3", dtype_selector(model.dtype), block_shape(model.dtype)) == expected


def test_qwen3_30b_a3b_at_every_tp_vllm_serves_replicates_its_kv_heads():
    """vLLM's QKVParallelLinear (model_executor/layers/linear.py): num_heads = total / tp; once tp
    reaches the 4 KV heads, num_kv_heads = 1 and they are replicated tp / 4 times. At tp 8 the qkv
    projection of a rank is 4 query heads and one k and one v head: 6 x 128 columns."""
    model = presets.load("qwen3-30b-a3b")
    for tp in (1, 2, 4, 8, 16):
        keys = model.keys(tp, (1,))
        q, kv = 32 // tp, max(1, 4 // tp)
        assert {"N": (q + 2 * kv) * 128, "K": 2048, "M": 1} in keys["matmul"]
        assert {"N": 2048, "K": 4096 // tp, "M": 1} in keys["matmul"]  # o_proj
        assert keys["fused_moe"] == [{"E": 128, "N": 768 // tp, "K": 2048, "topk": 8, "M": 1}]
    odd = presets.parse({"name": "odd", "dense": [{"name": "qkv_proj", "N": 5120, "K": 64, "slices": [3072, 1024, 1024],
                                                   "kv_heads": 8}]}, "odd.toml")
    with pytest.raises(UserError, match="--tp 12 is neither a divisor nor a multiple of the 8 key/value heads"):
        odd.keys(12)
    lora = model.lora_keys(8, (16,), (16,))
    assert {"M": 16, "N": 512, "RANK": 16, "SLICES": 3, "LORAS": 1} in lora["lora_expand"]  # q's 4 heads, widest
    with pytest.raises(UserError, match="--tp 3 does not divide"):
        model.keys(3)


def test_shared_experts_and_dense_layers_are_in_the_presets():
    """DeepSeek-V3/Kimi-K2: one shared expert of moe_intermediate_size (n_shared_experts 1) and
    first_k_dense_replace dense MLPs; Llama-4: a shared expert of intermediate_size, and Maverick's
    dense MLPs of intermediate_size_mlp on every other layer. Keyed as bf16 matmuls when asked for
    in bf16; an fp8 checkpoint's dense GEMMs run on no kernel here, so its own dtype keys its MoE only."""
    v3 = presets.load("deepseek-v3")
    dense = {la.name: dict(la.dims) for la in v3.layers if la.kind == "dense"}
    assert dense["shared_experts.gate_up_proj"] == {"N": 2 * 2048, "K": 7168}
    assert dense["mlp.down_proj"] == {"N": 7168, "K": 18432}
    assert set(v3.keys(8, (1,))) == {"fused_moe_quant"}
    bf16 = v3.keys(8, (1,), dtype="bfloat16")
    assert bf16["fused_moe"] == [{"E": 256, "N": 256, "K": 7168, "topk": 8, "M": 1}]
    assert {"N": 512, "K": 7168, "M": 1} in bf16["matmul"]  # the shared expert's gate and up at tp 8
    maverick = {la.name: dict(la.dims) for la in presets.load("llama-4-maverick").layers}
    assert maverick["mlp.gate_up_proj"] == {"N": 2 * 16384, "K": 5120}
    assert maverick["shared_expert.down_proj"] == {"N": 5120, "K": 8192}
    with pytest.raises(UserError, match="128-wide weight blocks do not divide"):
        presets.load("qwen3-235b-a22b").keys(8, dtype="fp8_w8a8_block128")  # vLLM refuses N = 192 a rank


def test_submit_an_fp8_preset_queues_the_quantized_moe_keys(tmp_path):
    home = tmp_path / "home"
    out = run_json(["submit", "--model", "deepseek-v3", "--tp", "8", "--batch-sizes", "1,16",
                    "--device-class", "cpu", "--trials", "2"], home)
    assert out["job"]
    with sqlite3.connect(home / "tuner.db") as conn:
        (kernel, request), = conn.execute("select kernel, request from jobs").fetchall()
    keys = json.loads(request)["keys"]
    assert kernel == "fused_moe_quant"
    assert [(k["dims"], k["dtype"]) for k in keys] == [
        ({"E": 256, "N": 256, "K": 7168, "topk": 8, "M": m}, "fp8_w8a8_block128") for m in (1, 16)]
    rows = run_json(["models"], tmp_path / "other")
    v3 = next(r for r in rows if r["name"] == "deepseek-v3")
    assert v3["dtype"] == "fp8_w8a8_block128" and "n_routed_experts = 256" in v3["config"]
    assert "quantization_config.weight_block_size = [128, 128]" in v3["config"]
