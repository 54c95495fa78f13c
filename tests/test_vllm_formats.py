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
from tuner.formats import vllm

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
