"""The fused mixture-of-experts layer LLM servers run (vLLM's and SGLang's Triton `fused_moe`):
two grouped GEMMs over the tokens sorted by expert, with the SiLU-and-multiply between them.

A token goes to its top-k experts (`topk_ids`, with routing weights that sum to 1). The token-expert
pairs are sorted by expert and each expert's run is padded to BLOCK_SIZE_M (what vLLM's
`moe_align_block_size` does), so that one program's BLOCK_SIZE_M rows all use one expert's weights:
    h = x @ w1[e].T         w1: (E, 2N, K), gate and up projections; h: (M*topk, 2N)
    a = silu(h[:, :N]) * h[:, N:]
    y = (a @ w2[e].T) * w   w2: (E, K, N), the down projection, times the pair's routing weight
    out[t] = sum of y over the token's k pairs
Both GEMMs use the one configuration, as in vLLM, whose names the parameters keep so that a
configuration is exported and imported unchanged. Key: E, N (the intermediate size per expert,
after tensor parallelism, as vLLM names it), K (hidden size), topk, M (tokens), dtype.

What a trial times: both GEMMs, the activation and the top-k sum. The alignment is computed once
per BLOCK_SIZE_M and input set (vLLM runs it as a separate CUDA op of a few microseconds that no
configuration tunes). The routing is part of the measurement (`Measurement.routing`): uniform
(every token's k experts drawn uniformly, like the random gating vLLM's tuning script uses) or
skewed (expert popularity falling as 1/rank, as real routers are uneven); a skewed job keeps a study
of its own.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import triton
import triton.language as tl

from search_spaces import fused_moe_vllm as vllm_data
from keys import DTYPE_BYTES, Config, SpecError, TuningKey, config_hash, log2_distance, nearest
from devices.targets import Target
from search_spaces.base import (
    TORCH_DTYPES,
    KernelSpec,
    LazyTorch,
    Specialization,
    block_limit,
    compiled_identity,
    require_launchable,
)
from search_spaces.gemm import amd_knob_refusal, mma_path, tile_refusal

torch = LazyTorch(globals())  # imported at its first use: reading a space needs none

ROUTINGS = ("uniform", "skewed")
_BLOCKS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K")
_NV_SPACE = {"BLOCK_SIZE_M": (16, 32, 64, 128, 256), "BLOCK_SIZE_N": (32, 64, 128, 256),
             "BLOCK_SIZE_K": (32, 64, 128, 256), "GROUP_SIZE_M": (1, 8, 16, 32, 64), "num_warps": (4, 8),
             "num_stages": (2, 3, 4, 5)}


@triton.jit
def grouped_block(EM, N, BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, GROUP_SIZE_M: tl.constexpr):
    """This program's (row block, column block), in grouped order: GROUP_SIZE_M row blocks share the
    weight columns they load, for L2 reuse (the quantized kernel's too)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(EM, BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    return first_pid_m + ((pid % num_pid_in_group) % group_size_m), (pid % num_pid_in_group) // group_size_m


@triton.jit
def fused_moe_kernel(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
                     num_tokens_post_padded_ptr, N, K, EM, num_valid_tokens, stride_am, stride_ak, stride_be,
                     stride_bk, stride_bn, stride_cm, stride_cn, BLOCK_SIZE_M: tl.constexpr,
                     BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
                     MUL_ROUTED_WEIGHT: tl.constexpr, top_k: tl.constexpr, DOT_TYPE: tl.constexpr):
    """C[pair] = A[pair // top_k] @ B[expert].T for BLOCK_SIZE_M sorted pairs of one expert."""
    pid_m, pid_n = grouped_block(EM, N, BLOCK_SIZE_M, BLOCK_SIZE_N, GROUP_SIZE_M)
    # the grid is sized before the alignment is known (no host sync): surplus programs leave
    if pid_m * BLOCK_SIZE_M >= tl.load(num_tokens_post_padded_ptr):
        return
    rows = tl.load(sorted_token_ids_ptr + pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M).to(tl.int64))
    row_ok = rows < num_valid_tokens  # padding holds num_valid_tokens
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N).to(tl.int64)) % N
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + (rows[:, None] // top_k) * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_left = K - k * BLOCK_SIZE_K
        # DOT_TYPE is the inputs' own type but on the interpreter, whose tl.dot multiplies bf16 bit
        # patterns (triton#11584): there fp32, in which bf16 products are exact
        a = tl.load(a_ptrs, mask=row_ok[:, None] & (offs_k[None, :] < k_left), other=0.0).to(DOT_TYPE)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0).to(DOT_TYPE)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk
    if MUL_ROUTED_WEIGHT:
        acc = acc * tl.load(topk_weights_ptr + rows, mask=row_ok, other=0.0)[:, None]
    offs_cn = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    c_ptrs = c_ptr + rows[:, None] * stride_cm + offs_cn[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_cn[None, :] < N))


class Aligned(NamedTuple):
    """moe_align_block_size's output for one BLOCK_SIZE_M: pair ids sorted by expert, each expert's
    run padded to a multiple of the block (padding = the number of pairs), the expert of each block,
    and the padded total (a one-element tensor, read by the kernel)."""
    sorted_ids: torch.Tensor
    expert_ids: torch.Tensor
    total: torch.Tensor


class MoeInputs(NamedTuple):
    x: torch.Tensor  # (M, K)
    w1: torch.Tensor  # (E, 2N, K)
    w2: torch.Tensor  # (E, K, N)
    topk_weights: torch.Tensor  # (M, topk) float32, each row summing to 1
    topk_ids: torch.Tensor  # (M, topk) int32, distinct experts per row
    aligned: dict  # BLOCK_SIZE_M -> Aligned, filled on first use


def align(topk_ids: torch.Tensor, experts: int, block: int) -> Aligned:
    """Sort the token-expert pairs by expert and pad every expert's run to a multiple of block.
    The buffers are sized for the worst case (every expert's run one short of a block), as vLLM
    sizes them, so the launch grid never waits on the device."""
    flat = topk_ids.flatten().long()
    pairs = flat.numel()
    counts = torch.bincount(flat, minlength=experts)
    padded = (counts + block - 1) // block * block
    starts = torch.cumsum(padded, 0) - padded
    order = torch.argsort(flat, stable=True)
    by_expert = flat[order]
    rank = torch.arange(pairs, device=flat.device) - (torch.cumsum(counts, 0) - counts)[by_expert]
    capacity = pairs + experts * (block - 1)
    sorted_ids = torch.full((capacity,), pairs, dtype=torch.int32, device=flat.device)
    sorted_ids[starts[by_expert] + rank] = order.to(torch.int32)
    blocks = torch.repeat_interleave(torch.arange(experts, device=flat.device), padded // block)
    expert_ids = torch.full((triton.cdiv(capacity, block),), -1, dtype=torch.int32, device=flat.device)
    expert_ids[:blocks.numel()] = blocks.to(torch.int32)
    return Aligned(sorted_ids, expert_ids, padded.sum().reshape(1).to(torch.int32))


def route(m: int, experts: int, topk: int, routing: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_ids int32, topk_weights float32) for m tokens: k distinct experts a token, drawn
    uniformly or, skewed, with probability 1/rank over a shuffled expert order; the weights are a
    softmax of random logits over the chosen k."""
    if routing == "uniform":
        ids = torch.rand(m, experts, generator=gen).topk(topk, dim=1).indices
    elif routing == "skewed":
        popularity = 1.0 / torch.arange(1, experts + 1, dtype=torch.float64)
        order = torch.randperm(experts, generator=gen)
        ids = order[torch.multinomial(popularity.expand(m, experts), topk, replacement=False, generator=gen)]
    else:
        raise SpecError(f"unknown routing {routing[:40]!r}; use one of {', '.join(ROUTINGS)}")
    weights = torch.softmax(torch.randn(m, topk, generator=gen), dim=1)
    return ids.to(torch.int32), weights.float()


def draw(key: TuningKey, seed: int, routing: str) -> tuple[torch.Tensor, ...]:
    """(x, w1, w2, topk_ids, topk_weights) in fp32 for key (E, N, K, topk, M), drawn on the CPU so a
    seed gives the same tensors on every device; weights scaled by 1/sqrt(fan-in) so h ~ N(0, 1) and
    the output stays O(1) at every size."""
    e, n, k, topk, m = (key.dim_map[x] for x in ("E", "N", "K", "topk", "M"))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    w1 = torch.randn(e, 2 * n, k, generator=gen) / math.sqrt(k)
    w2 = torch.randn(e, k, n, generator=gen) / math.sqrt(n)
    return (x, w1, w2, *route(m, e, topk, routing, gen))


def _grid(config: Config, em: int, n: int) -> tuple[int]:
    return (triton.cdiv(em, config["BLOCK_SIZE_M"]) * triton.cdiv(n, config["BLOCK_SIZE_N"]),)


def _em(config: Config, m: int, experts: int, topk: int) -> int:
    """Rows the grid covers: the sorted buffer's worst case, and for a batch smaller than a block
    at most m*topk blocks (vLLM's small-batch bound: each pair is in its own expert's block)."""
    bm = config["BLOCK_SIZE_M"]
    em = m * topk + experts * (bm - 1)
    return min(em, m * topk * bm) if m < bm else em


class FusedMoe(KernelSpec):
    name = "fused_moe"
    key_names = ("E", "N", "K", "topk", "M")
    # outputs ~N(0, 0.3) (see make_inputs); the kernel rounds h, a and y to the dtype as vLLM's
    # does and the reference rounds them too, so what differs is fp32 summation order and one
    # ulp where the two round differently
    tolerances = {"float16": (1e-2, 1e-2), "bfloat16": (3e-2, 2e-2), "float32": (1e-4, 1e-3)}
    routings = ROUTINGS
    exports = ("vllm", "sglang")  # vLLM's and SGLang's fused_moe_kernel files (E, N, M, dtype)
    tiny_shape = ({"E": 4, "N": 32, "K": 32, "topk": 2, "M": 4}, "float32")

    def make_key(self, dims, dtype: str) -> TuningKey:
        key = super().make_key(dims, dtype)
        d = key.dim_map
        if d["topk"] > d["E"]:
            raise SpecError(f"topk={d['topk']} is more than the E={d['E']} experts a token can be routed to")
        return key

    # ---- the space ------------------------------------------------------------------
    def space(self, target: Target) -> dict[str, tuple]:
        if target.is_hip:
            return vllm_data.tuning_grid(amd=True)
        if target.is_interpreter:
            # the interpreter's cost is per program and per op: tiles as on GPUs; it ignores warps,
            # and stages and the group only annotate or reorder the same work, so two values each
            # keep the search's dimensions without multiplying its sweeps
            return {**{b: _NV_SPACE[b] for b in _BLOCKS}, "GROUP_SIZE_M": (1, 8), "num_warps": (4,),
                    "num_stages": (2, 3)}
        # NVIDIA: vLLM's CUDA grid, plus what its default heuristic uses (BLOCK_SIZE_K 32, GROUP_SIZE_M 8)
        return dict(_NV_SPACE)

    def _limits(self, key: TuningKey, space: dict[str, tuple]) -> dict[str, int]:
        """The largest block worth trying per parameter: M rows are token-expert pairs; N tiles
        2N (w1) and K (w2), BLOCK_SIZE_K the K of w1 and the N of w2."""
        d = key.dim_map
        return {"BLOCK_SIZE_M": block_limit(space["BLOCK_SIZE_M"], d["M"] * d["topk"]),
                "BLOCK_SIZE_N": block_limit(space["BLOCK_SIZE_N"], max(2 * d["N"], d["K"])),
                "BLOCK_SIZE_K": block_limit(space["BLOCK_SIZE_K"], max(d["K"], d["N"]))}

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        reason = self.check_space(config, target)
        if reason:
            return reason
        space = self.space(target)
        for b, limit in self._limits(key, space).items():
            if config[b] > limit:
                return f"block larger than the problem: {b}={config[b]} > {limit}"
        if target.is_interpreter:
            return None
        return self._check_resources(config, key, target)

    def _check_resources(self, config: Config, key: TuningKey, target: Target) -> str | None:
        """The tile's shared memory (LDS), registers and AMD knobs by the matmul's model
        (search_spaces/gemm.py: the same tl.dot pipeline builds; bench/results/constraints-fused_moe.md
        holds it against this kernel's own builds), then the warps this kernel prunes."""
        bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
        warps = config["num_warps"]
        path = mma_path(config, target, block_m="BLOCK_SIZE_M")
        reason = tile_refusal(bm, bn, bk, warps, config["num_stages"], config.get("waves_per_eu", 0), key, target, path)
        if reason or not target.is_hip:
            return reason
        # pruning, not a limit, on AMD only: a wavefront per 16x16 tile, up to 4 (Triton's default,
        # which vLLM's default keeps). Not on NVIDIA: vLLM's H100 tuning chose 8 warps for a 16x64
        # tile at M=1 (E=8,N=14336), where warps hide the latency of the gathered loads
        if bm * bn < warps * 256 and warps > 4:
            return f"warps vs tile: {warps} wavefronts for a {bm}x{bn} tile leave some without a 16x16 tile"
        return amd_knob_refusal(bm, bn, config["matrix_instr_nonkdim"], config["kpack"], key)

    def default(self, key: TuningKey, target: Target) -> Config:
        """vLLM's get_default_config for unquantized weights: small tiles while there are no more
        tokens than experts, else 64x64x32 in groups of 8; Triton's own warps and stages (4, and 3
        on NVIDIA, 2 on AMD); on AMD the compiler's defaults for its knobs."""
        d = key.dim_map
        if d["M"] <= d["E"]:
            want = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}
        else:
            want = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8}
        want["num_warps"] = 4
        want["num_stages"] = 2 if target.is_hip else 3
        if target.is_hip:
            want.update(waves_per_eu=0, matrix_instr_nonkdim=16, kpack=1)
        return want if self.check(want, key, target) is None else self.nearest_valid(want, key, target)

    def known_good(self, key: TuningKey, target: Target) -> list[Config]:
        """vLLM's shipped configurations for its reference GPU of the vendor (H100, MI300X; the
        H100's on the interpreter), those tuned for the nearest batch size and layer shape first,
        each made to fit this key (the nearest valid configuration where it does not)."""
        d = key.dim_map
        want = {"M": d["M"], "E": d["E"], "N": d["N"]}
        rows = sorted(vllm_data.shipped(amd=target.is_hip),
                      key=lambda r: (abs(math.log2(r[2]) - math.log2(d["M"])),
                                     log2_distance({"E": r[0], "N": r[1]}, {"E": want["E"], "N": want["N"]})))
        out, seen, valid = [], set(), None
        for _, _, _, config in rows:
            if target.is_hip:
                config = {**config, "num_stages": 2}
            if self.check(config, key, target) is not None:
                valid = valid if valid is not None else self.valid_configs(key, target)
                if not valid:
                    return []
                config = nearest(valid, config)
            if config_hash(config) not in seen:
                seen.add(config_hash(config))
                out.append(config)
        return out

    # ---- running --------------------------------------------------------------------
    def _meta(self, config: Config, vendor: str, dtype: str, interpreted: bool) -> dict[str, Any]:
        args, options = self.split_config(config, vendor)
        dot = "float32" if interpreted and dtype == "bfloat16" else dtype
        return {**args, "DOT_TYPE": getattr(tl, dot), **options}

    def make_inputs(self, key: TuningKey, device: str, seed: int, routing: str = "uniform") -> MoeInputs:
        x, w1, w2, ids, weights = draw(key, seed, routing)
        on = dict(device=device, dtype=TORCH_DTYPES[key.dtype])
        return MoeInputs(x.to(**on), w1.to(**on), w2.to(**on), weights.to(device), ids.to(device), {})

    def _aligned(self, inputs: MoeInputs, block: int) -> Aligned:
        if block not in inputs.aligned:
            inputs.aligned[block] = align(inputs.topk_ids, inputs.w1.shape[0], block)
        return inputs.aligned[block]

    def launch(self, config: Config, inputs: MoeInputs) -> torch.Tensor:
        x, w1, w2, weights, ids, _ = inputs
        m, k = x.shape
        e, n2, _ = w1.shape
        topk = ids.shape[1]
        require_launchable(on_cpu=x.device.type == "cpu")
        al = self._aligned(inputs, config["BLOCK_SIZE_M"])
        vendor = self.vendor_of(x)
        meta = self._meta(config, vendor, str(x.dtype).removeprefix("torch."), bool(triton.knobs.runtime.interpret))
        em = _em(config, m, e, topk)
        pairs = m * topk
        # fresh buffers per launch: a config that skips tiles can never pass on an earlier one's output
        h = torch.empty((pairs, n2), device=x.device, dtype=x.dtype)
        fused_moe_kernel[_grid(config, em, n2)](
            x, w1, h, weights, al.sorted_ids, al.expert_ids, al.total, n2, k, em, pairs,
            x.stride(0), x.stride(1), w1.stride(0), w1.stride(2), w1.stride(1), h.stride(0), h.stride(1),
            MUL_ROUTED_WEIGHT=False, top_k=topk, **meta)
        a = torch.nn.functional.silu(h[:, :n2 // 2]) * h[:, n2 // 2:]
        y = torch.empty((pairs, k), device=x.device, dtype=x.dtype)
        fused_moe_kernel[_grid(config, em, k)](
            a, w2, y, weights, al.sorted_ids, al.expert_ids, al.total, k, n2 // 2, em, pairs,
            a.stride(0), a.stride(1), w2.stride(0), w2.stride(2), w2.stride(1), y.stride(0), y.stride(1),
            MUL_ROUTED_WEIGHT=True, top_k=1, **meta)
        return y.view(m, topk, k).sum(dim=1)

    def reference(self, inputs: MoeInputs) -> torch.Tensor:
        """Expert by expert in plain PyTorch, in fp32, rounding h, a and y to the dtype where the
        kernel stores them."""
        x, w1, w2, weights, ids, _ = inputs
        m, k = x.shape
        n = w2.shape[2]
        out = torch.zeros(m, k, dtype=torch.float32, device=x.device)
        for expert in range(w1.shape[0]):
            token, slot = torch.nonzero(ids == expert, as_tuple=True)
            if token.numel() == 0:
                continue
            h = (x[token].float() @ w1[expert].float().T).to(x.dtype).float()
            a = (torch.nn.functional.silu(h[:, :n]) * h[:, n:]).to(x.dtype).float()
            y = (a @ w2[expert].float().T) * weights[token, slot][:, None]
            out.index_add_(0, token, y.to(x.dtype).float())
        return out.to(x.dtype)

    # ---- what a launch compiles -----------------------------------------------------------
    def specializations(self, config: Config, key: TuningKey, target: Target) -> list[Specialization]:
        """The two launches (w1, then w2 with the routing weights), without inputs; they must agree
        with launch() argument for argument."""
        d, dtype = key.dim_map, TORCH_DTYPES[key.dtype]
        e, n, k, topk, m = (d[x] for x in self.key_names)
        meta = self._meta(config, target.vendor, key.dtype, interpreted=False)
        em, pairs, i32 = _em(config, m, e, topk), m * topk, torch.int32
        ptrs = (torch.float32, i32, i32, i32)  # routing weights, sorted ids, expert ids, padded total
        s1 = Specialization(fused_moe_kernel, (dtype, dtype, dtype, *ptrs, 2 * n, k, em, pairs, k, 1, 2 * n * k, 1,
                                               k, 2 * n, 1), {**meta, "MUL_ROUTED_WEIGHT": False, "top_k": topk},
                            _grid(config, em, 2 * n))
        # the activation is a contiguous (pairs, N) tensor of its own
        s2 = Specialization(fused_moe_kernel, (dtype, dtype, dtype, *ptrs, k, n, em, pairs, n, 1, k * n, 1,
                                               n, k, 1), {**meta, "MUL_ROUTED_WEIGHT": True, "top_k": 1},
                            _grid(config, em, k))
        return [s1, s2]

    def specialization(self, config: Config, key: TuningKey, target: Target) -> Specialization:
        # the w1 launch: what the constraint check builds (both launches share the tile; w2's
        # only adds the routing weight's load and multiply)
        return self.specializations(config, key, target)[0]

    def compile(self, config: Config, key: TuningKey, target: Target) -> str | None:
        if target.is_interpreter:
            return None
        identities = []
        for spec in self.specializations(config, key, target):
            kernel = spec.fn.warmup(*spec.args, grid=spec.grid, **spec.kwargs)
            kernel._init_handles()
            identities.append(compiled_identity(kernel, grid=spec.grid))
        return ",".join(identities)

    def flops(self, key: TuningKey) -> float:
        d = key.dim_map
        return 6.0 * d["M"] * d["topk"] * d["N"] * d["K"]

    def bytes_moved(self, key: TuningKey) -> float:
        d = key.dim_map
        e, n, k, topk, m = (d[x] for x in self.key_names)
        # x, the weights (2N x K and K x N) of the experts the tokens are routed to (at most
        # M x topk of them), the output
        return float((2 * m * k + min(e, m * topk) * 3 * n * k) * DTYPE_BYTES[key.dtype])

    def trial_bytes(self, key: TuningKey, input_sets: int = 1) -> int:
        d, es = key.dim_map, DTYPE_BYTES[key.dtype]
        e, n, k, topk, m = (d[x] for x in self.key_names)
        pairs = m * topk
        ins = m * k + 3 * e * n * k
        # the input sets; h, a, y and the output; the reference's fp32 copy of one expert's
        # weights and of x, its output and the check's fp32 copies
        return (ins * es * input_sets + (pairs * (3 * n + k) + m * k) * es
                + (3 * n * k + m * k) * 4 + 3 * m * k * 4)
