"""The built-in kernels: they compute the right thing in the Triton interpreter, their defaults
and known-good lists are valid on every target, and check() names why a config cannot run."""
from __future__ import annotations

import os

# triton.language wraps its own jit functions (tl.cdiv, tl.sum) when first imported, so the
# interpreter must be on before any import of triton; tests/conftest.py should do this for the suite
os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from keys import SpecError
from devices.targets import target_for
from search_spaces.matmul import Matmul  # noqa: E402
from search_spaces.softmax import Softmax  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("sm_90", "gfx942", "interpreter")
DTYPES = ("float16", "bfloat16", "float32")
MATMUL, SOFTMAX = Matmul(), Softmax()


@pytest.fixture
def interpreter():
    import triton
    if type(triton.language.standard.cdiv).__name__ != "InterpretedFunction":
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set: set it in tests/conftest.py")
    return target_for("interpreter")


def close(spec, key, out, ref) -> bool:
    atol, rtol = spec.tolerances[key.dtype]
    return out.dtype == ref.dtype and torch.allclose(out.float(), ref.float(), atol=atol, rtol=rtol)


def run_and_compare(spec, key, config, seed=0):
    inputs = spec.make_inputs(key, "cpu", seed)
    out = spec.launch(config, inputs)
    ref = spec.reference(inputs)
    err = (out.float() - ref.float()).abs().max().item()
    assert close(spec, key, out, ref), f"{key.label()} {config}: max error {err}"


def mm_config(bm, bn, bk, group=8, warps=4, stages=1):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "num_warps": warps,
            "num_stages": stages}


# ---- correctness in the interpreter -------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_odd_shape_matches_torch(interpreter, dtype):
    key = MATMUL.make_key({"M": 37, "N": 50, "K": 70}, dtype)
    run_and_compare(MATMUL, key, MATMUL.default(key, interpreter))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_grouped_order_with_a_partial_group(interpreter, dtype):
    # 5 x 3 tiles with GROUP_M=4: the last group has one row of tiles; K spans two masked steps
    key = MATMUL.make_key({"M": 130, "N": 70, "K": 40}, dtype)
    run_and_compare(MATMUL, key, mm_config(32, 32, 32, group=4))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, config", [
    ((5, 37), None),  # one pass, ROWS beyond M
    ((33, 700), {"BLOCK_SIZE": 256, "ROWS": 4, "num_warps": 1}),  # three chunks, a partial last program
])
def test_softmax_matches_torch(interpreter, dtype, shape, config):
    key = SOFTMAX.make_key({"M": shape[0], "N": shape[1]}, dtype)
    run_and_compare(SOFTMAX, key, config or SOFTMAX.default(key, interpreter))


def test_a_wrong_result_is_outside_tolerance(interpreter):
    # the tolerances must still catch a kernel that drops a K step
    key = MATMUL.make_key({"M": 64, "N": 64, "K": 64}, "float16")
    inputs = MATMUL.make_inputs(key, "cpu", 0)
    half_k = torch.matmul(inputs.a[:, :32].float(), inputs.b[:32].float()).half()
    assert not close(MATMUL, key, half_k, MATMUL.reference(inputs))


def test_inputs_are_deterministic_by_seed():
    key = MATMUL.make_key({"M": 8, "N": 8, "K": 8}, "bfloat16")
    a, b, c = (MATMUL.make_inputs(key, "cpu", s) for s in (1, 1, 2))
    assert torch.equal(a.a, b.a) and torch.equal(a.b, b.b) and not torch.equal(a.a, c.a)
    assert a.a.dtype == torch.bfloat16 and a.a.shape == (8, 8)
    skey = SOFTMAX.make_key({"M": 3, "N": 9}, "float16")
    assert torch.equal(SOFTMAX.make_inputs(skey, "cpu", 5).x, SOFTMAX.make_inputs(skey, "cpu", 5).x)


def test_launch_says_how_to_enable_the_interpreter():
    # both ways to get it wrong, in fresh interpreters (this one has it right)
    code = """
import os, sys
if sys.argv[1] == "late":
    import triton
    os.environ["TRITON_INTERPRET"] = "1"
from search_spaces import registry, target_for
spec = registry.get("matmul")
key = spec.make_key({"M": 16, "N": 16, "K": 16}, "float32")
try:
    spec.launch(spec.default(key, target_for("interpreter")), spec.make_inputs(key, "cpu", 0))
except RuntimeError as exc:
    print(exc)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for when, says in (("never", "CPU tensors run only in the Triton interpreter"),
                       ("late", "after triton was imported")):
        run = subprocess.run([sys.executable, "-c", code, when], cwd=ROOT, env=env, capture_output=True,
                             text=True)
        assert says in run.stdout, run.stdout + run.stderr


# ---- defaults, known-good lists, the space ------------------------------------------------
def _shapes(names, n=60, seed=0):
    rng = random.Random(seed)
    edges = [1, 2, 15, 16, 17, 31, 33, 127, 128, 129, 255, 256, 1000, 4096, 8191, 16384]
    out = [dict(zip(names, (e,) * len(names))) for e in edges]
    out += [{k: rng.choice(edges + [rng.randint(1, 20000)]) for k in names} for _ in range(n)]
    return out


@pytest.mark.parametrize("arch", TARGETS + ("sm_80", "sm_89", "gfx90a"))
@pytest.mark.parametrize("spec", [MATMUL, SOFTMAX], ids=lambda s: s.name)
def test_default_is_valid_for_every_shape(spec, arch):
    target = target_for(arch)
    for dims in _shapes(spec.key_names):
        for dtype in DTYPES:
            key = spec.make_key(dims, dtype)
            config = spec.default(key, target)
            assert spec.check(config, key, target) is None, (key.label(), arch, config)


def test_matmul_default_is_the_tutorial_tile_for_large_problems():
    key = MATMUL.make_key({"M": 4096, "N": 4096, "K": 4096}, "float16")
    assert MATMUL.default(key, target_for("sm_90")) == mm_config(128, 128, 32, 8, 4, 4)
    assert MATMUL.default(key, target_for("interpreter")) == mm_config(64, 64, 32, 8, 4, 1)
    amd = MATMUL.default(key, target_for("gfx942"))
    assert amd["num_stages"] == 2 and amd["matrix_instr_nonkdim"] == 16


def test_matmul_default_shrinks_to_the_problem():
    key = MATMUL.make_key({"M": 1, "N": 20, "K": 3}, "float32")
    config = MATMUL.default(key, target_for("sm_90"))
    assert (config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]) == (16, 32, 16)


@pytest.mark.parametrize("arch, expected", [("sm_90", 27), ("gfx942", 5), ("interpreter", 2)])
def test_matmul_known_good_are_valid(arch, expected):
    target = target_for(arch)
    big = MATMUL.make_key({"M": 4096, "N": 4096, "K": 4096}, "float16")
    # the whole of each list fits: on NVIDIA the tutorial's 8 and Inductor's 21, less 2 in both
    assert len(MATMUL.known_good(big, target)) == expected
    for dims in _shapes(MATMUL.key_names, n=10):
        for dtype in DTYPES:
            key = MATMUL.make_key(dims, dtype)
            for config in MATMUL.known_good(key, target):
                assert MATMUL.check(config, key, target) is None, (key.label(), config)


def test_matmul_known_good_comes_likeliest_first_by_the_roofline():
    target = target_for("sm_90")
    decode = MATMUL.known_good(MATMUL.make_key({"M": 16, "N": 4096, "K": 4096}, "bfloat16"), target)
    square = MATMUL.known_good(MATMUL.make_key({"M": 4096, "N": 4096, "K": 4096}, "bfloat16"), target)
    assert sorted(map(str, decode)) != sorted(map(str, square))  # shrunk to the problem, then ordered

    def in_flight(c):
        return c["num_stages"] * c["BLOCK_K"] * (c["BLOCK_M"] + c["BLOCK_N"])
    # memory-bound (16 multiply-adds per element moved): the deepest pipelines of long K steps first
    assert [in_flight(c) for c in decode] == sorted((in_flight(c) for c in decode), reverse=True)
    # compute-bound (1365): the largest tiles first
    assert [c["BLOCK_M"] * c["BLOCK_N"] for c in square][:2] == [128 * 256] * 2
    interp = target_for("interpreter")  # the interpreter's own list keeps its measured order
    assert MATMUL.known_good(MATMUL.make_key({"M": 256, "N": 256, "K": 256}, "float32"), interp)[0]["BLOCK_K"] == 128


@pytest.mark.parametrize("arch", TARGETS)
def test_softmax_known_good_are_valid(arch):
    target = target_for(arch)
    for dims in _shapes(SOFTMAX.key_names, n=10):
        key = SOFTMAX.make_key(dims, "float16")
        for config in SOFTMAX.known_good(key, target):
            assert SOFTMAX.check(config, key, target) is None, (key.label(), config)


def test_spaces_per_target():
    nvidia, amd, cpu = (MATMUL.space(target_for(a)) for a in TARGETS)
    assert "waves_per_eu" not in nvidia and nvidia["num_stages"] == (2, 3, 4, 5)
    assert amd["num_stages"] == (2,) and amd["matrix_instr_nonkdim"] == (16, 32) and amd["kpack"] == (1, 2)
    assert min(cpu["BLOCK_M"]) == 32 and len(list(MATMUL.configs(target_for("interpreter")))) <= 400
    assert 32 not in SOFTMAX.space(target_for("gfx942"))["num_warps"]  # 32 wavefronts of 64 > 1,024 threads


def test_softmax_space_has_a_looped_variant():
    key = SOFTMAX.make_key({"M": 64, "N": 3000}, "float32")
    blocks = {c["BLOCK_SIZE"] for c in SOFTMAX.valid_configs(key, target_for("sm_90"))}
    assert {128, 1024, 4096} <= blocks  # rows of 3000 in chunks, or whole


# ---- check() names the reason -------------------------------------------------------------
def _mm_key(m=4096, n=4096, k=4096, dtype="float16"):
    return MATMUL.make_key({"M": m, "N": n, "K": k}, dtype)


AMD = {"waves_per_eu": 0, "matrix_instr_nonkdim": 16, "kpack": 1}


@pytest.mark.parametrize("arch, config, key, reason", [
    ("sm_90", mm_config(256, 256, 128, 8, 8, 5), _mm_key(), "shared memory"),
    ("sm_90", mm_config(256, 256, 16, 8, 2, 2), _mm_key(), "registers"),
    ("sm_90", mm_config(16, 16, 16, 8, 8, 2), _mm_key(), "warps vs tile"),
    ("sm_90", mm_config(128, 16, 16, 8, 4, 2), _mm_key(m=16), "larger than the problem"),
    ("sm_90", mm_config(16, 16, 64, 8, 2, 2), _mm_key(k=20), "larger than the problem"),
    ("sm_90", mm_config(48, 64, 32, 8, 4, 2), _mm_key(), "outside"),
    ("sm_90", {**mm_config(64, 64, 32, 8, 4, 2), **AMD}, _mm_key(), "unknown"),
    ("sm_90", {"BLOCK_M": 64}, _mm_key(), "missing"),
    ("sm_89", mm_config(128, 128, 64, 8, 4, 4), _mm_key(dtype="float32"), "shared memory"),
    ("gfx942", {**mm_config(256, 256, 128, 8, 8, 2), **AMD}, _mm_key(), "LDS"),
    ("gfx942", {**mm_config(16, 64, 32, 8, 4, 2), **AMD, "matrix_instr_nonkdim": 32}, _mm_key(), "nonkdim"),
    ("gfx942", {**mm_config(64, 64, 32, 8, 4, 2), **AMD, "kpack": 2}, _mm_key(dtype="float32"), "kpack"),
    # two warps take the mma.sync path on Hopper, whose operand fragments need registers too
    ("sm_90", mm_config(64, 128, 128, 8, 2, 3), _mm_key(), "registers"),
    ("gfx942", {**mm_config(128, 128, 32, 8, 4, 2), **AMD, "waves_per_eu": 8}, _mm_key(), "spill"),
    ("gfx942", mm_config(64, 64, 32, 8, 4, 2), _mm_key(), "missing"),
    ("interpreter", mm_config(64, 64, 32, 8, 4, 3), _mm_key(), "outside"),
    ("interpreter", mm_config(128, 32, 32, 8, 4, 1), _mm_key(m=20), "larger than the problem"),
])
def test_matmul_check_rejects_with_reason(arch, config, key, reason):
    got = MATMUL.check(config, key, target_for(arch))
    assert got is not None and reason in got, got


def test_matmul_check_accepts_what_fits():
    assert MATMUL.check(mm_config(128, 256, 64, 8, 8, 3), _mm_key(), target_for("sm_90")) is None
    # 64 KiB LDS holds one 256x256x64 fp16 buffer at num_stages 2
    lds_full = {**mm_config(256, 256, 64, 8, 8, 2), **AMD}
    assert MATMUL.check(lds_full, _mm_key(), target_for("gfx942")) is None
    # the gfx942 compiler builds kpack=2 at BLOCK_K 16 for 16-bit inputs (kWidth 8)
    assert MATMUL.check({**mm_config(64, 64, 16, 8, 4, 2), **AMD, "kpack": 2}, _mm_key(), target_for("gfx942")) is None
    # BLOCK_M < 64 takes Hopper's mma.sync path: num_stages - 1 buffers, so 5 stages of 48 KiB fit
    assert MATMUL.check(mm_config(32, 64, 128, 8, 4, 5), _mm_key(dtype="float32"), target_for("sm_90")) is None
    # the tiniest problem keeps a config: the smallest block and the fewest warps
    tiny = MATMUL.make_key({"M": 1, "N": 1, "K": 1}, "float16")
    assert MATMUL.check(mm_config(16, 16, 16, 1, 2, 2), tiny, target_for("sm_90")) is None
    assert MATMUL.valid_configs(tiny, target_for("interpreter"))


@pytest.mark.parametrize("arch, config, dims, reason", [
    ("sm_90", {"BLOCK_SIZE": 65536, "ROWS": 1, "num_warps": 4}, (8, 100000), "registers"),
    ("sm_90", {"BLOCK_SIZE": 1024, "ROWS": 1, "num_warps": 4}, (8, 100), "larger than the problem"),
    ("sm_90", {"BLOCK_SIZE": 128, "ROWS": 16, "num_warps": 1}, (3, 100), "larger than the problem"),
    ("sm_90", {"BLOCK_SIZE": 128, "ROWS": 1, "num_warps": 32}, (8, 100), "warps vs tile"),
    ("gfx942", {"BLOCK_SIZE": 128, "ROWS": 1, "num_warps": 32}, (8, 100), "outside"),
    ("interpreter", {"BLOCK_SIZE": 128, "ROWS": 1, "num_warps": 4}, (8, 100), "outside"),
])
def test_softmax_check_rejects_with_reason(arch, config, dims, reason):
    key = SOFTMAX.make_key({"M": dims[0], "N": dims[1]}, "float32")
    got = SOFTMAX.check(config, key, target_for(arch))
    assert got is not None and reason in got, got


def test_amd_knobs_go_to_hip_launches_only():
    config = {**mm_config(64, 64, 32, 8, 4, 2), **AMD}
    tiles = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}
    assert MATMUL.split_config(config, "nvidia") == (tiles, {"num_warps": 4, "num_stages": 2})
    assert MATMUL.split_config(config, "amd") == (tiles, {"num_warps": 4, "num_stages": 2, **AMD})


# ---- identity and keys --------------------------------------------------------------------
def test_version_is_stable_and_short():
    assert len(MATMUL.version) == 12 and int(MATMUL.version, 16) >= 0
    assert Matmul().version == MATMUL.version and SOFTMAX.version != MATMUL.version
    code = "from search_spaces.matmul import Matmul; print(Matmul().version)"
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           check=True)
    assert other.stdout.strip() == MATMUL.version


@pytest.mark.parametrize("dims, dtype, message", [
    ({"M": "abc", "N": 1, "K": 1}, "float16", "not an integer"),
    ({"M": -1, "N": 1, "K": 1}, "float16", "positive"),
    ({"M": 0, "N": 1, "K": 1}, "float16", "positive"),
    ({"M": 1.5, "N": 1, "K": 1}, "float16", "not an integer"),
    ({"M": 1, "N": 1}, "float16", "missing K"),
    ({"M": 1, "N": 1, "K": 1, "Q": 2}, "float16", "unknown Q"),
    ({"M": 1, "N": 1, "K": 1}, "float64", "float64"),
])
def test_make_key_rejects_bad_input(dims, dtype, message):
    with pytest.raises(SpecError, match=message):
        MATMUL.make_key(dims, dtype)


def test_make_key_accepts_strings_from_the_cli():
    key = MATMUL.make_key({"M": "512", "N": 256, "K": "64"}, "bfloat16")
    assert key.dim_map == {"M": 512, "N": 256, "K": 64} and key.version == MATMUL.version


def test_flops():
    assert MATMUL.flops(_mm_key(2, 3, 5)) == 60
    assert SOFTMAX.flops(SOFTMAX.make_key({"M": 2, "N": 10}, "float32")) > 0
