"""Triton's own autotuner tests (python/test/unit/runtime/test_autotuner.py in triton-lang/triton)
that apply to @autotune, run on the interpreter with on_miss="autotune" (the path that times the
list as Triton does), and prune_configs_by with Triton's meaning on every path (a miss, a stored
row, a prune that keeps nothing)."""
import time

import pytest
import torch
import triton
import triton.language as tl

from tests.test_dropin import served  # noqa: F401
from tests.test_runtime import _entry, _key, _live_fp, live_env  # noqa: F401
from tuner.runtime import autotune


# ---- Triton's autotuner tests (python/test/unit/runtime/test_autotuner.py), on the interpreter ----

def cpu_bench(kernel_call, quantiles):
    t = time.perf_counter()
    kernel_call()
    return [time.perf_counter() - t] * 3


def test_kwargs(served):  # test_autotuner.py::test_kwargs: keys from positional or keyword arguments
    served()
    M, N = 1024, 16
    src, dst = torch.randn(M * N), torch.empty(M * N)
    configs = [triton.Config(kwargs={'BLOCK_SIZE_M': 32}), triton.Config(kwargs={'BLOCK_SIZE_M': 128})]
    benched = []

    @autotune(configs=configs, key=["M"], do_bench=lambda k, quantiles: benched.append(1) or cpu_bench(k, quantiles),
              on_miss="autotune")
    @triton.jit
    def _kernel(dst, src, stride_m: tl.constexpr, M, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_M: tl.constexpr):
        offsets_m = tl.program_id(0) * stride_m + tl.arange(0, BLOCK_SIZE_M)
        offsets_n = tl.arange(0, BLOCK_SIZE_N)
        x = tl.load(src + offsets_m[:, None] * BLOCK_SIZE_N + offsets_n[None, :])
        tl.store(dst + offsets_m[:, None] * BLOCK_SIZE_N + offsets_n[None, :], x)

    grid = lambda META: (triton.cdiv(N, META['BLOCK_SIZE_M']), )
    _kernel[grid](dst, src, N, M, N)
    _kernel[grid](dst=dst, src=src, M=M // 2, stride_m=N, BLOCK_SIZE_N=N)
    assert len(_kernel.cache) == 2 and len(benched) == 4
    _kernel[grid](dst, src, N, M, N)  # timed once per key per process
    assert len(benched) == 4 and _kernel.best_config in configs


@pytest.mark.parametrize('pass_kwargs_to_kernel', [False, True])
def test_restore(served, pass_kwargs_to_kernel):  # test_autotuner.py::test_restore
    served()
    N = 1024
    src = torch.zeros(N)
    configs = [triton.Config(kwargs={'BLOCK_SIZE': 32}), triton.Config(kwargs={'BLOCK_SIZE': 128})]

    @autotune(configs=configs, key=['N'], restore_value=['src'], do_bench=cpu_bench, on_miss="autotune")
    @triton.jit
    def _kernel(src, N, BLOCK_SIZE: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        x = tl.load(src + offsets, mask=offsets < N) + 1
        tl.store(src + offsets, x, mask=offsets < N)

    grid = lambda META: (triton.cdiv(N, META['BLOCK_SIZE']), )
    if pass_kwargs_to_kernel:
        _kernel[grid](src=src, N=N)
    else:
        _kernel[grid](src, N)
    triton.testing.assert_close(src, torch.ones_like(src))


@pytest.mark.parametrize('pass_kwargs_to_kernel', [False, True])
def test_reset_to_zero(served, pass_kwargs_to_kernel):  # test_autotuner.py::test_reset_to_zero (a tensor src)
    served()
    N = 1024
    dst = torch.full((N, ), 2.0)
    src = dst
    configs = [triton.Config(kwargs={'BLOCK_SIZE': 32}), triton.Config(kwargs={'BLOCK_SIZE': 128})]

    @autotune(configs=configs, key=['N'], reset_to_zero=['src'], do_bench=cpu_bench, on_miss="autotune")
    @triton.jit
    def _kernel(src, dst, N, BLOCK_SIZE: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offsets < N
        tl.store(src + offsets, tl.full([BLOCK_SIZE], 1, dtype=src.dtype.element_ty), mask=mask)

    grid = lambda META: (triton.cdiv(N, META['BLOCK_SIZE']), )
    if pass_kwargs_to_kernel:
        _kernel[grid](src=src, dst=dst, N=N)
    else:
        _kernel[grid](src, dst, N)
    triton.testing.assert_close(dst, torch.ones_like(dst))


def test_hooks(served):  # test_autotuner.py::test_hooks: pre- and post-hooks called in pairs
    served()
    N = 4096
    src = torch.zeros(N)
    configs = [triton.Config(kwargs={'BLOCK_SIZE': 4096}), triton.Config(kwargs={'BLOCK_SIZE': 32})]
    values = {"counter": 0, "has_exception": False, "pre": 0}

    def _pre_hook(*args, **kwargs):
        values["counter"] += 1
        values["pre"] += 1

    def _post_hook(*args, exception):
        values["counter"] -= 1
        if exception is not None:
            values["has_exception"] = True
        assert values["counter"] == 0

    @autotune(configs=configs, key=['N'], do_bench=cpu_bench, pre_hook=_pre_hook, post_hook=_post_hook,
              on_miss="autotune")
    @triton.heuristics({"N_STAGES": lambda nargs: 64 if nargs['N'] == 4096 else 4})
    @triton.jit
    def _kernel(src, N, N_STAGES: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        offsets = tl.arange(0, BLOCK_SIZE)
        max_iters = tl.cdiv(N, BLOCK_SIZE)
        for _ in tl.range(max_iters, num_stages=N_STAGES):
            x = tl.load(src + offsets, mask=offsets < N)
            tl.store(src + offsets, x, mask=offsets < N)
            offsets += BLOCK_SIZE

    _kernel[(1, )](src, N)
    # every config timed between the hooks; the interpreter has no shared memory to run out of
    assert values["pre"] >= len(configs) and values["has_exception"] is False


@pytest.mark.parametrize('with_perf_model', [False, True])
def test_prune_configs(served, with_perf_model: bool):  # test_autotuner.py::test_prune_configs
    served()
    N = 1024
    src, dst = torch.randn(N), torch.empty(N)
    records = {}

    def early_config_prune(configs, named_args, **kwargs):
        records['run_early_config_prune'] = True
        if "N" in kwargs and kwargs["N"] == 1024:
            records['capture_kwargs'] = True
        if "dst" in named_args and "src" in named_args and len(named_args) == 2:
            records['capture_named_args'] = True
        return [configs[0]]

    def perf_model(*args, **kwargs):
        records['run_perf_model'] = True
        return kwargs['BLOCK_SIZE']

    configs = [triton.Config(kwargs={'BLOCK_SIZE': 32}), triton.Config(kwargs={'BLOCK_SIZE': 128})]
    prune_configs_by = ({'perf_model': perf_model, 'top_k': 1} if with_perf_model
                        else {'early_config_prune': early_config_prune})

    @autotune(configs=configs, key=['N'], prune_configs_by=prune_configs_by, do_bench=cpu_bench, on_miss="autotune")
    @triton.jit
    def _kernel(dst, src, N, BLOCK_SIZE: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        x = tl.load(src + offsets, mask=offsets < N)
        tl.store(dst + offsets, x, mask=offsets < N)

    grid = lambda META: (triton.cdiv(N, META['BLOCK_SIZE']), )
    _kernel[grid](dst, src, N=N)
    torch.testing.assert_close(src, dst)
    if with_perf_model:
        assert records == {'run_perf_model': True}
    else:
        assert records == {'run_early_config_prune': True, 'capture_kwargs': True, 'capture_named_args': True}


def test_dtype_cache_results(served):  # test_autotuner.py::test_dtype_cache_results: a tl dtype in key=
    served()
    M, N = 1024, 16
    src, dst = torch.randn(M * N), torch.empty(M * N)
    configs = [triton.Config(kwargs={'BLOCK_SIZE_M': 32}), triton.Config(kwargs={'BLOCK_SIZE_M': 128})]

    @autotune(configs=configs, key=["DTYPE"], cache_results=True, do_bench=cpu_bench, on_miss="autotune")
    @triton.jit
    def _kernel(dst, src, stride_m: tl.constexpr, DTYPE: tl.constexpr, BLOCK_SIZE_N: tl.constexpr,
                BLOCK_SIZE_M: tl.constexpr):
        offsets_m = tl.program_id(0) * stride_m + tl.arange(0, BLOCK_SIZE_M)
        offsets_n = tl.arange(0, BLOCK_SIZE_N)
        x = tl.load(src + offsets_m[:, None] * BLOCK_SIZE_N + offsets_n[None, :])
        x = x.to(DTYPE)
        tl.store(dst + offsets_m[:, None] * BLOCK_SIZE_N + offsets_n[None, :], x)

    grid = lambda META: (triton.cdiv(N, META['BLOCK_SIZE_M']), )
    with pytest.warns(UserWarning, match="DTYPE=fp32 is not a positive integer"):  # no fleet key: timed here
        _kernel[grid](dst, src, N, tl.float32, N)
    assert len(_kernel.cache) == 1


# ---- prune_configs_by with Triton's meaning on every path ----

def _pruned_kernel(on_miss, prune=lambda configs, named_args, **kw: [c for c in configs
                                                                   if c.kwargs["BLOCK"] <= named_args["N"]]):
    @autotune(configs=[triton.Config({"BLOCK": 256}), triton.Config({"BLOCK": 64})], key=["N"], on_miss=on_miss,
              prune_configs_by={"early_config_prune": prune}, do_bench=cpu_bench)
    @triton.jit
    def _pruned_copy(x, out, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out + offs, tl.load(x + offs, mask=offs < N), mask=offs < N)
    return _pruned_copy


@pytest.mark.parametrize("on_miss", ["default", "autotune"])
def test_a_miss_launches_a_config_the_prune_keeps(served, on_miss):
    served()
    kernel, n = _pruned_kernel(on_miss), 100  # the prune drops BLOCK=256 > N, as triton.autotune would
    x, out = torch.randn(n), torch.empty(n)
    kernel[lambda META: (triton.cdiv(n, META["BLOCK"]),)](x, out, n)
    assert kernel.best_config.kwargs == {"BLOCK": 64} and torch.equal(out, x)


@pytest.mark.parametrize("block, warps, launched", [(256, 4, 64), (256, 8, 64), (64, 8, 64)])
def test_a_stored_row_the_prune_rejects_is_a_miss(served, block, warps, launched):
    kernel, n = _pruned_kernel("default"), 100  # 8 warps: off the list, the prune asked of it alone
    served([_entry(_key(kernel.name, N=n), {"BLOCK": block, "num_warps": warps, "num_stages": 3}, _live_fp())])
    x, out = torch.randn(n), torch.empty(n)
    kernel[lambda META: (triton.cdiv(n, META["BLOCK"]),)](x, out, n)
    best = kernel.best_config
    assert (best.kwargs, best.num_warps) == ({"BLOCK": launched}, warps if block == launched else 4)
    assert torch.equal(out, x)


@pytest.mark.parametrize("on_miss", ["default", "autotune"])
def test_prune_all_configs(served, on_miss):  # test_autotuner.py::test_prune_all_configs
    served()
    N = 1024
    src, dst = torch.randn(N), torch.empty(N)
    _kernel = _pruned_kernel(on_miss, prune=lambda configs, named_args, **kwargs: [])
    grid = lambda META: (triton.cdiv(N, META['BLOCK']), )
    with pytest.raises(triton.TritonError) as e:
        _kernel[grid](src, dst, N=N)
    assert str(e.value) == ("Autotuner error: No valid autotuner configs after pruning. "
                            "`early_config_prune` should return at least one config.")
