"""vLLM's shipped fused-MoE configurations, as data: where the known-good lists of
search_spaces/fused_moe.py come from, and the grids vLLM's `benchmark_moe.py --tune` walks.

Each row is (E, N, M, config) from one file of vllm/model_executor/layers/fused_moe/configs/
(unquantized bf16/fp16 files, tuned with vLLM's own grid on that GPU; tests/data/vllm/ holds the
files as shipped and says where each came from). Nothing here is imported at run time but by the
kernel module; no torch, no triton.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from keys import Config

_NV = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
_AMD = _NV + ("waves_per_eu", "matrix_instr_nonkdim", "kpack")

# NVIDIA H100 80GB HBM3: E=8,N=14336 and E=8,N=7168 (Mixtral-8x7B at TP 1 and 2), E=128,N=768
# (Qwen3-30B-A3B at TP 1), E=64,N=1408 (DeepSeek-V2-Lite at TP 1; its M keys past 4096 are left out)
_H100 = {
    (8, 14336): {1: (16, 64, 256, 16, 8, 5), 2: (16, 64, 128, 64, 4, 3), 4: (16, 64, 128, 64, 4, 3),
                 8: (32, 64, 256, 32, 8, 5), 16: (64, 128, 128, 1, 8, 2), 24: (16, 128, 256, 1, 8, 3),
                 32: (32, 128, 128, 1, 8, 4), 48: (32, 128, 128, 1, 8, 4), 64: (64, 128, 128, 1, 8, 4),
                 96: (64, 128, 128, 1, 8, 4), 128: (64, 128, 64, 1, 8, 5), 256: (128, 128, 64, 1, 4, 5),
                 512: (128, 256, 64, 16, 8, 4), 1024: (128, 256, 64, 64, 8, 4), 1536: (128, 256, 64, 16, 8, 4),
                 2048: (128, 256, 64, 64, 8, 4), 3072: (128, 256, 64, 32, 8, 3), 4096: (128, 256, 64, 16, 8, 3)},
    (8, 7168): {1: (16, 64, 128, 64, 4, 4), 2: (16, 128, 128, 32, 8, 4), 4: (16, 32, 256, 16, 4, 4),
                8: (16, 128, 128, 32, 8, 4), 16: (16, 128, 128, 1, 4, 4), 24: (16, 128, 128, 1, 4, 4),
                32: (16, 128, 128, 1, 4, 4), 48: (32, 128, 128, 1, 4, 4), 64: (32, 128, 128, 1, 4, 4),
                96: (32, 128, 128, 64, 4, 4), 128: (64, 128, 128, 1, 4, 4), 256: (64, 128, 128, 64, 4, 4),
                512: (64, 256, 64, 32, 4, 4), 1024: (128, 256, 64, 16, 8, 4), 1536: (128, 256, 64, 64, 8, 4),
                2048: (128, 256, 64, 32, 8, 4), 3072: (128, 256, 64, 64, 8, 4), 4096: (128, 256, 64, 16, 8, 4)},
    (128, 768): {1: (16, 32, 64, 1, 4, 4), 2: (16, 64, 64, 32, 4, 3), 4: (16, 128, 64, 1, 4, 4),
                 8: (16, 64, 64, 64, 4, 5), 16: (16, 32, 256, 64, 4, 2), 24: (16, 64, 128, 16, 4, 3),
                 32: (16, 32, 128, 1, 4, 5), 48: (16, 64, 128, 1, 4, 3), 64: (16, 256, 128, 1, 8, 3),
                 96: (16, 128, 128, 1, 4, 2), 128: (16, 256, 128, 1, 8, 2), 256: (32, 256, 128, 1, 8, 3),
                 512: (64, 128, 64, 1, 4, 3), 1024: (64, 256, 64, 1, 8, 5), 1536: (128, 256, 64, 1, 8, 4),
                 2048: (128, 256, 64, 1, 8, 4), 3072: (128, 256, 64, 1, 8, 4), 4096: (128, 256, 64, 1, 8, 4)},
    (64, 1408): {1: (16, 32, 64, 1, 4, 4), 2: (16, 32, 64, 1, 4, 4), 4: (16, 128, 128, 16, 8, 2),
                 8: (16, 32, 128, 1, 4, 5), 16: (16, 32, 256, 16, 4, 2), 24: (16, 32, 256, 64, 4, 4),
                 32: (16, 32, 128, 1, 4, 5), 48: (16, 64, 128, 1, 4, 3), 64: (16, 128, 128, 1, 8, 4),
                 96: (16, 256, 128, 32, 4, 2), 128: (32, 128, 128, 1, 8, 3), 256: (64, 128, 64, 1, 4, 3),
                 512: (64, 64, 64, 1, 4, 3), 1024: (128, 128, 64, 1, 8, 3), 1536: (128, 256, 64, 1, 8, 4),
                 2048: (128, 256, 64, 1, 8, 4), 3072: (128, 256, 64, 1, 8, 4), 4096: (128, 256, 128, 1, 8, 2)},
}
# AMD Instinct MI300X: E=8,N=14336 and E=8,N=7168. These were tuned when Triton's AMD backend
# took num_stages=0 for its pipeliner; today's takes 2, which the AMD space holds.
_MI300X = {
    (8, 14336): {1: (16, 32, 256, 1, 2, 0, 0, 16, 1), 2: (16, 16, 128, 1, 2, 0, 0, 16, 2),
                 4: (16, 32, 256, 1, 2, 0, 0, 16, 2), 8: (16, 16, 256, 1, 1, 0, 0, 16, 2),
                 16: (16, 16, 256, 1, 4, 0, 0, 16, 2), 24: (16, 32, 64, 1, 1, 0, 0, 16, 2),
                 32: (16, 16, 128, 4, 2, 0, 0, 16, 1), 48: (16, 16, 128, 4, 2, 0, 0, 16, 2),
                 64: (32, 64, 128, 4, 8, 0, 0, 16, 2), 96: (32, 32, 128, 4, 4, 0, 0, 16, 2),
                 128: (64, 64, 64, 4, 8, 0, 0, 16, 2), 256: (128, 128, 64, 4, 8, 0, 0, 16, 1),
                 512: (128, 128, 64, 4, 8, 0, 0, 16, 2), 1024: (128, 128, 64, 1, 8, 0, 0, 32, 2),
                 1536: (128, 128, 64, 1, 8, 0, 0, 16, 2), 2048: (128, 128, 64, 1, 8, 0, 0, 16, 2),
                 3072: (128, 128, 64, 1, 8, 0, 0, 16, 1), 4096: (128, 128, 64, 1, 8, 0, 0, 16, 1)},
    (8, 7168): {1: (16, 16, 256, 1, 2, 0, 0, 16, 2), 2: (16, 64, 32, 1, 4, 0, 0, 16, 1),
                4: (16, 32, 128, 1, 4, 0, 0, 16, 1), 8: (16, 32, 256, 1, 2, 0, 0, 16, 1),
                16: (16, 16, 256, 1, 4, 0, 0, 16, 2), 24: (32, 32, 128, 1, 8, 0, 0, 16, 1),
                32: (16, 32, 128, 4, 2, 0, 0, 16, 2), 48: (16, 32, 128, 4, 2, 0, 0, 16, 1),
                64: (32, 32, 128, 4, 4, 0, 0, 16, 2), 96: (32, 32, 128, 4, 4, 0, 0, 16, 2),
                128: (64, 64, 64, 4, 8, 0, 0, 16, 1), 256: (128, 128, 64, 4, 8, 0, 0, 32, 2),
                512: (128, 128, 64, 1, 8, 0, 0, 16, 1), 1024: (128, 128, 64, 1, 8, 0, 0, 16, 1),
                1536: (128, 128, 64, 1, 8, 0, 0, 16, 2), 2048: (128, 128, 64, 1, 8, 0, 0, 16, 1),
                3072: (128, 128, 64, 1, 8, 0, 0, 16, 2), 4096: (128, 128, 64, 1, 8, 0, 0, 16, 1)},
}


def shipped(amd: bool) -> list[tuple[int, int, int, Config]]:
    """(E, N, M, config) of every shipped entry for the vendor's reference GPU (H100 or MI300X)."""
    names, table = (_AMD, _MI300X) if amd else (_NV, _H100)
    return [(e, n, m, dict(zip(names, values))) for (e, n), rows in table.items() for m, values in rows.items()]


# benchmark_moe.py's batch sizes: the M keys of every file it writes
BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)

# benchmark_moe.py's search spaces: get_configs_compute_bound on CUDA (1,920 points), and
# get_rocm_tuning_space for 16-bit types on ROCm (40,000 points, pruned per shape before it runs)
_CUDA_GRID = {"BLOCK_SIZE_M": (16, 32, 64, 128, 256), "BLOCK_SIZE_N": (32, 64, 128, 256),
              "BLOCK_SIZE_K": (64, 128, 256), "GROUP_SIZE_M": (1, 16, 32, 64), "num_warps": (4, 8),
              "num_stages": (2, 3, 4, 5)}
_ROCM_GRID = {"BLOCK_SIZE_M": (16, 32, 64, 128, 256), "BLOCK_SIZE_N": (16, 32, 64, 128, 256),
              "BLOCK_SIZE_K": (16, 32, 64, 128, 256), "GROUP_SIZE_M": (1, 4, 8, 16, 32), "num_warps": (1, 2, 4, 8),
              "num_stages": (2,), "waves_per_eu": (0, 1, 2, 4), "matrix_instr_nonkdim": (16, 32), "kpack": (1, 2)}


def tuning_grid(amd: bool) -> dict[str, tuple[int, ...]]:
    """The parameter ranges vLLM's tuning script walks, in its order."""
    return dict(_ROCM_GRID if amd else _CUDA_GRID)


def grid_configs(amd: bool) -> list[Config]:
    grid = tuning_grid(amd)
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme of the expert weights, as vLLM names its config files for it."""
    weight: str  # "fp8" | "int8"
    act_quant: bool  # activations quantized to fp8 before each GEMM (w8a8)
    block: tuple[int, int] | None  # (block_n, block_k) of the weight scales; None: per expert / channel
    vllm_dtype: str  # get_config_dtype_str: the `dtype=` of vLLM's (and SGLang's) file names


# the key dtypes of search_spaces/fused_moe_quant.py: what a preset's `dtype` may say for a
# quantized checkpoint, and what the vLLM and SGLang exports name files by (`dtype=fp8_w8a8`, and
# `block_shape=[128,128]` where the checkpoint's quantization_config has weight_block_size)
SCHEMES = {"fp8_w8a8": Scheme("fp8", True, None, "fp8_w8a8"),
           "fp8_w8a8_block128": Scheme("fp8", True, (128, 128), "fp8_w8a8"),
           "int8_w8a16": Scheme("int8", False, None, "int8_w8a16")}
