"""Flash attention forward: o = softmax(q k^T / sqrt(HEAD_DIM)) v per batch x head, causal or not.

The design of the Triton tutorial (python/tutorials/06-fused-attention.py, FlashAttention-2):
one program per BLOCK_M query rows of one head keeps q, an fp32 accumulator and the running max
and sum of its rows, and walks the keys and values BLOCK_N at a time with the online softmax in
base 2. Causal attention (STAGE=3, the tutorial's name and values) walks the blocks left of the
diagonal without a mask and the diagonal band [start_m*BLOCK_M, (start_m+1)*BLOCK_M) with one,
so it needs BLOCK_N <= BLOCK_M; full attention is STAGE=1. Unlike the tutorial, any N_CTX is
served (edge blocks are masked; the masks cost nothing where N_CTX is a multiple of both blocks).
Checked against torch.nn.functional.scaled_dot_product_attention.

The key: BH (batch x heads: the grid's second axis), N_CTX, HEAD_DIM, STAGE, dtype. STAGE is
1 or 3, never a 0/1 causal flag: key dims are positive integers, and the runtime's nearest-shape
fallback measures them in log2.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import triton
import triton.language as tl

from keys import DTYPE_BYTES, Config, SpecError, TuningKey
from devices.targets import NV_REGS_PER_BLOCK, Target
from search_spaces.base import (
    TORCH_DTYPES,
    KernelSpec,
    LazyTorch,
    Specialization,
    block_limit,
    require_launchable,
)
from search_spaces.gemm import mma_path

torch = LazyTorch(globals())  # imported at its first use: reading a space needs none

HEAD_DIMS = (16, 32, 64, 128, 256)  # tl.arange needs a power of two; the tutorial's set
STAGES = {1: "full attention", 3: "causal"}
_BLOCKS = ("BLOCK_M", "BLOCK_N")
# The tutorial's autotune list, after its own filter (8 warps only for tiles of 128x128 and up,
# which leaves none of 8): BLOCK_M, BLOCK_N, num_stages; 4 warps. On HIP it uses one stage and
# waves_per_eu 3 up to HEAD_DIM 64, else 2.
_TUTORIAL = [(bm, bn, s) for bm in (64, 128) for bn in (32, 64) for s in (3, 4, 7)]
_TUTORIAL_HIP = [(bm, bn) for bm in (64, 128) for bn in (32, 64)]
# Registers a thread needs, fitted to Triton 3.6's bf16 builds of both constraint-check shapes
# (HEAD_DIM 128 causal and 64 full, on sm_90 and gfx942; bench/results/constraints-flash_attention.md):
# a*acc + b*s + c*kv + d, where acc = BLOCK_M x HEAD_DIM (the fp32 accumulator), s = BLOCK_M x
# BLOCK_N (the scores, then p) and kv = BLOCK_N x HEAD_DIM (a k or v tile), each over the
# program's threads. wgmma reads its B operands from shared memory; mma.sync and MFMA load them
# into registers. Refused above 255 (and the block's 65,536) on NVIDIA; on gfx942 above what
# waves_per_eu leaves a lane: 512 VGPRs and 256 AGPRs uncapped, 512 / waves_per_eu capped.
# gfx942's allocation under a cap varies from build to build (at 168 registers a 128x64 block of
# HEAD_DIM 64 builds clean while its 128x32 neighbour spills 48 bytes): its fit accepts the
# tutorial's own HIP configurations and a few light spills rather than refusing them.
_REGISTERS = {"wgmma": (0.5, 2.0, 0.0, 64), "mma": (1.0, 2.0, 0.25, 48), "mfma": (1.25, 0.5, 2.0, 80)}
# what gfx942 allocates uncapped (least squares over its clean builds, residuals within 160):
# refused above its 768 registers with that margin, which only blocks too large for any cap
# exceed (a 256x256 block of HEAD_DIM 64 over 2 wavefronts took over a minute to build)
_AMD_UNCAPPED, _AMD_MARGIN = (3.5, 2.5, 2.5, 48), 128
_AMD_LIMITS = {0: 768, 1: 768, 2: 256, 3: 168, 4: 128}


@triton.jit
def _attend(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, qk_scale, lo, hi, N_CTX, offs_m,
            BLOCK_N: tl.constexpr, ON_BAND: tl.constexpr, EVEN: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """Keys and values [lo, hi) into the running (acc, l_i, m_i) of the program's rows."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if EVEN:
            k = tl.load(k_ptrs + start_n * stride_kn)
            v = tl.load(v_ptrs + start_n * stride_vn)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn, mask=cols[None, :] < N_CTX, other=0.0)
            v = tl.load(v_ptrs + start_n * stride_vn, mask=cols[:, None] < N_CTX, other=0.0)
        if DOT_IN_FP32:  # the interpreter multiplies bf16 bit patterns in tl.dot (see matmul.py)
            qk = tl.dot(q.to(tl.float32), k.to(tl.float32))
        else:
            qk = tl.dot(q, k)
        if ON_BAND or not EVEN:
            # the diagonal band (keys after the query), or keys past N_CTX: -1e6, never -inf,
            # so that a row of padding stays finite
            keep = cols[None, :] < N_CTX
            if ON_BAND:
                keep = offs_m[:, None] >= cols[None, :]
            qk = qk * qk_scale + tl.where(keep, 0.0, -1.0e6)
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            qk -= m_ij[:, None]
        else:
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_ij[:, None]
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        p = p.to(v.dtype)
        if DOT_IN_FP32:
            acc = tl.dot(p.to(tl.float32), v.to(tl.float32), acc)
        else:
            acc = tl.dot(p, v, acc)
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def flash_attention_kernel(Q, K, V, Out, sm_scale,
                           stride_qz, stride_qh, stride_qm, stride_qd, stride_kz, stride_kh, stride_kn, stride_kd,
                           stride_vz, stride_vh, stride_vn, stride_vd, stride_oz, stride_oh, stride_om, stride_od,
                           H, N_CTX, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           STAGE: tl.constexpr, EVEN: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    start_m = tl.program_id(0)
    off_hz = tl.program_id(1)
    off_z = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + off_z * stride_qz + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    # k as HEAD_DIM x BLOCK_N (transposed through its strides), v as BLOCK_N x HEAD_DIM
    k_ptrs = K + off_z * stride_kz + off_h * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_ptrs = V + off_z * stride_vz + off_h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    if EVEN:
        q = tl.load(q_ptrs)
    else:
        q = tl.load(q_ptrs, mask=offs_m[:, None] < N_CTX, other=0.0)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32) + 1.0
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.44269504  # exp2 instead of exp: fold in 1/ln(2)
    if STAGE == 3:
        # left of the diagonal: every key precedes every query of the block, no mask
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, qk_scale, 0,
                                start_m * BLOCK_M, N_CTX, offs_m, BLOCK_N, False, True, DOT_IN_FP32)
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, qk_scale,
                                start_m * BLOCK_M, (start_m + 1) * BLOCK_M, N_CTX, offs_m, BLOCK_N, True, EVEN,
                                DOT_IN_FP32)
    else:
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, qk_scale, 0, N_CTX,
                                N_CTX, offs_m, BLOCK_N, False, EVEN, DOT_IN_FP32)
    acc = acc / l_i[:, None]
    o_ptrs = (Out + off_z * stride_oz + off_h * stride_oh + offs_m[:, None] * stride_om
              + offs_d[None, :] * stride_od)
    if EVEN:
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty))
    else:
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=offs_m[:, None] < N_CTX)


class AttentionInputs(NamedTuple):
    q: torch.Tensor  # [1, BH, N_CTX, HEAD_DIM]; k and v alike
    k: torch.Tensor
    v: torch.Tensor
    causal: bool


def _grid(config: Config, d: Mapping[str, int]) -> tuple[int, int]:
    return (triton.cdiv(d["N_CTX"], config["BLOCK_M"]), d["BH"])


class FlashAttention(KernelSpec):
    name = "flash_attention"
    key_names = ("BH", "N_CTX", "HEAD_DIM", "STAGE")
    tiny_shape = ({"BH": 1, "N_CTX": 32, "HEAD_DIM": 16, "STAGE": 3}, "float32")  # causal: both loops
    # outputs are convex combinations of v ~ N(0, 1); fp32 uses tl.dot's TF32 on GPUs, and p is
    # rounded to the input dtype before the second dot (as the tutorial does)
    tolerances = {"float16": (1e-2, 1e-2), "bfloat16": (3e-2, 2e-2), "float32": (1e-2, 1e-2)}

    def make_key(self, dims: Mapping[str, Any], dtype: str) -> TuningKey:
        key = super().make_key(dims, dtype)
        d = key.dim_map
        if d["HEAD_DIM"] not in HEAD_DIMS:
            raise SpecError(f"HEAD_DIM={d['HEAD_DIM']} is not served; use one of {', '.join(map(str, HEAD_DIMS))}")
        if d["STAGE"] not in STAGES:
            raise SpecError(f"STAGE={d['STAGE']}: write STAGE=1 for full attention or STAGE=3 for causal "
                            "(the Triton tutorial's values)")
        return key

    def example_dims(self) -> dict[str, int]:
        return {"BH": 128, "N_CTX": 4096, "HEAD_DIM": 128, "STAGE": 3}

    def space(self, target: Target) -> dict[str, tuple]:
        if target.is_interpreter:
            # the interpreter pays per program and per op: few programs of large tiles are fastest
            return {"BLOCK_M": (16, 32, 64, 128, 256), "BLOCK_N": (16, 32, 64, 128, 256), "num_warps": (4,),
                    "num_stages": (1,)}
        common = {"BLOCK_M": (16, 32, 64, 128, 256), "BLOCK_N": (16, 32, 64, 128, 256), "num_warps": (2, 4, 8)}
        if target.is_hip:
            return {**common, "num_stages": (1, 2), "waves_per_eu": (0, 1, 2, 3, 4), "matrix_instr_nonkdim": (16, 32)}
        return {**common, "num_stages": (1, 2, 3, 4, 5, 7)}

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        reason = self.check_space(config, target)
        if reason:
            return reason
        d = key.dim_map
        space = self.space(target)
        bm, bn = config["BLOCK_M"], config["BLOCK_N"]
        for b in _BLOCKS:
            limit = block_limit(space[b], d["N_CTX"])
            if config[b] > limit:
                return f"block larger than the problem: {b}={config[b]} > {limit}, which covers N_CTX={d['N_CTX']}"
        if d["STAGE"] == 3 and bn > bm:
            return f"causal blocks: BLOCK_N={bn} > BLOCK_M={bm}; the diagonal band is walked in BLOCK_N steps"
        if target.is_interpreter:
            return None
        return self._resources(config, key, target)

    def _resources(self, config: Config, key: TuningKey, target: Target) -> str | None:
        d, es = key.dim_map, DTYPE_BYTES[key.dtype]
        bm, bn, hd = config["BLOCK_M"], config["BLOCK_N"], d["HEAD_DIM"]
        warps, stages = config["num_warps"], config["num_stages"]
        path = mma_path(config, target)
        if target.is_hip:
            # gfx942 builds hold the larger of q's and k's tile with one stage, and two k tiles
            # beside q with two (measured; the second term is an upper bound)
            smem = (max(bm, bn) if stages == 1 else max(bm, 2 * bn) + bm) * hd * es
            what = f"{'max(q, k)' if stages == 1 else 'max(q, 2 k) + q'} at {bm}x{bn}x{hd}"
        else:
            # q's tile, a k and a v tile per pipeline buffer (num_stages on wgmma, one fewer on
            # mma.sync, as for matmul), and 1 KiB of static shared memory on sm_90: exact for
            # every sm_90 build of the constraint check
            buffers = stages if path == "wgmma" else max(1, stages - 1)
            smem = (bm * hd + buffers * 2 * bn * hd) * es + 1024
            what = f"q {bm}x{hd} + {buffers} x (k and v {bn}x{hd})"
        if smem > target.smem_bytes:
            kind = "LDS" if target.is_hip else "shared memory"
            return f"{kind}: {what} x {es} B = {smem // 1024} KiB > {target.smem_bytes // 1024} KiB on {target.arch}"
        threads = warps * target.warp_size

        def registers(a: float, b: float, c: float, fixed: float) -> float:
            return (a * bm * hd + b * bm * bn + c * bn * hd) / threads + fixed
        need = registers(*_REGISTERS[path])
        if target.is_hip:
            limit = _AMD_LIMITS.get(config["waves_per_eu"], 768)
            if registers(*_AMD_UNCAPPED) > 768 + _AMD_MARGIN:
                need, limit = registers(*_AMD_UNCAPPED), 768 + _AMD_MARGIN
        else:
            limit = min(target.max_regs_per_thread, NV_REGS_PER_BLOCK // threads)
        if need > limit:
            return (f"registers: a {bm}x{bn} block at HEAD_DIM {hd} over {warps} warps needs about {need:.0f} "
                    f"registers a thread > {limit}; it would spill")
        if target.is_hip and config["matrix_instr_nonkdim"] == 32 and min(bm, bn) < 32:
            # pruning: the 32x32 instruction on a 16-wide block builds, but computes twice the block
            return f"matrix_instr_nonkdim=32 needs BLOCK_M and BLOCK_N >= 32 (got {bm}x{bn})"
        return None

    def default(self, key: TuningKey, target: Target) -> Config:
        """The tutorial's middle choice: 128 x 64 blocks, 4 warps, 3 stages (one on HIP, with its
        waves_per_eu), shrunk to the problem; 8 warps where 4 would spill; else the nearest
        valid configuration."""
        if target.is_interpreter:
            want = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 1}
        elif target.is_hip:
            want = {**self._tutorial_hip(128, 64, key), "matrix_instr_nonkdim": 16}
        else:
            want = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
        want = self._shrunk(want, key, target)
        # at HEAD_DIM 128 the 128-row accumulator spills at 4 warps (232 bytes on sm_90): 8 share it
        for warps in (4, 8):
            if self.check({**want, "num_warps": warps}, key, target) is None:
                return {**want, "num_warps": warps}
        return self.nearest_valid(want, key, target)

    def _tutorial_hip(self, bm: int, bn: int, key: TuningKey) -> Config:
        return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": 4, "num_stages": 1,
                "waves_per_eu": 3 if key.dim_map["HEAD_DIM"] <= 64 else 2, "matrix_instr_nonkdim": 16}

    def _shrunk(self, config: Config, key: TuningKey, target: Target) -> Config:
        space, n = self.space(target), key.dim_map["N_CTX"]
        out = {**config, **{b: min(config[b], block_limit(space[b], n)) for b in _BLOCKS}}
        if key.dim_map["STAGE"] == 3:
            out["BLOCK_N"] = min(out["BLOCK_N"], out["BLOCK_M"])
        return out

    def known_good(self, key: TuningKey, target: Target) -> list[Config]:
        """The tutorial's configurations (its seeds for @triton.autotune) on GPUs, largest tiles first."""
        if target.is_interpreter:
            # the fewest programs first: the interpreter pays per program and per op
            configs = [{"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": 4, "num_stages": 1}
                       for bm, bn in ((256, 256), (256, 128), (128, 128))]
        elif target.is_hip:
            configs = [self._tutorial_hip(bm, bn, key) for bm, bn in _TUTORIAL_HIP]
        else:
            configs = [{"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": 4, "num_stages": s} for bm, bn, s in _TUTORIAL]
        configs.sort(key=lambda c: -c["BLOCK_M"] * c["BLOCK_N"])
        return self.valid_unique((self._shrunk(c, key, target) for c in configs), key, target)

    # ---- running --------------------------------------------------------------------
    def _meta(self, config: Config, d: Mapping[str, int], vendor: str, dot_in_fp32: bool) -> dict:
        """The constexprs and launch options, shared by launch and specialization so that a
        precompiled binary is the one the launch looks up."""
        args, options = self.split_config(config, vendor)
        n = d["N_CTX"]
        return {**args, "HEAD_DIM": d["HEAD_DIM"], "STAGE": d["STAGE"],
                "EVEN": n % config["BLOCK_M"] == 0 and n % config["BLOCK_N"] == 0, "DOT_IN_FP32": dot_in_fp32,
                **options}

    def make_inputs(self, key: TuningKey, device: str, seed: int) -> AttentionInputs:
        d, dtype = key.dim_map, TORCH_DTYPES[key.dtype]
        gen = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(1, d["BH"], d["N_CTX"], d["HEAD_DIM"], generator=gen).to(device=device, dtype=dtype)
                   for _ in range(3))
        return AttentionInputs(q, k, v, d["STAGE"] == 3)

    def launch(self, config: Config, inputs: AttentionInputs) -> torch.Tensor:
        q, k, v, causal = inputs
        _, bh, n, hd = q.shape
        o = torch.empty_like(q)  # fresh per launch, so no config passes on an earlier one's output
        require_launchable(on_cpu=q.device.type == "cpu")
        interpret = bool(triton.knobs.runtime.interpret)
        vendor = self.vendor_of(q)
        d = {"BH": bh, "N_CTX": n, "HEAD_DIM": hd, "STAGE": 3 if causal else 1}
        flash_attention_kernel[_grid(config, d)](
            q, k, v, o, 1.0 / math.sqrt(hd), *q.stride(), *k.stride(), *v.stride(), *o.stride(), bh, n,
            **self._meta(config, d, vendor, dot_in_fp32=interpret and q.dtype == torch.bfloat16))
        return o

    def specialization(self, config: Config, key: TuningKey, target: Target) -> Specialization:
        d, dtype = key.dim_map, TORCH_DTYPES[key.dtype]
        strides = torch.empty((1, d["BH"], d["N_CTX"], d["HEAD_DIM"]), device="meta").stride()
        args = (dtype, dtype, dtype, dtype, 1.0 / math.sqrt(d["HEAD_DIM"]), *strides * 4, d["BH"], d["N_CTX"])
        return Specialization(flash_attention_kernel, args, self._meta(config, d, target.vendor, False), _grid(config, d))

    def reference(self, inputs: AttentionInputs) -> torch.Tensor:
        q, k, v, causal = inputs
        # in fp32, the accumulation the kernel does; SDPA's default scale is 1/sqrt(HEAD_DIM)
        out = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        return out.to(q.dtype)

    def flops(self, key: TuningKey) -> float:
        d = key.dim_map
        full = 4.0 * d["BH"] * d["N_CTX"] ** 2 * d["HEAD_DIM"]  # two matmuls of 2*N*N*D each
        return full / 2 if d["STAGE"] == 3 else full

    def bytes_moved(self, key: TuningKey) -> float:
        d = key.dim_map
        return 4.0 * d["BH"] * d["N_CTX"] * d["HEAD_DIM"] * DTYPE_BYTES[key.dtype]  # q, k, v, the output

    def trial_bytes(self, key: TuningKey, input_sets: int = 1) -> int:
        d, es = key.dim_map, DTYPE_BYTES[key.dtype]
        t = d["BH"] * d["N_CTX"] * d["HEAD_DIM"]
        # the input sets (q, k, v); output and reference; the reference's fp32 q, k, v, output and
        # score matrix (SDPA's math path materializes it); the check's fp32 copies
        return 3 * t * es * input_sets + 2 * t * es + 4 * t * 4 + d["BH"] * d["N_CTX"] ** 2 * 4 + 2 * t * 4
