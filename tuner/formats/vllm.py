"""vLLM's tuned fused-MoE config files: written by `tuner export --format vllm -o DIR` (what
`VLLM_TUNED_CONFIG_FOLDER=DIR vllm serve ...` loads as it is) and read by `tuner import --format vllm`.

vLLM's names and contents (vllm/model_executor/layers/fused_moe/fused_moe.py, get_config_file_name
and get_moe_configs; benchmarks/kernels/benchmark_moe.py writes them):

    E={E},N={N},device_name={torch.cuda.get_device_name(), spaces as _}[,dtype={dtype}][,block_shape=[n,k]].json
    {"1": {"BLOCK_SIZE_M": 16, ..., "num_stages": 4}, "2": {...}, ...}

N is the intermediate size per expert after tensor parallelism (w2's last dimension); a device of
the H200 family is named NVIDIA_H200 whatever it reports; dtype is absent for bf16 and fp16 (one
file serves both), "float32" for fp32, and the quantization scheme (fp8_w8a8, int8_w8a16) for the
fused_moe_quant kernel's keys, with `,block_shape=[128,128]` after it for block-wise fp8 weights
(get_config_file_name writes the list without spaces). At run time vLLM reads the file for its layer and
takes the entry whose M is nearest the batch. A top-level "triton_version" (newer tuning scripts
write one) is metadata.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from search_spaces.fused_moe_vllm import SCHEMES
from tuner.formats import Written, declared, inside
from tuner.formats.bundle import write_atomic

DESCRIPTION = "vLLM's fused-MoE config files, one per (E, N, device, dtype), for VLLM_TUNED_CONFIG_FOLDER"
WRITES = "directory"
FORMAT = "vllm"  # what a kernel whose bests these files hold declares (KernelSpec.exports)
# vLLM's key order (benchmark_moe.py sort_config): the ROCm knobs only where the config has them
PARAMS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages",
          "waves_per_eu", "matrix_instr_nonkdim", "kpack")
_NAME = re.compile(r"E=(?P<E>[0-9]+),N=(?P<N>[0-9]+),device_name=(?P<device>[^,]+)"
                   r"(?:,dtype=(?P<dtype>[^,]+))?(?:,block_shape=\[(?P<bn>[0-9]+), ?(?P<bk>[0-9]+)\])?"
                   r"(?P<rest>,[^/]*)?\.json")


def dtype_selector(dtype: str) -> str | None:
    """What a file name says for one of our dtypes (vLLM's get_config_dtype_str): nothing for bf16
    and fp16, "float32" for fp32, the scheme's name for a quantized key (fp8_w8a8, int8_w8a16)."""
    if dtype in SCHEMES:
        return SCHEMES[dtype].vllm_dtype
    return "float32" if dtype == "float32" else None


def block_shape(dtype: str) -> list[int] | None:
    """The weights' scale block [block_n, block_k] a quantized key's file names, else None."""
    scheme = SCHEMES.get(dtype)
    return list(scheme.block) if scheme and scheme.block else None


def device_file_name(name: str) -> str:
    """A device name as vLLM's file names write it."""
    name = name.replace(" ", "_")
    return "NVIDIA_H200" if "H200" in name.split("_") else name


def file_name(e: int, n: int, device: str, dtype: str | None = None, block: list[int] | None = None) -> str:
    """vLLM's file name; `device` as torch reports it, `block` the weights' scale block."""
    return (f"E={e},N={n},device_name={device_file_name(device)}" + (f",dtype={dtype}" if dtype else "")
            + (f",block_shape={block}".replace(" ", "") if block else "") + ".json")


def vllm_config(config: dict[str, Any]) -> dict[str, Any]:
    return {p: config[p] for p in PARAMS if p in config}


def files(entries: list[dict[str, Any]], name: Callable[[dict[str, Any], str], str],
          kernels: tuple[str, ...]) -> dict[str, dict[int, dict]]:
    """path relative to the output -> {M: config} for the entries of `kernels` (those declaring the
    format), each written under every device name its class has (`name(entry, device_name)`). Where
    two entries land on one file and M (bf16 and fp16, or two models with the same E and N), the
    one tuned last wins."""
    out: dict[str, dict[int, dict]] = {}
    for e in sorted((e for e in entries if e["kernel"] in kernels), key=lambda e: e["tuned_at"]):
        for device in e.get("device_names", ()):
            out.setdefault(name(e, device), {})[int(e["key"]["dims"]["M"])] = vllm_config(e["config"])
    return out


def write_files(tables: dict[str, dict[int, dict]], output: Path) -> int:
    paths = inside(output, tables)
    for rel, table in sorted(tables.items()):
        path = paths[rel]
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {str(m): table[m] for m in sorted(table)}
        write_atomic(path, json.dumps(doc, indent=4) + "\n")
    return sum(len(t) for t in tables.values())


def write(entries: list[dict[str, Any]], output: Path, ask: Any = None) -> Written:
    def name(e: dict[str, Any], device: str) -> str:
        d = e["key"]["dims"]
        return file_name(d["E"], d["N"], device, dtype_selector(e["dtype"]), block_shape(e["dtype"]))

    return Written(write_files(files(entries, name, declared(FORMAT)), output))


# ---- reading: `tuner import --format vllm` ---------------------------------------------------
class Malformed(ValueError):
    """A file whose name says it is a vLLM config but whose content is not one."""


def _kernel_dtypes(selector: str | None, block: tuple[int, int] | None) -> tuple[str, list[str]] | None:
    """(our kernel, the dtypes of its keys) a file's dtype selector and block shape serve, or None
    for a scheme no kernel here runs: the first kernel declaring the format whose dtypes hold them
    (the plain selectors' bf16, fp16 and fp32: fused_moe; the quantized schemes of SCHEMES, as
    vLLM names them: fused_moe_quant)."""
    from search_spaces import registry

    if selector is None and block is None:
        dtypes = ["bfloat16", "float16"]
    elif selector == "float32" and block is None:
        dtypes = ["float32"]
    else:
        dtypes = [ours for ours, s in SCHEMES.items() if (s.vllm_dtype, s.block) == (selector, block)]
    kernel = next((k for k in declared(FORMAT) if dtypes and set(dtypes) <= set(registry.KERNELS.load(k).dtypes)),
                  None)
    return (kernel, dtypes) if kernel else None


MAX_BYTES = 16 << 20  # vLLM's largest shipped file is ~20 kB: anything near this is not one
MAX_M = 1 << 20  # a batch size beyond any server's max-num-batched-tokens
_BATCH = re.compile(r"[0-9]{1,7}")  # ASCII digits only: str.isdigit() takes "²" and int() " 12"


def parse_name(name: str) -> tuple[dict[str, Any] | None, str | None]:
    """(E, N, device and dtypes a file name says, None) or (None, why it is skipped): all that is
    known before its content is read."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None, "not a fused-MoE config name (E=..,N=..,device_name=...json)"
    if m["rest"]:
        return None, f"{m['rest'].lstrip(',')[:40]}: not a selector this kernel has"
    block = (int(m["bn"]), int(m["bk"])) if m["bn"] else None
    served = _kernel_dtypes(m["dtype"], block)
    if served is None:
        what = f"dtype={str(m['dtype'])[:30]}" + (f",block_shape=[{block[0]},{block[1]}]" if block else "")
        return None, f"{what}: a quantization no kernel here runs"
    kernel, dtypes = served
    return {"E": int(m["E"]), "N": int(m["N"]), "device": m["device"], "kernel": kernel, "dtypes": dtypes,
            "file": name}, None


def read_file(path: Path, bounds: dict[str, tuple[int, int]]) -> tuple[dict[str, Any] | None, str | None]:
    """(what the file holds, None) or (None, why it is skipped by its name). bounds: the kernel's
    parameters and the values accepted for each. An entry with a value out of bounds, or with an
    option this kernel has not whose value is not an integer (Intel's grf_mode), is left out and
    listed in "skipped"; other integer options are dropped (listed in "dropped"). Raises Malformed
    for content that is not a vLLM config table."""
    head, why = parse_name(path.name)
    if head is None:
        return None, why
    name = path.name[:80]
    try:
        if path.stat().st_size > MAX_BYTES:
            raise Malformed(f"{name} is over {MAX_BYTES >> 20} MB, which no vLLM config file is")
        doc = json.loads(path.read_text())
    except RecursionError:
        raise Malformed(f"{name} nests deeper than a vLLM config ({{batch size: {{option: value}}}})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Malformed(f"{name} is not readable JSON ({str(exc)[:60]})") from None
    if not isinstance(doc, dict):
        raise Malformed(f"{name} holds no table of batch sizes")
    table, dropped, skipped = {}, set(), []
    for key, config in doc.items():
        if key == "triton_version":
            continue
        if not _BATCH.fullmatch(key) or not 1 <= int(key) <= MAX_M or not isinstance(config, dict):
            raise Malformed(f"{name}: entry {key[:20]!r} is not a batch size (1 to {MAX_M}) with a configuration")
        if any(isinstance(v, (dict, list)) for v in config.values()):
            raise Malformed(f"{name}: entry {key} nests deeper than a vLLM config ({{option: value}})")
        if not {"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"} <= set(config):
            raise Malformed(f"{name}: entry {key} needs BLOCK_SIZE_M, _N and _K")
        why = _entry_problem(config, bounds)
        if why:
            skipped.append({"file": name, "entry": int(key), "why": why})
            continue
        dropped |= set(config) - set(bounds)
        table[int(key)] = {k: v for k, v in config.items() if k in bounds}
    return {**head, "table": table, "dropped": sorted(dropped), "skipped": skipped}, None


# vLLM's ROCm files carry 0 for these: Triton's old AMD pipeliner's num_stages, and "no cap" waves
_ZERO_ALLOWED = ("num_stages", "waves_per_eu")


def seed_bounds(spec: Any) -> dict[str, tuple[int, int]]:
    """parameter -> (lowest, highest) value an imported seed of the kernel may carry: positive
    (0 where vLLM's files use it), up to 4 times the largest any target's space holds (a seed is
    fitted to the space before it is tried; a value beyond this is not a configuration but a typo)."""
    from devices.targets import target_for

    values: dict[str, list[int]] = {}
    for arch in ("sm_90", "gfx942", "interpreter"):
        for p, vs in spec.space(target_for(arch)).items():
            values.setdefault(p, []).extend(vs)
    return {p: (0 if p in _ZERO_ALLOWED else 1, 4 * max(vs)) for p, vs in values.items()}


def _entry_problem(config: dict[str, Any], bounds: dict[str, tuple[int, int]]) -> str | None:
    """Why an entry cannot be a seed of this kernel, or None."""
    for k, v in config.items():
        if k in bounds:
            lo, hi = bounds[k]
            if type(v) is not int or not lo <= v <= hi:
                return f"{k[:30]}={str(v)[:20]} is out of range ({lo} to {hi})"
        elif type(v) is not int:
            return f"option {k[:30]}={str(v)[:20]} is not one this kernel has"
    return None


def device_selector(device: str, known: dict[str, tuple[str, ...]], aliases: dict[str, tuple[str, ...]]) -> str | None:
    """The class (or family) a file's device name belongs to: the classes whose names write to
    it, or their common family where several do (vLLM names every H200 NVIDIA_H200); None if none.
    known: slug -> the names torch reports for it; aliases: family -> slugs."""
    slugs = sorted(slug for slug, names in known.items() if any(device_file_name(n) == device for n in names))
    if len(slugs) == 1:
        return slugs[0]
    families = [a for a, members in aliases.items() if slugs and set(slugs) <= set(members)]
    return families[0] if families else None
