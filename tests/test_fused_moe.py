"""The fused MoE kernel: its output against the per-expert PyTorch reference on the interpreter,
the alignment, the routings, vLLM's default and grid, and the spaces for sm_90 and gfx942."""
import json

import pytest
import torch

from harness.protocol import Measurement, TrialRequest
from search_spaces import fused_moe_vllm, registry
from keys import SpecError
from devices.targets import target_for
from search_spaces.fused_moe import align, route

SPEC = registry.get("fused_moe")
INTERP = target_for("interpreter")


def key(dtype="float32", **dims):
    return SPEC.make_key({"E": 4, "N": 32, "K": 64, "topk": 2, "M": 8, **dims}, dtype)


def test_align_sorts_pairs_by_expert_and_pads_each_run_to_the_block():
    ids = torch.tensor([[0, 2], [2, 3], [0, 3], [3, 2], [2, 0]], dtype=torch.int32)
    al = align(ids, experts=4, block=4)
    pairs = ids.numel()
    total = int(al.total)
    assert total == 4 * 3  # experts 0, 2, 3 each have 3 pairs: one block each; expert 1 none
    flat = ids.flatten()
    for b in range(total // 4):
        rows = al.sorted_ids[b * 4:(b + 1) * 4]
        real = rows[rows < pairs]
        assert (flat[real.long()] == al.expert_ids[b]).all()
    assert sorted(al.sorted_ids[al.sorted_ids < pairs].tolist()) == list(range(pairs))
    assert (al.sorted_ids[total:] == pairs).all()  # the worst-case tail holds padding only


def test_routing_is_k_distinct_experts_a_token_and_skewed_is_uneven():
    gen = torch.Generator().manual_seed(0)
    for routing in ("uniform", "skewed"):
        ids, weights = route(512, 8, 2, routing, gen)
        assert ids.shape == (512, 2) and (ids[:, 0] != ids[:, 1]).all()
        assert torch.allclose(weights.sum(1), torch.ones(512))
    uniform = torch.bincount(route(4096, 8, 2, "uniform", gen)[0].flatten(), minlength=8)
    skewed = torch.bincount(route(4096, 8, 2, "skewed", gen)[0].flatten(), minlength=8)
    assert uniform.max() < 1.2 * uniform.min()
    assert skewed.max() > 3 * skewed.min()
    with pytest.raises(SpecError, match="unknown routing"):
        route(4, 8, 2, "zipf", gen)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("routing", ["uniform", "skewed"])
@pytest.mark.parametrize("dims, config", [
    ({"M": 3}, {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1}),  # batch < block
    ({"M": 24}, {"BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 8}),
    ({"M": 16, "K": 48, "N": 24}, {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1}),
])
def test_output_matches_the_per_expert_reference(dtype, routing, dims, config):
    k = key(dtype, **dims)
    config = {**config, "num_warps": 4, "num_stages": 2}
    assert SPEC.check(config, k, INTERP) is None
    inputs = SPEC.make_inputs(k, "cpu", seed=3, routing=routing)
    out, ref = SPEC.launch(config, inputs), SPEC.reference(inputs)
    atol, rtol = SPEC.tolerances[dtype]
    assert out.shape == ref.shape == (k.dim_map["M"], k.dim_map["K"])
    assert torch.allclose(out.float(), ref.float(), atol=atol, rtol=rtol), (out.float() - ref.float()).abs().max()
    # the reference is not trivially small: a kernel that skipped the second GEMM would fail
    assert ref.float().abs().mean() > 0.05


def test_key_needs_topk_within_the_experts():
    with pytest.raises(SpecError, match="topk=9 is more than the E=8"):
        SPEC.make_key({"E": 8, "N": 64, "K": 64, "topk": 9, "M": 1}, "float32")


def test_default_is_vllms_heuristic():
    """get_default_config for unquantized weights, with Triton's default warps and stages."""
    small = SPEC.make_key({"E": 8, "N": 14336, "K": 4096, "topk": 2, "M": 8}, "bfloat16")
    large = SPEC.make_key({"E": 8, "N": 14336, "K": 4096, "topk": 2, "M": 64}, "bfloat16")
    h100, mi300x = target_for("sm_90"), target_for("gfx942")
    assert SPEC.default(small, h100) == {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64,
                                         "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 3}
    assert SPEC.default(large, h100) == {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32,
                                         "GROUP_SIZE_M": 8, "num_warps": 4, "num_stages": 3}
    assert SPEC.default(small, mi300x) == {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64,
                                           "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 2, "waves_per_eu": 0,
                                           "matrix_instr_nonkdim": 16, "kpack": 1}


def test_spaces_hold_vllms_grids_and_amd_pipelines_in_two_stages():
    big = SPEC.make_key({"E": 8, "N": 14336, "K": 4096, "topk": 2, "M": 4096}, "bfloat16")
    h100, mi300x = target_for("sm_90"), target_for("gfx942")
    cuda_grid = fused_moe_vllm.grid_configs(amd=False)
    assert len(cuda_grid) == 1920
    assert all(SPEC.check_space(c, h100) is None for c in cuda_grid)
    assert all(SPEC.check_space(c, mi300x) is None for c in fused_moe_vllm.grid_configs(amd=True))
    assert SPEC.space(mi300x)["num_stages"] == (2,)
    assert {"waves_per_eu", "matrix_instr_nonkdim", "kpack"} <= set(SPEC.space(mi300x))
    # shared memory: 5 stages of 256x256 bf16 tiles cannot fit an H100's 227 KiB
    huge = {"BLOCK_SIZE_M": 256, "BLOCK_SIZE_N": 256, "BLOCK_SIZE_K": 256, "GROUP_SIZE_M": 1, "num_warps": 8,
            "num_stages": 5}
    assert "shared memory" in SPEC.check(huge, big, h100)


def test_known_good_lists_are_vllms_shipped_configs_nearest_batch_first():
    mixtral = SPEC.make_key({"E": 8, "N": 14336, "K": 4096, "topk": 2, "M": 1}, "bfloat16")
    h100, mi300x = target_for("sm_90"), target_for("gfx942")
    good = SPEC.known_good(mixtral, h100)
    # the shipped E=8,N=14336 H100 file's entry for M=1, first
    assert good[0] == {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 256, "GROUP_SIZE_M": 16,
                       "num_warps": 8, "num_stages": 5}
    assert all(SPEC.check(c, mixtral, h100) is None for c in good)
    amd = SPEC.known_good(mixtral, mi300x)
    assert amd and all(SPEC.check(c, mixtral, mi300x) is None and c["num_stages"] == 2 for c in amd)
    tiny = key(M=1)
    assert all(SPEC.check(c, tiny, INTERP) is None for c in SPEC.known_good(tiny, INTERP))


def test_routing_is_part_of_the_measurement_and_of_the_study():
    skewed = Measurement(routing="skewed")
    assert skewed.tag == "+skewed" and Measurement().tag == ""
    assert Measurement().to_json() == {"rotate_buffers": 1, "cuda_graph": False, "max_cv": None}
    assert Measurement.from_json(skewed.to_json()) == skewed
    req = TrialRequest.from_json({"kernel": "fused_moe", "key": {}, "config": {}, "device": "cpu", "arch": "x",
                                  **skewed.to_json()})
    assert req.routing == "skewed"
    with pytest.raises(ValueError):
        Measurement(routing="no such routing")


@pytest.mark.slow
def test_a_trial_in_the_harness_runs_each_routing(tmp_path):
    from harness.harness import Harness

    k = key(M=4)
    config = SPEC.default(k, INTERP)
    with Harness() as h:
        results = [h.run(TrialRequest(kernel="fused_moe", key=k.to_json(), config=config, device="cpu",
                                      arch="interpreter", warmup=0, reps=1, **Measurement(routing=r).to_json()))
                   for r in ("uniform", "skewed")]
    assert [r.status for r in results] == ["ok", "ok"], [r.message for r in results]


# ---- quantized weights: fused_moe_quant ----------------------------------------------------
QUANT = registry.get("fused_moe_quant")
CONFIG = {"GROUP_SIZE_M": 8, "num_warps": 4, "num_stages": 2}


@pytest.mark.parametrize("dtype", ["fp8_w8a8", "fp8_w8a8_block128", "int8_w8a16"])
@pytest.mark.parametrize("dims, blocks", [
    ({"M": 3, "N": 128, "K": 256}, (16, 32, 64)),  # a batch under one block; two scale groups along K
    ({"M": 24, "N": 256, "K": 128}, (32, 64, 32)),  # several row blocks; BLOCK_SIZE_N under the 128-wide block
    ({"M": 16, "N": 128, "K": 384}, (16, 128, 128)),  # K tiles equal to the scale group
])
def test_quantized_output_matches_the_dequantized_reference(dtype, dims, blocks):
    """The kernel on the interpreter (fp8 e4m3 tl.dot runs there: products of fp8 values are exact in
    fp32) against the reference that dequantizes weights and activations to fp32."""
    k = QUANT.make_key({"E": 4, "topk": 2, **dims}, dtype)
    config = {**dict(zip(("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"), blocks)), **CONFIG}
    assert QUANT.check(config, k, INTERP) is None
    inputs = QUANT.make_inputs(k, "cpu", seed=5)
    weight_type = torch.int8 if dtype == "int8_w8a16" else torch.float8_e4m3fn
    assert inputs.w1.q.dtype == inputs.w2.q.dtype == weight_type
    out, ref = QUANT.launch(config, inputs), QUANT.reference(inputs)
    atol, rtol = QUANT.tolerances[dtype]
    assert out.shape == ref.shape == (dims["M"], dims["K"]) and out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref.float(), atol=atol, rtol=rtol), (out.float() - ref.float()).abs().max()
    assert ref.float().abs().mean() > 0.2  # outputs ~N(0, 0.3): a skipped scale or GEMM would be far off
    # most entries agree far closer than the tolerance, which only the rare fp8 step may need
    assert (out.float() - ref.float()).abs().median() < 0.01


def test_the_quantization_follows_vllms_per_token_group_and_block_rules():
    """per_token_group_quant_fp8 (vLLM's quantization/utils/fp8_utils.py): scale = max(|x|, 1e-10) /
    448 per token and group of 128; block weights: a scale per 128x128 block, each block's own."""
    from search_spaces.fused_moe_quant import dequantize_weights, quantize_groups, quantize_weights
    from search_spaces.fused_moe_vllm import SCHEMES

    x = torch.zeros(2, 256)
    x[0, :128] = torch.linspace(-3.0, 3.0, 128)
    x[0, 128:] = 0.5
    q = quantize_groups(x, 128, torch.float8_e4m3fn)
    assert q.scale.shape == (2, 2)
    assert torch.allclose(q.scale[0], torch.tensor([3.0 / 448, 0.5 / 448]))
    assert torch.allclose(q.scale[1], torch.full((2,), 1e-10 / 448))  # an all-zero row: eps, not 0
    dq = q.q.float() * q.scale.repeat_interleave(128, dim=1)
    assert torch.allclose(dq, x, rtol=2 ** -3, atol=0)  # e4m3 keeps 3 mantissa bits
    assert q.q.float().abs().max() == 448
    w = torch.ones(1, 256, 256)
    w[0, 130, 5] = 100.0  # one large weight: its block's scale only
    qw = quantize_weights(w, SCHEMES["fp8_w8a8_block128"], torch.float8_e4m3fn)
    assert qw.scale.shape == (1, 2, 2)
    assert torch.allclose(qw.scale[0], torch.tensor([[1 / 448, 1 / 448], [100 / 448, 1 / 448]]))
    assert torch.allclose(dequantize_weights(qw, SCHEMES["fp8_w8a8_block128"]), w, rtol=2 ** -3)
    qi = quantize_weights(w, SCHEMES["int8_w8a16"], None)
    assert qi.q.dtype == torch.int8 and qi.scale.shape == (1, 256) and qi.scale[0, 130] == 100 / 127


def test_block_quantized_keys_take_vllms_default_and_refuse_k_tiles_past_a_scale_group():
    """get_default_config for fp8_w8a8 with block_shape [128, 128]; invoke_fused_moe_kernel launches
    BLOCK_SIZE_K min(BLOCK_SIZE_K, 128), so 256 is the same launch as 128 and is not measured twice."""
    k = QUANT.make_key({"E": 256, "N": 256, "K": 7168, "topk": 8, "M": 64}, "fp8_w8a8_block128")
    h100, mi300x = target_for("sm_90"), target_for("gfx942")
    assert QUANT.default(k, h100) == {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 128,
                                      "GROUP_SIZE_M": 32, "num_warps": 4, "num_stages": 3}
    assert QUANT.default(k, mi300x) == {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 128,
                                        "GROUP_SIZE_M": 32, "num_warps": 4, "num_stages": 2, "waves_per_eu": 0}
    wide = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 256, "GROUP_SIZE_M": 1, "num_warps": 4,
            "num_stages": 3}
    assert "BLOCK_SIZE_K=256 spans 128-wide scale groups" in QUANT.check(wide, k, h100)
    # vLLM's 8-bit ROCm grid (get_rocm_tuning_space(use_fp16=False)): no 16-deep K tile, no fp16 MFMA knobs
    assert 16 not in QUANT.space(mi300x)["BLOCK_SIZE_K"]
    assert not {"matrix_instr_nonkdim", "kpack"} & set(QUANT.space(mi300x))
    good = QUANT.known_good(k, h100)
    assert good and all(QUANT.check(c, k, h100) is None for c in good)
    with pytest.raises(SpecError, match="multiples of 128"):
        QUANT.make_key({"E": 4, "N": 96, "K": 128, "topk": 2, "M": 1}, "fp8_w8a8_block128")
    with pytest.raises(SpecError, match="not supported by fused_moe_quant"):
        QUANT.make_key({"E": 4, "N": 96, "K": 128, "topk": 2, "M": 1}, "bfloat16")


# ---- the quantized keys' files, as vLLM and SGLang look them up ------------------------------
def vllm_file(E, N, dtype, device_name, block_shape=None):
    """vLLM's get_config_file_name (fused_moe.py, vllm-project/vllm 000d1458), with the device name
    handed in: try_get_optimal_moe_config passes block_shape [block_n, block_k] only when both are set."""
    device_name = device_name.replace(" ", "_")
    if "H200" in device_name.split("_"):  # newer vLLM folds every H200 onto one name
        device_name = "NVIDIA_H200"
    dtype_selector = "" if not dtype else f",dtype={dtype}"
    block_shape_selector = ("" if not block_shape or not all(block_shape) else f",block_shape={block_shape}").replace(" ", "")
    return f"E={E},N={N},device_name={device_name}{dtype_selector}{block_shape_selector}.json"


def sglang_file(E, N, dtype, device_name, block_shape=None):
    """SGLang's get_config_file_name (fused_moe_triton_config.py, sgl-project/sglang 083d6013): the
    block shape is formatted as Python prints a list, with its space."""
    dtype_selector = "" if not dtype else f",dtype={dtype}"
    block_shape_selector = "" if not block_shape or not all(block_shape) else f",block_shape={block_shape}"
    return f"E={E},N={N},device_name={device_name.replace(' ', '_')}{dtype_selector}{block_shape_selector}.json"


def entry(dtype, m, config, e=256, n=256):
    return {"kernel": "fused_moe_quant", "key": {"dims": {"E": e, "N": n, "K": 7168, "topk": 8, "M": m}},
            "dtype": dtype, "config": config, "tuned_at": f"2026-12-01T00:00:0{m % 10}",
            "device_names": ["NVIDIA H100 80GB HBM3"], "stack": {"triton": "3.6.0"}}


def test_quantized_bests_are_written_under_vllms_and_sglangs_names(tmp_path):
    """get_config_dtype_str gives fp8_w8a8 or int8_w8a16; the block shape follows for block-wise fp8.
    A DeepSeek-V3 tp 8 export lands on vLLM's shipped name
    E=256,N=256,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128,128].json."""
    from tuner.formats import sglang, vllm

    config = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 32, "num_warps": 4,
              "num_stages": 3}
    entries = [entry("fp8_w8a8_block128", 1, config), entry("fp8_w8a8_block128", 64, {**config, "num_stages": 4}),
               entry("fp8_w8a8", 1, config), entry("int8_w8a16", 1, config, n=768)]
    assert vllm.write(entries, tmp_path / "vllm").count == 4
    assert sglang.write(entries, tmp_path / "sglang").count == 4
    h100 = "NVIDIA H100 80GB HBM3"
    for dtype, block, n, ms in (("fp8_w8a8", [128, 128], 256, (1, 64)), ("fp8_w8a8", None, 256, (1,)),
                                ("int8_w8a16", None, 768, (1,))):
        got = json.loads((tmp_path / "vllm" / vllm_file(256, n, dtype, h100, block)).read_text())
        assert sorted(int(m) for m in got) == list(ms)
        sg = tmp_path / "sglang" / "configs" / "triton_3_6_0" / sglang_file(256, n, dtype, h100, block)
        assert json.loads(sg.read_text()) == got
    assert (tmp_path / "vllm" / "E=256,N=256,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,"
                                "block_shape=[128,128].json").exists()
    assert json.loads((tmp_path / "vllm" / vllm_file(256, 256, "fp8_w8a8", h100, [128, 128])).read_text())["64"][
        "num_stages"] == 4
    assert len(list((tmp_path / "vllm").iterdir())) == 3


@pytest.mark.slow
def test_an_fp8_model_is_tuned_and_exported_under_vllms_block_shape_name(tmp_path):
    """The README's fp8 commands on the interpreter: `tuner tune --model` of a block-quantized model
    keys its experts on fused_moe_quant, and `tuner export --format vllm --model` writes the file vLLM
    looks up for them (get_config_file_name with dtype fp8_w8a8 and block_shape [128, 128])."""
    from tests.cli_helpers import run_tuner

    model = tmp_path / "tiny-fp8.toml"
    model.write_text('name = "tiny-fp8"\ndtype = "fp8_w8a8_block128"\n'
                     '[[moe]]\nname = "experts"\nE = 4\nN = 256\nK = 128\ntopk = 2\n')
    home = tmp_path / "home"
    proc = run_tuner(["tune", "--model", str(model), "--tp", "2", "--batch-sizes", "4", "--trials", "1",
                      "--device", "cpu", "--json"], home)
    assert proc.returncode == 0, proc.stderr
    (out,) = json.loads(proc.stdout)
    assert out["kernel"] == "fused_moe_quant" and out["keys"][0]["dtype"] == "fp8_w8a8_block128"
    folder = tmp_path / "vllm"
    folder.mkdir()
    proc = run_tuner(["export", "--format", "vllm", "-o", str(folder), "--model", str(model)], home)
    assert proc.returncode == 0, proc.stderr
    name = vllm_file(4, 128, "fp8_w8a8", "Triton CPU interpreter", [128, 128])
    assert [p.name for p in folder.iterdir()] == [name]
    assert json.loads((folder / name).read_text())["4"] == out["keys"][0]["config"]
