"""Row-wise softmax of an M x N row-major matrix, ROWS rows per program.

A row that fits in BLOCK_SIZE is read once; a longer row takes two passes over BLOCK_SIZE
chunks (an online max and sum, then the normalised write), so the space trades the register
footprint of one wide tile against reading the input twice. Math is in fp32 for every dtype.
"""
from __future__ import annotations

from typing import NamedTuple

import triton
import triton.language as tl

from keys import DTYPE_BYTES, Config, TuningKey
from devices.targets import NV_REGS_PER_BLOCK, Target
from search_spaces.base import (
    TORCH_DTYPES,
    KernelSpec,
    LazyTorch,
    Specialization,
    block_limit,
    require_launchable,
)

torch = LazyTorch(globals())  # imported at its first use: reading a space needs none


# Registers a thread needs for v fp32 row values: each value and its exponential, plus
# addressing. Fitted to Triton 3.6's sm_90 and gfx942 builds (bench/constraint_check.py,
# bench/results/constraints-softmax.md): 64 values spill at 16 warps (128 registers a thread)
# and 128 values build clean in 236 registers at 4 wavefronts on gfx942.
_REGS_PER_VALUE, _REGS_FIXED = 2, 16
# a workgroup is at most 1,024 threads: 32 warps of 32 on NVIDIA, 16 wavefronts of 64 on CDNA
_MAX_THREADS = 1024


@triton.jit
def _softmax_kernel(x_ptr, y_ptr, M, N, stride_xm, stride_ym, BLOCK_SIZE: tl.constexpr,
                    ROWS: tl.constexpr, ONE_PASS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < M
    # rows past M re-read the last row instead of being masked: a fully masked row would be
    # -inf - -inf = NaN, harmless as it is never stored but noisy in the interpreter
    safe_rows = tl.minimum(rows, M - 1)
    cols = tl.arange(0, BLOCK_SIZE)
    x_rows = x_ptr + safe_rows.to(tl.int64)[:, None] * stride_xm
    y_rows = y_ptr + rows.to(tl.int64)[:, None] * stride_ym
    if ONE_PASS:
        x = tl.load(x_rows + cols[None, :], mask=cols[None, :] < N, other=-float("inf")).to(tl.float32)
        e = tl.exp(x - tl.max(x, axis=1)[:, None])
        y = e / tl.sum(e, axis=1)[:, None]
        tl.store(y_rows + cols[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (cols[None, :] < N))
    else:
        m = tl.full((ROWS,), -float("inf"), tl.float32)
        d = tl.zeros((ROWS,), tl.float32)
        for start in range(0, N, BLOCK_SIZE):
            c = start + cols
            x = tl.load(x_rows + c[None, :], mask=c[None, :] < N, other=-float("inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
            m = m_new
        for start in range(0, N, BLOCK_SIZE):
            c = start + cols
            x = tl.load(x_rows + c[None, :], mask=c[None, :] < N, other=-float("inf")).to(tl.float32)
            y = tl.exp(x - m[:, None]) / d[:, None]
            tl.store(y_rows + c[None, :], y.to(y_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & (c[None, :] < N))


def _register_budget(warps: int, target: Target) -> int:
    """Registers a thread may use when one program of `warps` warps must fit: NVIDIA has 65,536 a
    block (and 255 a thread); CDNA spreads a workgroup's wavefronts over a CU's 4 SIMDs, each
    with 512 a lane."""
    if target.is_hip:
        return target.max_regs_per_thread // -(-warps // 4)
    return min(target.max_regs_per_thread, NV_REGS_PER_BLOCK // (warps * target.warp_size))


def _grid(config: Config, m: int) -> tuple[int]:
    return (triton.cdiv(m, config["ROWS"]),)


class SoftmaxInputs(NamedTuple):
    x: torch.Tensor


class Softmax(KernelSpec):
    name = "softmax"
    key_names = ("M", "N")
    tiny_shape = ({"M": 4, "N": 40}, "float32")  # a row that is no power of two: the masked lanes
    # outputs lie in (0, 1]; the kernel and the reference both compute in fp32, so the error is
    # the output rounding of the dtype (one ulp) plus fp32 exp and summation-order noise
    tolerances = {"float16": (1e-3, 1e-2), "bfloat16": (4e-3, 2e-2), "float32": (1e-5, 1e-4)}

    def space(self, target: Target) -> dict[str, tuple]:
        if target.is_interpreter:
            # the interpreter pays per program and per op: few wide programs are fastest
            return {"BLOCK_SIZE": (256, 512, 1024, 2048, 4096), "ROWS": (1, 4, 16), "num_warps": (1, 4)}
        warps = tuple(w for w in (1, 2, 4, 8, 16, 32) if w * target.warp_size <= _MAX_THREADS)
        return {"BLOCK_SIZE": tuple(1 << p for p in range(7, 17)),  # 128 .. 65536
                "ROWS": (1, 2, 4, 8, 16), "num_warps": warps}

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        reason = self.check_space(config, target)
        if reason:
            return reason
        space = self.space(target)
        m, n = key.dim_map["M"], key.dim_map["N"]
        block, rows, warps = config["BLOCK_SIZE"], config["ROWS"], config["num_warps"]
        # a block wider than the problem padded to a power of two only holds masked lanes
        for param, dim, extent in (("BLOCK_SIZE", "N", n), ("ROWS", "M", m)):
            limit = block_limit(space[param], extent)
            if config[param] > limit:
                return (f"block larger than the problem: {param}={config[param]} > {limit}, "
                        f"which covers {dim}={extent}")
        if target.is_interpreter:
            return None
        per_thread = rows * block // (warps * target.warp_size)
        need, budget = _REGS_PER_VALUE * per_thread + _REGS_FIXED, _register_budget(warps, target)
        if need > budget:
            return (f"registers: a {rows}x{block} tile over {warps} warps is {per_thread} values a thread, "
                    f"about {need} registers > the {budget} a thread has at {warps} warps; it would spill")
        # threads beyond the tile's elements would only hold masked copies; the fewest warps
        # always may launch
        if rows * block < warps * target.warp_size and warps > min(space["num_warps"]):
            return (f"warps vs tile: {warps} warps of {target.warp_size} for a {rows}x{block} tile "
                    "leave threads idle")
        return None

    def default(self, key: TuningKey, target: Target) -> Config:
        space = self.space(target)
        m, n = key.dim_map["M"], key.dim_map["N"]
        # one pass while the row fits; a row too long for the registers of the most warps
        # (past 16K on Hopper, 32K on CDNA) is repaired by nearest_valid to a narrower block,
        # looped over
        block = block_limit(space["BLOCK_SIZE"], n)
        # short rows: several a program, so that a program has ~2K values to work on (16K in the
        # interpreter, whose cost is per program: 256x1000 takes 0.68 s with ROWS=1, 0.11 s with 16)
        per_program = 16384 if target.is_interpreter else 2048
        rows = max([r for r in space["ROWS"] if r * block <= per_program] or [min(space["ROWS"])])
        rows = min(rows, block_limit(space["ROWS"], m))
        if target.is_interpreter:
            warps = 4
        else:  # ~8 values a thread
            fewest, most = min(space["num_warps"]), max(space["num_warps"])
            warps = min(most, max(fewest, rows * block // (8 * target.warp_size)))
        want = {"BLOCK_SIZE": block, "ROWS": rows, "num_warps": warps}
        if self.check(want, key, target) is None:
            return want
        return self.nearest_valid(want, key, target)

    def known_good(self, key: TuningKey, target: Target) -> list[Config]:
        # the Triton tutorial's choice: the whole row in one program, 8 warps (4 wavefronts on CDNA)
        space = self.space(target)
        block = block_limit(space["BLOCK_SIZE"], key.dim_map["N"])
        warps = (4,) if target.is_hip else (8, 16, 32)
        configs = [{"BLOCK_SIZE": block, "ROWS": 1, "num_warps": w} for w in warps]
        return [c for c in configs if self.check(c, key, target) is None]

    # ---- running --------------------------------------------------------------------
    def _meta(self, config: Config, n: int, vendor: str) -> dict:
        """The constexpr and compile-option arguments of a launch, shared by launch and
        specialization so that a precompiled binary is the one the launch looks up."""
        args, options = self.split_config(config, vendor)
        return {**args, "ONE_PASS": config["BLOCK_SIZE"] >= n, **options}

    def make_inputs(self, key: TuningKey, device: str, seed: int) -> SoftmaxInputs:
        m, n = key.dim_map["M"], key.dim_map["N"]
        # drawn on the CPU so a seed gives the same matrix on every device; scale 3 gives rows
        # whose maxima matter (a uniform-ish row would hide a missing max subtraction less)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(m, n, generator=gen) * 3
        return SoftmaxInputs(x.to(device=device, dtype=TORCH_DTYPES[key.dtype]))

    def launch(self, config: Config, inputs: SoftmaxInputs) -> torch.Tensor:
        x = inputs.x
        m, n = x.shape
        y = torch.empty_like(x)  # fresh per launch, so no config passes on an earlier one's output
        require_launchable(on_cpu=x.device.type == "cpu")
        vendor = self.vendor_of(x)
        _softmax_kernel[_grid(config, m)](x, y, m, n, x.stride(0), y.stride(0), **self._meta(config, n, vendor))
        return y

    def specialization(self, config: Config, key: TuningKey, target: Target) -> Specialization:
        m, n = key.dim_map["M"], key.dim_map["N"]
        dtype = TORCH_DTYPES[key.dtype]
        # contiguous rows: both strides are n
        return Specialization(_softmax_kernel, (dtype, dtype, m, n, n, n), self._meta(config, n, target.vendor),
                              _grid(config, m))

    def reference(self, inputs: SoftmaxInputs) -> torch.Tensor:
        x = inputs.x
        return torch.softmax(x.float(), dim=-1).to(x.dtype)

    def trial_bytes(self, key: TuningKey, input_sets: int = 1) -> int:
        n, es = key.dim_map["M"] * key.dim_map["N"], DTYPE_BYTES[key.dtype]
        # the input sets; output and reference; the reference's fp32 input and result; the
        # check's fp32 copies
        return n * es * input_sets + 2 * n * es + 2 * n * 4 + 2 * n * 4

    def flops(self, key: TuningKey) -> float:
        # max, subtract, exp, sum, divide: ~5 operations an element (exp counted as one)
        d = key.dim_map
        return 5.0 * d["M"] * d["N"]

    def bytes_moved(self, key: TuningKey) -> float:
        return 2.0 * key.dim_map["M"] * key.dim_map["N"] * DTYPE_BYTES[key.dtype]  # read x, write y
