"""Multi-LoRA expand: y[t, slice s] += x[s, t] @ B[s, adapter(t)]^T for every token t and slice s.

x is [SLICES, M, RANK] in fp32 (what the shrink wrote; cast to the weights' dtype before the dot,
as vLLM does), B is [SLICES, adapters, N, RANK] (each slice's LoRA B, stacked), and y is the
projection's output [M, SLICES x N]: slice s adds into columns s*N .. (s+1)*N. The kernel reads
y_in and writes y_out, which may be one tensor (vLLM's in-place add, `add_inputs=True`); trials
pass two, so that no launch reads another's output. The grid is (M tiles x N tiles, SLICES,
LORAS + 1), M tiles first, as in vLLM's `lora_expand`, whose `get_lora_op_configs("expand")` default
is this kernel's default (see lora.py). All slices are N wide (vLLM also serves slices of
different widths, as GQA's q, k and v, by their widest: tune those at the widest N).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import triton
import triton.language as tl

from keys import DTYPE_BYTES, Config, TuningKey
from devices.targets import Target
from search_spaces.base import TORCH_DTYPES, LazyTorch, Specialization, next_pow2, require_launchable
from search_spaces.lora import LoraSpec, Segments, adapter_rows, make_segments, segment_rows, slots, tile_resources

torch = LazyTorch(globals())  # imported at its first use: reading a space needs none

# Expand configurations vLLM's own tuning found on an H100 at rank 16, one adapter, one slice
# (vllm/lora/ops/triton_ops/configs/NVIDIA_H100_80GB_HBM3_EXPAND_FALSE.json, vllm-project/vllm
# commit d3b20824): the most frequent of M=1..512 at N=2048..32768.  BM, BN, BK, warps, stages
_H100_GOOD = [(16, 64, 16, 4, 2), (64, 32, 16, 4, 2), (16, 128, 16, 4, 2), (64, 128, 16, 8, 2),
              (16, 256, 16, 4, 2), (32, 128, 16, 4, 2), (64, 64, 16, 4, 2), (32, 256, 16, 4, 2)]


@triton.jit
def lora_expand_kernel(x_ptr, b_ptr, y_in_ptr, y_out_ptr, M, N, RANK, token_ptr, count_ptr, start_ptr, lora_ptr,
                       stride_xs, stride_xm, stride_xr, stride_bs, stride_bl, stride_bn, stride_br,
                       stride_ym, stride_yn,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       EVEN_K: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_pid_m
    pid_n = pid // num_pid_m
    slice_id = tl.program_id(1)
    slot = tl.program_id(2)

    count = tl.load(count_ptr + slot)
    m0 = pid_m * BLOCK_M
    if m0 >= count:  # past this adapter's tokens: the grid covers every adapter for all M
        return
    rows, rows_here, lora = adapter_rows(m0, count, slot, token_ptr, start_ptr, lora_ptr, BLOCK_M)
    lanes = tl.arange(0, BLOCK_M)
    # columns past N wrap around, so the loads of x and B need no mask; y's load and store mask them
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + slice_id * stride_xs + rows[:, None] * stride_xm + offs_k[None, :] * stride_xr
    b_ptrs = (b_ptr + slice_id * stride_bs + lora * stride_bl + (cols % N)[None, :] * stride_bn
              + offs_k[:, None] * stride_br)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(RANK, BLOCK_K)):
        if EVEN_K:
            x = tl.load(x_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = RANK - k * BLOCK_K
            x = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        x = x.to(b_ptr.dtype.element_ty)  # the shrink's fp32 output, in the weights' dtype
        if DOT_IN_FP32:  # the interpreter multiplies bf16 bit patterns in tl.dot (see matmul.py)
            x = x.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(x, b, acc)
        x_ptrs += BLOCK_K * stride_xr
        b_ptrs += BLOCK_K * stride_br
    y_cols = slice_id * N + cols
    offs = rows[:, None] * stride_ym + y_cols[None, :] * stride_yn
    mask = (lanes[:, None] < rows_here) & (cols[None, :] < N)
    acc += tl.load(y_in_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_out_ptr + offs, acc.to(y_out_ptr.dtype.element_ty), mask=mask)


class ExpandInputs(NamedTuple):
    x: torch.Tensor  # [SLICES, M, RANK], fp32
    b: torch.Tensor  # [SLICES, LORAS, N, RANK]
    y: torch.Tensor  # [M, SLICES * N]: the projection's output the LoRA adds into
    seg: Segments


def _grid(config: Config, d: dict[str, int]) -> tuple[int, int, int]:
    return (triton.cdiv(d["M"], config["BLOCK_M"]) * triton.cdiv(d["N"], config["BLOCK_N"]), d["SLICES"],
            slots(d["LORAS"]))


def vllm_default(slices: int) -> Config:
    """vLLM's expand configuration when no tuned file is found (vllm/lora/ops/triton_ops/utils.py
    `get_lora_op_configs("expand")`), in our names."""
    return {"BLOCK_M": 64, "BLOCK_N": max(64, next_pow2(128 // slices)), "BLOCK_K": 16, "num_warps": 4,
            "num_stages": 2}


class LoraExpand(LoraSpec):
    name = "lora_expand"
    key_names = ("M", "N", "RANK", "SLICES", "LORAS")
    hidden = "N"
    blocks = {"BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_K": "RANK"}
    exports = ("vllm-lora",)
    # vLLM's file of this op (it adds into the output: add_inputs=True), the dims of its k and n levels
    vllm_lora_op = ("EXPAND_TRUE", "RANK", "N")
    tiny_shape = ({"M": 8, "N": 64, "RANK": 16, "SLICES": 2, "LORAS": 2}, "float32")

    def space(self, target: Target) -> dict[str, tuple]:
        if target.is_interpreter:
            # the interpreter pays per program and per op: few programs of large tiles are fastest
            return {"BLOCK_M": (16, 32, 64, 128), "BLOCK_N": (16, 32, 64, 128, 256), "BLOCK_K": (16, 32, 64, 128),
                    "num_warps": (4,), "num_stages": (1,)}
        common = {"BLOCK_M": (16, 32, 64, 128), "BLOCK_N": (32, 64, 128, 256), "BLOCK_K": (16, 32, 64, 128),
                  "num_warps": (2, 4, 8)}
        if target.is_hip:
            # no AMD knobs: vLLM's LoRA configuration has no field for them (see lora_shrink.py)
            return {**common, "num_stages": (1, 2)}
        return {**common, "num_stages": (2, 3, 4)}

    def vllm_default(self, key: TuningKey) -> Config:
        return vllm_default(key.dim_map["SLICES"])

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        reason = self.check_space(config, target) or self.check_blocks(config, key, target)
        if reason or target.is_interpreter:
            return reason
        # x is loaded in fp32 (the shrink's output) and cast to the weights' dtype after the load
        es = DTYPE_BYTES[key.dtype]
        return tile_resources(config, target, 4, es, out_bytes=es, a_converted=es != 4)

    def known_good(self, key: TuningKey, target: Target) -> list[Config]:
        if target.is_interpreter:
            # the fewest programs first: the largest tiles (the interpreter pays per program)
            configs = [{"BLOCK_M": 64, "BLOCK_N": bn, "BLOCK_K": 64, "num_warps": 4, "num_stages": 1}
                       for bn in (256, 128)]
        else:
            configs = [vllm_default(s) for s in (1, 2)]
            if not target.is_hip:
                configs += [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w, "num_stages": s}
                            for bm, bn, bk, w, s in _H100_GOOD]
        return self.known_good_from(configs, key, target)

    # ---- running --------------------------------------------------------------------
    def _meta(self, config: Config, rank: int, vendor: str, dot_in_fp32: bool) -> dict:
        """The constexprs and launch options, shared by launch and specialization so that a
        precompiled binary is the one the launch looks up."""
        args, options = self.split_config(config, vendor)
        return {**args, "EVEN_K": rank % config["BLOCK_K"] == 0, "DOT_IN_FP32": dot_in_fp32, **options}

    def make_inputs(self, key: TuningKey, device: str, seed: int) -> ExpandInputs:
        d, dtype = key.dim_map, TORCH_DTYPES[key.dtype]
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(d["SLICES"], d["M"], d["RANK"], generator=gen)
        # B scaled by 1/sqrt(RANK): the LoRA term ~ N(0, 1) whatever the rank, as is y
        b = torch.randn(d["SLICES"], d["LORAS"], d["N"], d["RANK"], generator=gen) / math.sqrt(d["RANK"])
        y = torch.randn(d["M"], d["SLICES"] * d["N"], generator=gen)
        seg = make_segments(d["M"], d["LORAS"], gen, device)
        return ExpandInputs(x.to(device=device), b.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype),
                            seg)

    def launch(self, config: Config, inputs: ExpandInputs) -> torch.Tensor:
        x, b, y, seg = inputs
        slices, m, rank = x.shape
        loras, n = b.shape[1], b.shape[2]
        out = torch.empty_like(y)  # fresh per launch, so no config passes on an earlier one's output
        require_launchable(on_cpu=x.device.type == "cpu")
        interpret = bool(triton.knobs.runtime.interpret)
        meta = self._meta(config, rank, self.vendor_of(x), dot_in_fp32=interpret and b.dtype == torch.bfloat16)
        d = {"M": m, "N": n, "SLICES": slices, "LORAS": loras}
        lora_expand_kernel[_grid(config, d)](
            x, b, y, out, m, n, rank, *seg, *x.stride(), *b.stride(), *y.stride(), **meta)
        return out

    def specialization(self, config: Config, key: TuningKey, target: Target) -> Specialization:
        d, dtype = key.dim_map, TORCH_DTYPES[key.dtype]
        sx, sb, sy = (torch.empty(shape, device="meta").stride() for shape in
                      ((d["SLICES"], d["M"], d["RANK"]), (d["SLICES"], d["LORAS"], d["N"], d["RANK"]),
                       (d["M"], d["SLICES"] * d["N"])))
        args = (torch.float32, dtype, dtype, dtype, d["M"], d["N"], d["RANK"], *(torch.int32,) * 4, *sx, *sb, *sy)
        return Specialization(lora_expand_kernel, args, self._meta(config, d["RANK"], target.vendor, False),
                              _grid(config, d))

    def reference(self, inputs: ExpandInputs) -> torch.Tensor:
        """The adapters one by one, in fp32 from the weights' dtype: what the kernel adds."""
        x, b, y, seg = inputs
        n = b.shape[2]
        out = y.to(torch.float32, copy=True)  # never y itself: float() of fp32 is no copy
        for adapter, rows in segment_rows(seg):
            rows = rows.to(y.device)
            for s in range(x.shape[0]):
                out[rows, s * n:(s + 1) * n] += x[s, rows].to(b.dtype).float() @ b[s, adapter].float().T
        return out.to(y.dtype)

    def flops(self, key: TuningKey) -> float:
        d = key.dim_map
        return 2.0 * d["M"] * d["N"] * d["RANK"] * d["SLICES"]

    def bytes_moved(self, key: TuningKey) -> float:
        d = key.dim_map
        # the fp32 input, each slice's B of every adapter in the batch (min(M, LORAS) of them), the
        # output read and written
        used = min(d["M"], d["LORAS"])
        return float(d["SLICES"] * d["M"] * d["RANK"] * 4 + (d["SLICES"] * used * d["N"] * d["RANK"]
                                                            + 2 * d["M"] * d["SLICES"] * d["N"]) * DTYPE_BYTES[key.dtype])

    def trial_bytes(self, key: TuningKey, input_sets: int = 1) -> int:
        d, es = key.dim_map, DTYPE_BYTES[key.dtype]
        x, b, y = d["SLICES"] * d["M"] * d["RANK"], d["SLICES"] * d["LORAS"] * d["N"] * d["RANK"], \
            d["M"] * d["SLICES"] * d["N"]
        # the input sets; output and reference; the reference's fp32 result and one adapter's B;
        # the check's fp32 copies
        return (x * 4 + (b + y) * es) * input_sets + 2 * y * es + (y + d["N"] * d["RANK"]) * 4 + 2 * y * 4
