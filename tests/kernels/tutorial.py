"""Two kernels written as a user would write them, from the Triton tutorials: the fused softmax
(tutorial 02) and the layer-norm forward pass (tutorial 05), fp32 only. Their jit functions are
the tutorials' own; what is added is what tuner needs to tune them. Register with
TUNER_KERNEL_MODULES=tests.kernels.tutorial.

- tutorial_softmax: one row per block (BLOCK_SIZE must be the row padded to a power of two, or
  the softmax is wrong), persistent programs stepping over rows; PROGRAMS, the number of
  programs, is read by the grid only (`grid_only`), and num_stages is a constexpr of the kernel.
  Its key is M, N; the kernel's arguments are n_rows, n_cols (map them with @tuned's key).
- tutorial_layer_norm: one program per row looping over BLOCK_SIZE chunks; its kernel has N but
  no M (the grid is M), so @tuned reads the key with a function.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from keys import Config, TuningKey
from devices.targets import Target
from search_spaces.base import KernelSpec, block_limit, next_pow2, require_launchable


@triton.jit
def softmax_kernel(output_ptr, input_ptr, input_row_stride, output_row_stride, n_rows, n_cols, BLOCK_SIZE: tl.constexpr,
                   num_stages: tl.constexpr):
    # starting row of the program
    row_start = tl.program_id(0)
    row_step = tl.num_programs(0)
    for row_idx in tl.range(row_start, n_rows, row_step, num_stages=num_stages):
        # The stride represents how much we need to increase the pointer to advance 1 row
        row_start_ptr = input_ptr + row_idx * input_row_stride
        # The block size is the next power of two greater than n_cols, so we can fit each
        # row in a single block
        col_offsets = tl.arange(0, BLOCK_SIZE)
        input_ptrs = row_start_ptr + col_offsets
        # Load the row into SRAM, using a mask since BLOCK_SIZE may be > than n_cols
        mask = col_offsets < n_cols
        row = tl.load(input_ptrs, mask=mask, other=-float('inf'))
        # Subtract maximum for numerical stability
        row_minus_max = row - tl.max(row, axis=0)
        # Note that exponentiation in Triton is fast but approximate (i.e., think __expf in CUDA)
        numerator = tl.exp(row_minus_max)
        denominator = tl.sum(numerator, axis=0)
        softmax_output = numerator / denominator
        # Write back output to DRAM
        output_row_start_ptr = output_ptr + row_idx * output_row_stride
        output_ptrs = output_row_start_ptr + col_offsets
        tl.store(output_ptrs, softmax_output, mask=mask)


@triton.jit
def _layer_norm_fwd_fused(
    X,  # pointer to the input
    Y,  # pointer to the output
    W,  # pointer to the weights
    B,  # pointer to the biases
    Mean,  # pointer to the mean
    Rstd,  # pointer to the 1/std
    stride,  # how much to increase the pointer when moving by 1 row
    N,  # number of columns in X
    eps,  # epsilon to avoid division by zero
    BLOCK_SIZE: tl.constexpr,
):
    # Map the program id to the row of X and Y it should compute.
    row = tl.program_id(0)
    Y += row * stride
    X += row * stride
    # Compute mean
    mean = 0
    _mean = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
    for off in range(0, N, BLOCK_SIZE):
        cols = off + tl.arange(0, BLOCK_SIZE)
        a = tl.load(X + cols, mask=cols < N, other=0.).to(tl.float32)
        _mean += a
    mean = tl.sum(_mean, axis=0) / N
    # Compute variance
    _var = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
    for off in range(0, N, BLOCK_SIZE):
        cols = off + tl.arange(0, BLOCK_SIZE)
        x = tl.load(X + cols, mask=cols < N, other=0.).to(tl.float32)
        x = tl.where(cols < N, x - mean, 0.)
        _var += x * x
    var = tl.sum(_var, axis=0) / N
    rstd = 1 / tl.sqrt(var + eps)
    # Write mean / rstd
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)
    # Normalize and apply linear transformation
    for off in range(0, N, BLOCK_SIZE):
        cols = off + tl.arange(0, BLOCK_SIZE)
        mask = cols < N
        w = tl.load(W + cols, mask=mask)
        b = tl.load(B + cols, mask=mask)
        x = tl.load(X + cols, mask=mask, other=0.).to(tl.float32)
        x_hat = (x - mean) * rstd
        y = x_hat * w + b
        # Write output
        tl.store(Y + cols, y, mask=mask)


def _warps(target: Target) -> tuple[int, ...]:
    return (1, 4) if target.is_interpreter else tuple(w for w in (1, 2, 4, 8, 16) if w * target.warp_size <= 1024)


class SoftmaxTutorial(KernelSpec):
    name = "tutorial_softmax"
    key_names = ("M", "N")
    dtypes = ("float32",)
    grid_only = frozenset({"PROGRAMS"})
    tolerances = {"float32": (1e-5, 1e-4)}

    def space(self, target: Target) -> dict[str, tuple]:
        if target.is_interpreter:
            return {"BLOCK_SIZE": tuple(1 << p for p in range(4, 13)), "num_warps": (1, 4), "num_stages": (1, 2),
                    "PROGRAMS": (1, 4, 16, 64)}
        return {"BLOCK_SIZE": tuple(1 << p for p in range(4, 16)), "num_warps": _warps(target),
                "num_stages": (1, 2, 3, 4), "PROGRAMS": (32, 64, 128, 256, 512, 1024, 2048)}

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        reason = self.check_space(config, target)
        if reason:
            return reason
        m, n = key.dim_map["M"], key.dim_map["N"]
        if config["BLOCK_SIZE"] != next_pow2(n):
            # one block holds a whole row: a narrower one computes the softmax of part of it
            return f"BLOCK_SIZE={config['BLOCK_SIZE']} must be N={n} padded to a power of two ({next_pow2(n)})"
        limit = block_limit(self.space(target)["PROGRAMS"], m)
        if config["PROGRAMS"] > limit:
            return f"more programs than rows: PROGRAMS={config['PROGRAMS']} > {limit}, which covers M={m}"
        if not target.is_interpreter and config["BLOCK_SIZE"] // (config["num_warps"] * target.warp_size) > 128:
            return "registers: more than 128 values a thread"
        return None

    def default(self, key: TuningKey, target: Target) -> Config:
        # the tutorial's choice: 8 warps, 4 stages where shared memory is large, 2 elsewhere
        space = self.space(target)
        want = {"BLOCK_SIZE": next_pow2(key.dim_map["N"]), "num_warps": 4 if target.is_interpreter else 8,
                "num_stages": 1 if target.is_interpreter else (4 if target.smem_bytes > 200000 else 2),
                "PROGRAMS": block_limit(space["PROGRAMS"], key.dim_map["M"])}
        return want if self.check(want, key, target) is None else self.nearest_valid(want, key, target)

    def make_inputs(self, key: TuningKey, device: str, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return (torch.randn(key.dim_map["M"], key.dim_map["N"], generator=gen) * 3).to(device)

    def launch(self, config: Config, x: torch.Tensor) -> torch.Tensor:
        require_launchable(on_cpu=x.device.type == "cpu")
        n_rows, n_cols = x.shape
        y = torch.empty_like(x)
        args, options = self.split_config(config, self.vendor_of(x))
        softmax_kernel[(min(config["PROGRAMS"], n_rows), 1, 1)](y, x, x.stride(0), y.stride(0), n_rows, n_cols,
                                                                 **args, **options)
        return y

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1)


class LayerNormInputs(NamedTuple):
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor


class LayerNormTutorial(KernelSpec):
    name = "tutorial_layer_norm"
    key_names = ("M", "N")
    dtypes = ("float32",)
    tolerances = {"float32": (1e-4, 1e-4)}
    eps = 1e-5

    def space(self, target: Target) -> dict[str, tuple]:
        if target.is_interpreter:
            return {"BLOCK_SIZE": (64, 256, 1024, 4096), "num_warps": (1, 4)}
        return {"BLOCK_SIZE": tuple(1 << p for p in range(7, 15)), "num_warps": _warps(target)}

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        reason = self.check_space(config, target)
        if reason:
            return reason
        limit = block_limit(self.space(target)["BLOCK_SIZE"], key.dim_map["N"])
        if config["BLOCK_SIZE"] > limit:
            return f"block larger than the row: BLOCK_SIZE={config['BLOCK_SIZE']} > {limit}"
        return None

    def default(self, key: TuningKey, target: Target) -> Config:
        # the tutorial's: the row in one block (at most 64 KB), a warp per 256 values, 1 to 8
        block = min(65536 // 4, next_pow2(key.dim_map["N"]))
        want = {"BLOCK_SIZE": block, "num_warps": min(max(block // 256, 1), 8)}
        return want if self.check(want, key, target) is None else self.nearest_valid(want, key, target)

    def make_inputs(self, key: TuningKey, device: str, seed: int) -> LayerNormInputs:
        gen = torch.Generator().manual_seed(seed)
        m, n = key.dim_map["M"], key.dim_map["N"]
        x, w, b = torch.randn(m, n, generator=gen), torch.rand(n, generator=gen), torch.rand(n, generator=gen)
        return LayerNormInputs(x.to(device), w.to(device), b.to(device))

    def launch(self, config: Config, inputs: LayerNormInputs) -> torch.Tensor:
        x, weight, bias = inputs
        require_launchable(on_cpu=x.device.type == "cpu")
        y = torch.empty_like(x)
        m, n = x.shape
        mean = torch.empty((m, ), dtype=torch.float32, device=x.device)
        rstd = torch.empty((m, ), dtype=torch.float32, device=x.device)
        args, options = self.split_config(config, self.vendor_of(x))
        _layer_norm_fwd_fused[(m, )](x, y, weight, bias, mean, rstd, x.stride(0), n, self.eps, **args, **options)
        return y

    def reference(self, inputs: LayerNormInputs) -> torch.Tensor:
        x, weight, bias = inputs
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, self.eps)
