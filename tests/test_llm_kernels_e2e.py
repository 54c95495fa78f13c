"""Multi-LoRA shrink and expand and flash attention end to end through the real CLI on the
interpreter: tune, best, export (the bundle, and vLLM's LoRA files read back with vLLM's own
lookup), and the runtime's lookup. Shapes are tiny: the interpreter pays per program and op."""
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from tests.cli_helpers import ROOT, run_json, run_tuner, tuner_env
from search_spaces import registry
from tests.vllm_lora_lookup import get_lora_op_configs, launch_fields, server_max_loras
from tuner.formats import vllm_lora

SHAPES = {"lora_shrink": ["M=8,K=64,RANK=16,SLICES=2,LORAS=2", "M=16,K=128,RANK=16,SLICES=1,LORAS=2"],
          "lora_expand": ["M=8,N=64,RANK=16,SLICES=2,LORAS=2"],
          "flash_attention": ["BH=2,N_CTX=64,HEAD_DIM=16,STAGE=3"]}
OPS = {"lora_shrink": ("shrink", "K"), "lora_expand": ("expand", "N")}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    results = {}
    for kernel, shapes in SHAPES.items():
        args = ["tune", kernel, *(a for s in shapes for a in ("--shape", s)), "--dtype", "float32", "--trials", "3",
                "--seed", "1", "--device", "cpu"]
        results[kernel] = run_json(args, home)
    return home, results


def best(home, kernel):
    args = ["best", kernel, *(a for s in SHAPES[kernel] for a in ("--shape", s)), "--dtype", "float32"]
    return run_json(args, home)


@pytest.mark.slow  # the module's fixture tunes three kernels in the interpreter (about a minute)
def test_the_kernels_are_listed_with_spaces_on_every_target(tuned):
    home, _ = tuned
    rows = {r["name"]: r for r in run_json(["kernels"], home)}
    for kernel in SHAPES:
        assert all(n > 0 for n in rows[kernel]["valid_configs"].values()), rows[kernel]
    assert rows["flash_attention"]["key"] == ["BH", "N_CTX", "HEAD_DIM", "STAGE"]


@pytest.mark.slow
def test_tune_stores_a_best_per_key_and_best_reads_it(tuned):
    home, results = tuned
    for kernel, result in results.items():
        assert result["timing"].startswith("triton-interpreter")
        assert len(result["keys"]) == len(SHAPES[kernel])
        stored = {r["key"]: r["config"] for r in best(home, kernel)}
        for key in result["keys"]:
            assert key["trials"] == 3 and key["config"] and key["speedup"] > 0, (kernel, key)
            assert stored[key["key"]] == key["config"]


@pytest.mark.slow
def test_vllm_lora_export_is_found_by_vllms_lookup(tuned, tmp_path):
    home, results = tuned
    r = run_tuner(["export", "--format", "vllm-lora", "-o", str(tmp_path)], home)
    assert r.returncode == 0, r.stderr
    # the interpreter has no torch device name: its files take the class's own name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Triton_CPU_interpreter_EXPAND_TRUE.json",
                                                           "Triton_CPU_interpreter_SHRINK.json"]
    assert "wrote 3 configuration(s)" in r.stderr  # the two shrink keys and the expand key; not attention
    for kernel, (op, hidden) in OPS.items():
        for key in results[kernel]["keys"]:
            d = key["dims"]
            # vLLM passes max_loras = lora_ids.size(0), --max-loras + 1: the exact level
            for max_loras in (server_max_loras(d["LORAS"]),):
                got = get_lora_op_configs(str(tmp_path), "Triton CPU interpreter", op, max_loras, d["M"], d[hidden],
                                          d["RANK"], d["SLICES"], add_inputs=True if op == "expand" else None)
                assert got == vllm_lora.vllm_config(key["config"]), (kernel, d)
                launch_fields(op, got)


@pytest.mark.slow
def test_bundle_and_database_serve_the_runtime_lookup(tuned, tmp_path):
    home, results = tuned
    bundle = tmp_path / "bundle.json"
    assert run_tuner(["export", "--format", "bundle", "-o", str(bundle)], home).returncode == 0
    keys = [(kernel, key["dims"]) for kernel, result in results.items() for key in result["keys"]]
    want = [key["config"] for result in results.values() for key in result["keys"]]
    # the first lookups of a process may get defaults while the source opens: settle, then ask
    code = ("import json, sys; from tuner.runtime import lookup, settle; keys = json.loads(sys.argv[1]); "
            "[lookup(k, **d, dtype='float32') for k, d in keys]; settle(); "
            "print(json.dumps([lookup(k, **d, dtype='float32') for k, d in keys]))")
    for extra in ({}, {"TUNER_CONFIG_BUNDLE": str(bundle), "TUNER_DB_URL": "postgresql+psycopg://x@127.0.0.1:1/x"}):
        out = subprocess.run([sys.executable, "-c", code, json.dumps(keys)], cwd=ROOT, capture_output=True,
                             text=True, env=tuner_env(home, TUNER_DEVICE="cpu", **extra))
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == want


@pytest.mark.slow
def test_export_to_a_missing_directory_is_one_line_exit_2(tuned, tmp_path):
    home, _ = tuned
    r = run_tuner(["export", "--format", "vllm-lora", "-o", str(tmp_path / "nope")], home)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "does not exist" in r.stderr
    assert not (tmp_path / "nope").exists()


# ---- the format itself, on GPU classes no test machine has ----------------------------------
def _entry(kernel, slug, dims, config, dtype="bfloat16", minutes=0):
    at = datetime(2026, 11, 30, tzinfo=timezone.utc) + timedelta(minutes=minutes)
    version = registry.get(kernel).version
    return {"kernel": kernel, "kernel_version": version, "key": {"kernel": kernel, "version": version, "dims": dims,
                                                                 "dtype": dtype}, "dtype": dtype,
            "device_class": slug, "config": config, "tuned_at": at.isoformat()}


SHRINK_CFG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 128, "SPLIT_K": 32, "num_warps": 8, "num_stages": 4}
EXPAND_CFG = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2}


def test_files_are_named_by_the_torch_device_name_and_nested_as_vllm_reads_them(tmp_path):
    dims = {"M": 16, "K": 4096, "RANK": 16, "SLICES": 3, "LORAS": 4}
    entries = [_entry("lora_shrink", "h100-sxm-80gb", dims, SHRINK_CFG),
               _entry("lora_shrink", "h100-sxm-80gb", {**dims, "M": 256}, {**SHRINK_CFG, "SPLIT_K": 8}),
               # the same shape in fp16, tuned later: vLLM's files have no dtype level, the newest wins
               _entry("lora_shrink", "h100-sxm-80gb", dims, {**SHRINK_CFG, "num_warps": 4}, "float16", minutes=5),
               _entry("lora_expand", "mi300x-192gb", {"M": 16, "N": 4096, "RANK": 16, "SLICES": 1, "LORAS": 4},
                      EXPAND_CFG),
               _entry("flash_attention", "h100-sxm-80gb", {"BH": 8, "N_CTX": 128, "HEAD_DIM": 64, "STAGE": 1},
                      {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3})]
    assert vllm_lora.write(entries, tmp_path).count == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AMD_Instinct_MI300X_EXPAND_TRUE.json",
                                                           "NVIDIA_H100_80GB_HBM3_SHRINK.json"]
    doc = json.loads((tmp_path / "NVIDIA_H100_80GB_HBM3_SHRINK.json").read_text())
    # the level is what a server with --max-loras 4 asks: lora_ids.size(0) = 5; num_slices 1 and 2 filled
    assert list(doc) == ["5"] and list(doc["5"]) == ["1", "2", "3"] and list(doc["5"]["3"]) == ["16", "256"]
    assert list(doc["5"]["3"]["16"]) == ["4096"]
    assert doc["5"]["3"]["16"]["4096"]["16"] == {"block_m": 16, "block_n": 16, "block_k": 128, "split_k": 32,
                                                 "num_warps": 4, "num_stages": 4, "num_ctas": 1, "max_nreg": None}
    # what vLLM on an H100 finds: the decode config for 1..~135 tokens, the prefill one above
    name = "NVIDIA H100 80GB HBM3"
    decode = get_lora_op_configs(str(tmp_path), name, "shrink", 5, 1, 4096, 16, 3)
    assert decode["split_k"] == 32 and get_lora_op_configs(str(tmp_path), name, "shrink", 5, 200, 4096, 16, 3)[
        "split_k"] == 8
    expand = get_lora_op_configs(str(tmp_path), "AMD Instinct MI300X", "expand", 5, 16, 4096, 16, 1, add_inputs=True)
    assert launch_fields("expand", expand) == (16, 64, 16, 4, 1, 2)
    assert get_lora_op_configs(str(tmp_path), name, "expand", 5, 16, 4096, 16, 1, add_inputs=True) is None


def test_gpu_names_are_torchs_with_vllms_replacements():
    assert vllm_lora.gpu_name("NVIDIA A100-SXM4-80GB") == "NVIDIA_A100_SXM4_80GB"
    reported = _entry("lora_shrink", "h100-sxm-80gb", {"M": 1}, SHRINK_CFG)
    assert vllm_lora._gpu_names(reported) == ["NVIDIA_H100_80GB_HBM3"]  # the product's usual name
    reported["device_names"] = ["NVIDIA H100 80GB HBM3", "NVIDIA H100"]  # what its workers reported
    assert vllm_lora._gpu_names(reported) == ["NVIDIA_H100_80GB_HBM3", "NVIDIA_H100"]
    unnamed = _entry("lora_shrink", "nvidia-sm_89-128sm-24gb", {"M": 1}, SHRINK_CFG)
    assert vllm_lora._gpu_names(unnamed) == ["NVIDIA_SM_89_128SM_24GB"]  # no known product, no report: the slug


@pytest.mark.slow
def test_the_gpu_comparison_runs_on_the_interpreter(tmp_path):
    """bench/llm_kernels.py (bench/gpu_run.sh's `llm` step) end to end with one tiny key a kernel."""
    import os

    out = tmp_path / "llm.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "llm_kernels.py"), "--device", "cpu", "--smoke",
                           "--rounds", "1", "--out", str(out)], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["timing"].startswith("triton-interpreter")
    assert sorted(r["kernel"] for r in doc["rows"]) == ["flash_attention", "lora_expand", "lora_shrink"]
    for row in doc["rows"]:
        names = ("tuned", "default", "sdpa") if row["kernel"] == "flash_attention" else ("tuned", "default")
        assert all(row[n]["ms"] > 0 and row[n]["correct"] for n in names), row
        assert row["tuned"]["trials"] == 3 and row["speedup_over_default"] > 0
    assert "| tuned vs default |" in out.with_suffix(".md").read_text()
