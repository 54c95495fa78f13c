"""vLLM's LoRA files (`tuner export --format vllm-lora`) read back with vLLM's own lookup
(tests/vllm_lora_lookup.py, which cites the vLLM lines it follows): every request a server started
with --max-loras L makes is served the configuration tuned for exactly that request, and no file
lacks a num_slices vLLM asks (it has no nearest num_slices: a KeyError in the server)."""
from datetime import datetime, timedelta, timezone

import pytest

from search_spaces import registry
from tests.vllm_lora_lookup import get_lora_op_configs, launch_fields, layer_requests, server_max_loras
from tuner import presets
from tuner.errors import UserError
from tuner.formats import Ask, vllm_lora

GPU = "NVIDIA H100 80GB HBM3"
HIDDEN = {"shrink": "K", "expand": "N"}


def entry(kernel, dims, config, minutes=0, version=None):
    at = datetime(2026, 12, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes)
    version = version or registry.get(kernel).version
    return {"kernel": kernel, "kernel_version": version, "key": {"kernel": kernel, "version": version, "dims": dims,
            "dtype": "bfloat16"}, "dtype": "bfloat16", "device_class": "h100-sxm-80gb", "device_names": [GPU],
            "config": config, "tuned_at": at.isoformat()}


def config_number(i, kernel):
    """A configuration told apart from every other by its numbers (i), in the kernel's fields."""
    c = {"BLOCK_M": 16 << (i % 3), "BLOCK_N": 16 << (i % 4), "BLOCK_K": 32, "num_warps": 4, "num_stages": 2 + i}
    return {**c, "SPLIT_K": 1 + i % 5} if kernel == "lora_shrink" else c


@pytest.mark.parametrize("max_loras", [1, 2, 4])
def test_every_request_of_a_lora_server_finds_the_key_tuned_for_it(max_loras, tmp_path):
    """llama-3-8b at tp 2, rank 16: a server started with --max-loras L asks, for each batch M and
    each dense layer, (max_loras = L + 1, num_slices, M, k, n); each is served the configuration
    stored for exactly that layer, M and L, and every configuration differs from every other."""
    model, tp, rank, sizes = presets.load("llama-3-8b"), 2, 16, (1, 2, 3, 4, 5, 8, 16, 64)
    keys = model.lora_keys(tp, sizes, (rank,), max_loras)
    entries, stored = [], {}
    for i, (kernel, dims) in enumerate((k, d) for k, ds in sorted(keys.items()) for d in ds):
        config = config_number(i, kernel)
        entries.append(entry(kernel, dims, config))
        stored[(kernel, tuple(sorted(dims.items())))] = vllm_lora.vllm_config(config)
    assert len({str(v) for v in stored.values()}) == len(stored)
    written = vllm_lora.write(entries, tmp_path, Ask(model.lora_slices()))
    assert written.count == len(entries) and written.notes == ()
    asked = 0
    for layer in (la for la in model.layers if la.kind == "dense"):
        for op, (hidden, slices) in layer_requests(dict(layer.dims), layer.parts, layer.split, tp).items():
            for m in sizes:
                got = get_lora_op_configs(str(tmp_path), GPU, op, server_max_loras(max_loras), m, hidden, rank, slices,
                                          add_inputs=True if op == "expand" else None)
                want = {"M": m, HIDDEN[op]: hidden, "RANK": rank, "SLICES": slices, "LORAS": max_loras}
                assert got == stored[(f"lora_{op}", tuple(sorted(want.items())))], (layer.name, op, m)
                launch_fields(op, got)
                asked += 1
    assert asked == 4 * 2 * len(sizes)


def test_a_kernel_level_export_fills_every_num_slices_vllm_asks_and_says_from_which(tmp_path):
    """The README's single-kernel example tunes SLICES=3 (a fused qkv) only: o_proj (1 slice) and
    gate_up (2) would raise in vLLM. Their levels are filled from the tuned SLICES=3, and said so;
    with fill=False the export is refused with the list, and nothing is written."""
    dims = {"M": 16, "K": 4096, "RANK": 16, "SLICES": 3, "LORAS": 4}
    entries = [entry("lora_shrink", dims, config_number(0, "lora_shrink")),
               entry("lora_expand", {**dims, "N": 4096}, config_number(1, "lora_expand"))]
    with pytest.raises(UserError, match=r"max_loras 5: num_slices 1, 2.*nothing was written"):
        vllm_lora.write(entries, tmp_path, Ask(fill=False))
    assert list(tmp_path.iterdir()) == []
    written = vllm_lora.write(entries, tmp_path)
    assert written.count == 2 and len(written.notes) == 4
    assert "NVIDIA_H100_80GB_HBM3_SHRINK.json max_loras 5: num_slices 1 filled from the configurations tuned at " \
           "SLICES=3" in written.notes[2]
    for slices in (1, 2, 3):
        for op in ("shrink", "expand"):
            got = get_lora_op_configs(str(tmp_path), GPU, op, 5, 16, 4096, 16, slices,
                                      add_inputs=True if op == "expand" else None)
            assert got == vllm_lora.vllm_config(entries[op == "expand"]["config"])
    # a layer that does not add (add_inputs=False) finds no file: vLLM's default, never a KeyError
    assert get_lora_op_configs(str(tmp_path), GPU, "expand", 5, 16, 4096, 16, 1, add_inputs=False) is None


def test_a_model_export_covers_the_models_num_slices(tmp_path):
    """A model's layers run num_slices 1, 2 and 3 (llama) and the export holds each; a model whose
    layers run one slice count needs no fill."""
    llama = presets.load("llama-3-8b")
    assert llama.lora_slices() == (1, 2, 3)
    dims = {"M": 1, "K": 4096, "RANK": 8, "SLICES": 1, "LORAS": 2}
    written = vllm_lora.write([entry("lora_shrink", dims, config_number(0, "lora_shrink"))], tmp_path,
                              Ask(llama.lora_slices()))
    assert [n.split(": ")[1][:12] for n in written.notes] == ["num_slices 2", "num_slices 3"]
    assert vllm_lora.write([entry("lora_shrink", dims, config_number(0, "lora_shrink"))], tmp_path,
                           Ask((1,))).notes == ()


def test_rows_of_the_old_key_are_left_out_and_said_so(tmp_path):
    """Before this version LORAS was min(--max-loras, M): such a row (an older kernel version)
    cannot be placed at a max_loras level, and the export says it left it out."""
    dims = {"M": 1, "K": 4096, "RANK": 8, "SLICES": 1, "LORAS": 1}
    written = vllm_lora.write([entry("lora_shrink", dims, config_number(0, "lora_shrink"), version="0123456789ab"),
                               entry("lora_shrink", {**dims, "M": 2}, config_number(1, "lora_shrink"))],
                              tmp_path, Ask((1,)))
    assert written.count == 1
    assert written.notes == ("left out 1 lora_shrink row(s) of an older kernel version, whose LORAS was "
                             "min(--max-loras, M): tune those keys again",)


def test_servers_of_neighbouring_max_loras_each_find_their_own_level(tmp_path):
    """One file tuned for --max-loras 4 and 5: a server started with --max-loras 4 asks max_loras 5
    (lora_ids.size(0)), and must get the L=4 configuration, not the L=5 one."""
    dims = {"M": 16, "K": 4096, "RANK": 16, "SLICES": 1}
    by_l = {loras: config_number(loras, "lora_shrink") for loras in (4, 5)}
    vllm_lora.write([entry("lora_shrink", {**dims, "LORAS": loras}, c) for loras, c in by_l.items()], tmp_path,
                    Ask((1,)))
    for loras, config in by_l.items():
        got = get_lora_op_configs(str(tmp_path), GPU, "shrink", server_max_loras(loras), 16, 4096, 16, 1)
        assert got == vllm_lora.vllm_config(config), loras
