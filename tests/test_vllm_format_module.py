"""tuner/formats/vllm.py and sglang.py in this process (the CLI tests of tests/test_vllm_formats.py
reach them only in a child process, where a mutation run cannot see them): the names and very
bytes written, which entry wins a file, a file name's kernel and dtypes, a file's entries read,
skipped or dropped each for its reason, size caps, seed bounds, a device name's class, SGLang's
names and shipped folder."""
import json

import pytest

from tests.test_vllm_formats import SPEC, VLLM_DATA, sglang_lookup, vllm_lookup
from tuner.formats import Written, vllm


H100_SHIPPED = "E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json"
FP8_SHIPPED = "E=128,N=384,device_name=NVIDIA_H100,dtype=fp8_w8a8,block_shape=[128,128].json"


def _moe_entry(dims, config, dtype="bfloat16", names=("NVIDIA H100 80GB HBM3",), tuned_at="2026-12-01T00:00:00",
               kernel=None, triton="3.6.0"):
    kernel = kernel or ("fused_moe_quant" if dtype.startswith(("fp8", "int8")) else "fused_moe")
    e = {"kernel": kernel, "key": {"dims": dims}, "dtype": dtype, "config": config, "tuned_at": tuned_at,
         "stack": {"triton": triton}}
    if names is not None:
        e["device_names"] = list(names)
    return e


def _shipped_entries(file, dtype, names):
    """The entries whose export is a shipped vLLM file, each configuration's keys in reverse order."""
    dims = vllm.parse_name(file)[0]
    return [_moe_entry({"E": dims["E"], "N": dims["N"], "K": 4096, "topk": 2, "M": int(m)},
                       dict(reversed(list(c.items()))), dtype, names)
            for m, c in json.loads((VLLM_DATA / file).read_text()).items()]


def test_an_export_writes_vllm_s_names_and_the_very_bytes_of_its_tuning_script(tmp_path):
    """vLLM's benchmark_moe.py writes json.dump(indent=4) and a newline, its keys in its order: an
    export of the same tables is byte for byte the files vLLM ships, under the names its lookup asks."""
    h100 = _shipped_entries(H100_SHIPPED, "bfloat16", ["NVIDIA H100 80GB HBM3"])
    fp8 = _shipped_entries(FP8_SHIPPED, "fp8_w8a8_block128", ["NVIDIA H100"])
    one = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1, "num_warps": 4,
           "num_stages": 3, "waves_per_eu": 0}
    dims = {"E": 4, "N": 64, "K": 128, "topk": 2, "M": 1}
    others = [_moe_entry(dims, one, "float32", ["NVIDIA H200 NVL"]),  # the H200 family: one name
              _moe_entry(dims, one, "int8_w8a16", ["NVIDIA GH200 480GB"]),  # a GH200 is no H200
              _moe_entry(dims, one, "float16", ["NVIDIA GeForce RTX 4090", "NVIDIA RTX 4090"]),
              _moe_entry(dims, one, "float16", names=None),  # no device name: nothing to name a file by
              {**_moe_entry({"M": 16, "N": 64}, {"BLOCK": 64}), "kernel": "softmax"}]  # declares no vLLM export
    written = vllm.write(h100 + fp8 + others, tmp_path)
    assert written == Written(len(h100) + len(fp8) + 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        H100_SHIPPED, FP8_SHIPPED, "E=4,N=64,device_name=NVIDIA_H200,dtype=float32.json",
        "E=4,N=64,device_name=NVIDIA_GH200_480GB,dtype=int8_w8a16.json",
        "E=4,N=64,device_name=NVIDIA_GeForce_RTX_4090.json", "E=4,N=64,device_name=NVIDIA_RTX_4090.json"])
    for shipped in (H100_SHIPPED, FP8_SHIPPED):
        assert (tmp_path / shipped).read_bytes() == (VLLM_DATA / shipped).read_bytes(), shipped
    assert json.loads((tmp_path / "E=4,N=64,device_name=NVIDIA_H200,dtype=float32.json").read_text()) == {"1": one}
    device = "NVIDIA H200 NVL"  # vLLM's own lookup finds it
    assert vllm_lookup((4, 128, 64), "float32", 1, device, str(tmp_path), "") == one


def test_where_two_entries_land_on_one_file_and_batch_the_one_tuned_last_wins(tmp_path):
    dims = {"E": 8, "N": 64, "K": 128, "topk": 2, "M": 4}
    new = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}
    old = {"BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8}
    entries = [_moe_entry(dims, new, "bfloat16", tuned_at="2026-12-02T00:00:00"),
               _moe_entry(dims, old, "float16", tuned_at="2026-12-01T00:00:00")]  # bf16 and fp16: one file
    assert vllm.write(entries, tmp_path).count == 1
    assert json.loads((tmp_path / "E=8,N=64,device_name=NVIDIA_H100_80GB_HBM3.json").read_text()) == {"4": new}


NAME_HEAD = {"E": 8, "N": 64, "device": "NVIDIA_H100"}


@pytest.mark.parametrize("name, expected", [
    ("E=8,N=64,device_name=NVIDIA_H100.json", ({**NAME_HEAD, "kernel": "fused_moe", "dtypes": ["bfloat16", "float16"]}, None)),
    ("E=8,N=64,device_name=NVIDIA_H100,dtype=float32.json", ({**NAME_HEAD, "kernel": "fused_moe", "dtypes": ["float32"]}, None)),
    ("E=8,N=64,device_name=NVIDIA_H100,dtype=int8_w8a16.json",
     ({**NAME_HEAD, "kernel": "fused_moe_quant", "dtypes": ["int8_w8a16"]}, None)),
    ("E=8,N=64,device_name=NVIDIA_H100,dtype=fp8_w8a8.json",
     ({**NAME_HEAD, "kernel": "fused_moe_quant", "dtypes": ["fp8_w8a8"]}, None)),
    ("E=8,N=64,device_name=NVIDIA_H100,dtype=fp8_w8a8,block_shape=[128, 128].json",
     ({**NAME_HEAD, "kernel": "fused_moe_quant", "dtypes": ["fp8_w8a8_block128"]}, None)),
    ("E=8,N=64,device_name=NVIDIA_H100,dtype=fp8_w8a8,block_shape=[64,128].json",
     (None, "dtype=fp8_w8a8,block_shape=[64,128]: a quantization no kernel here runs")),
    ("E=8,N=64,device_name=NVIDIA_H100,block_shape=[128,128].json",
     (None, "dtype=None,block_shape=[128,128]: a quantization no kernel here runs")),
    ("E=8,N=64,device_name=NVIDIA_H100,dtype=int4_w4a16.json", (None, "dtype=int4_w4a16: a quantization no kernel here runs")),
    ("E=8,N=64,device_name=NVIDIA_H100,dtype=" + "q" * 40 + ".json",
     (None, "dtype=" + "q" * 30 + ": a quantization no kernel here runs")),
    ("E=8,N=64,device_name=NVIDIA_H100,dtype=float32,use_int4=1.json", (None, "use_int4=1: not a selector this kernel has")),
    ("E=8,N=64,device_name=NVIDIA_H100,Xtra=1.json", (None, "Xtra=1: not a selector this kernel has")),  # only commas cut
    ("E=8,N=64,device_name=NVIDIA_H100,x=" + "a" * 50 + ".json", (None, "x=" + "a" * 38 + ": not a selector this kernel has")),
    ("README.md", (None, "not a fused-MoE config name (E=..,N=..,device_name=...json)")),
])
def test_a_file_name_says_which_kernel_and_dtypes_it_serves_or_why_it_is_skipped(name, expected):
    head, why = expected
    assert vllm.parse_name(name) == (head and {**head, "file": name}, why)


def _write_config(tmp_path, doc, name="E=8,N=64,device_name=NVIDIA_H100.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


BLOCKS = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64}
BOUNDS = {"BLOCK_SIZE_M": (1, 1024), "BLOCK_SIZE_N": (1, 1024), "BLOCK_SIZE_K": (1, 1024), "num_warps": (1, 32),
          "o" * 40: (1, 8)}


def test_a_file_s_entries_are_read_skipped_or_dropped_each_for_its_reason(tmp_path):
    doc = {"triton_version": "3.4.0",
           "1": {**BLOCKS, "num_warps": 4096},  # out of range: skipped, and the next entries still read
           "2": {**BLOCKS, "num_warps": True},  # a bool is not an integer, though True == 1
           "4": {**BLOCKS, "num_warps": 32, "SPLIT_K": 1},  # the highest value accepted; an integer option dropped
           "8": {**BLOCKS, "kpack_x": 2},  # dropped too: every entry's options are listed
           "16": {**BLOCKS, "o" * 40: 10 ** 25},
           "32": {**BLOCKS, "g" * 40: "v" * 30},  # an option this kernel has not, not an integer
           "1048576": dict(BLOCKS)}  # the largest batch size; the three block sizes alone are a configuration
    name = "E=8,N=64,device_name=NVIDIA_H100.json"
    got, why = vllm.read_file(_write_config(tmp_path, doc, name), BOUNDS)
    assert why is None
    assert got == {**NAME_HEAD, "kernel": "fused_moe", "dtypes": ["bfloat16", "float16"], "file": name,
                   "table": {4: {**BLOCKS, "num_warps": 32}, 8: BLOCKS, 1048576: BLOCKS},
                   "dropped": ["SPLIT_K", "kpack_x"],
                   "skipped": [{"file": name, "entry": 1, "why": "num_warps=4096 is out of range (1 to 32)"},
                               {"file": name, "entry": 2, "why": "num_warps=True is out of range (1 to 32)"},
                               {"file": name, "entry": 16,
                                "why": f"{'o' * 30}={'1' + '0' * 19} is out of range (1 to 8)"},
                               {"file": name, "entry": 32,
                                "why": f"option {'g' * 30}={'v' * 20} is not one this kernel has"}]}
    assert vllm.read_file(tmp_path / "README.md", BOUNDS) == (None, vllm.parse_name("README.md")[1])


LONG = "E=8,N=64,device_name=" + "X" * 70 + ".json"  # a name longer than the 80 characters a message keeps


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not readable JSON (Expecting property name enclosed in double quotes: line 1 co)"),
    ("[1, 2]", "holds no table of batch sizes"),
    ("[" * 100_000 + "]" * 100_000, "nests deeper than a vLLM config ({batch size: {option: value}})"),
    ('{"one": {}}', ": entry 'one' is not a batch size (1 to 1048576) with a configuration"),
    ('{"0": {}}', ": entry '0' is not a batch size (1 to 1048576) with a configuration"),
    ('{"1048577": {}}', ": entry '1048577' is not a batch size (1 to 1048576) with a configuration"),
    ('{"' + "1" * 25 + '": {}}', f": entry '{'1' * 20}' is not a batch size (1 to 1048576) with a configuration"),
    ('{"1": 5}', ": entry '1' is not a batch size (1 to 1048576) with a configuration"),
    ('{"1": {"BLOCK_SIZE_M": [16], "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64}}',
     ": entry 1 nests deeper than a vLLM config ({option: value})"),
    ('{"1": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32}}', ": entry 1 needs BLOCK_SIZE_M, _N and _K"),
])
def test_a_file_that_is_no_vllm_config_is_malformed_in_one_line_naming_it(tmp_path, content, message):
    with pytest.raises(vllm.Malformed) as err:
        vllm.read_file(_write_config(tmp_path, content, LONG), BOUNDS)
    sep = "" if message.startswith(":") else " "
    assert str(err.value) == LONG[:80] + sep + message


def test_a_file_over_16_mb_is_refused_unread_and_one_of_16_mb_is_read(tmp_path):
    path = tmp_path / LONG
    with open(path, "wb") as f:
        f.truncate(16 * 1024 * 1024 + 1)  # sparse: no 16 MB written
    with pytest.raises(vllm.Malformed) as err:
        vllm.read_file(path, BOUNDS)
    assert str(err.value) == LONG[:80] + " is over 16 MB, which no vLLM config file is"
    with open(path, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    with pytest.raises(vllm.Malformed, match="is not readable JSON"):  # read, then refused for what it holds
        vllm.read_file(path, BOUNDS)


def test_an_imported_seed_s_values_are_bounded_by_four_times_the_largest_of_any_target_s_space():
    # fused_moe's spaces (search_spaces/fused_moe.py): blocks up to 256, GROUP_SIZE_M 64 on sm_90
    # (32 on gfx942, 8 on the interpreter), warps up to 8, stages up to 5; the ROCm knobs on gfx942
    # only: waves_per_eu up to 4, matrix_instr_nonkdim 32, kpack 2. vLLM's ROCm files write 0 stages
    # and 0 waves.
    assert vllm.seed_bounds(SPEC) == {
        "BLOCK_SIZE_M": (1, 1024), "BLOCK_SIZE_N": (1, 1024), "BLOCK_SIZE_K": (1, 1024), "GROUP_SIZE_M": (1, 256),
        "num_warps": (1, 32), "num_stages": (0, 20), "waves_per_eu": (0, 16), "matrix_instr_nonkdim": (1, 128),
        "kpack": (1, 8)}


def test_a_file_s_device_name_is_placed_on_its_class_or_its_family():
    known = {"h100-sxm-80gb": ("NVIDIA H100 80GB HBM3", "NVIDIA H100"), "h200-141gb": ("NVIDIA H200",),
             "h200-nvl-141gb": ("NVIDIA H200 NVL",), "rtx-4090": ("NVIDIA GeForce RTX 4090",)}
    aliases = {"h100": ("h100-sxm-80gb", "h100-pcie-80gb"), "h200": ("h200-141gb", "h200-nvl-141gb"),
               "nvidia": tuple(known)}
    assert vllm.device_selector("NVIDIA_H100", known, aliases) == "h100-sxm-80gb"
    assert vllm.device_selector("NVIDIA_GeForce_RTX_4090", known, aliases) == "rtx-4090"
    # both H200s write NVIDIA_H200: the family they share, the first alias holding exactly them
    assert vllm.device_selector("NVIDIA_H200", known, aliases) == "h200"
    assert vllm.device_selector("NVIDIA_H200", known, {"nvidia": tuple(known), "h200": aliases["h200"]}) == "nvidia"
    assert vllm.device_selector("NVIDIA_B200", known, aliases) is None
    assert vllm.device_selector("NVIDIA_H200", known, {"h100": aliases["h100"]}) is None


def test_sglang_s_names_keep_the_block_shape_s_space_and_a_version_without_numbers_is_0():
    from tuner.formats import sglang

    assert sglang.file_name(8, 64, "NVIDIA H100", "fp8_w8a8", [128, 128]) == \
        "E=8,N=64,device_name=NVIDIA_H100,dtype=fp8_w8a8,block_shape=[128, 128].json"
    assert sglang.file_name(8, 64, "NVIDIA H100") == "E=8,N=64,device_name=NVIDIA_H100.json"
    assert sglang.folder("unknown") == "configs/triton_0"


def test_an_sglang_export_in_this_process_names_files_by_dtype_and_triton_version(tmp_path):
    from tuner.formats import Ask, sglang

    one = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}
    dims = {"E": 8, "N": 64, "K": 128, "topk": 2, "M": 1}
    entries = [_moe_entry(dims, one, "float32", ["NVIDIA H100"]), _moe_entry(dims, one, "bfloat16", ["NVIDIA H100"]),
               _moe_entry(dims, one, "fp8_w8a8_block128", ["NVIDIA H100"]),
               _moe_entry(dims, one, "bfloat16", ["NVIDIA H100"], triton="3.4.0+git1")]
    for ask in (None, Ask()):  # no shipped folder either way
        out = tmp_path / str(ask)
        out.mkdir()
        assert sglang.write(entries, out, ask) == Written(4)
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*.json")) == [
            "configs/triton_3_4_0/E=8,N=64,device_name=NVIDIA_H100.json",
            "configs/triton_3_6_0/E=8,N=64,device_name=NVIDIA_H100,dtype=float32.json",
            "configs/triton_3_6_0/E=8,N=64,device_name=NVIDIA_H100,dtype=fp8_w8a8,block_shape=[128, 128].json",
            "configs/triton_3_6_0/E=8,N=64,device_name=NVIDIA_H100.json"]
        assert sglang_lookup((8, 128, 64), "float32", 1, "NVIDIA H100", "3.6.0", str(out)) == one


def test_sglang_s_shipped_folder_is_its_configs_folder_or_one_holding_it(tmp_path):
    """--with-shipped takes SGLang's configs folder itself too; a file of ours on a name SGLang
    ships none of is written beside the shipped ones; a shipped folder without a version folder,
    or with a file SGLang could not read, is refused in one line naming it (its first 80 characters)."""
    from tuner.errors import UserError
    from tuner.formats import Ask, sglang

    configs = tmp_path / "sglang_configs" / "configs"
    (configs / "triton_3_6_0").mkdir(parents=True)
    shipped = {"1": {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}}
    (configs / "triton_3_6_0" / "E=8,N=7168,device_name=NVIDIA_H100.json").write_text(json.dumps(shipped))
    ours = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}
    entries = [_moe_entry({"E": 8, "N": 64, "K": 128, "topk": 2, "M": 1}, ours, "bfloat16", ["NVIDIA H100"])]
    out = tmp_path / "out"
    out.mkdir()
    written = sglang.write(entries, out, Ask(shipped=configs))
    assert written.count == 1 and written.notes == ("copied 1 of SGLang's shipped file(s), 0 of them with our "
                                                    "batch sizes merged in",)
    assert sglang_lookup((8, 128, 64), None, 1, "NVIDIA H100", "3.6.0", str(out)) == ours
    assert sglang_lookup((8, 128, 7168), None, 1, "NVIDIA H100", "3.6.0", str(out)) == shipped["1"]

    empty = tmp_path / ("a-folder-whose-name-is-long-enough-to-be-cut-" * 2) / "configs"
    empty.mkdir(parents=True)
    with pytest.raises(UserError) as err:
        sglang.write(entries, out, Ask(shipped=empty))
    assert str(err.value) == (f"--with-shipped {str(empty)[:80]}: no triton_* folder in it; give SGLang's "
                              "python/sglang/srt/layers/moe/fused_moe_triton/configs")
    bad = "E=8,N=64,device_name=" + "X" * 70 + ".json"
    (configs / "triton_3_6_0" / bad).write_text("[1, 2]")
    with pytest.raises(UserError) as err:
        sglang.write(entries, out, Ask(shipped=configs))
    assert str(err.value) == f"--with-shipped: {bad[:80]} is not a config file SGLang could read; nothing was written"
