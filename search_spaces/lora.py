"""What multi-LoRA shrink and expand share (search_spaces/lora_shrink.py, lora_expand.py).

Serving many LoRA adapters over one base model runs, per projection, two skinny GEMMs on the
batch's tokens grouped by adapter: shrink (x @ A: hidden size -> rank, into an fp32 buffer per
output slice) and expand (that buffer @ B: rank -> hidden size, added into the slices of the
projection's output). Both kernels follow vLLM's design (vllm/lora/ops/triton_ops,
lora_shrink_op.py and lora_expand_op.py): the grid is (tiles, slices, adapters in the batch),
each program finds its adapter's segment of the token list sorted by adapter, and programs past
their segment's tokens return at once. The keys: tokens M, the rank RANK, the hidden size (K for
shrink, N for expand), SLICES and LORAS, the server's --max-loras: what vLLM looks a tuned
configuration up by (`get_lora_op_configs`: max_loras, num_slices, m, k, n), except that vLLM's
max_loras is `lora_ids.size(0)`, LORAS + 1 (its ids array has a slot for "no adapter" too,
lora_kernel_metadata.py `LoRAKernelMeta.make`), at every batch size. So the grid's third axis has
LORAS + 1 slots, as vLLM launches it, of which min(M, LORAS) hold tokens; the rest return at once.

The resource model (shared memory/LDS and registers of a BLOCK_M x BLOCK_N x BLOCK_K tile) was
held against Triton 3.6's sm_90 and gfx942 builds of both kernels (bench/constraint_check.py,
bench/results/constraints-lora_*.md).
"""
from __future__ import annotations

from typing import NamedTuple

import triton
import triton.language as tl

from keys import Config, TuningKey
from devices.targets import NV_REGS_PER_BLOCK, Target
from search_spaces.base import KernelSpec, LazyTorch, block_limit
from search_spaces.gemm import mma_path

torch = LazyTorch(globals())  # imported at its first use: reading a space needs none

# Registers a thread needs: a x the fp32 accumulator + c x its share of the two operand tiles
# (32-bit words) + fixed, refused above `limit` (on NVIDIA also above the block's 65,536). Fitted
# to Triton 3.6's bf16 builds of both kernels (bench/constraint_check.py,
# bench/results/constraints-lora_*.md): the gathered token rows and, on mma.sync, the operand
# fragments cost more than in matmul.py's model, whose gfx942 coefficients these builds agree with.
_REGISTERS = {"wgmma": (0.75, 0.5, 64, 255), "mma": (1.5, 0.5, 24, 255), "mfma": (1.0, 3.0, 24, 512)}
GROUP_M = 8  # the shrink's grouped program order: vLLM's group_size_m default, not tuned


class Segments(NamedTuple):
    """The batch's tokens grouped by adapter, as vLLM's LoRAKernelMeta holds them."""

    token_indices: torch.Tensor  # int32 [M]: token ids, sorted by adapter slot
    tokens_per_lora: torch.Tensor  # int32 [LORAS + 1]: tokens of each slot (0 for an unused one)
    start: torch.Tensor  # int32 [LORAS + 2]: where each slot's tokens begin in token_indices
    lora_ids: torch.Tensor  # int32 [LORAS + 1]: the adapter (weight index) of each slot, -1 unused


def slots(loras: int) -> int:
    """The adapter slots vLLM's ops launch for a server holding `loras` adapters, and the max_loras
    they look their configuration up by: `lora_ids.size(0)`, --max-loras + 1."""
    return loras + 1


def make_segments(m: int, loras: int, gen: torch.Generator, device: str) -> Segments:
    """M tokens over min(M, LORAS) of the LORAS adapters, as even as M allows, in a random order
    (requests with different adapters interleave in a batch), in LORAS + 1 slots as vLLM holds
    them: the used slots first, the others empty with adapter -1 (vLLM's `_reset` fills -1). Slot i
    serves a random adapter, so a kernel that took the slot for the adapter would fail the check."""
    used, n = min(m, loras), slots(loras)
    slot_of_token = (torch.arange(m) % used)[torch.randperm(m, generator=gen)]
    lora_ids = torch.full((n,), -1, dtype=torch.int64)
    lora_ids[:used] = torch.randperm(loras, generator=gen)[:used]
    counts = torch.bincount(slot_of_token, minlength=n)
    start = torch.zeros(n + 1, dtype=torch.int64)
    start[1:] = torch.cumsum(counts, 0)
    order = torch.argsort(slot_of_token, stable=True)
    return Segments(*(t.to(dtype=torch.int32, device=device) for t in (order, counts, start, lora_ids)))


@triton.jit
def adapter_rows(m0, count, slot, token_ptr, start_ptr, lora_ptr, BLOCK_M: tl.constexpr):
    """A program's BLOCK_M token rows from m0 of its adapter slot's `count` tokens, how many of
    them are its own (lanes past the segment repeat its rows, so loads through them need no mask;
    stores mask them), and the slot's adapter: what shrink and expand both start from."""
    rows_here = min(BLOCK_M, count - m0)
    first = tl.load(start_ptr + slot)
    rows = tl.load(token_ptr + first + m0 + tl.arange(0, BLOCK_M) % rows_here).to(tl.int64)
    return rows, rows_here, tl.load(lora_ptr + slot).to(tl.int64)


def segment_rows(seg: Segments) -> list[tuple[int, torch.Tensor]]:
    """(adapter, its token ids) per slot: what the references loop over."""
    rows = seg.token_indices.long().cpu()
    starts = seg.start.tolist()
    return [(int(a), rows[starts[i]:starts[i + 1]]) for i, a in enumerate(seg.lora_ids.tolist()) if a >= 0]


def tile_resources(config: Config, target: Target, a_bytes: int, b_bytes: int, out_bytes: int,
                   a_converted: bool = False) -> str | None:
    """Why a BLOCK_M x BLOCK_K tile (a_bytes an element) times a BLOCK_K x BLOCK_N one (b_bytes)
    cannot build or load on target: shared memory/LDS, then registers.

    Shared memory is the larger of the main loop's buffers and the epilogue's, which converts the
    accumulator's layout through BLOCK_M x BLOCK_N x out_bytes of it. The loop keeps, as every
    build of the constraint check shows: on Hopper's wgmma path num_stages buffers of each tile
    (one fewer of A where it is converted in registers before the dot: the expand's fp32 input);
    on mma.sync num_stages - 1 (at least one); on gfx942 the larger tile alone with one stage and
    both with two. sm_90 adds 1 KiB of static shared memory."""
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    warps, stages = config["num_warps"], config["num_stages"]
    a, b = bm * bk * a_bytes, bk * bn * b_bytes
    path = mma_path(config, target)
    if path == "wgmma":
        loop = stages * b + (stages - 1 if a_converted else stages) * a
    elif path == "mma":
        loop = max(1, stages - 1) * (a + b)
    else:
        loop = max(a, b) if stages == 1 else (stages - 1) * (a + b)
    smem = max(loop, bm * bn * out_bytes) + (0 if target.is_hip else 1024)
    if smem > target.smem_bytes:
        kind = "LDS" if target.is_hip else "shared memory"
        return (f"{kind}: {bm}x{bk} x {a_bytes} B and {bk}x{bn} x {b_bytes} B tiles at {stages} stages "
                f"({path}) = {smem // 1024} KiB > {target.smem_bytes // 1024} KiB on {target.arch}")
    threads = warps * target.warp_size
    acc_c, ops_c, fixed, limit = _REGISTERS[path]
    if not target.is_hip:
        limit = min(limit, NV_REGS_PER_BLOCK // threads)
    need = (acc_c * bm * bn + ops_c * (a + b) / 4) / threads + fixed
    if need > limit:
        return (f"registers: a {bm}x{bn}x{bk} tile over {warps} warps needs about {need:.0f} registers a "
                f"thread > {limit}; it would spill")
    return None


class LoraSpec(KernelSpec):
    """The two kernels' common part: key validation, the block limits, vLLM's default as the
    default. Its code, and what of this module it names, counts in both kernels' versions
    (search_spaces/versions.py follows it)."""

    hidden: str  # "K" (shrink) or "N" (expand): the key's hidden-size dim
    blocks: dict[str, str]  # block -> the key dim it tiles
    # outputs are ~N(0, 1); fp32 uses tl.dot's TF32 on GPUs (as matmul.py does); bf16 and fp16
    # round the inputs, both kernels accumulate in fp32
    tolerances = {"float16": (2e-2, 1e-2), "bfloat16": (5e-2, 2e-2), "float32": (1e-2, 1e-2)}

    def example_dims(self) -> dict[str, int]:
        return {"M": 64, self.hidden: 4096, "RANK": 16, "SLICES": 1, "LORAS": 4}

    def vllm_default(self, key: TuningKey) -> Config:
        """vLLM's own configuration for this key when no tuned file is found, in our names."""
        raise NotImplementedError

    def limits(self, key: TuningKey, target: Target) -> dict[str, int]:
        """The largest value of each block worth trying: the smallest that covers the padded
        extent, or vLLM's default where that is larger. A bigger block computes only masked
        lanes, but vLLM's default is the baseline every tuning is compared with (BLOCK_M=32 for a
        single token, BLOCK_K=256 at any hidden size): it stays in the space as vLLM launches it."""
        space, want, dims = self.space(target), self.vllm_default(key), key.dim_map
        return {b: max(block_limit(space[b], dims[d]), want[b]) for b, d in self.blocks.items()}

    def check_blocks(self, config: Config, key: TuningKey, target: Target) -> str | None:
        for b, limit in self.limits(key, target).items():
            if config[b] > limit:
                dim = self.blocks[b]
                return (f"block larger than the problem: {b}={config[b]} > {limit}, which covers "
                        f"{dim}={key.dim_map[dim]}")
        return None

    def default(self, key: TuningKey, target: Target) -> Config:
        """vLLM's default where the target's space holds it (every GPU space does), else the
        nearest valid configuration (the interpreter, or a GPU whose limits it exceeds)."""
        want = self.vllm_default(key)
        if self.check(want, key, target) is None:
            return want
        return self.nearest_valid(self.shrunk(want, key, target), key, target)

    def shrunk(self, config: Config, key: TuningKey, target: Target) -> Config:
        """config with each block no larger than its limit."""
        return {**config, **{b: min(config[b], v) for b, v in self.limits(key, target).items()}}

    def known_good_from(self, configs: list[Config], key: TuningKey, target: Target) -> list[Config]:
        """configs shrunk to the problem, the valid ones, without repeats: a known-good list."""
        return self.valid_unique((self.shrunk(c, key, target) for c in configs), key, target)
