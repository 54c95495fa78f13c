"""A drop-in kernel with on_miss="autotune" whose local timing is counted and steered, for
tests/test_dropin_reported.py: the config whose BLOCK is FAVOUR times fastest in this process (a
launch script sets FAVOUR, so two processes would pick different winners if both timed), and
TIMED lists every configuration timed. Register it with TUNER_KERNEL_MODULES=tests.kernels.reported."""
from __future__ import annotations

import triton
import triton.language as tl

from tuner.runtime import autotune

NAME = "tests.kernels.reported.double_kernel"
FAVOUR = 64
TIMED: list[int] = []  # the BLOCK of each configuration timed, in order
_last: list[int] = []


def _note(kwargs: dict, reset_only: bool = False) -> None:  # the autotuner's pre_hook: which config runs
    if not reset_only:
        _last.append(kwargs["BLOCK"])


def bench(kernel_call, quantiles):  # as triton's do_bench answers: [median, q20, q80] in ms
    kernel_call()
    block = _last[-1]
    TIMED.append(block)
    ms = 0.5 if block == FAVOUR else 2.0
    return [ms, ms, ms]


@autotune(configs=[triton.Config({"BLOCK": b}, num_warps=1) for b in (32, 64, 128)], key=["N"],
          pre_hook=_note, do_bench=bench, on_miss="autotune")
@triton.jit
def double_kernel(x_ptr, y_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 2, mask=mask)


def double(x):
    import torch

    y = torch.empty_like(x)
    n = x.numel()
    double_kernel[lambda META: (triton.cdiv(n, META["BLOCK"]),)](x, y, n)
    return y
