"""Multi-LoRA shrink: out[s, t] = scaling * x[t] @ A[s, adapter(t)]^T for every token t and slice s.

x is [M, K] (the projection's input), A is [SLICES, adapters, RANK, K] (each slice's LoRA A,
stacked), out is [SLICES, M, RANK] in fp32, as vLLM's shrink writes it for the expand to read.
The grid is (SPLIT_K x M tiles x RANK tiles, SLICES, LORAS + 1): each program takes BLOCK_M of its
adapter's tokens (gathered by token id) and one of SPLIT_K interleaved parts of K; with SPLIT_K > 1
the parts are summed with atomic adds into the zeroed output. A skinny GEMM (RANK is 8 to 256)
whose best tiles depend on M, K, RANK, SLICES and LORAS: what vLLM's `lora_shrink` computes, and
its `get_lora_op_configs("shrink")` default is this kernel's default (see lora.py).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import triton
import triton.language as tl

from keys import DTYPE_BYTES, Config, TuningKey
from devices.targets import Target
from search_spaces.base import TORCH_DTYPES, LazyTorch, Specialization, next_pow2, require_launchable
from search_spaces.lora import (
    GROUP_M,
    LoraSpec,
    Segments,
    adapter_rows,
    make_segments,
    segment_rows,
    slots,
    tile_resources,
)

torch = LazyTorch(globals())  # imported at its first use: reading a space needs none

SCALING = 0.5  # the adapter's alpha / rank: any value but 1 proves the kernel applies it

# Shrink configurations vLLM's own tuning found on an H100 at rank 16, one adapter, one slice
# (vllm/lora/ops/triton_ops/configs/NVIDIA_H100_80GB_HBM3_SHRINK.json, vllm-project/vllm commit
# 7b8d7fd4): the most frequent of M=1..128 at K=4096..16384.  BM, BN, BK, SPLIT_K, warps, stages
_H100_GOOD = [(16, 16, 128, 32, 4, 4), (16, 16, 64, 32, 8, 4), (16, 16, 128, 32, 8, 4), (16, 16, 64, 128, 4, 4),
              (16, 16, 64, 64, 8, 4), (16, 16, 64, 32, 4, 4), (16, 16, 32, 128, 8, 4), (16, 16, 128, 64, 8, 4)]


@triton.jit
def lora_shrink_kernel(x_ptr, a_ptr, out_ptr, M, RANK, K, token_ptr, count_ptr, start_ptr, lora_ptr, scaling,
                       stride_xm, stride_xk, stride_as, stride_al, stride_ar, stride_ak,
                       stride_os, stride_om, stride_or,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
                       DOT_IN_FP32: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = pid % SPLIT_K
    pid_mn = pid // SPLIT_K
    # grouped order over (M tiles, RANK tiles), as in matmul.py
    num_pid_n = tl.cdiv(RANK, BLOCK_N)
    in_group = GROUP_M * num_pid_n
    first_m = (pid_mn // in_group) * GROUP_M
    group_rows = min(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    pid_m = first_m + (pid_mn % in_group) % group_rows
    pid_n = (pid_mn % in_group) // group_rows
    slice_id = tl.program_id(1)
    slot = tl.program_id(2)

    count = tl.load(count_ptr + slot)
    m0 = pid_m * BLOCK_M
    if m0 >= count:  # past this adapter's tokens: the grid covers every adapter for all M
        return
    rows, rows_here, lora = adapter_rows(m0, count, slot, token_ptr, start_ptr, lora_ptr, BLOCK_M)
    lanes = tl.arange(0, BLOCK_M)
    # columns past RANK wrap around, so the loads need no mask; the store masks them
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    a_ptrs = (a_ptr + slice_id * stride_as + lora * stride_al + (cols % RANK)[None, :] * stride_ar
              + offs_k[:, None] * stride_ak)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    step = BLOCK_K * SPLIT_K
    for k in range(0, tl.cdiv(K, step)):
        if EVEN_K:
            x = tl.load(x_ptrs)
            a = tl.load(a_ptrs)
        else:
            k_left = K - k * step
            x = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            a = tl.load(a_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if DOT_IN_FP32:  # the interpreter multiplies bf16 bit patterns in tl.dot (see matmul.py)
            x = x.to(tl.float32)
            a = a.to(tl.float32)
        acc = tl.dot(x, a, acc)
        x_ptrs += step * stride_xk
        a_ptrs += step * stride_ak
    acc *= scaling
    o_ptrs = out_ptr + slice_id * stride_os + rows[:, None] * stride_om + cols[None, :] * stride_or
    mask = (lanes[:, None] < rows_here) & (cols[None, :] < RANK)
    if SPLIT_K == 1:
        tl.store(o_ptrs, acc, mask=mask)
    else:
        tl.atomic_add(o_ptrs, acc, mask=mask)


def vllm_default(m: int) -> Config:
    """vLLM's shrink configuration when no tuned file is found (vllm/lora/ops/triton_ops/utils.py
    `get_lora_op_configs("shrink")`), by the batch's tokens, in our names."""
    decode = m < 128
    return {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 256 if decode else 32, "SPLIT_K": 64 if decode else 8,
            "num_warps": 4, "num_stages": 2}


class ShrinkInputs(NamedTuple):
    x: torch.Tensor  # [M, K]
    a: torch.Tensor  # [SLICES, LORAS, RANK, K]
    seg: Segments


def _grid(config: Config, d: dict[str, int]) -> tuple[int, int, int]:
    tiles = triton.cdiv(d["M"], config["BLOCK_M"]) * triton.cdiv(d["RANK"], config["BLOCK_N"])
    return (config["SPLIT_K"] * tiles, d["SLICES"], slots(d["LORAS"]))


class LoraShrink(LoraSpec):
    name = "lora_shrink"
    key_names = ("M", "K", "RANK", "SLICES", "LORAS")
    hidden = "K"
    blocks = {"BLOCK_M": "M", "BLOCK_N": "RANK", "BLOCK_K": "K"}
    exports = ("vllm-lora",)
    vllm_lora_op = ("SHRINK", "K", "RANK")  # vLLM's file of this op, and the dims of its k and n levels
    tiny_shape = ({"M": 8, "K": 64, "RANK": 16, "SLICES": 2, "LORAS": 2}, "float32")

    def space(self, target: Target) -> dict[str, tuple]:
        if target.is_interpreter:
            # the interpreter pays per program and per op: few programs of large tiles are fastest
            return {"BLOCK_M": (16, 32, 64), "BLOCK_N": (16, 32, 64), "BLOCK_K": (16, 32, 64, 128, 256),
                    "SPLIT_K": (1, 2, 4, 8, 16), "num_warps": (4,), "num_stages": (1,)}
        common = {"BLOCK_M": (16, 32, 64, 128), "BLOCK_N": (16, 32, 64, 128), "BLOCK_K": (32, 64, 128, 256, 512),
                  "SPLIT_K": (1, 2, 4, 8, 16, 32, 64, 128), "num_warps": (2, 4, 8)}
        if target.is_hip:
            # vLLM's LoRA configuration has no field for the AMD knobs (waves_per_eu,
            # matrix_instr_nonkdim, kpack): tuning them would give configurations it cannot launch
            return {**common, "num_stages": (1, 2)}
        return {**common, "num_stages": (2, 3, 4, 5)}

    def vllm_default(self, key: TuningKey) -> Config:
        return vllm_default(key.dim_map["M"])

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        reason = self.check_space(config, target) or self.check_blocks(config, key, target)
        if reason:
            return reason
        # splits past K only add programs that load nothing; vLLM's default goes as far as it goes
        want, k = self.vllm_default(key), key.dim_map["K"]
        reach, limit = config["BLOCK_K"] * config["SPLIT_K"], max(next_pow2(k), want["BLOCK_K"] * want["SPLIT_K"])
        if reach > limit:
            return (f"split-K larger than the problem: BLOCK_K x SPLIT_K = {reach} > {limit}, "
                    f"which covers K={k}")
        if target.is_interpreter:
            return None
        es = DTYPE_BYTES[key.dtype]
        return tile_resources(config, target, es, es, out_bytes=4)  # the output is fp32

    def known_good(self, key: TuningKey, target: Target) -> list[Config]:
        if target.is_interpreter:
            # the fewest programs first: the largest tiles, no split-K (the interpreter pays per program)
            configs = [{"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": bk, "SPLIT_K": 1, "num_warps": 4, "num_stages": 1}
                       for bk in (256, 128)]
        else:
            configs = [vllm_default(1), vllm_default(128)]  # its decode and prefill defaults
            if not target.is_hip:
                configs += [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "num_warps": w,
                             "num_stages": s} for bm, bn, bk, sk, w, s in _H100_GOOD]
        return self.known_good_from(configs, key, target)

    # ---- running --------------------------------------------------------------------
    def _meta(self, config: Config, k: int, vendor: str, dot_in_fp32: bool) -> dict:
        """The constexprs and launch options, shared by launch and specialization so that a
        precompiled binary is the one the launch looks up."""
        args, options = self.split_config(config, vendor)
        return {**args, "GROUP_M": GROUP_M, "EVEN_K": k % (config["BLOCK_K"] * config["SPLIT_K"]) == 0,
                "DOT_IN_FP32": dot_in_fp32, **options}

    def make_inputs(self, key: TuningKey, device: str, seed: int) -> ShrinkInputs:
        d, dtype = key.dim_map, TORCH_DTYPES[key.dtype]
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(d["M"], d["K"], generator=gen)
        # A scaled by 1/sqrt(K): out ~ N(0, scaling^2) whatever K, so one atol fits every K
        a = torch.randn(d["SLICES"], d["LORAS"], d["RANK"], d["K"], generator=gen) / math.sqrt(d["K"])
        seg = make_segments(d["M"], d["LORAS"], gen, device)
        return ShrinkInputs(x.to(device=device, dtype=dtype), a.to(device=device, dtype=dtype), seg)

    def launch(self, config: Config, inputs: ShrinkInputs) -> torch.Tensor:
        x, a, seg = inputs
        (m, k), (slices, loras, rank, _) = x.shape, a.shape
        # zeroed per launch, as vLLM's op does: split-K parts are added into it
        out = torch.zeros((slices, m, rank), device=x.device, dtype=torch.float32)
        require_launchable(on_cpu=x.device.type == "cpu")
        interpret = bool(triton.knobs.runtime.interpret)
        meta = self._meta(config, k, self.vendor_of(x), dot_in_fp32=interpret and x.dtype == torch.bfloat16)
        d = {"M": m, "RANK": rank, "SLICES": slices, "LORAS": loras}
        lora_shrink_kernel[_grid(config, d)](
            x, a, out, m, rank, k, *seg, SCALING, x.stride(0), x.stride(1), *a.stride(), *out.stride(), **meta)
        return out

    def specialization(self, config: Config, key: TuningKey, target: Target) -> Specialization:
        d, dtype = key.dim_map, TORCH_DTYPES[key.dtype]
        sx, sa, so = (torch.empty(shape, device="meta").stride() for shape in
                      ((d["M"], d["K"]), (d["SLICES"], d["LORAS"], d["RANK"], d["K"]), (d["SLICES"], d["M"], d["RANK"])))
        args = (dtype, dtype, torch.float32, d["M"], d["RANK"], d["K"], *(torch.int32,) * 4, SCALING, *sx, *sa, *so)
        return Specialization(lora_shrink_kernel, args, self._meta(config, d["K"], target.vendor, False),
                              _grid(config, d))

    def reference(self, inputs: ShrinkInputs) -> torch.Tensor:
        """The adapters one by one, in fp32: what the kernel computes for each adapter's tokens."""
        x, a, seg = inputs
        out = torch.zeros((a.shape[0], x.shape[0], a.shape[2]), dtype=torch.float32, device=x.device)
        for adapter, rows in segment_rows(seg):
            rows = rows.to(x.device)
            for s in range(a.shape[0]):
                out[s, rows] = SCALING * (x[rows].float() @ a[s, adapter].float().T)
        return out

    def flops(self, key: TuningKey) -> float:
        d = key.dim_map
        return 2.0 * d["M"] * d["K"] * d["RANK"] * d["SLICES"]

    def bytes_moved(self, key: TuningKey) -> float:
        d = key.dim_map
        # x, each slice's A of every adapter in the batch (min(M, LORAS) of them), the fp32 output
        used = min(d["M"], d["LORAS"])
        return float((d["M"] * d["K"] + d["SLICES"] * used * d["RANK"] * d["K"]) * DTYPE_BYTES[key.dtype]
                     + d["SLICES"] * d["M"] * d["RANK"] * 4)

    def trial_bytes(self, key: TuningKey, input_sets: int = 1) -> int:
        d, es = key.dim_map, DTYPE_BYTES[key.dtype]
        ins = d["M"] * d["K"] + d["SLICES"] * d["LORAS"] * d["RANK"] * d["K"]
        out = d["SLICES"] * d["M"] * d["RANK"]
        # the input sets; output and reference (fp32); the reference's fp32 copies of x and of one
        # adapter's A; the check's fp32 copies
        return ins * es * input_sets + 2 * out * 4 + (d["M"] + d["RANK"]) * d["K"] * 4 + 2 * out * 4
