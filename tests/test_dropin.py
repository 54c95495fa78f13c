"""@autotune, the drop-in for @triton.autotune, in one process on the interpreter: the kernel it
registers (space, default, check, inputs rebuilt from a recorded launch), what a launch is served
(a stored row, or on a miss the first config), the miss record and its signature, what a fleet
launch honours, and the key formed as triton.autotune forms it. Triton's own autotuner tests and the
prune: tests/test_dropin_triton.py."""
import json

import pytest
import torch
import triton
import triton.language as tl

from devices.classes import CPU_INTERPRETER
from search_spaces import registry
from tests.kernels import dropin as kernels
from tests.test_runtime import _entry, _key, _live_fp, _write_bundle, live_env  # noqa: F401
from tuner import runtime
from tuner.runtime import autotune
from tuner.runtime.miss_tally import parse_record

TUTORIAL_SPACE = {  # tutorial 03's eight CUDA configs: the values they use, warps and stages a step wider
    "BLOCK_SIZE_M": (32, 64, 128), "BLOCK_SIZE_N": (32, 64, 128, 256), "BLOCK_SIZE_K": (32, 64),
    "GROUP_SIZE_M": (8,), "num_warps": (1, 2, 4, 8, 16), "num_stages": (2, 3, 4, 5, 6)}


@pytest.fixture
def served(live_env, monkeypatch, tmp_path):  # noqa: F811
    """A runtime serving from a bundle (`entries`), its misses written to a file when flushed."""
    def serve(entries=()):
        bundle = tmp_path / "bundle.json"
        _write_bundle(bundle, list(entries))
        monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(bundle))
        monkeypatch.setenv("TUNER_MISS_FILE", str(tmp_path / "misses.jsonl"))
        monkeypatch.setenv("TUNER_MISS_FLUSH_S", "3600")
        live_env()
    return serve


def _misses(tmp_path):
    runtime.flush_misses()
    path = tmp_path / "misses.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_kernel_it_registers_spans_the_values_of_the_config_list():
    spec, target = registry.get(kernels.MATMUL), CPU_INTERPRETER.target
    assert spec.space(target) == TUTORIAL_SPACE and len(list(spec.configs(target))) == 3 * 4 * 2 * 1 * 5 * 5
    key = spec.make_key({"M": 64, "N": 80, "K": 48}, "float16")
    assert spec.default(key, target) == {"BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 256, "BLOCK_SIZE_K": 64,
                                       "GROUP_SIZE_M": 8, "num_warps": 8, "num_stages": 3}
    off_list = {"BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 8, "num_warps": 16,
                "num_stages": 6}
    assert spec.check(off_list, key, target) is None
    assert "BLOCK_SIZE_M=16" in spec.check({**off_list, "BLOCK_SIZE_M": 16}, key, target)


def test_a_miss_launches_the_first_config_and_records_the_launch(served, tmp_path):
    served()
    a = torch.randn(64, 48, dtype=torch.float16)
    b = torch.randn(80, 48, dtype=torch.float16).t()  # strides (1, 48): recorded as launched
    c = kernels.matmul(a, b)
    assert torch.allclose(c.float(), a.float() @ b.float(), atol=1e-2, rtol=1e-2)
    assert kernels.matmul_kernel.best_config == kernels.get_cuda_autotune_config()[0]
    (rec,) = _misses(tmp_path)
    assert (rec["key"]["dims"], rec["dtype"], rec["level"]) == ({"M": 64, "N": 80, "K": 48}, "float16", "default")
    sig = rec["signature"]
    assert sig["args"]["b_ptr"] == {"shape": [48, 80], "strides": [1, 48], "dtype": "float16"}
    assert sig["args"]["ACTIVATION"] == {"value": ""} and sig["args"]["stride_bn"] == {"value": 48}
    assert "BLOCK_SIZE_M" not in sig["args"] and "num_warps" not in sig["args"]
    grids = {json.dumps(p, sort_keys=True): g for p, g in sig["grids"]}
    assert len(grids) == 3 * 4 * 2  # one per combination of the space's constexprs
    # the tutorial's grid, cdiv(M, BM) * cdiv(N, BN), for a tile no listed config has
    assert grids[json.dumps({"BLOCK_SIZE_K": 64, "BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 32, "GROUP_SIZE_M": 8},
                            sort_keys=True)] == [2 * 3]
    stored = parse_record(rec)  # where it lands: checked, and kept beside the key outside its hash
    assert stored["key"]["signature"] == sig and stored["key_hash"] == rec["key_hash"]


def test_a_record_without_a_signature_still_parses_and_a_bad_one_is_refused(served, tmp_path):
    served()
    kernels.matmul(torch.randn(32, 32, dtype=torch.float16), torch.randn(32, 32, dtype=torch.float16))
    (rec,) = _misses(tmp_path)
    old = {k: v for k, v in rec.items() if k != "signature"}
    assert "signature" not in parse_record(old)["key"]
    with pytest.raises(ValueError, match="shape and strides"):
        parse_record({**rec, "signature": {"args": {"a_ptr": {"shape": [-1], "strides": [1], "dtype": "float16"}}}})
    with pytest.raises(ValueError, match="more than"):
        parse_record({**rec, "signature": {"args": {"a_ptr": {"shape": [1 << 20, 1 << 20], "strides": [1 << 20, 1],
                                                              "dtype": "float16"}}}})


def test_inputs_are_rebuilt_from_the_signature_and_checked_against_the_first_config(served, tmp_path):
    served()
    a, b = torch.randn(64, 48, dtype=torch.float16), torch.randn(80, 48, dtype=torch.float16).t()
    kernels.matmul(a, b)
    (rec,) = _misses(tmp_path)
    spec = registry.get(kernels.MATMUL)
    key = spec.make_key(rec["key"]["dims"], rec["dtype"])
    inputs = spec.make_inputs(key, "cpu", 0, rec["signature"])
    rb = inputs.args["b_ptr"]
    assert (tuple(rb.shape), rb.stride(), rb.dtype) == ((48, 80), (1, 48), torch.float16)
    ref = spec.reference(inputs)
    other = {"BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 8, "num_warps": 1,
             "num_stages": 2}
    out = spec.launch(other, inputs)
    ra, rb = inputs.args["a_ptr"], inputs.args["b_ptr"]
    assert torch.allclose(out[2].float(), ra.float() @ rb.float(), atol=1e-2, rtol=1e-2)
    assert all(torch.allclose(o.float(), r.float(), atol=1e-2, rtol=1e-2) for o, r in zip(out, ref))
    with pytest.raises(ValueError, match="inputs="):
        spec.make_inputs(key, "cpu", 0, None)


def test_a_stored_row_is_launched_and_is_best_config(served, tmp_path):
    spec = registry.get(kernels.LAYER_NORM)
    stored = {"BLOCK_SIZE": 128, "num_warps": 4, "num_stages": 2}  # in the space, in no listed config
    served([_entry(_key(kernels.LAYER_NORM, N=100), stored, _live_fp())])
    x, w, b = torch.randn(8, 100), torch.rand(100), torch.rand(100)
    y = kernels.layer_norm(x, w, b)
    assert torch.allclose(y, torch.nn.functional.layer_norm(x, (100,), w, b, 1e-5), atol=1e-4)
    best = kernels._layer_norm_fwd_fused.best_config
    assert isinstance(best, triton.Config) and best == spec.kernel.triton_config(stored)
    assert (best.kwargs, best.num_warps, best.num_stages) == ({"BLOCK_SIZE": 128}, 4, 2)
    assert _misses(tmp_path) == []


@pytest.mark.parametrize("args, says", [
    (["tune", "--from-misses"], "name it, e.g. tuner tune KERNEL --from-misses"),
    (["tune", kernels.MATMUL, "--from-misses", "--shape", "M=64,N=64,K=64"], "drop --shape and --model"),
    (["tune", kernels.MATMUL, "--from-misses"], f"no untuned misses of {kernels.MATMUL}"),
    (["tune", kernels.MATMUL, "--shape", "M=64,N=64,K=64", "--dtype", "float16"],
     "no launch of M=64,N=64,K=64 float16 was recorded"),  # no trial could rebuild its inputs
])
def test_tune_from_misses_refuses_in_one_line(tmp_path, args, says):
    from tests.cli_helpers import run_tuner

    assert run_tuner(["db", "upgrade"], tmp_path).returncode == 0
    proc = run_tuner(args + ["--device", "cpu"], tmp_path, TUNER_KERNEL_MODULES="tests.kernels.dropin")
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_the_fleet_launch_honours_reset_to_zero_and_inputs(served, tmp_path):
    """What a worker runs for a recorded launch: an accumulating output reset before every launch
    (reset_to_zero, as triton.autotune does between timings), and an index tensor made valid by
    inputs= where zeros would not tell configurations apart."""
    served()
    made = []

    def gather_inputs(signature, device, seed):
        made.append(signature["key"])
        n = signature["args"]["idx"]["shape"][0]
        return {"idx": torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)}

    @autotune(configs=[triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 64})], key=["N"],
              reset_to_zero=["total"], inputs=gather_inputs)
    @triton.jit
    def _gather_sum(out, total, x, idx, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(x + tl.load(idx + offs, mask=offs < N, other=0), mask=offs < N, other=0.)
        tl.store(out + offs, v, mask=offs < N)
        tl.atomic_add(total, tl.sum(v, axis=0))

    n = 100
    x, idx = torch.randn(n), torch.arange(n)
    out, total = torch.empty(n), torch.zeros(1)
    _gather_sum[lambda META: (triton.cdiv(n, META["BLOCK"]),)](out, total, x, idx, n)
    (rec,) = _misses(tmp_path)
    spec = registry.get(_gather_sum.name)
    inputs = spec.make_inputs(spec.make_key({"N": n}, "float32"), "cpu", 3, rec["signature"])
    assert made == [{"N": n}] and sorted(inputs.args["idx"].tolist()) == list(range(n))
    for config in ({"BLOCK": 64, "num_warps": 4, "num_stages": 3}, {"BLOCK": 16, "num_warps": 8, "num_stages": 2}):
        o, t, xs, ix = spec.launch(config, inputs)
        spec.launch(config, inputs)  # a second launch adds nothing to the reset total
        assert torch.equal(o, xs[ix]) and torch.allclose(t, xs.sum().reshape(1), atol=1e-4)


# ---- the key formed as triton.autotune forms it: every argument's dtype, the key's values ----

def _cast_copy_kernel():
    @autotune(configs=[triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 16})], key=["N"])
    @triton.jit
    def _cast_copy(x, out, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out + offs, tl.load(x + offs, mask=offs < N), mask=offs < N)
    return _cast_copy


def test_each_dtype_of_an_output_is_a_key_of_its_own_with_its_own_signature(served, tmp_path):
    served()
    kernel, n = _cast_copy_kernel(), 100
    x = torch.randn(n)
    for dt in (torch.float32, torch.float16):
        out = torch.empty(n, dtype=dt)
        kernel[lambda META: (triton.cdiv(n, META["BLOCK"]),)](x, out, n)
        assert torch.equal(out, x.to(dt))
    recs = sorted(_misses(tmp_path), key=lambda r: r["dtype"])
    assert [r["dtype"] for r in recs] == ["f32/f16", "float32"]  # two keys, as triton.autotune has
    assert [r["signature"]["args"]["out"]["dtype"] for r in recs] == ["float16", "float32"]
    assert len({r["key_hash"] for r in recs}) == 2


def test_a_row_stored_for_one_output_dtype_is_served_to_that_dtype_only(served, tmp_path):
    kernel, n = _cast_copy_kernel(), 100
    stored = {"BLOCK": 16, "num_warps": 4, "num_stages": 3}
    served([_entry(_key(kernel.name, "f32/f16", N=n), stored, _live_fp())])
    x, grid = torch.randn(n), (lambda META: (triton.cdiv(n, META["BLOCK"]),))
    kernel[grid](x, torch.empty(n, dtype=torch.float16), n)
    assert kernel.best_config.kwargs == {"BLOCK": 16}
    kernel[grid](x, torch.empty(n), n)  # out float32: another key, a miss
    assert kernel.best_config.kwargs == {"BLOCK": 64}
    kernel[grid](x, torch.empty(n, dtype=torch.bfloat16), n)
    assert kernel.best_config.kwargs == {"BLOCK": 64}
    assert sorted(r["dtype"] for r in _misses(tmp_path)) == ["f32/bf16", "float32"]


def test_bool_key_values_are_keys_and_a_string_one_is_launched_as_a_miss_with_one_warning(served, tmp_path):
    served()

    @autotune(configs=[triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 16})], key=["N", "NEG"])
    @triton.jit
    def _neg_copy(x, out, N, NEG: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(x + offs, mask=offs < N)
        tl.store(out + offs, -v if NEG else v, mask=offs < N)

    n, x, out = 50, torch.randn(50), torch.empty(50)
    grid = lambda META: (triton.cdiv(n, META["BLOCK"]),)
    before = len(_misses(tmp_path))
    for neg in (True, False):
        _neg_copy[grid](x, out, n, neg)
        assert torch.equal(out, -x if neg else x)
    recs = _misses(tmp_path)[before:]
    assert sorted(r["key"]["dims"]["NEG"] for r in recs) == [1, 2]  # False, True
    with pytest.warns(UserWarning, match="NEG=yes is not a positive integer") as caught:
        _neg_copy[grid](x, out, n, "yes")
        _neg_copy[grid](x, out, n, "")
    assert len(caught) == 1 and _neg_copy.best_config.kwargs == {"BLOCK": 64}
    assert len(_misses(tmp_path)) == before + 2  # neither counted


def test_the_dtype_field_names_every_argument_s_dtype_readably_within_its_column():
    from keys import SpecError
    from search_spaces.dropin import DTYPE_CHARS, dtype_key

    f16, f32 = torch.empty(1, dtype=torch.float16), torch.empty(1)
    ln = dict(x=f16, y=f16, w=f16, b=f16, mean=f32, rstd=f32, stride=4, N=8)  # tutorial 05, fp16
    assert dtype_key(dict(x=f16, y=f16, N=8)) == "float16"
    assert dtype_key(ln) == "f16*4/f32*2"
    assert dtype_key(dict(x=f16, bias=None, y=f16)) == "f16/-/f16"  # triton's key is shorter: another key
    assert dtype_key(dict(x=f32, idx=torch.empty(1, dtype=torch.int64))) == "f32/i64"
    many = dtype_key({f"a{i}": (f16, f32)[i % 2] for i in range(9)})
    assert len(many) == DTYPE_CHARS and many.startswith("mix-")
    assert dtype_key(dict(idx=torch.empty(1, dtype=torch.int32), N=8)) is None
    spec = registry.get(kernels.LAYER_NORM)
    key = spec.make_key({"N": 8}, "f16*4/f32*2")
    assert key.label() == "N=8 f16*4/f32*2" and spec.tolerances.get(key.dtype) == spec.tolerances["float16"]
    with pytest.raises(SpecError, match="not one of float16, bfloat16, float32 nor a drop-in's mixed dtype"):
        spec.make_key({"N": 8}, "f16 f32")


def test_the_fleet_launch_honours_restore_value(served, tmp_path):
    """What a worker runs for a recorded launch of a kernel that updates a tensor in place: the
    tensor is restored after every launch (restore_value, as triton.autotune restores it between
    timings), so each of several launches, whatever its configuration, starts from the same values."""
    served()

    @autotune(configs=[triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 64})], key=["N"],
              restore_value=["acc"])
    @triton.jit
    def _accumulate(acc, out, x, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        a = tl.load(acc + offs, mask=offs < N, other=0.) + tl.load(x + offs, mask=offs < N, other=0.)
        tl.store(acc + offs, a, mask=offs < N)
        tl.store(out + offs, a, mask=offs < N)

    n = 100
    _accumulate[lambda META: (triton.cdiv(n, META["BLOCK"]),)](torch.randn(n), torch.empty(n), torch.randn(n), n)
    (rec,) = _misses(tmp_path)
    spec = registry.get(_accumulate.name)
    inputs = spec.make_inputs(spec.make_key({"N": n}, "float32"), "cpu", 3, rec["signature"])
    original = inputs.args["acc"].clone()
    for config in ({"BLOCK": 64, "num_warps": 4, "num_stages": 3}, {"BLOCK": 16, "num_warps": 8, "num_stages": 2},
                   {"BLOCK": 64, "num_warps": 4, "num_stages": 3}):
        acc, out, x = spec.launch(config, inputs)
        assert torch.allclose(out, original + x)  # this launch saw the original values
        assert torch.equal(acc, original)  # and left them for the next
