"""C = A @ B for row-major A (MxK) and B (KxN): the Triton tutorial GEMM with grouped program order.

Any M, N, K (edges are masked); fp32 accumulation; C in the input dtype. fp32 inputs use
tl.dot's default TF32 on GPUs (what fp32 users of Triton get, and the fast path worth tuning),
so the fp32 tolerance admits TF32 rounding; the interpreter computes fp32 exactly.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import triton
import triton.language as tl

from keys import DTYPE_BYTES, Config, TuningKey, config_hash
from devices.targets import Target
from search_spaces.base import (
    TORCH_DTYPES,
    KernelSpec,
    LazyTorch,
    Specialization,
    block_limit,
    require_launchable,
)
from search_spaces.gemm import amd_knob_refusal, mma_path, tile_refusal

torch = LazyTorch(globals())  # imported at its first use: reading a space needs none


_BLOCKS = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
_DIM_OF = {"BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_K": "K"}

# Triton tutorial (03-matrix-multiplication) starting points (tutorial_configs).
_CUDA_GOOD = [  # BM, BN, BK, GROUP_M, stages, warps
    (128, 256, 64, 8, 3, 8), (64, 256, 32, 8, 4, 4), (128, 128, 32, 8, 4, 4), (128, 64, 32, 8, 4, 4),
    (64, 128, 32, 8, 4, 4), (128, 32, 32, 8, 4, 4), (64, 32, 32, 8, 5, 2), (32, 64, 32, 8, 5, 2)]
_HIP_GOOD = [  # BM, BN, BK, GROUP_M, waves_per_eu, warps, stages
    (128, 256, 16, 1, 2, 4, 2), (256, 256, 16, 4, 2, 8, 2), (128, 128, 32, 1, 2, 8, 2),
    (64, 128, 32, 8, 3, 4, 2), (64, 64, 32, 1, 8, 4, 2)]
# PyTorch Inductor's max-autotune mm list (torch 2.13, template_heuristics/triton.py; its GROUP_M
# is 8). The tutorial's list is written for large squares; on H100 sweeps of M=16..128 its best
# reached 0.63-0.66 of the optimum, this list's 0.96-1.0 (bench/data/sweep-matmul-h100-*).
_INDUCTOR_GOOD = [  # BM, BN, BK, stages, warps
    (32, 32, 16, 1, 2), (32, 32, 128, 2, 4), (32, 64, 32, 5, 8), (64, 32, 32, 5, 8), (64, 32, 128, 5, 4),
    (64, 64, 16, 2, 4), (64, 64, 32, 2, 4), (64, 64, 64, 3, 8), (64, 64, 128, 5, 4), (64, 128, 32, 3, 4),
    (64, 128, 32, 4, 8), (64, 128, 64, 3, 4), (64, 128, 128, 4, 4), (128, 64, 32, 3, 4), (128, 64, 32, 4, 8),
    (128, 128, 32, 2, 8), (128, 128, 32, 3, 4), (128, 128, 64, 3, 4), (128, 128, 64, 5, 8),
    (128, 128, 128, 4, 8), (128, 256, 64, 4, 8)]
# Multiply-adds per element moved (M*N*K over M*K + K*N + M*N) below which a matmul is bound by
# memory bandwidth: about the bf16 ridge point of an H100 (989 TFLOP/s over 3.35 TB/s, 295 flops a
# byte) and of an MI300X (1307 over 5.3, 247).
_RIDGE = 256


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                   stride_cm, stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    # grouped order: GROUP_M rows of tiles share the B columns they load, for L2 reuse
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # 64-bit row and column offsets: M*K past 2**31 elements would wrap in int32
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n.to(tl.int64)[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < N), other=0.0)
        if DOT_IN_FP32:
            # the interpreter multiplies bf16 bit patterns in tl.dot (triton#11584); bf16
            # products are exact in fp32, so upcasting gives the GPU's result
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    c = acc.to(c_ptr.dtype.element_ty)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, c, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _grid(config: Config, m: int, n: int) -> tuple[int]:
    return (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)


def _shrunk(config: Config, space: dict[str, tuple], key: TuningKey) -> Config:
    """config with each block no larger than the smallest value covering its padded dimension."""
    dims = key.dim_map
    return {**config, **{b: min(config[b], block_limit(space[b], dims[_DIM_OF[b]])) for b in _BLOCKS}}


def tutorial_configs(target: Target) -> list[Config]:
    """The list a kernel author hands @triton.autotune for this target, as written."""
    if target.is_interpreter:
        # big tiles: the interpreter's cost is per program and per op (128^3 tiles measured fastest)
        return [{"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": 4, "num_stages": 1}
                for bk in (128, 64)]
    if target.is_hip:
        return [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": g, "num_warps": w, "num_stages": s,
                 "waves_per_eu": wpe, "matrix_instr_nonkdim": 16, "kpack": 1}
                for bm, bn, bk, g, wpe, w, s in _HIP_GOOD]
    return [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": g, "num_warps": w, "num_stages": s}
            for bm, bn, bk, g, s, w in _CUDA_GOOD]


def _by_roofline(configs: list[Config], key: TuningKey) -> list[Config]:
    """The GPU lists, likeliest first, for a search that measures them in order: a memory-bound
    matmul (decode: M of a few tokens) wants many bytes in flight per program (deep pipelines of
    long K steps), a compute-bound one large tiles (operand reuse). A stable sort: the lists'
    own order breaks ties."""
    m, n, k = (key.dim_map[d] for d in ("M", "N", "K"))
    if m * n * k / (m * k + k * n + m * n) < _RIDGE:
        return sorted(configs, key=lambda c: -c["num_stages"] * c["BLOCK_K"] * (c["BLOCK_M"] + c["BLOCK_N"]))
    return sorted(configs, key=lambda c: -c["BLOCK_M"] * c["BLOCK_N"])


class MatmulInputs(NamedTuple):
    a: torch.Tensor
    b: torch.Tensor


class Matmul(KernelSpec):
    name = "matmul"
    key_names = ("M", "N", "K")
    tiny_shape = ({"M": 16, "N": 20, "K": 24}, "float16")  # edges in N and K: the masked loads
    # Outputs are ~N(0, 1) (see make_inputs), so atol does not grow with K. Measured: fp16 and
    # bf16 results differ by at most one output ulp between summation orders (2e-3, 7.8e-3);
    # TF32 vs fp32 at K=64..4096 differs by at most 1.6e-3.
    tolerances = {"float16": (1e-2, 1e-2), "bfloat16": (3e-2, 2e-2), "float32": (1e-2, 1e-2)}

    # ---- the space ------------------------------------------------------------------
    def space(self, target: Target) -> dict[str, tuple]:
        if target.is_interpreter:
            # the interpreter pays per program and per op: tiles under 32 take seconds a launch
            return {"BLOCK_M": (32, 64, 128), "BLOCK_N": (32, 64, 128), "BLOCK_K": (32, 64, 128),
                    "GROUP_M": (1, 4, 8), "num_warps": (2, 4), "num_stages": (1, 2)}
        common = {"BLOCK_M": (16, 32, 64, 128, 256), "BLOCK_N": (16, 32, 64, 128, 256),
                  "BLOCK_K": (16, 32, 64, 128), "GROUP_M": (1, 4, 8, 16)}
        if target.is_hip:
            # CDNA GEMMs pipeline with num_stages 2 (global loads prefetched into registers)
            return {**common, "num_warps": (4, 8), "num_stages": (2,), "waves_per_eu": (0, 1, 2, 3, 4, 8),
                    "matrix_instr_nonkdim": (16, 32), "kpack": (1, 2)}
        return {**common, "num_warps": (2, 4, 8), "num_stages": (2, 3, 4, 5)}

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        reason = self.check_space(config, target)
        if reason:
            return reason
        space = self.space(target)
        dims = key.dim_map
        bm, bn, bk = (config[b] for b in _BLOCKS)
        warps, stages = config["num_warps"], config["num_stages"]

        # a block wider than the problem padded to a power of two only computes masked zeros
        for b in _BLOCKS:
            dim = _DIM_OF[b]
            limit = block_limit(space[b], dims[dim])
            if config[b] > limit:
                return (f"block larger than the problem: {b}={config[b]} > {limit}, "
                        f"which covers {dim}={dims[dim]}")
        if target.is_interpreter:
            return None  # no shared memory, registers or warps to run out of

        path = mma_path(config, target)
        reason = tile_refusal(bm, bn, bk, warps, stages, config.get("waves_per_eu", 0), key, target, path)
        if reason:
            return reason
        # every warp needs at least one 16x16 MMA tile; the fewest warps always may launch.
        # Pruning, not a limit: such configurations build, but idle warps never win.
        if bm * bn < warps * 256 and warps > min(space["num_warps"]):
            return f"warps vs tile: {warps} warps for a {bm}x{bn} tile leave warps without a 16x16 tile"
        if target.is_hip:
            return amd_knob_refusal(bm, bn, config["matrix_instr_nonkdim"], config["kpack"], key)
        return None

    def default(self, key: TuningKey, target: Target) -> Config:
        if target.is_interpreter:
            want = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4,
                    "num_stages": 1}
        elif target.is_hip:
            want = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 8,
                    "num_stages": 2, "waves_per_eu": 2, "matrix_instr_nonkdim": 16, "kpack": 1}
        else:
            want = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4,
                    "num_stages": 4}
        space = self.space(target)
        want = _shrunk(want, space, key)
        if not target.is_interpreter:
            # small tiles need fewer warps (and let a tiny problem keep the smallest count)
            tile = want["BLOCK_M"] * want["BLOCK_N"]
            while want["num_warps"] > min(space["num_warps"]) and tile < want["num_warps"] * 256:
                want["num_warps"] //= 2
        # a GPU with less shared memory than Hopper first loses pipeline stages
        for stages in sorted((s for s in space["num_stages"] if s <= want["num_stages"]), reverse=True):
            if self.check({**want, "num_stages": stages}, key, target) is None:
                return {**want, "num_stages": stages}
        return self.nearest_valid(want, key, target)

    def known_good(self, key: TuningKey, target: Target) -> list[Config]:
        configs = tutorial_configs(target)
        if not target.is_interpreter and not target.is_hip:
            configs += [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": w,
                         "num_stages": s} for bm, bn, bk, s, w in _INDUCTOR_GOOD]
        # a tile larger than the padded problem only wastes lanes: shrink it as default() does,
        # so a small problem starts from the list's shapes instead of losing them
        out, seen, space = [], set(), self.space(target)
        for c in (_shrunk(c, space, key) for c in configs):
            if self.check(c, key, target) is None and config_hash(c) not in seen:
                seen.add(config_hash(c))
                out.append(c)
        return out if target.is_interpreter else _by_roofline(out, key)

    # ---- running --------------------------------------------------------------------
    def _meta(self, config: Config, vendor: str, dot_in_fp32: bool) -> dict[str, Any]:
        """The constexpr and compile-option arguments of a launch, shared by launch and compile so
        that a precompiled binary is the one the launch looks up."""
        args, options = self.split_config(config, vendor)
        return {**args, "DOT_IN_FP32": dot_in_fp32, **options}

    def make_inputs(self, key: TuningKey, device: str, seed: int) -> MatmulInputs:
        dims, dtype = key.dim_map, TORCH_DTYPES[key.dtype]
        m, n, k = dims["M"], dims["N"], dims["K"]
        # drawn on the CPU so a seed gives the same matrices on every device; B is scaled by
        # 1/sqrt(K) so C ~ N(0, 1) and one atol fits every K
        gen = torch.Generator().manual_seed(seed)
        a = torch.randn(m, k, generator=gen)
        b = torch.randn(k, n, generator=gen) / math.sqrt(k)
        return MatmulInputs(a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))

    def launch(self, config: Config, inputs: MatmulInputs) -> torch.Tensor:
        a, b = inputs
        m, k = a.shape
        n = b.shape[1]
        # a fresh output per launch: a config that skips tiles can never pass on an earlier one's output
        c = torch.empty((m, n), device=a.device, dtype=a.dtype)
        require_launchable(on_cpu=a.device.type == "cpu")
        interpret = bool(triton.knobs.runtime.interpret)
        meta = self._meta(config, self.vendor_of(a),
                          dot_in_fp32=interpret and a.dtype == torch.bfloat16)
        matmul_kernel[_grid(config, m, n)](
            a, b, c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), **meta)
        return c

    def specialization(self, config: Config, key: TuningKey, target: Target) -> Specialization:
        dims, dtype = key.dim_map, TORCH_DTYPES[key.dtype]
        m, n, k = dims["M"], dims["N"], dims["K"]
        # the strides of contiguous tensors of these shapes, without allocating them
        sa, sb, sc = (torch.empty(shape, device="meta").stride() for shape in ((m, k), (k, n), (m, n)))
        return Specialization(matmul_kernel, (dtype, dtype, dtype, m, n, k, *sa, *sb, *sc),
                              self._meta(config, target.vendor, dot_in_fp32=False), _grid(config, m, n))

    def reference(self, inputs: MatmulInputs) -> torch.Tensor:
        # in fp32: CPU half-precision matmul is slow, and fp32 accumulation is what the kernel does
        a, b = inputs
        return torch.matmul(a.float(), b.float()).to(a.dtype)

    def flops(self, key: TuningKey) -> float:
        d = key.dim_map
        return 2.0 * d["M"] * d["N"] * d["K"]

    def bytes_moved(self, key: TuningKey) -> float:
        d = key.dim_map
        return float((d["M"] * d["K"] + d["K"] * d["N"] + d["M"] * d["N"]) * DTYPE_BYTES[key.dtype])

    def trial_bytes(self, key: TuningKey, input_sets: int = 1) -> int:
        d, es = key.dim_map, DTYPE_BYTES[key.dtype]
        ins, out = d["M"] * d["K"] + d["K"] * d["N"], d["M"] * d["N"]
        # the input sets; output and reference; the reference's fp32 operands and product; the
        # check's fp32 copies of output and reference
        return ins * es * input_sets + 2 * out * es + (ins + out) * 4 + 2 * out * 4
