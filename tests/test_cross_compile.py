"""The constraints and the AMD knobs held against Triton's real compilers for sm_90 and gfx942.

No GPU is needed to build for one (harness/cross_compile.py), so these run everywhere:
they are what stands between the MI300X path and "correct by construction" on a machine that
has no MI300X. bench/constraint_check.py does the same over whole spaces.
"""
from __future__ import annotations

import pytest

from harness.cross_build import Builder
from harness.cross_compile import Build, cross_compile
from search_spaces import registry
from keys import SpecError
from devices.targets import target_for

SQUARE = {"M": 4096, "N": 4096, "K": 4096}
HIP_BASE = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 2,
            "waves_per_eu": 0, "matrix_instr_nonkdim": 16, "kpack": 1}


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    b = Builder(str(tmp_path_factory.mktemp("triton-cache")))  # a fresh cache: these really compile
    yield b
    b.close()


def build(builder, kernel, dims, dtype, arch, config) -> Build:
    status, got = builder.build({"kernel": kernel, "dims": dims, "dtype": dtype, "arch": arch, "config": config},
                                timeout_s=120)
    assert status == "ok", got
    return got


@pytest.mark.parametrize("arch", ["sm_90", "gfx942"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_default_and_the_known_good_list_build_clean(builder, arch, dtype):
    spec, target = registry.get("matmul"), target_for(arch)
    key = spec.make_key(SQUARE, dtype)
    for config in [spec.default(key, target), *spec.known_good(key, target)]:
        b = build(builder, "matmul", SQUARE, dtype, arch, config)
        assert b.load_error(target, config["num_warps"]) is None, (config, b)
        assert not b.spills, (config, b)
        assert b.mma, f"{config} builds without matrix instructions on {arch}"


def test_a_refusal_for_shared_memory_is_one_the_driver_would_make(builder):
    config = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
    spec, target = registry.get("matmul"), target_for("sm_90")
    assert spec.check(config, spec.make_key(SQUARE, "bfloat16"), target).startswith("shared memory")
    b = build(builder, "matmul", SQUARE, "bfloat16", "sm_90", config)
    assert b.shared_bytes > target.smem_bytes and b.load_error(target, 8).startswith("shared memory")


def test_the_mma_sync_path_keeps_one_buffer_fewer_as_the_model_says(builder):
    # 5 stages of a 48 KiB fp32 tile: 240 KiB would not fit, the 4 buffers mma.sync keeps do
    config = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 5}
    spec, target = registry.get("matmul"), target_for("sm_90")
    assert spec.check(config, spec.make_key(SQUARE, "float32"), target) is None
    b = build(builder, "matmul", SQUARE, "float32", "sm_90", config)
    assert b.mma[0].startswith("mma.sync") and b.load_error(target, 4) is None
    assert b.shared_bytes - 1024 == 4 * (32 * 128 + 128 * 64) * 4  # + 1 KiB static on sm_90


def test_hopper_builds_use_wgmma_and_two_warps_fall_back_to_mma(builder):
    config = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
    four = build(builder, "matmul", SQUARE, "bfloat16", "sm_90", config)
    two = build(builder, "matmul", SQUARE, "bfloat16", "sm_90", {**config, "num_warps": 2})
    assert four.mma and all(m.startswith("wgmma") for m in four.mma)
    assert two.mma and all(m.startswith("mma.sync") for m in two.mma)  # a warpgroup is 4 warps


@pytest.mark.parametrize("change, instruction", [
    ({}, "v_mfma_f32_16x16x16_bf16"),
    ({"matrix_instr_nonkdim": 32}, "v_mfma_f32_32x32x8_bf16"),
])
def test_matrix_instr_nonkdim_picks_the_mfma_shape(builder, change, instruction):
    assert build(builder, "matmul", SQUARE, "bfloat16", "gfx942", {**HIP_BASE, **change}).mma == (instruction,)


def test_kpack_and_waves_per_eu_reach_the_amd_compiler(builder):
    plain = build(builder, "matmul", SQUARE, "bfloat16", "gfx942", HIP_BASE)
    packed = build(builder, "matmul", SQUARE, "bfloat16", "gfx942", {**HIP_BASE, "kpack": 2})
    capped = build(builder, "matmul", SQUARE, "bfloat16", "gfx942", {**HIP_BASE, "waves_per_eu": 2})
    assert (plain.k_width, packed.k_width) == (4, 8)
    assert (plain.waves_per_eu, capped.waves_per_eu) == (0, 2)
    assert capped.registers <= 512 // 2 and capped.occupancy == 2


@pytest.mark.parametrize("arch", ["sm_90", "gfx942"])
def test_softmax_builds_its_default_clean(builder, arch):
    spec, target = registry.get("softmax"), target_for(arch)
    dims = {"M": 4096, "N": 8192}
    config = spec.default(spec.make_key(dims, "float16"), target)
    b = build(builder, "softmax", dims, "float16", arch, config)
    assert b.load_error(target, config["num_warps"]) is None and not b.spills


def test_a_compiler_failure_is_an_answer_not_a_dead_builder(builder):
    status, why = builder.build({"kernel": "matmul", "dims": SQUARE, "dtype": "bfloat16", "arch": "sm_90",
                                 "config": {"BLOCK_M": 64}}, timeout_s=60)
    assert status == "error" and "KeyError" in why
    config = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
    assert build(builder, "matmul", SQUARE, "bfloat16", "sm_90", config).mma


def test_a_build_past_its_time_is_killed_and_the_builder_restarts(builder):
    config = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 4, "num_warps": 4, "num_stages": 2}
    status, why = builder.build({"kernel": "matmul", "dims": SQUARE, "dtype": "float16", "arch": "sm_90",
                                 "config": config}, timeout_s=0.001)
    assert status == "timeout" and builder.proc.poll() is not None
    assert build(builder, "matmul", SQUARE, "float16", "sm_90", config).mma


def test_the_interpreter_has_nothing_to_build():
    spec = registry.get("matmul")
    key = spec.make_key(SQUARE, "float32")
    with pytest.raises(SpecError, match="interpreter"):
        cross_compile(spec, spec.default(key, target_for("interpreter")), key, target_for("interpreter"))


@pytest.mark.slow
def test_the_constraint_check_bench_runs_end_to_end(tmp_path):
    import gzip
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "constraints"
    subprocess.run([sys.executable, "bench/constraint_check.py", "--kernel", "softmax", "--shape", "M=64,N=1000",
                    "--dtype", "float16", "--arch", "sm_90,gfx942", "--accepted", "2", "--refused", "1",
                    "--timeout", "5", "--jobs", "1", "--out", str(out)], cwd=root, check=True, capture_output=True)
    result = json.loads(gzip.open(f"{out}.json.gz", "rt").read())
    assert [(c["arch"], c["summary"]["configs"]) for c in result["cases"]] == [("sm_90", 3), ("gfx942", 3)]
    assert all(c["summary"]["accepted_but_failed"] == 0 for c in result["cases"])
    assert "softmax 64x1000 float16 on gfx942" in Path(f"{out}.md").read_text()


# the LLM-serving kernels at shapes they serve: Llama-3-8B's qkv projection (LoRA rank 16, a decode
# batch and a prefill one) and attention at HEAD_DIM 128 and 64
LLM_CASES = [("lora_shrink", {"M": 16, "K": 4096, "RANK": 16, "SLICES": 3, "LORAS": 4}),
             ("lora_shrink", {"M": 512, "K": 4096, "RANK": 64, "SLICES": 3, "LORAS": 4}),
             ("lora_expand", {"M": 16, "N": 4096, "RANK": 16, "SLICES": 3, "LORAS": 4}),
             ("lora_expand", {"M": 512, "N": 14336, "RANK": 64, "SLICES": 2, "LORAS": 4}),
             ("flash_attention", {"BH": 32, "N_CTX": 4096, "HEAD_DIM": 128, "STAGE": 3}),
             ("flash_attention", {"BH": 32, "N_CTX": 4096, "HEAD_DIM": 64, "STAGE": 1})]


@pytest.mark.parametrize("arch", ["sm_90", "gfx942"])
@pytest.mark.parametrize("kernel, dims", LLM_CASES, ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v.values())))
def test_llm_kernels_defaults_and_known_good_build_and_load(builder, arch, kernel, dims):
    spec, target = registry.get(kernel), target_for(arch)
    key = spec.make_key(dims, "bfloat16")
    for config in [spec.default(key, target), *spec.known_good(key, target)]:
        b = build(builder, kernel, dims, "bfloat16", arch, config)
        assert b.load_error(target, config["num_warps"]) is None, (config, b)
        assert b.mma, f"{config} builds without matrix instructions on {arch}"
        # spills: none on sm_90; the tutorial's own HIP attention seeds spill a little at HEAD_DIM 128
        assert b.spill_bytes <= (64 if target.is_hip else 16), (config, b)


@pytest.mark.parametrize("arch", ["sm_90", "gfx942"])
@pytest.mark.parametrize("m", [1, 4096])
def test_fused_moe_default_and_the_seeds_auto_takes_build_clean(builder, arch, m):
    """vLLM's default and the first eight of its shipped list (what `auto` seeds) for Mixtral-8x7B at
    TP 1: each builds and loads within the limits on sm_90 and gfx942, with matrix instructions."""
    from search.strategies.base import STARTUP_TRIALS

    spec, target = registry.get("fused_moe"), target_for(arch)
    dims = {"E": 8, "N": 14336, "K": 4096, "topk": 2, "M": m}
    key = spec.make_key(dims, "bfloat16")
    for config in [spec.default(key, target), *spec.known_good(key, target)[:STARTUP_TRIALS]]:
        b = build(builder, "fused_moe", dims, "bfloat16", arch, config)
        assert b.load_error(target, config["num_warps"]) is None, (config, b)
        assert b.mma, f"{config} builds without matrix instructions on {arch}"


@pytest.mark.parametrize("arch", ["sm_90", "gfx942"])
@pytest.mark.parametrize("dtype", ["fp8_w8a8", "fp8_w8a8_block128", "int8_w8a16"])
def test_quantized_fused_moe_default_and_seeds_build_to_8_bit_matrix_instructions(builder, arch, dtype):
    """DeepSeek-V3's experts at tp 8 (vLLM's E=256,N=256 files): vLLM's default and the first seeds
    build and load within the limits, fp8 keys on the GPUs' fp8 instructions: v_mfma_*_fp8_fp8 on
    gfx942 (the e4m3fnuz type it computes in), wgmma over e4m3 (k32, where 16-bit wgmma is k16) on
    sm_90; a tile under 64 rows or 4 warps builds to mma.sync, which Triton 3.6 runs in fp16 there."""
    spec, target = registry.get("fused_moe_quant"), target_for(arch)
    dims = {"E": 256, "N": 256, "K": 7168, "topk": 8, "M": 64}
    key = spec.make_key(dims, dtype)
    for config in [spec.default(key, target), *spec.known_good(key, target)[:2]]:
        b = build(builder, "fused_moe_quant", dims, dtype, arch, config)
        assert b.load_error(target, config["num_warps"]) is None, (config, b)
        assert b.mma, f"{config} builds without matrix instructions on {arch}"
        if arch == "gfx942":
            assert all(("fp8" in m) == dtype.startswith("fp8") for m in b.mma), b.mma
        else:
            k = "k32" if dtype.startswith("fp8") else "k16"
            assert all(m.endswith(k) for m in b.mma if m.startswith("wgmma")), b.mma
        assert b.spill_bytes <= 16, (config, b)
