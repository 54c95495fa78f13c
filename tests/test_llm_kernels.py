"""Multi-LoRA shrink and expand and flash attention: they compute what their PyTorch references
compute in the Triton interpreter, the references compute what they should, vLLM's defaults are
the LoRA defaults, and check() names why a configuration cannot run."""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported (see test_search_spaces.py)

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from search_spaces import lora_expand, lora_shrink  # noqa: E402
from keys import SpecError
from devices.targets import target_for
from search_spaces.flash_attention import FlashAttention  # noqa: E402
from search_spaces.lora import make_segments  # noqa: E402

SHRINK, EXPAND, ATTENTION = lora_shrink.LoraShrink(), lora_expand.LoraExpand(), FlashAttention()
DTYPES = ("float16", "bfloat16", "float32")
GPUS = ("sm_90", "gfx942", "sm_80")


def run_and_compare(spec, key, config, seed=0):
    inputs = spec.make_inputs(key, "cpu", seed)
    out, ref = spec.launch(config, inputs), spec.reference(inputs)
    atol, rtol = spec.tolerances[key.dtype]
    err = (out.float() - ref.float()).abs().max().item()
    assert out.dtype == ref.dtype and torch.allclose(out.float(), ref.float(), atol=atol, rtol=rtol), \
        f"{key.label()} {config}: max error {err}"


def shrink_config(bm, bn, bk, split_k):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k, "num_warps": 4, "num_stages": 1}


def expand_config(bm, bn, bk):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": 4, "num_stages": 1}


# ---- correctness in the interpreter -------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", [shrink_config(16, 16, 32, 4), shrink_config(32, 32, 64, 1)],
                         ids=["split-k", "one-split"])
def test_lora_shrink_matches_the_per_adapter_reference(dtype, config):
    # 37 tokens over 3 adapters (12-13 each: partial M tiles), RANK 24 (a partial N tile), K 200
    # (no split divides it: the masked K loop), two slices
    key = SHRINK.make_key({"M": 37, "K": 200, "RANK": 24, "SLICES": 2, "LORAS": 3}, dtype)
    run_and_compare(SHRINK, key, config)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", [expand_config(16, 32, 16), expand_config(64, 128, 32)], ids=["small", "large"])
def test_lora_expand_matches_the_per_adapter_reference(dtype, config):
    key = EXPAND.make_key({"M": 37, "N": 100, "RANK": 24, "SLICES": 3, "LORAS": 3}, dtype)
    run_and_compare(EXPAND, key, config)


def test_lora_references_match_a_per_token_computation():
    """The references loop over adapters; here each token's adapter is looked up one by one."""
    skey = SHRINK.make_key({"M": 11, "K": 40, "RANK": 8, "SLICES": 2, "LORAS": 3}, "float32")
    x, a, seg = SHRINK.make_inputs(skey, "cpu", 3)
    adapter = torch.empty(11, dtype=torch.long)
    starts = seg.start.tolist()
    for slot, lora in enumerate(seg.lora_ids.tolist()):
        adapter[seg.token_indices[starts[slot]:starts[slot + 1]].long()] = lora
    per_token = torch.stack([torch.stack([a[s, adapter[t]] @ x[t] for t in range(11)]) for s in range(2)])
    assert torch.allclose(SHRINK.reference((x, a, seg)), lora_shrink.SCALING * per_token, atol=1e-5)

    ekey = EXPAND.make_key({"M": 11, "N": 20, "RANK": 8, "SLICES": 2, "LORAS": 3}, "float32")
    xe, b, y, seg = EXPAND.make_inputs(ekey, "cpu", 3)
    adapter = torch.empty(11, dtype=torch.long)
    for slot, lora in enumerate(seg.lora_ids.tolist()):
        adapter[seg.token_indices[seg.start[slot]:seg.start[slot + 1]].long()] = lora
    want = y.clone()
    for t in range(11):
        for s in range(2):
            want[t, s * 20:(s + 1) * 20] += b[s, adapter[t]] @ xe[s, t]
    assert torch.allclose(EXPAND.reference((xe, b, y, seg)), want, atol=1e-5)
    assert not torch.equal(EXPAND.reference((xe, b, y, seg)), y)  # and y itself is left alone


def test_a_kernel_that_took_the_slot_for_the_adapter_would_fail_the_check():
    key = SHRINK.make_key({"M": 16, "K": 64, "RANK": 16, "SLICES": 1, "LORAS": 4}, "float32")
    x, a, seg = SHRINK.make_inputs(key, "cpu", 0)
    assert seg.lora_ids.tolist()[:4] != list(range(4))  # slots serve shuffled adapters
    wrong = seg._replace(lora_ids=torch.tensor([0, 1, 2, 3, -1], dtype=torch.int32))
    atol, rtol = SHRINK.tolerances["float32"]
    assert not torch.allclose(SHRINK.reference((x, a, wrong)), SHRINK.reference((x, a, seg)), atol=atol, rtol=rtol)


def test_segments_group_every_token_once():
    # vLLM's ids array has --max-loras + 1 slots (lora_kernel_metadata.py LoRAKernelMeta.make:
    # torch.empty(max_loras + 1)), the unused ones -1 with no tokens
    seg = make_segments(37, 5, torch.Generator().manual_seed(1), "cpu")
    assert sorted(seg.token_indices.tolist()) == list(range(37))
    assert seg.tokens_per_lora.tolist() == [8, 8, 7, 7, 7, 0] and seg.start.tolist() == [0, 8, 16, 23, 30, 37, 37]
    assert sorted(seg.lora_ids.tolist()) == [-1, 0, 1, 2, 3, 4]
    few = make_segments(2, 4, torch.Generator().manual_seed(1), "cpu")  # a batch smaller than --max-loras
    assert few.tokens_per_lora.tolist() == [1, 1, 0, 0, 0] and few.lora_ids.tolist()[2:] == [-1, -1, -1]


@pytest.mark.parametrize("spec", [SHRINK, EXPAND], ids=lambda s: s.name)
def test_a_batch_with_fewer_tokens_than_max_loras(spec):
    """LORAS is the server's --max-loras at every batch size (what vLLM looks up by): one token
    with four adapters held runs one adapter, and the other slots' programs return at once."""
    key = spec.make_key({"M": 3, spec.hidden: 40, "RANK": 16, "SLICES": 2, "LORAS": 4}, "float32")
    config = shrink_config(16, 16, 32, 1) if spec is SHRINK else expand_config(16, 32, 16)
    run_and_compare(spec, key, config)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage", [1, 3])
@pytest.mark.parametrize("n_ctx, config", [(64, (64, 64)), (100, (32, 16))], ids=["even", "ragged"])
def test_flash_attention_matches_sdpa(dtype, stage, n_ctx, config):
    key = ATTENTION.make_key({"BH": 2, "N_CTX": n_ctx, "HEAD_DIM": 32, "STAGE": stage}, dtype)
    run_and_compare(ATTENTION, key, {"BLOCK_M": config[0], "BLOCK_N": config[1], "num_warps": 4, "num_stages": 1})


def test_flash_attention_causal_differs_from_full():
    # the tolerance would catch a kernel that ignored STAGE
    full, causal = (ATTENTION.make_key({"BH": 1, "N_CTX": 64, "HEAD_DIM": 16, "STAGE": s}, "float16") for s in (1, 3))
    inputs = ATTENTION.make_inputs(full, "cpu", 0)
    atol, rtol = ATTENTION.tolerances["float16"]
    assert not torch.allclose(ATTENTION.reference(inputs).float(),
                              ATTENTION.reference(inputs._replace(causal=True)).float(), atol=atol, rtol=rtol)
    assert ATTENTION.make_inputs(causal, "cpu", 0).causal


# ---- defaults, known-good lists ----------------------------------------------------------------
def _lora_shapes(spec, n=40, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        m = rng.choice([1, 2, 16, 33, 127, 128, 512, 4096])
        out.append({"M": m, spec.hidden: rng.choice([64, 1000, 4096, 14336]), "RANK": rng.choice([8, 16, 64, 128, 256]),
                    "SLICES": rng.choice([1, 2, 3]), "LORAS": rng.randint(1, 8)})
    return out


@pytest.mark.parametrize("arch", GPUS + ("interpreter",))
@pytest.mark.parametrize("spec", [SHRINK, EXPAND], ids=lambda s: s.name)
def test_lora_default_is_valid_and_is_vllms_on_gpus(spec, arch):
    target = target_for(arch)
    for dims in _lora_shapes(spec):
        for dtype in ("bfloat16", "float32"):
            key = spec.make_key(dims, dtype)
            config = spec.default(key, target)
            assert spec.check(config, key, target) is None, (key.label(), arch, config)
            if arch in ("sm_90", "gfx942") and dtype == "bfloat16":  # the baseline is vLLM's launch, as it is
                assert config == spec.vllm_default(key), (key.label(), arch)
            for good in spec.known_good(key, target):
                assert spec.check(good, key, target) is None, (key.label(), arch, good)


def test_lora_defaults_are_vllms():
    # vllm/lora/ops/triton_ops/utils.py get_lora_op_configs, with no tuned file
    assert lora_shrink.vllm_default(16) == {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 256, "SPLIT_K": 64,
                                            "num_warps": 4, "num_stages": 2}
    assert lora_shrink.vllm_default(128)["BLOCK_K"] == 32 and lora_shrink.vllm_default(128)["SPLIT_K"] == 8
    assert [lora_expand.vllm_default(s)["BLOCK_N"] for s in (1, 2, 3)] == [128, 64, 64]
    assert lora_expand.vllm_default(1)["BLOCK_K"] == 16 and lora_expand.vllm_default(1)["BLOCK_M"] == 64


def _attention_shapes():
    return [{"BH": bh, "N_CTX": n, "HEAD_DIM": hd, "STAGE": st} for bh in (1, 64) for n in (1, 17, 128, 1000, 8192)
            for hd in (16, 64, 128, 256) for st in (1, 3)]


@pytest.mark.parametrize("arch", GPUS + ("interpreter",))
def test_flash_attention_default_and_known_good_are_valid(arch):
    target = target_for(arch)
    for dims in _attention_shapes():
        for dtype in DTYPES:
            key = ATTENTION.make_key(dims, dtype)
            config = ATTENTION.default(key, target)
            assert ATTENTION.check(config, key, target) is None, (key.label(), arch, config)
            for good in ATTENTION.known_good(key, target):
                assert ATTENTION.check(good, key, target) is None, (key.label(), arch, good)


def test_flash_attention_seeds_are_the_tutorials():
    key = ATTENTION.make_key({"BH": 32, "N_CTX": 4096, "HEAD_DIM": 64, "STAGE": 1}, "float16")
    nvidia = ATTENTION.known_good(key, target_for("sm_90"))
    assert {(c["BLOCK_M"], c["BLOCK_N"], c["num_stages"]) for c in nvidia} == \
        {(bm, bn, s) for bm in (64, 128) for bn in (32, 64) for s in (3, 4, 7)}
    assert all(c["num_warps"] == 4 for c in nvidia) and nvidia[0]["BLOCK_M"] * nvidia[0]["BLOCK_N"] == 128 * 64
    amd = ATTENTION.known_good(key, target_for("gfx942"))
    assert len(amd) == 4 and all(c["num_stages"] == 1 and c["waves_per_eu"] == 3 for c in amd)
    wide = ATTENTION.make_key({**key.dim_map, "HEAD_DIM": 128}, "float16")
    assert {c["waves_per_eu"] for c in ATTENTION.known_good(wide, target_for("gfx942"))} == {2}


def test_spaces_per_target():
    for spec in (SHRINK, EXPAND):
        amd = spec.space(target_for("gfx942"))
        # vLLM's LoRA configuration has no field for the AMD knobs: not tuned, so every export is exact
        assert not {"waves_per_eu", "matrix_instr_nonkdim", "kpack"} & set(amd)
    assert "SPLIT_K" in SHRINK.space(target_for("sm_90")) and "SPLIT_K" in SHRINK.space(target_for("gfx942"))
    amd = ATTENTION.space(target_for("gfx942"))
    assert amd["matrix_instr_nonkdim"] == (16, 32) and 3 in amd["waves_per_eu"]
    config = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 1, "waves_per_eu": 2,
              "matrix_instr_nonkdim": 16}
    assert ATTENTION.split_config(config, "nvidia") == ({"BLOCK_M": 128, "BLOCK_N": 64},
                                                        {"num_warps": 4, "num_stages": 1})


# ---- check() and make_key name the reason --------------------------------------------------
def _skey(**kw):
    return SHRINK.make_key({"M": 4096, "K": 4096, "RANK": 128, "SLICES": 1, "LORAS": 4, **kw}, "bfloat16")


def _ekey(**kw):
    return EXPAND.make_key({"M": 4096, "N": 4096, "RANK": 128, "SLICES": 1, "LORAS": 4, **kw}, "bfloat16")


def _akey(**kw):
    return ATTENTION.make_key({"BH": 32, "N_CTX": 4096, "HEAD_DIM": 128, "STAGE": 1, **kw}, "bfloat16")


def _sc(bm, bn, bk, sk, w=4, s=2):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "num_warps": w, "num_stages": s}


def _ec(bm, bn, bk, w=4, s=2):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w, "num_stages": s}


def _ac(bm, bn, w=4, s=3, **amd):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s, **amd}


@pytest.mark.parametrize("spec, arch, config, key, reason", [
    (SHRINK, "sm_90", _sc(64, 64, 64, 1), _skey(RANK=16), "larger than the problem"),
    (SHRINK, "sm_90", _sc(64, 16, 256, 1), _skey(M=8, LORAS=2), "larger than the problem"),
    (SHRINK, "sm_90", _sc(16, 16, 512, 16), _skey(), "split-K larger than the problem"),
    (SHRINK, "sm_90", _sc(128, 128, 512, 1, 8, 5), _skey(), "shared memory"),
    (SHRINK, "gfx942", _sc(128, 128, 256, 1, 4, 2), _skey(), "LDS"),
    (SHRINK, "sm_90", _sc(128, 128, 64, 1, 2, 2), _skey(), "registers"),
    (SHRINK, "gfx942", {**_sc(64, 64, 64, 1), "waves_per_eu": 2}, _skey(), "unknown waves_per_eu"),
    (EXPAND, "sm_90", _ec(64, 256, 16), _ekey(N=100), "larger than the problem"),
    (EXPAND, "sm_90", _ec(128, 256, 128, 8, 4), _ekey(), "shared memory"),
    (EXPAND, "sm_90", _ec(16, 256, 16, 4, 5), _ekey(), "outside"),
    (ATTENTION, "sm_90", _ac(128, 256), _akey(N_CTX=100), "larger than the problem"),
    (ATTENTION, "sm_90", _ac(64, 128), _akey(STAGE=3), "causal blocks"),
    (ATTENTION, "sm_90", _ac(128, 128, 8, 7), _akey(), "shared memory"),
    (ATTENTION, "sm_90", _ac(256, 128, 4, 2), _akey(), "registers"),
    (ATTENTION, "gfx942", _ac(64, 64, 4, 1, waves_per_eu=0, matrix_instr_nonkdim=16), _akey(HEAD_DIM=256, N_CTX=8192,
                                                                                          BH=1), None),
    (ATTENTION, "gfx942", _ac(16, 64, 4, 1, waves_per_eu=0, matrix_instr_nonkdim=32), _akey(), "nonkdim"),
    (ATTENTION, "interpreter", _ac(64, 64, 4, 1), _akey(), None),
])
def test_check_names_the_reason(spec, arch, config, key, reason):
    got = spec.check(config, key, target_for(arch))
    assert (got is None) if reason is None else (got is not None and reason in got), got


@pytest.mark.parametrize("spec, dims, message", [
    (EXPAND, {"M": 8, "N": 64, "RANK": 8, "SLICES": 1}, "missing LORAS"),
    (ATTENTION, {"BH": 1, "N_CTX": 64, "HEAD_DIM": 96, "STAGE": 1}, "HEAD_DIM=96"),
    (ATTENTION, {"BH": 1, "N_CTX": 64, "HEAD_DIM": 64, "STAGE": 2}, "STAGE=3 for causal"),
])
def test_make_key_rejects_what_the_kernels_cannot_serve(spec, dims, message):
    with pytest.raises(SpecError, match=message):
        spec.make_key(dims, "float16")


def test_versions_cover_the_shared_lora_module():
    # both kernels hash search_spaces/lora.py too: an edit there is a new version of each
    assert len({SHRINK.version, EXPAND.version, ATTENTION.version}) == 3
    import inspect

    from search_spaces import lora
    assert "def tile_resources" in inspect.getsource(lora)
    import hashlib
    own = hashlib.sha256(inspect.getsource(lora_shrink).encode()).hexdigest()[:12]
    assert SHRINK.version != own


def test_flops_and_trial_bytes():
    key = SHRINK.make_key({"M": 16, "K": 4096, "RANK": 16, "SLICES": 3, "LORAS": 4}, "bfloat16")
    assert SHRINK.flops(key) == 2 * 16 * 4096 * 16 * 3 and SHRINK.trial_bytes(key) > 3 * 4 * 16 * 4096 * 2
    causal = ATTENTION.make_key({"BH": 2, "N_CTX": 128, "HEAD_DIM": 64, "STAGE": 3}, "float16")
    assert ATTENTION.flops(causal) * 2 == ATTENTION.flops(ATTENTION.make_key({**causal.dim_map, "STAGE": 1}, "float16"))
    assert EXPAND.trial_bytes(_ekey()) > 4096 * 4096 * 2 * 2
