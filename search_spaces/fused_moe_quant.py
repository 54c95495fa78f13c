"""The fused MoE layer with quantized expert weights, as vLLM serves fp8 and int8 checkpoints
(vllm/model_executor/layers/fused_moe/fused_moe.py, fused_moe_kernel with use_fp8_w8a8 /
use_int8_w8a16 and group_n/group_k; invoke_fused_moe_kernel launches it).

The key's dtype names the scheme (fused_moe_vllm.SCHEMES), the activations being bfloat16:
  fp8_w8a8          fp8 e4m3 weights with one scale per expert, activations quantized to fp8 with
                    one scale per tensor (dynamic: max |x| / fp8 max) before each GEMM
  fp8_w8a8_block128 fp8 weights with a scale per 128x128 block (DeepSeek-V3's and Kimi-K2's
                    checkpoints, `weight_block_size` [128, 128]), activations quantized per token
                    and group of 128 along K (vLLM's per_token_group_quant_fp8); the kernel scales
                    each K tile's product by its token's and its weight block's scales
  int8_w8a16        int8 weights with a scale per output channel, bf16 activations; the weights
                    are widened in the loop and the scale applied after it
The configuration is the unquantized kernel's (vLLM names and files it the same way), so the space,
the limits and the alignment are FusedMoe's. vLLM clamps BLOCK_SIZE_K to the scale block for
block-wise weights (invoke_fused_moe_kernel: `min(BLOCK_SIZE_K, min(block_shape))`): a larger
BLOCK_SIZE_K is the same launch as 128, and `check` says so rather than measuring it twice.

The reference dequantizes the weights and the quantized activations to fp32 and runs the
unquantized per-expert computation, so what the kernel must get right is the scales' indexing.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import triton
import triton.language as tl

from search_spaces import fused_moe_vllm as vllm_data
from search_spaces.fused_moe_vllm import SCHEMES, Scheme
from keys import Config, SpecError, TuningKey
from devices import vendors
from devices.targets import Target
from search_spaces.base import LazyTorch, Specialization, require_launchable
from search_spaces.fused_moe import FusedMoe, _em, _grid, align, draw, grouped_block
from search_spaces.gemm import AMD_ACC_LIMIT, REGISTERS, mma_path, tile_refusal

torch = LazyTorch(globals())

COMPUTE = "bfloat16"  # the activations' dtype: what vLLM serves these checkpoints in


# fp8 e4m3's largest finite value: OCP e4m3fn (NVIDIA) and the fnuz variant gfx942 computes in;
# vLLM quantizes to 224 on fnuz (fp8_utils.py) to keep headroom, and so do we
FP8_MAX = {"float8_e4m3fn": 448.0, "float8_e4m3fnuz": 224.0}
INT8_MAX = 127.0
GROUP_EPS = 1e-10  # vLLM's per_token_group_quant_fp8 eps: an all-zero group gets a tiny scale, not 0


@triton.jit
def fused_moe_quant_kernel(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, topk_weights_ptr, sorted_token_ids_ptr,
                           expert_ids_ptr, num_tokens_post_padded_ptr, N, K, EM, num_valid_tokens, stride_am,
                           stride_ak, stride_be, stride_bk, stride_bn, stride_cm, stride_cn, stride_asm, stride_ask,
                           stride_bse, stride_bsk, stride_bsn, GROUP_N: tl.constexpr, GROUP_K: tl.constexpr,
                           BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
                           GROUP_SIZE_M: tl.constexpr, MUL_ROUTED_WEIGHT: tl.constexpr, top_k: tl.constexpr,
                           W8A8: tl.constexpr, DOT_TYPE: tl.constexpr):
    """C[pair] = dequant(A[pair // top_k] @ B[expert].T) for BLOCK_SIZE_M sorted pairs of one expert.
    W8A8: A and B fp8, scaled per tensor and per expert (GROUP_K == 0) or per token group and
    weight block (GROUP_N, GROUP_K); else B int8 with a scale per output channel, A in DOT_TYPE."""
    pid_m, pid_n = grouped_block(EM, N, BLOCK_SIZE_M, BLOCK_SIZE_N, GROUP_SIZE_M)
    if pid_m * BLOCK_SIZE_M >= tl.load(num_tokens_post_padded_ptr):
        return
    rows = tl.load(sorted_token_ids_ptr + pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M).to(tl.int64))
    row_ok = rows < num_valid_tokens
    tokens = rows // top_k
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N).to(tl.int64)) % N
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + tokens[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    if GROUP_K > 0:
        a_scale_ptrs = a_scale_ptr + tokens * stride_asm
        b_scale_ptrs = b_scale_ptr + expert * stride_bse + (offs_n // GROUP_N) * stride_bsn
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_left = K - k * BLOCK_SIZE_K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if W8A8:
            if GROUP_K > 0:
                # BLOCK_SIZE_K divides GROUP_K (check), so a K tile lies in one scale group
                group = (k * BLOCK_SIZE_K) // GROUP_K
                a_s = tl.load(a_scale_ptrs + group * stride_ask, mask=row_ok, other=0.0)
                b_s = tl.load(b_scale_ptrs + group * stride_bsk)
                acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
            else:
                acc = tl.dot(a, b, acc)
        else:
            # DOT_TYPE is bf16 but on the interpreter, whose tl.dot multiplies bf16 bit patterns
            # (triton#11584): there fp32, in which bf16 and int8 products are exact
            acc = tl.dot(a.to(DOT_TYPE), b.to(DOT_TYPE), acc)
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk
    if MUL_ROUTED_WEIGHT:
        acc = acc * tl.load(topk_weights_ptr + rows, mask=row_ok, other=0.0)[:, None]
    if not W8A8:
        acc = acc * tl.load(b_scale_ptr + expert * stride_bse + offs_n * stride_bsn)[None, :]
    elif GROUP_K == 0:
        acc = acc * tl.load(a_scale_ptr) * tl.load(b_scale_ptr + expert * stride_bse)
    offs_cn = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    c_ptrs = c_ptr + rows[:, None] * stride_cm + offs_cn[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_cn[None, :] < N))


class Quantized(NamedTuple):
    """A tensor and its scales: per tensor (shape (1,)), per expert (E,), per output channel (E, N),
    per token group (M, K/g) or per weight block (E, N/bn, K/bk)."""
    q: torch.Tensor
    scale: torch.Tensor


class QuantInputs(NamedTuple):
    x: torch.Tensor  # (M, K) bf16
    w1: Quantized  # (E, 2N, K)
    w2: Quantized  # (E, K, N)
    topk_weights: torch.Tensor
    topk_ids: torch.Tensor
    scheme: str
    aligned: dict


def fp8_dtype(vendor: str):
    """The fp8 type the vendor's devices compute in (devices/vendors.py's fact: e4m3fnuz on AMD's
    gfx942, e4m3fn on NVIDIA's and in the interpreter)."""
    return getattr(torch, vendors.get(vendor).fp8)


def quantize_groups(x: torch.Tensor, group: int, dtype) -> Quantized:
    """vLLM's per_token_group_quant_fp8 (quantization/utils/fp8_utils.py): per row and group of
    `group` columns, scale = max(|x|, eps) / fp8 max, q = clamp(x / scale) in fp8."""
    m, k = x.shape
    top = FP8_MAX[str(dtype).removeprefix("torch.")]
    groups = x.float().reshape(m, k // group, group)
    scale = groups.abs().amax(dim=2).clamp(min=GROUP_EPS) / top
    q = (groups / scale[:, :, None]).clamp(-top, top).to(dtype)
    return Quantized(q.reshape(m, k), scale)


def quantize_tensor(x: torch.Tensor, dtype) -> Quantized:
    """Dynamic per-tensor fp8 (vLLM's scaled_fp8_quant without a scale): one scale, max |x| / fp8 max."""
    top = FP8_MAX[str(dtype).removeprefix("torch.")]
    scale = (x.float().abs().amax().clamp(min=GROUP_EPS) / top).reshape(1)
    return Quantized((x.float() / scale).clamp(-top, top).to(dtype), scale)


def quantize_weights(w: torch.Tensor, scheme: Scheme, dtype) -> Quantized:
    """(E, rows, cols) fp32 weights in the checkpoint's form: fp8 with a scale per expert or per
    block, or int8 with a scale per output row (symmetric, round to nearest)."""
    e, rows, cols = w.shape
    if scheme.weight == "int8":
        scale = w.abs().amax(dim=2).clamp(min=GROUP_EPS) / INT8_MAX
        return Quantized(torch.round(w / scale[:, :, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale)
    top = FP8_MAX[str(dtype).removeprefix("torch.")]
    if scheme.block is None:
        scale = w.abs().amax(dim=(1, 2)).clamp(min=GROUP_EPS) / top
        return Quantized((w / scale[:, None, None]).clamp(-top, top).to(dtype), scale)
    bn, bk = scheme.block
    nb, kb = -(-rows // bn), -(-cols // bk)
    padded = torch.nn.functional.pad(w, (0, kb * bk - cols, 0, nb * bn - rows))
    blocks = padded.reshape(e, nb, bn, kb, bk)
    scale = blocks.abs().amax(dim=(2, 4)).clamp(min=GROUP_EPS) / top
    q = (blocks / scale[:, :, None, :, None]).clamp(-top, top).to(dtype)
    return Quantized(q.reshape(e, nb * bn, kb * bk)[:, :rows, :cols].contiguous(), scale)


def dequantize_weights(w: Quantized, scheme: Scheme) -> torch.Tensor:
    e, rows, cols = w.q.shape
    if scheme.weight == "int8":
        return w.q.float() * w.scale[:, :, None]
    if scheme.block is None:
        return w.q.float() * w.scale[:, None, None]
    bn, bk = scheme.block
    full = w.scale.repeat_interleave(bn, dim=1).repeat_interleave(bk, dim=2)
    return w.q.float() * full[:, :rows, :cols]


class FusedMoeQuant(FusedMoe):
    name = "fused_moe_quant"

    dtypes = tuple(SCHEMES)
    tiny_shape = ({"E": 4, "N": 256, "K": 256, "topk": 2, "M": 2}, "fp8_w8a8_block128")  # one 128 block a side
    # outputs ~N(0, 0.3); the kernel and the reference quantize the same activations, so what
    # differs is fp32 summation order, one bf16 ulp of h where the two round it differently, and
    # the fp8 step that ulp may move an activation across: up to max|a| / 14 per tensor, ~0.03
    # in the output per flip, two flips in a row seen
    tolerances = {"fp8_w8a8": (1e-1, 5e-2), "fp8_w8a8_block128": (1e-1, 5e-2), "int8_w8a16": (3e-2, 2e-2)}

    def make_key(self, dims, dtype: str) -> TuningKey:
        key = super().make_key(dims, dtype)
        block, d = SCHEMES[key.dtype].block, key.dim_map
        if block and (d["K"] % block[1] or d["N"] % block[0]):
            # vLLM's per_token_group_quant_fp8 asserts the groups tile the row; its Fp8MoEMethod the blocks N
            raise SpecError(f"{key.dtype} needs K and N multiples of {block[1]} (its weight blocks and activation "
                            f"groups), got K={d['K']}, N={d['N']}")
        return key

    def space(self, target: Target) -> dict[str, tuple]:
        if target.is_hip:
            # vLLM's ROCm grid for 8-bit weights (get_rocm_tuning_space(use_fp16=False)): no
            # BLOCK_SIZE_K 16, no matrix_instr_nonkdim or kpack
            grid = vllm_data.tuning_grid(amd=True)
            grid["BLOCK_SIZE_K"] = tuple(v for v in grid["BLOCK_SIZE_K"] if v != 16)
            return {p: v for p, v in grid.items() if p not in ("matrix_instr_nonkdim", "kpack")}
        return super().space(target)

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        block = SCHEMES[key.dtype].block
        if block and not self.check_space(config, target) and block[1] % config["BLOCK_SIZE_K"]:
            return (f"BLOCK_SIZE_K={config['BLOCK_SIZE_K']} spans {block[1]}-wide scale groups: vLLM launches it "
                    f"as {block[1]} (invoke_fused_moe_kernel clamps it), so it is that configuration")
        return super().check(config, key, target)

    def _check_resources(self, config: Config, key: TuningKey, target: Target) -> str | None:
        """The tile by the shared tl.dot model with the operands' own widths (fp8 A and B of a byte;
        w8a16's int8 B is widened to bf16 before the dot, so two bytes like A), then what the
        quantized loop adds, fitted to Triton 3.6's sm_90 and gfx942 builds of DeepSeek-V3's layer
        (bench/results/constraints-fused_moe_quant*.md): the block-wise loop keeps each K tile's
        product beside the accumulator to scale it, which on wgmma spills past 64 accumulators a
        thread (half the unscaled limit); on gfx942 fp8 tiles spill at 256 accumulators a lane,
        where 16-bit ones fit. Then the warps this kernel prunes on AMD."""
        bm, bn, bk, warps = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"], config["num_warps"]
        scheme = SCHEMES[key.dtype]
        path = mma_path(config, target, block_m="BLOCK_SIZE_M")
        reason = tile_refusal(bm, bn, bk, warps, config["num_stages"], config.get("waves_per_eu", 0), key, target, path,
                              elem=1 if scheme.act_quant else 2)
        if reason:
            return reason
        acc = bm * bn / (warps * target.warp_size)
        limit = (REGISTERS["wgmma"][2] // 2 if scheme.block and path == "wgmma" else
                 AMD_ACC_LIMIT // 2 if scheme.act_quant and path == "mfma" else None)
        if limit is not None and acc > limit:
            why = "the scaled product beside the accumulator" if path == "wgmma" else "fp8 MFMA tiles"
            return (f"registers: a {bm}x{bn} tile over {warps} warps keeps {acc:.0f} accumulators a thread > {limit} "
                    f"for {why}; it would spill")
        if target.is_hip and bm * bn < warps * 256 and warps > 4:
            return f"warps vs tile: {warps} wavefronts for a {bm}x{bn} tile leave some without a 16x16 tile"
        return None

    def default(self, key: TuningKey, target: Target) -> Config:
        """vLLM's get_default_config: for block-wise fp8 a 64-row tile of the scale block's width and
        depth in groups of 32, 4 warps, 3 stages (2 on ROCm); otherwise the unquantized default
        (whose AMD knobs this space lacks: FusedMoe's repair takes the nearest valid point)."""
        block = SCHEMES[key.dtype].block
        if block is None:
            return super().default(key, target)
        want = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": block[0], "BLOCK_SIZE_K": block[1], "GROUP_SIZE_M": 32,
                "num_warps": 4, "num_stages": 2 if target.is_hip else 3}
        if target.is_hip:
            want["waves_per_eu"] = 0
        return want if self.check(want, key, target) is None else self.nearest_valid(want, key, target)

    # ---- running --------------------------------------------------------------------
    def _meta(self, config: Config, vendor: str, dtype: str, interpreted: bool) -> dict[str, Any]:
        args, options = self.split_config(config, vendor)
        scheme = SCHEMES[dtype]
        if scheme.block:
            args["BLOCK_SIZE_K"] = min(args["BLOCK_SIZE_K"], *scheme.block)  # as vLLM launches it
        group_n, group_k = scheme.block or (0, 0)
        dot = "float32" if interpreted else COMPUTE
        return {**args, "GROUP_N": group_n, "GROUP_K": group_k, "W8A8": scheme.act_quant,
                "DOT_TYPE": getattr(tl, dot), **options}

    def make_inputs(self, key: TuningKey, device: str, seed: int, routing: str = "uniform") -> QuantInputs:
        scheme = SCHEMES[key.dtype]
        x, w1, w2, ids, weights = draw(key, seed, routing)
        f8 = fp8_dtype(self.vendor_of(device))
        q1, q2 = quantize_weights(w1, scheme, f8), quantize_weights(w2, scheme, f8)
        on = lambda w: Quantized(w.q.to(device), w.scale.to(device))  # noqa: E731
        return QuantInputs(x.to(device=device, dtype=getattr(torch, COMPUTE)), on(q1), on(q2), weights.to(device),
                           ids.to(device), key.dtype, {})

    def _quantize_act(self, x: torch.Tensor, scheme: Scheme, f8) -> Quantized:
        if not scheme.act_quant:
            return Quantized(x, x.new_ones(1, dtype=torch.float32))
        return quantize_groups(x, scheme.block[1], f8) if scheme.block else quantize_tensor(x, f8)

    def _gemm(self, config: Config, meta: dict, a: Quantized, w: Quantized, out: torch.Tensor, inputs: QuantInputs,
              em: int, mul: bool, top_k: int) -> None:
        al = self._aligned(inputs, config["BLOCK_SIZE_M"])
        wq, ws = w.q, w.scale
        n, k = wq.shape[1], wq.shape[2]
        a_s2 = a.scale.dim() == 2
        ws3 = ws.dim() == 3
        fused_moe_quant_kernel[_grid(config, em, n)](
            a.q, wq, out, a.scale, ws, inputs.topk_weights, al.sorted_ids, al.expert_ids, al.total, n, k, em,
            inputs.topk_ids.numel(), a.q.stride(0), a.q.stride(1), wq.stride(0), wq.stride(2), wq.stride(1),
            out.stride(0), out.stride(1), a.scale.stride(0) if a_s2 else 0, a.scale.stride(1) if a_s2 else 0,
            ws.stride(0), ws.stride(2) if ws3 else 0, ws.stride(1) if ws.dim() >= 2 else 0,
            MUL_ROUTED_WEIGHT=mul, top_k=top_k, **meta)

    def _aligned(self, inputs, block: int):
        if block not in inputs.aligned:
            inputs.aligned[block] = align(inputs.topk_ids, inputs.w1.q.shape[0], block)
        return inputs.aligned[block]

    def launch(self, config: Config, inputs: QuantInputs) -> torch.Tensor:
        x, w1, w2, weights, ids, dtype, _ = inputs
        m, k = x.shape
        e, n2, _ = w1.q.shape
        topk = ids.shape[1]
        require_launchable(on_cpu=x.device.type == "cpu")
        vendor = self.vendor_of(x)
        scheme, f8 = SCHEMES[dtype], fp8_dtype(vendor)
        meta = self._meta(config, vendor, dtype, bool(triton.knobs.runtime.interpret))
        em, pairs = _em(config, m, e, topk), m * topk
        # the activations' quantization is vLLM's separate op before each GEMM, timed with the layer
        h = torch.empty((pairs, n2), device=x.device, dtype=x.dtype)
        self._gemm(config, meta, self._quantize_act(x, scheme, f8), w1, h, inputs, em, False, topk)
        a = torch.nn.functional.silu(h[:, :n2 // 2]) * h[:, n2 // 2:]
        y = torch.empty((pairs, k), device=x.device, dtype=x.dtype)
        self._gemm(config, meta, self._quantize_act(a, scheme, f8), w2, y, inputs, em, True, 1)
        return y.view(m, topk, k).sum(dim=1)

    def reference(self, inputs: QuantInputs) -> torch.Tensor:
        """Weights and quantized activations dequantized to fp32, then the unquantized layer expert
        by expert, rounding h, a and y to bf16 where the kernel stores them."""
        x, w1, w2, weights, ids, dtype, _ = inputs
        scheme, f8 = SCHEMES[dtype], fp8_dtype(self.vendor_of(x))
        m, k = x.shape
        n = w2.q.shape[2]
        d1, d2 = dequantize_weights(w1, scheme), dequantize_weights(w2, scheme)

        def act(t: torch.Tensor) -> torch.Tensor:  # what the kernel's A holds, in fp32
            if not scheme.act_quant:
                return t.float()
            q = self._quantize_act(t, scheme, f8)
            if scheme.block is None:
                return q.q.float() * q.scale
            return q.q.float() * q.scale.repeat_interleave(scheme.block[1], dim=1)[:, :t.shape[1]]

        xs = act(x)
        out = torch.zeros(m, k, dtype=torch.float32, device=x.device)
        h = torch.zeros(m, ids.shape[1], 2 * n, dtype=torch.float32, device=x.device)
        for expert in range(d1.shape[0]):
            token, slot = torch.nonzero(ids == expert, as_tuple=True)
            if token.numel():
                h[token, slot] = (xs[token] @ d1[expert].T).to(x.dtype).float()
        h = h.reshape(-1, 2 * n).to(x.dtype)
        # the activation as launch() computes it, in bf16 (fp8 amplifies its rounding: one bf16 ulp
        # moves a value across an fp8 step one time in ~30), quantized over all pairs at once
        a = act(torch.nn.functional.silu(h[:, :n]) * h[:, n:]).reshape(m, ids.shape[1], n)
        for expert in range(d1.shape[0]):
            token, slot = torch.nonzero(ids == expert, as_tuple=True)
            if token.numel():
                y = (a[token, slot] @ d2[expert].T) * weights[token, slot][:, None]
                out.index_add_(0, token, y.to(x.dtype).float())
        return out.to(x.dtype)

    # ---- what a launch compiles -----------------------------------------------------------
    def specializations(self, config: Config, key: TuningKey, target: Target) -> list[Specialization]:
        d, scheme = key.dim_map, SCHEMES[key.dtype]
        e, n, k, topk, m = (d[x] for x in self.key_names)
        meta = self._meta(config, target.vendor, key.dtype, interpreted=False)
        em, pairs, i32, f32 = _em(config, m, e, topk), m * topk, torch.int32, torch.float32
        bf = getattr(torch, COMPUTE)
        act = fp8_dtype(target.vendor) if scheme.act_quant else bf
        weight = torch.int8 if scheme.weight == "int8" else fp8_dtype(target.vendor)
        specs = []
        for rows, cols, mul, tk in ((2 * n, k, False, topk), (k, n, True, 1)):
            groups = -(-cols // scheme.block[1]) if scheme.block else 0
            nb = -(-rows // scheme.block[0]) if scheme.block else 0
            # scale strides as launch() passes them: (M, K/g) activations; (E,), (E, N) or (E, N/bn, K/bk) weights
            a_strides = (groups, 1) if scheme.block else (0, 0)
            w_strides = ((nb * groups, 1, groups) if scheme.block else (1, 0, 0) if scheme.act_quant
                         else (rows, 0, 1))
            args = (act, weight, bf, f32, f32, f32, i32, i32, i32, rows, cols, em, pairs, cols, 1, rows * cols, 1,
                    cols, rows, 1, *a_strides, *w_strides)
            specs.append(Specialization(fused_moe_quant_kernel, args, {**meta, "MUL_ROUTED_WEIGHT": mul, "top_k": tk},
                                        _grid(config, em, rows)))
        return specs

    def bytes_moved(self, key: TuningKey) -> float:
        d = key.dim_map
        e, n, k, topk, m = (d[x] for x in self.key_names)
        # bf16 x and output; one-byte weights of the experts the tokens are routed to
        return float(2 * m * k * 2 + min(e, m * topk) * 3 * n * k)

    def trial_bytes(self, key: TuningKey, input_sets: int = 1) -> int:
        d = key.dim_map
        e, n, k, topk, m = (d[x] for x in self.key_names)
        pairs = m * topk
        # one-byte weights and their scales per set; h, a, y and the output in bf16 with their
        # quantized copies; the reference's fp32 dequantized weights and copies
        return (3 * e * n * k + m * k * 2) * input_sets + (pairs * (3 * n + k) + m * k) * 3 \
            + 3 * e * n * k * 4 + (pairs * (3 * n) + 4 * m * k) * 4
