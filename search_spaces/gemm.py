"""The resource model of a `tl.dot` tile pipeline, shared by the GEMM-like kernels (matmul, fused
MoE, the LoRA kernels, attention): which matrix instructions a tile builds to, and the registers a
thread of the matmul-shaped pipeline needs. Each kernel's own fit of what differs lives with it."""
from __future__ import annotations

from keys import DTYPE_BYTES, Config, TuningKey
from devices.targets import Target

# Registers a thread needs: the fp32 accumulator, plus `operands` copies of the thread's share of
# the A and B tiles where they pass through registers, plus `fixed` for addressing; refused
# above `limit`. Fitted to Triton 3.6's sm_90 and gfx942 builds of the 4096^3 matmul space
# (bench/constraint_check.py; spilling = more than 16 bytes a thread): wgmma reads both operands
# from shared memory, so the accumulator alone decides (at most 128 values of 255 registers);
# mma.sync loads fragments (0.5 copies); gfx9 prefetches the next tiles into VGPRs and reads
# fragments from LDS (3 copies), within 512 registers a lane or 512 / waves_per_eu when capped.
REGISTERS = {"wgmma": (0.0, 0, 128), "mma": (0.5, 32, 255), "mfma": (3.0, 24, 512)}
AMD_ACC_LIMIT = 256  # MFMA accumulators live in the 256 AGPRs


def mma_path(config: Config, target: Target, block_m: str = "BLOCK_M") -> str:
    """Which matrix instructions a tile builds to: Hopper's wgmma needs a warpgroup (4 warps) and a
    64-row tile, anything else on NVIDIA is mma.sync, CDNA has MFMA. It decides how many pipeline
    buffers a build keeps and which operands pass through registers. Matches every sm_90 build of
    the constraint checks."""
    if target.is_hip:
        return "mfma"
    if target.arch == "sm_90" and config["num_warps"] >= 4 and config[block_m] >= 64:
        return "wgmma"
    return "mma"


def register_refusal(bm: int, bn: int, bk: int, warps: int, waves: int, key: TuningKey, target: Target,
                     path: str, elem: int | None = None) -> str | None:
    """Why a bm x bn x bk tile over `warps` warps (waves_per_eu `waves` on AMD, 0: uncapped) would
    spill in the matmul-shaped pipeline, else None. `elem`: the operands' bytes where they are not
    the key dtype's (a quantized kernel's fp8 tiles)."""
    threads = warps * target.warp_size
    acc = bm * bn / threads
    operands = (bm * bk + bk * bn) * (elem or DTYPE_BYTES[key.dtype]) / 4 / threads
    copies, fixed, limit = REGISTERS[path]
    if path == "mfma" and waves:
        limit //= waves
    need = acc + copies * operands + fixed
    if need > limit or (path == "mfma" and acc > AMD_ACC_LIMIT):
        cap = f" (waves_per_eu={waves})" if path == "mfma" and waves else ""
        return (f"registers: a {bm}x{bn}x{bk} tile over {warps} warps needs about {need:.0f} registers a "
                f"thread ({acc:.0f} accumulator) > {limit}{cap}; it would spill")
    return None


def tile_refusal(bm: int, bn: int, bk: int, warps: int, stages: int, waves: int, key: TuningKey,
                 target: Target, path: str, elem: int | None = None) -> str | None:
    """Why the pipeline of a bm x bn x bk tile cannot run on target, else None: its shared memory
    (LDS), then its registers.

    Shared memory holds the A and B tiles of every pipeline buffer. Hopper's wgmma pipeline keeps
    num_stages buffers; the mma.sync/cp.async one (fewer than 4 warps, BLOCK_M < 64, or pre-Hopper)
    and gfx9's synchronous one keep num_stages-1 (the next tile waits in flight or in registers),
    at least one. Matches every sm_90 and gfx942 build of bench/constraint_check.py that fits (sm_90
    adds 1 KiB of static shared memory; no point of the spaces comes within 1 KiB of the limit)."""
    elem = elem or DTYPE_BYTES[key.dtype]
    buffers = stages if path == "wgmma" else max(1, stages - 1)
    smem = buffers * (bm * bk + bk * bn) * elem
    if smem > target.smem_bytes:
        kind = "LDS" if target.is_hip else "shared memory"
        return (f"{kind}: {buffers} x ({bm}x{bk} + {bk}x{bn}) x {elem} B = {smem // 1024} KiB > "
                f"{target.smem_bytes // 1024} KiB on {target.arch}")
    return register_refusal(bm, bn, bk, warps, waves, key, target, path, elem)


def amd_knob_refusal(bm: int, bn: int, nonkdim: int, kpack: int, key: TuningKey) -> str | None:
    """Why the AMD knobs do not suit a bm x bn tile, else None."""
    # pruning: the 32x32 instruction on a 16-wide tile builds, but computes twice the tile
    if nonkdim == 32 and (bm < 32 or bn < 32):
        return f"matrix_instr_nonkdim=32 needs both blocks >= 32 (got {bm}x{bn}): it would compute twice the tile"
    # a limit: the gfx942 backend fails on some float32 builds with kpack=2 (PassManager::run)
    if kpack == 2 and DTYPE_BYTES[key.dtype] != 2:
        return "kpack=2 packs 16-bit MFMA operands; float32 takes kpack=1"
    return None
