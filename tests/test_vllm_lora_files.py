"""vLLM's LoRA files (`tuner export --format vllm-lora`) read back with vLLM's own lookup
(tests/vllm_lora_lookup.py, which cites the vLLM lines it follows): every request a server started
with --max-loras L makes is served the configuration tuned for exactly that request, and no file
lacks a num_slices vLLM asks (it has no nearest num_slices: a KeyError in the server)."""
import json
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


SHRINK_FILE = "NVIDIA_H100_80GB_HBM3_SHRINK.json"


def _shrink(loras, slices, i, m=16, minutes=0, dtype=None):
    e = entry("lora_shrink", {"M": m, "K": 256, "RANK": 16, "SLICES": slices, "LORAS": loras},
              config_number(i, "lora_shrink"), minutes)
    return {**e, "dtype": dtype} if dtype else e


def test_each_level_lacking_a_num_slices_gets_it_from_the_nearest_tuned_one(tmp_path):
    """max_loras 2 has every num_slices (nothing to fill); max_loras 3 lacks 3, which is nearer 2
    than 1: filled from 2, and said so. Filling is what files() does unless told not to."""
    entries = [_shrink(1, s, s) for s in (1, 2, 3)] + [_shrink(2, s, 10 + s) for s in (1, 2)]
    docs, tuned, notes = vllm_lora.files(entries)
    c = {i: vllm_lora.vllm_config(config_number(i, "lora_shrink")) for i in (1, 2, 3, 11, 12)}
    assert docs == {SHRINK_FILE: {"2": {str(s): {"16": {"256": {"16": c[s]}}} for s in (1, 2, 3)},
                                  "3": {"1": {"16": {"256": {"16": c[11]}}}, "2": {"16": {"256": {"16": c[12]}}},
                                        "3": {"16": {"256": {"16": c[12]}}}}}}
    assert tuned == 5
    assert notes == [f"{SHRINK_FILE} max_loras 3: num_slices 3 filled from the configurations tuned at SLICES=2 "
                     "(vLLM needs every num_slices its layers run); tune SLICES=3 to replace them"]


def test_an_export_told_not_to_fill_lists_what_it_lacks_in_its_first_300_characters():
    entries = [_shrink(loras, 1, loras) for loras in range(1, 7)]
    with pytest.raises(UserError) as err:
        vllm_lora.files(entries, fill=False)
    lacking = "; ".join(f"{SHRINK_FILE} max_loras {loras + 1}: num_slices 2, 3" for loras in range(1, 7))
    assert len(lacking) > 300
    assert str(err.value) == (f"vLLM raises on a num_slices its file lacks, and this export would leave out "
                              f"{lacking[:300]}: tune those SLICES, or export without --no-fill to fill them from "
                              "the nearest tuned num_slices; nothing was written")


def test_rows_of_other_kernels_are_passed_over_and_every_old_row_is_counted():
    softmax = {"kernel": "softmax", "kernel_version": "v", "key": {"dims": {"M": 1, "N": 64}}, "dtype": "bfloat16",
               "device_class": "h100-sxm-80gb", "device_names": [GPU], "config": {"BLOCK": 64}, "tuned_at": "x"}
    old = [{**_shrink(1, 1, i, m=i), "kernel_version": "0123456789ab"} for i in (1, 2)]
    docs, tuned, notes = vllm_lora.files([softmax, *old, _shrink(1, 1, 3)], slices=(1,))
    assert tuned == 1 and list(docs) == [SHRINK_FILE]
    assert notes == ["left out 2 lora_shrink row(s) of an older kernel version, whose LORAS was min(--max-loras, M): "
                     "tune those keys again"]


def test_only_a_newer_tuning_replaces_one_of_the_same_file_and_key():
    """bf16 and fp16 share vLLM's file: the newer tuning is written; one tuned at the same instant
    is not newer, and the one met first stays."""
    for first, second, want in ((0, 5, 2), (5, 0, 1), (0, 0, 1)):
        docs, _, _ = vllm_lora.files([_shrink(1, 1, 1, minutes=first, dtype="bfloat16"),
                                      _shrink(1, 1, 2, minutes=second, dtype="float16")], slices=(1,))
        assert docs[SHRINK_FILE]["2"]["1"]["16"]["256"]["16"] == \
            vllm_lora.vllm_config(config_number(want, "lora_shrink")), (first, second)


def test_a_kernel_declaring_the_format_without_an_op_is_refused_by_its_first_40_characters(monkeypatch):
    from search_spaces import registry

    name = "a_lora_kernel_whose_name_runs_past_forty_characters"
    monkeypatch.setattr(vllm_lora, "declared", lambda fmt: (name,))
    monkeypatch.setattr(registry.KERNELS, "load", lambda kernel: type("NoOp", (), {}))  # no vllm_lora_op at all
    with pytest.raises(UserError) as err:
        vllm_lora.ops()
    assert str(err.value) == (f"kernel {name[:40]} declares the vllm-lora export but no vllm_lora_op (the file's "
                              "op part, its k and n dims); nothing was written")


def test_a_file_is_indented_json_with_every_level_in_numeric_order(tmp_path):
    """One value a line, levels as numbers order them (10 after 2), a newline at the end: a file
    reads, and diffs, level by level."""
    written = vllm_lora.write([_shrink(1, 2, 1, m=16), _shrink(1, 2, 2, m=4)], tmp_path, Ask((2, 10)))
    assert written.count == 2
    c1, c2 = (vllm_lora.vllm_config(config_number(i, "lora_shrink")) for i in (1, 2))
    level = {"4": {"256": {"16": c2}}, "16": {"256": {"16": c1}}}
    assert (tmp_path / SHRINK_FILE).read_text() == json.dumps({"2": {"2": level, "10": level}}, indent=1) + "\n"
