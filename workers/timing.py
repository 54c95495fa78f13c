"""Timing a launch: warm-up, repetitions until a minimum time, early stop, robust statistics."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def summarize(samples_ms: list[float]) -> tuple[float, float, float, float]:
    """(median, p20, p80, coefficient of variation) of the samples."""
    xs = sorted(samples_ms)
    n = len(xs)

    def pct(p: float) -> float:  # linear interpolation between closest ranks
        if n == 1:
            return xs[0]
        pos = p * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    mean = statistics.fmean(xs)
    cv = statistics.pstdev(xs) / mean if n > 1 and mean > 0 else 0.0
    return statistics.median(xs), pct(0.2), pct(0.8), cv


def _repeat(run_once: Callable[[], float], reps: int, min_time_s: float,
            early_stop_ms: float | None) -> tuple[list[float], bool]:
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max(1, reps) or spent < min_time_s * 1e3:
        ms = run_once()
        samples.append(ms)
        spent += ms
        if early_stop_ms is not None and len(samples) == 1 and ms > early_stop_ms:
            return samples, True  # clearly slower than the best so far: one sample says enough
        if len(samples) >= max(1, reps) * 10:
            break
    return samples, False


def time_cpu(fn: Callable[[], object], warmup: int, reps: int, min_time_s: float = 0.0,
             early_stop_ms: float | None = None) -> tuple[list[float], bool]:
    """Wall time of fn with perf_counter (the Triton interpreter runs synchronously)."""
    for _ in range(warmup):
        fn()

    def once() -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    return _repeat(once, reps, min_time_s, early_stop_ms)


_flush_buffers: dict[str, object] = {}


def time_cuda(fn: Callable[[], object], warmup: int, reps: int, min_time_s: float = 0.0,
              early_stop_ms: float | None = None, device: str = "cuda") -> tuple[list[float], bool]:
    """Device time of fn with CUDA events, L2 flushed before every repetition (not timed).

    Written to the CUDA event API as Triton's do_bench uses it; this machine has no GPU, so it
    runs only where the device tool lends one.
    """
    import torch

    if device not in _flush_buffers:  # larger than any L2 (H100: 50 MB, MI300X: 256 MB Infinity Cache)
        _flush_buffers[device] = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
    flush = _flush_buffers[device]
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()

    def once() -> float:
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return _repeat(once, reps, min_time_s, early_stop_ms)
