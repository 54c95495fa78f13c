"""Deliberately broken registered kernels: each fails one way, to prove that a bad kernel costs
one trial with its status and never the harness. TUNER_KERNEL_MODULES=tests.kernels.broken.

Also kernels with one odd property each for the harness's batch path: a noisy one, one that
records the inputs it was given, and ones with a `compile` hook (so the compile pool can be
driven on the CPU, where real kernels have nothing to compile)."""
from __future__ import annotations

import os
import signal
import sys
import time

import torch
import triton
import triton.language as tl

from keys import Config, TuningKey, stable_hash
from devices.targets import Target
from search_spaces.base import KernelSpec


@triton.jit
def _add_kernel(x_ptr, y_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)


@triton.jit
def _bad_kernel(x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs) + undefined_name)  # noqa: F821 - meant to fail


@triton.jit
def _wild_kernel(x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    far = offs.to(tl.int64) + (1 << 40)  # 4 TiB past the input: an illegal address on a GPU
    tl.store(out_ptr + offs, tl.load(x_ptr + far), mask=offs < N)


@triton.jit
def _greedy_kernel(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * BN + rn[None, :])
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


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
        n = key.dim_map["N"]
        return torch.randn(n, generator=g).to(device), torch.randn(n, generator=g).to(device)

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
        print("about to crash", file=sys.stderr, flush=True)  # the harness reports stderr's last lines
        os.kill(os.getpid(), signal.SIGSEGV)


class BrokenExit(GoodAdd):
    name = "broken_exit"

    def launch(self, config, inputs):
        os._exit(7)


class BrokenPoison(GoodAdd):
    """Fails as torch reports an illegal memory access (reason first, then advice): the process
    that saw it must not run another trial, on the CPU as on a GPU."""
    name = "broken_poison"

    def launch(self, config, inputs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\n"
                           "CUDA kernel errors might be asynchronously reported at some other API call\n"
                           "For debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
                           "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.")


class ChattyAdd(GoodAdd):
    """Correct, and writes to stdout every way a kernel module can: none of it may reach the protocol."""
    name = "chatty_add"

    def launch(self, config, inputs):
        print("chatty: print to sys.stdout")
        sys.stdout.flush()
        os.write(1, b'{"status": "ok", "message": "forged by the kernel"}\n')
        return super().launch(config, inputs)


class BrokenIllegal(GoodAdd):
    """Reads far outside its input: an illegal memory access on a GPU (GPU tests only: the
    interpreter would read the parent's own memory)."""
    name = "broken_illegal"

    def launch(self, config, inputs):
        x, _ = inputs
        out = torch.empty_like(x)
        _wild_kernel[(triton.cdiv(x.numel(), config["BLOCK"]),)](x, out, x.numel(), BLOCK=config["BLOCK"])
        return out


class GreedyDot(GoodAdd):
    """A 256x256x128 fp16 tile pipelined over 6 stages: far more shared memory than any GPU has,
    so the real compiler's launch raises OutOfResources (GPU tests only)."""
    name = "greedy_dot"

    def make_inputs(self, key, device, seed):
        g = torch.Generator().manual_seed(seed)
        k = key.dim_map["N"]
        return (torch.randn(256, k, generator=g).half().to(device),
                torch.randn(k, 256, generator=g).half().to(device))

    def launch(self, config, inputs):
        a, b = inputs
        c = torch.empty(256, 256, dtype=torch.float32, device=a.device)
        _greedy_kernel[(1,)](a, b, c, a.shape[1], BM=256, BN=256, BK=128, num_warps=8, num_stages=6)
        return c

    def reference(self, inputs):
        return inputs[0].float() @ inputs[1].float()


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
