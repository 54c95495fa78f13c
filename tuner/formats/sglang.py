"""SGLang's tuned fused-MoE config files: `tuner export --format sglang -o DIR` writes them where
`SGLANG_MOE_CONFIG_DIR=DIR` makes SGLang look, one folder per Triton version.

SGLang (python/sglang/srt/layers/moe/fused_moe_triton/fused_moe_triton_config.py) names a file as
vLLM does, but with the device name exactly as torch reports it (spaces as _, no H200 folding), and
reads it from {SGLANG_MOE_CONFIG_DIR}/configs/triton_{version with _}/ for the Triton it runs, since
configurations tuned under one Triton version go stale under another; it falls back to the folders
of the versions it lists. It turns every key with int(), so a file holds batch sizes only. A
configuration is written to the folder of the Triton version of the stack it was tuned on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.formats.vllm import block_shape, dtype_selector, files, write_files

DESCRIPTION = "SGLang's fused-MoE config files under configs/triton_X_Y_Z/, for SGLANG_MOE_CONFIG_DIR"
WRITES = "directory"


def folder(triton_version: str) -> str:
    return f"configs/triton_{triton_version.replace('.', '_')}"


def file_name(e: int, n: int, device: str, dtype: str | None = None, block: list[int] | None = None) -> str:
    # unlike vLLM's, SGLang's get_config_file_name keeps the list's space: block_shape=[128, 128]
    return (f"E={e},N={n},device_name={device.replace(' ', '_')}" + (f",dtype={dtype}" if dtype else "")
            + (f",block_shape={block}" if block else "") + ".json")


def write(entries: list[dict[str, Any]], output: Path) -> int:
    def name(e: dict[str, Any], device: str) -> str:
        d = e["key"]["dims"]
        return (f"{folder(e['stack']['triton'])}/"
                f"{file_name(d['E'], d['N'], device, dtype_selector(e['dtype']), block_shape(e['dtype']))}")

    return write_files(files(entries, name), output)
