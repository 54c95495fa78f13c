"""A kernel that reports the tile each of its programs ran with, so a test can check a launch's
tiles against the grid it was launched on. Register with TUNER_KERNEL_MODULES=tests.kernels.tiles."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from keys import Config, TuningKey
from devices.targets import Target
from search_spaces.base import KernelSpec


@triton.jit
def tile_kernel(out_ptr, seen_ptr, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, offs, mask=offs < N)
    tl.store(seen_ptr + pid, BLOCK)


class Tiles(KernelSpec):
    name = "tiles"
    key_names = ("N",)
    dtypes = ("float32",)

    def space(self, target: Target) -> dict[str, tuple]:
        return {"BLOCK": (16, 32, 64, 128), "num_warps": (1, 4)}

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        return self.check_space(config, target)

    def default(self, key: TuningKey, target: Target) -> Config:
        return {"BLOCK": 16, "num_warps": 1}

    def make_inputs(self, key: TuningKey, device: str, seed: int) -> int:
        return key.dim_map["N"]

    def launch(self, config: Config, n: int) -> torch.Tensor:
        out, seen = torch.full((n,), -1, dtype=torch.int64), torch.zeros(triton.cdiv(n, 16), dtype=torch.int64)
        tile_kernel[(triton.cdiv(n, config["BLOCK"]),)](out, seen, n, BLOCK=config["BLOCK"])
        return out

    def reference(self, n: int) -> torch.Tensor:
        return torch.arange(n)
