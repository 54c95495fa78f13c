"""vLLM's and SGLang's fused-MoE config files: exported so that their own lookups find every tuned
key with the stored configuration, and vLLM's shipped files imported as seeds the search tries first.

The two lookups below follow the peers' code line by line (vLLM: fused_moe.py get_config_file_name,
get_moe_configs, try_get_optimal_moe_config; SGLang: fused_moe_triton_config.py the same three),
with the device name torch reports handed in instead of read from a GPU.
"""
import json
import os
import sqlite3

import pytest

from db import store
from db.session import session_scope, upgrade
from devices.classes import CPU_INTERPRETER, classify
from devices.fingerprint import live_fingerprint
from search.loop import SearchContext, imported_seeds, seed_configs
from search_spaces import registry
from keys import config_hash, nearest, stable_hash
from tests.cli_helpers import ROOT, run_json, run_tuner
from tests.test_cli_errors import assert_one_line_error
from tuner.formats import Written, vllm

VLLM_DATA = ROOT / "tests" / "data" / "vllm"
SPEC = registry.get("fused_moe")


# ---- the peers' lookups ---------------------------------------------------------------------
def vllm_config_file_name(E, N, dtype, device_name, block_shape=None):
    device_name = device_name.replace(" ", "_")
    if "H200" in device_name.split("_"):
        device_name = "NVIDIA_H200"
    dtype_selector = "" if not dtype else f",dtype={dtype}"
    block_shape_selector = ("" if not block_shape or not all(block_shape) else f",block_shape={block_shape}").replace(" ", "")
    return f"E={E},N={N},device_name={device_name}{dtype_selector}{block_shape_selector}.json"


def vllm_get_moe_configs(E, N, dtype, device_name, tuned_folder, bundled_folder):
    json_file_name = vllm_config_file_name(E, N, dtype, device_name)
    config_file_paths = []
    if tuned_folder is not None:
        config_file_paths.append(os.path.join(tuned_folder, json_file_name))
    config_file_paths.append(os.path.join(bundled_folder, json_file_name))
    for config_file_path in config_file_paths:
        if os.path.exists(config_file_path):
            with open(config_file_path) as f:
                tuned_config = json.load(f)
                tuned_config.pop("triton_version", None)
                return {int(key): val for key, val in tuned_config.items()}
    return None


def vllm_lookup(w2_shape, dtype, M, device_name, tuned_folder, bundled_folder):
    E, _, N = w2_shape
    configs = vllm_get_moe_configs(E, N, dtype, device_name, tuned_folder, bundled_folder)
    return configs[min(configs.keys(), key=lambda x: abs(x - M))] if configs else None


def sglang_lookup(w2_shape, dtype, M, device_name, triton_version, config_dir):
    E, _, N = w2_shape
    json_file_name = f"E={E},N={N},device_name={device_name.replace(' ', '_')}" + (f",dtype={dtype}" if dtype else "") + ".json"
    version_dir = f"triton_{triton_version.replace('.', '_')}"
    config_file_path = os.path.join(config_dir, "configs", version_dir, json_file_name)
    if not os.path.exists(config_file_path):
        return None
    with open(config_file_path) as f:
        configs = {int(key): val for key, val in json.load(f).items()}
    return configs[min(configs.keys(), key=lambda x: abs(x - M))]


def dtype_str(dtype):  # vLLM's and SGLang's get_config_dtype_str for unquantized weights
    return "float32" if dtype == "float32" else None


# ---- export ----------------------------------------------------------------------------------
TUNED = ["E=4,N=32,K=64,topk=2,M=1", "E=4,N=32,K=64,topk=2,M=16"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Keys tuned on the interpreter through the real CLI."""
    home = tmp_path_factory.mktemp("home")
    args = ["tune", "fused_moe", *[a for s in TUNED for a in ("--shape", s)], "--trials", "2", "--device", "cpu"]
    proc = run_tuner(args, home)
    assert proc.returncode == 0, proc.stderr
    return home


def test_vllm_and_sglang_find_every_tuned_key(tuned, tmp_path):
    home = tuned
    best = {tuple(sorted(r["key"].split()[0].split(","))): r["config"]
            for r in run_json(["best", "fused_moe", *[a for s in TUNED for a in ("--shape", s)]], home)}
    assert all(best.values())
    folder, sg = tmp_path / "vllm", tmp_path / "sglang"
    folder.mkdir()
    sg.mkdir()
    assert run_tuner(["export", "--format", "vllm", "-o", str(folder)], home).returncode == 0
    assert run_tuner(["export", "--format", "sglang", "-o", str(sg)], home).returncode == 0
    triton = run_json(["devices"], home)[0]["fingerprint"]["triton"]
    device = "Triton CPU interpreter"  # the interpreter class has no torch device name: its own name
    for shape in TUNED:
        dims = dict(p.split("=") for p in shape.split(","))
        e, n, k, m = (int(dims[x]) for x in ("E", "N", "K", "M"))
        want = best[tuple(sorted(shape.split(",")))]
        assert vllm_lookup((e, k, n), dtype_str("float32"), m, device, str(folder), str(tmp_path / "bundled")) == want
        assert sglang_lookup((e, k, n), dtype_str("float32"), m, device, triton, str(sg)) == want
    # a batch between the tuned ones gets the nearest (vLLM's run-time rule)
    assert vllm_lookup((4, 64, 32), "float32", 12, device, str(folder), "") == best[tuple(sorted(TUNED[1].split(",")))]
    assert [p.name for p in folder.iterdir()] == ["E=4,N=32,device_name=Triton_CPU_interpreter,dtype=float32.json"]


def props(product: str, **change) -> dict:
    return {**json.loads((ROOT / f"tests/data/device_props/{product}.json").read_text()), **change}


@pytest.fixture
def gpu_bests(db_url):
    """Bests of GPU classes registered from the properties torch reports on them, as a worker's
    registration stores them: an H100 SXM under its usual name and under the shorter one some
    drivers report, an H200 NVL, and an RTX 4090 the service knows by its numbers only."""
    upgrade(db_url)
    cases = [(props("h100_sxm"), "bfloat16", 1), (props("h100_sxm", name="NVIDIA H100"), "bfloat16", 64),
             (props("h200", name="NVIDIA H200 NVL"), "float32", 8), (props("rtx_4090"), "float16", 16)]
    out = []
    with session_scope(db_url) as s:
        for p, dtype, m in cases:
            dc = classify(p)
            fp = live_fingerprint(dc)
            dc_id, fp_id = store.store_identity(s, dc.to_json(), {**fp.to_json(), "hash": fp.hash})
            key = SPEC.make_key({"E": 8, "N": 14336, "K": 4096, "topk": 2, "M": m}, dtype)
            config = SPEC.known_good(key, dc.target)[1]
            store.write_best(s, kernel="fused_moe", kernel_version=key.version, key_hash=key.stable_hash,
                             key=key.to_json(), dtype=dtype, device_class_id=dc_id, fingerprint_id=fp_id, config=config,
                             config_hash=config_hash(config), median_ms=1.0, default_ms=2.0, speedup=2.0, cv=0.01,
                             trials=10, job_id=None)
            out.append((p["name"], dtype, m, config, fp.fields()["triton"]))
        names = store.device_names(s)
    assert names["h100-sxm-80gb"] == ["NVIDIA H100 80GB HBM3", "NVIDIA H100"]  # first seen first
    assert names["nvidia-sm_89-128sm-24gb"] == ["NVIDIA GeForce RTX 4090"]
    return out


def test_files_carry_the_device_name_torch_reports(gpu_bests, db_url, tmp_path):
    folder, sg = tmp_path / "vllm", tmp_path / "sglang"
    folder.mkdir()
    sg.mkdir()
    for fmt, where in (("vllm", folder), ("sglang", sg)):
        proc = run_tuner(["export", "--format", fmt, "-o", str(where), "--model", "mixtral-8x7b"], tmp_path / "home",
                         TUNER_DB_URL=db_url)
        assert proc.returncode == 0, proc.stderr
    # a file per name the class's workers reported; vLLM folds the H200 family into one name
    assert sorted(p.name for p in folder.iterdir()) == [
        "E=8,N=14336,device_name=NVIDIA_GeForce_RTX_4090.json", "E=8,N=14336,device_name=NVIDIA_H100.json",
        "E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json", "E=8,N=14336,device_name=NVIDIA_H200,dtype=float32.json"]
    for name, dtype, m, config, triton in gpu_bests:
        assert vllm_lookup((8, 4096, 14336), dtype_str(dtype), m, name, str(folder), "") == config
        assert sglang_lookup((8, 4096, 14336), dtype_str(dtype), m, name, triton, str(sg)) == config
    # the H100's two names: each file holds every batch size the class has
    h100 = {name: json.loads((folder / f"E=8,N=14336,device_name={name}.json").read_text())
            for name in ("NVIDIA_H100", "NVIDIA_H100_80GB_HBM3")}
    assert h100["NVIDIA_H100"] == h100["NVIDIA_H100_80GB_HBM3"] and set(h100["NVIDIA_H100"]) == {"1", "64"}
    # and a model that does not run E=8,N=14336 exports nothing, and says why
    other = tmp_path / "other"
    other.mkdir()
    assert_one_line_error(run_tuner(["export", "--format", "vllm", "-o", str(other), "--model", "qwen3-30b-a3b"],
                                    tmp_path / "home", TUNER_DB_URL=db_url),
                          "nothing to export: no current best of fused_moe or fused_moe_quant on any device class for qwen3-30b-a3b; "
                          "tune its keys first (tuner submit --model qwen3-30b-a3b")
    assert list(other.iterdir()) == []


@pytest.mark.parametrize("output, expected", [("/sys", "in /sys; choose a writable place"), ("missing/dir", "does not exist"),
                                              ("README.md", "is not a directory")])
def test_an_export_folder_that_cannot_be_written(tmp_path, output, expected):
    home = tmp_path / "home"
    assert run_tuner(["db", "upgrade"], home).returncode == 0
    target = output if output.startswith("/") else str(ROOT / "tests/data/vllm" / output)
    before = sorted(os.listdir(ROOT / "tests/data/vllm"))
    assert_one_line_error(run_tuner(["export", "--format", "vllm", "-o", target], home), expected)
    assert sorted(os.listdir(ROOT / "tests/data/vllm")) == before


# ---- import ----------------------------------------------------------------------------------
def test_import_vllms_shipped_files_as_seeds(tmp_path):
    home = tmp_path / "home"
    result = run_json(["import", str(VLLM_DATA)], home)
    # 5 H100 files (18 batch sizes each, one of 28) and 3 MI300X files (18, 18, 3), each for bf16 and
    # fp16, and one fp8 file with 128x128 blocks (18), fused_moe_quant's seeds of its block-fp8 keys
    assert result["files"] == 9 and result["imported"] == 2 * (4 * 18 + 28 + 18 + 18 + 3) + 18
    # the folder is read recursively; an unknown device is skipped by its name, before its content
    # (the Intel Arc file's string grf_mode is never read)
    assert result["skipped"] == [{"file": "README.md", "why": "not a fused-MoE config name (E=..,N=..,device_name=...json)"},
                                 {"file": "intel/E=10,N=512,device_name=Intel(R)_Arc(TM)_Pro_B60_Graphics.json",
                                  "why": "device Intel(R)_Arc(TM)_Pro_B60_Graphics is not a known device class; "
                                         "give --device-class"}]
    assert result["dropped_parameters"] == ["SPLIT_K", "SPLIT_K_SIZE"]
    with sqlite3.connect(home / "tuner.db") as conn:
        assert conn.execute("select count(*) from best_configs").fetchone()[0] == 0  # seeds, not measured bests
        rows = dict(conn.execute("select device_selector, count(*) from imported_configs group by 1").fetchall())
        m1 = json.loads(conn.execute("select config from imported_configs where dims = ? and dtype = 'bfloat16' "
                                     "and device_selector = 'h100-sxm-80gb'",
                                     (json.dumps({"E": 8, "N": 14336, "M": 1}),)).fetchall()[0][0])
        fp8 = conn.execute("select kernel, dtype, count(*), min(dims) from imported_configs where kernel != "
                           "'fused_moe' group by 1, 2").fetchall()
    assert rows == {"h100-sxm-80gb": 218, "mi300x-192gb": 78}
    assert [(k, d, n) for k, d, n, _ in fp8] == [("fused_moe_quant", "fp8_w8a8_block128", 18)]
    shipped = json.loads((VLLM_DATA / "E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json").read_text())
    assert m1 == shipped["1"]
    # importing again replaces, never duplicates
    assert run_json(["import", str(VLLM_DATA)], home)["imported"] == result["imported"]
    with sqlite3.connect(home / "tuner.db") as conn:
        assert conn.execute("select count(*) from imported_configs").fetchone()[0] == result["imported"]


def test_import_an_unknown_device_needs_a_class(tmp_path):
    src = tmp_path / "E=8,N=64,device_name=NVIDIA_GB10.json"
    src.write_text(json.dumps({"triton_version": "3.4.0", "1": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32,
                                                                 "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}}))
    home = tmp_path / "home"
    assert_one_line_error(run_tuner(["import", str(src)], home), "NVIDIA_GB10 is not a known device class")
    assert run_json(["import", str(src), "--device-class", "h100"], home)["imported"] == 2


MALFORMED = {
    "not json": ("{not json", "is not readable JSON"),
    "not a table": ("[1, 2]", "holds no table"),
    "a word for a batch size": ('{"one": {"BLOCK_SIZE_M": 16}}', "is not a batch size (1 to 1048576)"),
    "a superscript digit": ('{"\u00b2": {"BLOCK_SIZE_M": 16}}', "is not a batch size"),
    "batch size 0": ('{"0": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64}}', "is not a batch size"),
    "batch size over 2^20": ('{"1048577": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64}}',
                             "is not a batch size"),
    "no block sizes": ('{"1": {"num_warps": 4}}', "needs BLOCK_SIZE_M, _N and _K"),
    "nested option": ('{"1": {"BLOCK_SIZE_M": {"x": 1}, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64}}', "nests deeper"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "nests deeper"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_single_malformed_vllm_file_is_one_line_and_writes_nothing(tmp_path, case):
    content, expected = MALFORMED[case]
    named = tmp_path / "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json"
    named.write_text(content)
    home = tmp_path / "home"
    assert_one_line_error(run_tuner(["import", str(named)], home), expected)
    assert not home.exists()


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path):
    named = tmp_path / "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json"
    with open(named, "wb") as f:
        f.truncate(16 * 1024 * 1024 + 1)  # sparse: no 16 MB written
    home = tmp_path / "home"
    assert_one_line_error(run_tuner(["import", str(named)], home), "is over 16 MB")
    assert not home.exists()


def test_a_folder_imports_what_it_can_and_lists_every_skip(tmp_path):
    """A malformed file in a folder is skipped, not fatal; an entry out of range, or with an option
    this kernel has not (Intel's grf_mode, once --device-class places the file), is skipped alone."""
    folder = tmp_path / "configs"
    (folder / "deep").mkdir(parents=True)
    good = "E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json"
    (folder / "deep" / good).write_bytes((VLLM_DATA / good).read_bytes())
    (folder / "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json").write_text("{not json")
    (folder / "E=8,N=3584,device_name=NVIDIA_H100_80GB_HBM3.json").write_text(json.dumps(
        {"1": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "num_warps": 4096},
         "2": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "num_warps": True},
         "4": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "num_warps": 4}}))
    home = tmp_path / "home"
    proc = run_tuner(["import", str(folder)], home)
    assert proc.returncode == 0, proc.stderr
    assert "They are seeds, not measurements" in proc.stderr  # until a tuning measures them
    out = run_json(["import", str(folder)], home)
    assert out["imported"] == 2 * (18 + 1) and out["files"] == 2
    assert out["skipped"] == [
        {"file": "E=8,N=3584,device_name=NVIDIA_H100_80GB_HBM3.json", "entry": 1,
         "why": "num_warps=4096 is out of range (1 to 32)"},
        {"file": "E=8,N=3584,device_name=NVIDIA_H100_80GB_HBM3.json", "entry": 2,
         "why": "num_warps=True is out of range (1 to 32)"},
        {"file": "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json",
         "why": "malformed: E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json is not readable JSON "
                "(Expecting property name enclosed in double quotes: line 1 co)"}]
    # the Intel file, placed on a class: every entry carries grf_mode, so nothing is imported
    intel = VLLM_DATA / "intel" / "E=10,N=512,device_name=Intel(R)_Arc(TM)_Pro_B60_Graphics.json"
    assert_one_line_error(run_tuner(["import", str(intel), "--device-class", "h100"], tmp_path / "other"),
                          "nothing to import from")
    proc = run_tuner(["import", str(intel), "--device-class", "h100", "--json"], tmp_path / "other")
    assert "option grf_mode=256 is not one this kernel has" in proc.stderr
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("files", [[], ["README.md", "notes/E=8.txt"]], ids=["empty", "no vLLM file"])
def test_a_folder_with_nothing_to_import_is_exit_2(tmp_path, files):
    folder = tmp_path / "configs"
    folder.mkdir()
    for f in files:
        (folder / f).parent.mkdir(parents=True, exist_ok=True)
        (folder / f).write_text("x")
    home = tmp_path / "home"
    # the message echoes 80 characters of what was typed
    assert_one_line_error(run_tuner(["import", str(folder)], home),
                          f"nothing to import from {str(folder)[:80]}: {len(files)} file(s)")
    assert not home.exists()
    assert_one_line_error(run_tuner(["import", str(tmp_path / "nothing")], home), "no file or folder")


def test_auto_tries_imported_configs_first(db_url):
    """A key whose (E, N, M) an imported file names starts from that file's configuration (fitted to
    the space), right after the default; a key between two imported batch sizes from the nearest."""
    upgrade(db_url)
    interp = CPU_INTERPRETER.target
    with session_scope(db_url) as s:
        fp = live_fingerprint(CPU_INTERPRETER)
        dc_id, _ = store.store_identity(s, CPU_INTERPRETER.to_json(), {**fp.to_json(), "hash": fp.hash})
    shipped = json.loads((VLLM_DATA / "E=8,N=14336,device_name=AMD_Instinct_MI300X.json").read_text())

    def seeds(m):
        key = SPEC.make_key({"E": 8, "N": 14336, "K": 4096, "topk": 2, "M": m}, "bfloat16")
        ctx = SearchContext(db_url=db_url, job_id="j", job_key_id=1, key=key, device="cpu", target=interp,
                            device_class_id=dc_id, fingerprint_id=1, study_name="s", budget_trials=20,
                            trial_timeout_s=120, heartbeat_s=10, grace_s=60)
        return key, seed_configs(ctx)

    key, before = seeds(1)
    fitted = nearest(SPEC.valid_configs(key, interp), shipped["1"])
    assert fitted not in before  # nothing imported yet: the shipped H100 list comes after the default
    got, _ = vllm.read_file(VLLM_DATA / "E=8,N=14336,device_name=AMD_Instinct_MI300X.json",
                            {p: (0, 1 << 20) for p in shipped["1"]})
    with session_scope(db_url) as s:
        store.write_imported(s, [{"kernel": "fused_moe", "device_selector": "cpu", "dtype": "bfloat16",
                                  "dims": {"E": 8, "N": 14336, "M": m}, "dims_hash": stable_hash({"E": 8, "N": 14336, "M": m}),
                                  "config": c, "source": "vllm:test"} for m, c in got["table"].items()])
    key, after = seeds(1)
    assert after[0] == SPEC.default(key, interp) and after[1] == fitted
    key3, _ = seeds(3)
    exact, near = imported_seeds(db_url, key3, dc_id)
    assert exact == [] and near[:2] == [shipped["4"], shipped["2"]]  # log2 distance 0.42 and 0.58


# ---- SGLang: the folder SGLang asks, and a complete SGLANG_MOE_CONFIG_DIR --------------------
def test_sglang_folders_are_named_by_trittons_base_version():
    """A local Triton build reports 3.6.0+git9a1b2c3d; SGLang names and parses its folders by the
    numbers only (fused_moe_triton_config.py: version_dir = f"triton_{version with _}", and the
    folder names read back as integers), so the export writes triton_3_6_0."""
    from tuner.formats import sglang

    assert sglang.folder("3.6.0+git9a1b2c3d") == "configs/triton_3_6_0"
    assert sglang.folder("3.4.0") == "configs/triton_3_4_0"
    assert sglang.folder("3.5.0rc1") == "configs/triton_3_5_0"


def test_sglang_with_shipped_hides_nothing(tmp_path):
    """SGLANG_MOE_CONFIG_DIR replaces SGLang's shipped folder (get_moe_configs: config_dir =
    os.environ.get("SGLANG_MOE_CONFIG_DIR", <its own folder>)): with --with-shipped the export holds
    every shipped file, ours merged over the shipped batch sizes of the same file."""
    from tuner.formats import Ask, sglang

    shipped = tmp_path / "sglang_configs" / "configs"
    for version in ("triton_3_4_0", "triton_3_6_0"):
        (shipped / version).mkdir(parents=True)
    h100 = "E=128,N=384,device_name=NVIDIA_H100_80GB_HBM3.json"
    kept = json.loads((VLLM_DATA / "E=128,N=768,device_name=NVIDIA_H100_80GB_HBM3.json").read_text())
    (shipped / "triton_3_4_0" / h100).write_text(json.dumps(kept))
    (shipped / "triton_3_6_0" / "E=8,N=7168,device_name=NVIDIA_H100_80GB_HBM3.json").write_text(json.dumps(kept))
    ours = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4,
            "num_stages": 3}
    entries = [{"kernel": "fused_moe", "key": {"dims": {"E": 8, "N": 7168, "K": 4096, "topk": 2, "M": 1}},
                "dtype": "bfloat16", "device_names": ["NVIDIA H100 80GB HBM3"], "config": ours,
                "stack": {"triton": "3.6.0+git9a1b2c3d"}, "tuned_at": "2026-12-01T00:00:00"}]
    out = tmp_path / "out"
    out.mkdir()
    written = sglang.write(entries, out, Ask(shipped=shipped.parent))
    assert written.count == 1 and written.notes == ("copied 2 of SGLang's shipped file(s), 1 of them with our "
                                                    "batch sizes merged in",)
    device = "NVIDIA H100 80GB HBM3"
    for m in (1, 64, 4096):  # ours where we tuned it, the shipped entries elsewhere
        want = ours if m == 1 else kept[str(m)]
        assert sglang_lookup((8, 4096, 7168), None, m, device, "3.6.0", str(out)) == want
    assert sglang_lookup((128, 2048, 384), None, 64, device, "3.4.0", str(out)) == kept["64"]
    assert_one_line_error(run_tuner(["export", "--format", "vllm", "-o", str(out), "--with-shipped", str(shipped)],
                                    tmp_path / "home"), "--with-shipped is for --format sglang")


def test_an_export_of_imported_seeds_only_says_they_wait_to_be_measured(tmp_path):
    home = tmp_path / "home"
    assert run_tuner(["import", str(VLLM_DATA / "E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json")],
                     home).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    assert_one_line_error(run_tuner(["export", "--format", "vllm", "-o", str(out)], home),
                          "nothing to export: no current best of fused_moe or fused_moe_quant on any device class; 36 imported "
                          "configuration(s) are seeds, not measurements: tuning their keys measures them, e.g. "
                          "tuner submit fused_moe --shape E=8,N=14336,M=1,K=...,topk=...")
    assert list(out.iterdir()) == []


def test_an_empty_bundle_is_written_and_says_why(tmp_path):
    """A bundle of no rows is still a file a runtime reads (defaults everywhere): written, exit 0,
    with the reason it is empty."""
    home = tmp_path / "home"
    assert run_tuner(["db", "upgrade"], home).returncode == 0
    proc = run_tuner(["export", "--format", "bundle", "-o", str(tmp_path / "b.json")], home)
    assert proc.returncode == 0 and (tmp_path / "b.json").exists()
    assert "the bundle is empty: no current best of any kernel on any device class" in proc.stderr


# ---- the format module in this process (the CLI tests above reach it only in a child process) ----
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
