"""Deliberately broken registered kernels: each fails one way, to prove that a bad kernel costs
one trial with its status and never the harness. TUNER_KERNEL_MODULES=tests.kernels.broken.

Also kernels with one odd property each for the harness's batch path: a noisy one, one that
records the inputs it was given, and ones with a `compile` hook (so the compile pool can be
driven on the CPU, where real kernels have nothing to compile)."""
from __future__ import annotations

import os
import signal
import time

from search_spaces.base import stable_hash

import torch
import triton
import triton.language as tl

from search_spaces.base import Config, KernelSpec, Target, TuningKey


@triton.jit
def _add_kernel(x_ptr, y_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)


@triton.jit
def _bad_kernel(x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs) + undefined_name)  # noqa: F821 - meant to fail


class GoodAdd(KernelSpec):
    name = "good_add"
    key_names = ("N",)
    dtypes = ("float32",)

    def space(self, target: Target) -> dict[str, tuple]:
        return {"BLOCK": (64, 128)}

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        return self.check_space(config, target)

    def default(self, key: TuningKey, target: Target) -> Config:
        return {"BLOCK": 64}

    def make_inputs(self, key: TuningKey, device: str, seed: int):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(key.dim_map["N"], generator=g), torch.randn(key.dim_map["N"], generator=g)

    def launch(self, config: Config, inputs):
        x, y = inputs
        out = torch.empty_like(x)
        _add_kernel[(triton.cdiv(x.numel(), config["BLOCK"]),)](x, y, out, x.numel(), BLOCK=config["BLOCK"])
        return out

    def reference(self, inputs):
        return inputs[0] + inputs[1]


class BrokenRaise(GoodAdd):
    name = "broken_raise"

    def launch(self, config, inputs):
        raise RuntimeError("this kernel raises on purpose")


class BrokenHang(GoodAdd):
    name = "broken_hang"

    def launch(self, config, inputs):
        while True:
            time.sleep(1)


class BrokenCrash(GoodAdd):
    name = "broken_crash"

    def launch(self, config, inputs):
        os.kill(os.getpid(), signal.SIGSEGV)


class BrokenWrong(GoodAdd):
    name = "broken_wrong"

    def launch(self, config, inputs):
        return super().launch(config, inputs) + 1.0


class BrokenCompile(GoodAdd):
    name = "broken_compile"

    def launch(self, config, inputs):
        x, _ = inputs
        out = torch.empty_like(x)
        _bad_kernel[(1,)](x, out, x.numel(), BLOCK=config["BLOCK"])
        return out


class BrokenOOR(GoodAdd):
    name = "broken_oor"

    def launch(self, config, inputs):
        from triton.runtime.errors import OutOfResources
        raise OutOfResources(300000, 232448, "shared memory")


class BrokenOORCompile(BrokenOOR):
    """Out of resources at compile time too, as a GPU kernel with too much shared memory is."""
    name = "broken_oor_compile"

    def compile(self, config, key, target):
        from triton.runtime.errors import OutOfResources
        raise OutOfResources(300000, 232448, "shared memory")


class NoisyAdd(GoodAdd):
    """Every other launch is 20x slower: a measurement with a coefficient of variation near 1."""
    name = "noisy_add"
    launches = 0

    def launch(self, config, inputs):
        NoisyAdd.launches += 1
        time.sleep(0.02 if NoisyAdd.launches % 2 else 0.001)
        return inputs[0] + inputs[1]


class SlowAdd(GoodAdd):
    """Correct, and 100 ms a launch: clearly slower than good_add."""
    name = "slow_add"

    def launch(self, config, inputs):
        time.sleep(0.1)
        return inputs[0] + inputs[1]


class SpyAdd(GoodAdd):
    """Adds in torch (no Triton) and records the address of every input it was launched on."""
    name = "spy_add"
    seen: list[int] = []

    def launch(self, config, inputs):
        SpyAdd.seen.append(inputs[0].data_ptr())
        return inputs[0] + inputs[1]


class TwinAdd(GoodAdd):
    """SKEW is not used by the kernel: configurations that differ only in it build one binary."""
    name = "twin_add"

    def space(self, target: Target) -> dict[str, tuple]:
        return {"BLOCK": (64, 128), "SKEW": (0, 1)}

    def default(self, key: TuningKey, target: Target) -> Config:
        return {"BLOCK": 64, "SKEW": 0}

    def compile(self, config, key, target):
        return stable_hash({"BLOCK": config["BLOCK"]})


class CrashCompile(TwinAdd):
    """The compiler dies (as LLVM can), the kernel itself runs fine."""
    name = "crash_compile"

    def compile(self, config, key, target):
        os.kill(os.getpid(), signal.SIGSEGV)


class HangCompile(TwinAdd):
    name = "hang_compile"

    def compile(self, config, key, target):
        while True:
            time.sleep(1)
