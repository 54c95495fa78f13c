"""A user's kernel outside the package: y = a * x + b, found through TUNER_KERNEL_MODULES or an
entry point in the group ``tuner.kernels``.

Nothing is compiled at import; like the built-in kernels it needs TRITON_INTERPRET=1 set before
triton is imported to run on CPU tensors.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from keys import Config, TuningKey
from devices.targets import Target
from search_spaces.base import KernelSpec, block_limit, require_launchable

TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@triton.jit
def _axpy_kernel(x_ptr, b_ptr, y_ptr, a, N, BLOCK_SIZE: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < N
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask).to(tl.float32)
    tl.store(y_ptr + offs, (a * x + b).to(y_ptr.dtype.element_ty), mask=mask)


class AxpyInputs(NamedTuple):
    a: float
    x: torch.Tensor
    b: torch.Tensor


class ExtAxpy(KernelSpec):
    name = "ext_axpy"
    key_names = ("N",)
    dtypes = ("float16", "float32")

    def space(self, target: Target) -> dict[str, tuple]:
        return {"BLOCK_SIZE": (256, 1024, 4096), "num_warps": (1, 2, 4)}

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        reason = self.check_space(config, target)
        if reason:
            return reason
        limit = block_limit(self.space(target)["BLOCK_SIZE"], key.dim_map["N"])
        if config["BLOCK_SIZE"] > limit:
            return f"block larger than the problem: BLOCK_SIZE={config['BLOCK_SIZE']} > {limit}"
        return None

    def default(self, key: TuningKey, target: Target) -> Config:
        return {"BLOCK_SIZE": min(1024, block_limit(self.space(target)["BLOCK_SIZE"], key.dim_map["N"])),
                "num_warps": 4}

    def make_inputs(self, key: TuningKey, device: str, seed: int) -> AxpyInputs:
        gen = torch.Generator().manual_seed(seed)
        n, dtype = key.dim_map["N"], TORCH_DTYPES[key.dtype]
        x, b = torch.randn(2, n, generator=gen).to(device=device, dtype=dtype)
        return AxpyInputs(1.5, x, b)

    def launch(self, config: Config, inputs: AxpyInputs) -> torch.Tensor:
        a, x, b = inputs
        require_launchable(on_cpu=x.device.type == "cpu")
        y = torch.empty_like(x)
        grid = (triton.cdiv(x.numel(), config["BLOCK_SIZE"]),)
        _axpy_kernel[grid](
            x, b, y, a, x.numel(), BLOCK_SIZE=config["BLOCK_SIZE"], num_warps=config["num_warps"])
        return y

    def reference(self, inputs: AxpyInputs) -> torch.Tensor:
        a, x, b = inputs
        return (a * x.float() + b.float()).to(x.dtype)

    def flops(self, key: TuningKey) -> float:
        return 2.0 * key.dim_map["N"]
