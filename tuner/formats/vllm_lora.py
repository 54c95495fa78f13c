"""vLLM's tuned LoRA kernel files: `tuner export --format vllm-lora -o DIR`.

vLLM's multi-LoRA shrink and expand read their launch configuration from
$VLLM_TUNED_CONFIG_FOLDER (vllm/lora/ops/triton_ops/utils.py, `load_lora_op_config` and
`get_lora_op_configs`), one file per GPU and op:

    {gpu_name}_SHRINK.json        from lora_shrink's best configurations
    {gpu_name}_EXPAND_TRUE.json   from lora_expand's (it adds into the output: add_inputs=True)

nested as config[max_loras][num_slices][m][k][n], every key a string (shrink: k = hidden size K,
n = RANK; expand: k = RANK, n = hidden size N; max_loras = the key's LORAS), each leaf in vLLM's
names: block_m, block_n, block_k, split_k (shrink), num_warps, num_stages, and num_ctas (1) and
max_nreg (null), which vLLM's ops read too. vLLM takes the nearest key where a level lacks the
exact one, except num_slices, which must be there.

gpu_name is torch.cuda.get_device_name() with spaces and dashes made underscores, as vLLM builds
it: a file per name the class's workers reported (an entry's `device_names`, from
devices.classes.device_names: else the known product's usual name, else the class's own name, so
the CPU interpreter, which vLLM never runs on, writes Triton_CPU_interpreter_SHRINK.json); a class
with no name at all gets its slug in capitals. vLLM's files have no dtype level: where one shape
was tuned in several dtypes on one class, the newest tuning is written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuner.formats import inside
from tuner.formats.bundle import write_atomic

DESCRIPTION = "vLLM's LoRA shrink/expand files for VLLM_TUNED_CONFIG_FOLDER ({gpu}_SHRINK.json, {gpu}_EXPAND_TRUE.json)"
WRITES = "directory"

# kernel -> (the file's op part, the key dims of its k and n levels)
OPS = {"lora_shrink": ("SHRINK", "K", "RANK"), "lora_expand": ("EXPAND_TRUE", "RANK", "N")}
# our parameter -> vLLM's field (lora_shrink_op.py and lora_expand_op.py read these)
FIELDS = {"BLOCK_M": "block_m", "BLOCK_N": "block_n", "BLOCK_K": "block_k", "SPLIT_K": "split_k",
          "num_warps": "num_warps", "num_stages": "num_stages"}
def gpu_name(device_name: str) -> str:
    """The {gpu_name} of vLLM's LoRA file names for a device name as torch reports it."""
    return device_name.replace(" ", "_").replace("-", "_")


def _gpu_names(entry: dict[str, Any]) -> list[str]:
    from devices.classes import device_names

    names = device_names(entry["device_class"], entry.get("device_names") or ())
    return [gpu_name(n) for n in names] or [entry["device_class"].upper().replace("-", "_")]


def vllm_config(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration in vLLM's names, with the launch fields vLLM reads that we do not tune."""
    return {**{FIELDS[k]: v for k, v in config.items() if k in FIELDS}, "num_ctas": 1, "max_nreg": None}


def files(entries: list[dict[str, Any]]) -> dict[str, dict]:
    """{file name: nested configurations} of the LoRA entries among entries."""
    newest: dict[tuple, dict] = {}
    for e in entries:
        if e["kernel"] not in OPS:
            continue
        op, k_dim, n_dim = OPS[e["kernel"]]
        d = e["key"]["dims"]
        for gpu in _gpu_names(e):
            at = (f"{gpu}_{op}.json", d["LORAS"], d["SLICES"], d["M"], d[k_dim], d[n_dim])
            if at not in newest or e["tuned_at"] > newest[at]["tuned_at"]:
                newest[at] = e
    out: dict[str, dict] = {}
    for (name, *levels), e in sorted(newest.items(), key=lambda kv: kv[0]):
        node = out.setdefault(name, {})
        for level in levels[:-1]:
            node = node.setdefault(str(level), {})
        node[str(levels[-1])] = vllm_config(e["config"])
    return out


def write(entries: list[dict[str, Any]], output: Path) -> int:
    """Write every file (each atomically); the number of configurations written."""
    written, docs = 0, files(entries)
    paths = inside(output, docs)
    for name, doc in docs.items():
        write_atomic(paths[name], json.dumps(doc, indent=1) + "\n")
        written += _leaves(doc)
    return written


def _leaves(node: dict) -> int:
    return sum(_leaves(v) if "block_m" not in v else 1 for v in node.values())
