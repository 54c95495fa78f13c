"""vLLM's tuned LoRA kernel files: `tuner export --format vllm-lora -o DIR`.

vLLM's multi-LoRA shrink and expand read their launch configuration from
$VLLM_TUNED_CONFIG_FOLDER (vllm/lora/ops/triton_ops/utils.py, `load_lora_op_config` and
`get_lora_op_configs`), one file per GPU and op:

    {gpu_name}_SHRINK.json        from lora_shrink's best configurations
    {gpu_name}_EXPAND_TRUE.json   from lora_expand's (it adds into the output: add_inputs=True)

nested as config[max_loras][num_slices][m][k][n], every key a string (shrink: k = hidden size K,
n = RANK; expand: k = RANK, n = hidden size N), each leaf in vLLM's names: block_m, block_n,
block_k, split_k (shrink), num_warps, num_stages, and num_ctas (1) and max_nreg (null), which
vLLM's ops read too. max_loras is what vLLM's ops pass, `lora_ids.size(0)`: the key's LORAS (the
server's --max-loras) + 1 (search_spaces/lora.py `slots`). vLLM takes the nearest key where a level
lacks the exact one, except num_slices, which must be there (`config_data[str(num_slices)]`): so
every file and max_loras level written holds every num_slices vLLM asks (a model's layers, or 1, 2
and 3 for a kernel-level export: the merged qkv, gate_up and the single projections); one not tuned
is filled from the nearest tuned num_slices of that level, and said so, or (`fill=False`) the export
is refused with the list. Only EXPAND_TRUE is written: vLLM's linear layers always add
(punica_gpu.py `add_expand` passes add_inputs=True); where it asks EXPAND_FALSE it finds no file
and uses its default, which never raises.

Rows of an older kernel version are left out, and said so: before the LORAS key meant --max-loras
at every batch size, it was min(--max-loras, M), and such a row cannot be placed.

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

from tuner.formats import Written, declared, inside
from tuner.formats.bundle import write_atomic

DESCRIPTION = "vLLM's LoRA shrink/expand files for VLLM_TUNED_CONFIG_FOLDER ({gpu}_SHRINK.json, {gpu}_EXPAND_TRUE.json)"
WRITES = "directory"

FORMAT = "vllm-lora"  # what a kernel whose bests these files hold declares (KernelSpec.exports)
# our parameter -> vLLM's field (lora_shrink_op.py and lora_expand_op.py read these)
FIELDS = {"BLOCK_M": "block_m", "BLOCK_N": "block_n", "BLOCK_K": "block_k", "SPLIT_K": "split_k",
          "num_warps": "num_warps", "num_stages": "num_stages"}
def ops() -> dict[str, tuple[str, str, str]]:
    """kernel -> (the file's op part, the key dims of its k and n levels) of every kernel declaring
    this format, as its `vllm_lora_op` says (lora_shrink: SHRINK, K, RANK); UserError, one line,
    for a kernel that declares the format but not its op (its keys are LoRA keys: M, SLICES, LORAS)."""
    from search_spaces import registry
    from tuner.errors import UserError

    out = {}
    for kernel in declared(FORMAT):
        op = getattr(registry.KERNELS.load(kernel), "vllm_lora_op", None)
        if not (isinstance(op, tuple) and len(op) == 3 and all(isinstance(p, str) for p in op)):
            raise UserError(f"kernel {kernel[:40]} declares the {FORMAT} export but no vllm_lora_op "
                            "(the file's op part, its k and n dims); nothing was written")
        out[kernel] = op
    return out


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


# what vLLM's own LoRA tuning runs (benchmarks/kernels/benchmark_lora.py OpType.num_slices): the
# num_slices vLLM's layers ask when no model says which
SLICES = (1, 2, 3)


def files(entries: list[dict[str, Any]], slices: tuple[int, ...] = SLICES,
          fill: bool = True) -> tuple[dict[str, dict], int, list[str]]:
    """({file name: nested configurations}, the tuned configurations among them, notes) of the
    current LoRA entries among entries, each max_loras level holding every num_slices in `slices`.
    UserError lists what is missing when fill is False."""
    from search_spaces import registry
    from search_spaces.lora import slots

    newest: dict[tuple, dict] = {}
    old: dict[str, int] = {}
    kernel_ops = ops()
    for e in entries:
        if e["kernel"] not in kernel_ops:
            continue
        if e["kernel_version"] != registry.get(e["kernel"]).version:
            old[e["kernel"]] = old.get(e["kernel"], 0) + 1
            continue
        op, k_dim, n_dim = kernel_ops[e["kernel"]]
        d = e["key"]["dims"]
        for gpu in _gpu_names(e):
            at = (f"{gpu}_{op}.json", slots(d["LORAS"]), d["SLICES"], d["M"], d[k_dim], d[n_dim])
            if at not in newest or e["tuned_at"] > newest[at]["tuned_at"]:
                newest[at] = e
    out: dict[str, dict] = {}
    for (name, *levels), e in sorted(newest.items(), key=lambda kv: kv[0]):
        node = out.setdefault(name, {})
        for level in levels[:-1]:
            node = node.setdefault(str(level), {})
        node[str(levels[-1])] = vllm_config(e["config"])
    notes = [f"left out {n} {kernel} row(s) of an older kernel version, whose LORAS was min(--max-loras, M): "
             f"tune those keys again" for kernel, n in sorted(old.items())]
    tuned = sum(_leaves(doc) for doc in out.values())
    return out, tuned, notes + _cover(out, slices, fill)


def _cover(out: dict[str, dict], slices: tuple[int, ...], fill: bool) -> list[str]:
    """Give every max_loras level of every file each num_slices in slices (vLLM has no nearest
    num_slices): copied from the nearest tuned one; the notes that say so. UserError if not fill."""
    from tuner.errors import UserError

    notes, missing = [], []
    for name, doc in out.items():
        for level, by_slices in doc.items():
            tuned = sorted(int(s) for s in by_slices)
            lack = [s for s in slices if str(s) not in by_slices]
            if not lack:
                continue
            missing.append(f"{name} max_loras {level}: num_slices {', '.join(map(str, lack))}")
            for s in lack:
                source = min(tuned, key=lambda t: (abs(t - s), t))
                by_slices[str(s)] = by_slices[str(source)]
                notes.append(f"{name} max_loras {level}: num_slices {s} filled from the configurations tuned "
                             f"at SLICES={source} (vLLM needs every num_slices its layers run); tune SLICES={s} "
                             "to replace them")
            out[name][level] = {k: by_slices[k] for k in sorted(by_slices, key=int)}
    if missing and not fill:
        raise UserError(f"vLLM raises on a num_slices its file lacks, and this export would leave out "
                        f"{'; '.join(missing)[:300]}: tune those SLICES, or export without --no-fill to fill "
                        "them from the nearest tuned num_slices; nothing was written")
    return notes


def write(entries: list[dict[str, Any]], output: Path, ask: Any = None) -> Written:
    """Write every file (each atomically): the tuned configurations written (fills are copies of
    them) and the notes."""
    slices = ask.lora_slices if ask is not None and ask.lora_slices else SLICES
    docs, tuned, notes = files(entries, slices, fill=ask is None or ask.fill)
    paths = inside(output, docs)
    for name, doc in docs.items():
        write_atomic(paths[name], json.dumps(doc, indent=1) + "\n")
    return Written(tuned, tuple(notes))


def _leaves(node: dict) -> int:
    return sum(_leaves(v) if "block_m" not in v else 1 for v in node.values())
