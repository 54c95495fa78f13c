"""A trivial kernel with a large space, for service tests and the queue benchmark: a trial costs
about as little as a real Triton launch can (one program copying 16 values), so what is timed
is the service's overhead, not the kernel.

Register with TUNER_KERNEL_MODULES=tests.kernels.trivial.
"""
from __future__ import annotations

import time

import triton
import triton.language as tl

from keys import Config, TuningKey
from devices.targets import Target
from search_spaces.base import KernelSpec, LazyTorch

torch = LazyTorch(globals())  # as the built-ins: a worker's main process never imports torch


@triton.jit
def _copy_kernel(x_ptr, y_ptr, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)


class Trivial(KernelSpec):
    name = "trivial"
    key_names = ("N",)
    dtypes = ("float32",)

    def space(self, target: Target) -> dict[str, tuple]:
        # P and Q change nothing but the measured time (a sleep of P*Q microseconds), which
        # gives the search a real optimum (P=Q=1) in a space of 4,096 points
        return {"P": tuple(range(1, 65)), "Q": tuple(range(1, 65)), "num_warps": (1,)}

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        return self.check_space(config, target)

    def default(self, key: TuningKey, target: Target) -> Config:
        return {"P": 32, "Q": 32, "num_warps": 1}

    def make_inputs(self, key: TuningKey, device: str, seed: int) -> torch.Tensor:
        return torch.arange(16, dtype=torch.float32, device=device)

    def launch(self, config: Config, x: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        _copy_kernel[(1,)](x, y, x.numel(), BLOCK=16, num_warps=config["num_warps"])
        time.sleep(config["P"] * config["Q"] * 1e-6)
        return y

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()
