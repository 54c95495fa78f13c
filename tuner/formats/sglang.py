"""SGLang's tuned fused-MoE config files: `tuner export --format sglang -o DIR` writes them where
`SGLANG_MOE_CONFIG_DIR=DIR` makes SGLang look, one folder per Triton version.

SGLang (python/sglang/srt/layers/moe/fused_moe_triton/fused_moe_triton_config.py) names a file as
vLLM does, but with the device name exactly as torch reports it (spaces as _, no H200 folding), and
reads it from {SGLANG_MOE_CONFIG_DIR}/configs/triton_{version with _}/ for the Triton it runs, since
configurations tuned under one Triton version go stale under another; it falls back to the folders
of the versions it lists, and reads every triton_* folder's name as integers: so the folder is named
by the base version only (3.6.0 of a local build's 3.6.0+git9a1b2c3), which is also the one SGLang
asks. It turns every key with int(), so a file holds batch sizes only. A configuration is written
to the folder of the Triton version of the stack it was tuned on.

SGLANG_MOE_CONFIG_DIR replaces SGLang's shipped configs folder, not adds to it: a server pointed at
a folder of our files alone falls back to SGLang's default for every shape we did not tune, even one
SGLang ships a tuned file for. `--with-shipped DIR` (SGLang's own
python/sglang/srt/layers/moe/fused_moe_triton/configs) copies every shipped file in, with our batch
sizes merged over the shipped ones of the same file, so the folder hides nothing.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tuner.formats import Written, declared
from tuner.formats.vllm import block_shape, dtype_selector, files, write_files

DESCRIPTION = "SGLang's fused-MoE config files under configs/triton_X_Y_Z/, for SGLANG_MOE_CONFIG_DIR"
WRITES = "directory"
_BASE = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def folder(triton_version: str) -> str:
    """configs/triton_X_Y_Z for a Triton version, local parts (+git...) and suffixes dropped."""
    m = _BASE.match(triton_version.strip())
    return f"configs/triton_{(m.group(0) if m else '0').replace('.', '_')}"


def file_name(e: int, n: int, device: str, dtype: str | None = None, block: list[int] | None = None) -> str:
    # unlike vLLM's, SGLang's get_config_file_name keeps the list's space: block_shape=[128, 128]
    return (f"E={e},N={n},device_name={device.replace(' ', '_')}" + (f",dtype={dtype}" if dtype else "")
            + (f",block_shape={block}" if block else "") + ".json")


def shipped_tables(shipped: Path) -> dict[str, dict[int, dict]]:
    """SGLang's shipped files (its configs folder, or a folder holding one): path relative to an
    export -> {M: config}. UserError for a folder with no triton_* version folder."""
    from tuner.errors import UserError

    root = shipped / "configs" if (shipped / "configs").is_dir() else shipped
    versions = sorted(p for p in root.glob("triton_*") if p.is_dir()) if root.is_dir() else []
    if not versions:
        raise UserError(f"--with-shipped {str(shipped)[:80]}: no triton_* folder in it; give SGLang's "
                        "python/sglang/srt/layers/moe/fused_moe_triton/configs")
    out: dict[str, dict[int, dict]] = {}
    for version in versions:
        for path in sorted(version.glob("*.json")):
            try:
                doc = json.loads(path.read_text())
                out[f"configs/{version.name}/{path.name}"] = {int(m): c for m, c in doc.items()}
            except (OSError, ValueError, AttributeError):
                raise UserError(f"--with-shipped: {path.name[:80]} is not a config file SGLang could read; "
                                "nothing was written") from None
    return out


def write(entries: list[dict[str, Any]], output: Path, ask: Any = None) -> Written:
    def name(e: dict[str, Any], device: str) -> str:
        d = e["key"]["dims"]
        return (f"{folder(e['stack']['triton'])}/"
                f"{file_name(d['E'], d['N'], device, dtype_selector(e['dtype']), block_shape(e['dtype']))}")

    ours = files(entries, name, declared("sglang"))
    if ask is None or ask.shipped is None:
        return Written(write_files(ours, output))
    tables = shipped_tables(Path(ask.shipped))
    shipped, merged = len(tables), sum(rel in tables for rel in ours)
    for rel, table in ours.items():
        tables[rel] = {**tables.get(rel, {}), **table}
    write_files(tables, output)
    return Written(sum(len(t) for t in ours.values()),
                   (f"copied {shipped} of SGLang's shipped file(s), {merged} of them with our batch sizes merged in",))
