"""vLLM's lookup of tuned LoRA configurations, step for step, for the tests of `tuner export
--format vllm-lora`, as vLLM runs it with VLLM_TUNED_CONFIG_FOLDER set. Read from vllm-project/vllm:

- vllm/lora/ops/triton_ops/utils.py `load_lora_op_config`: the file is
  f"{gpu_name}_{op_type.upper()}_{str(add_inputs).upper()}.json" for expand, else
  f"{gpu_name}_{op_type.upper()}.json", gpu_name = torch.cuda.get_device_name() with " " and "-"
  made "_"; a missing file returns None and the op takes its default.
- the same file, `get_lora_op_configs`: "config is structured as
  config_data[max_loras][num_slices][m][k][n]"; max_loras, m, k and n are
  `config_data.get(str(x)) or config_data[min(config_data.keys(), key=lambda x: abs(int(x) - v))]`
  (exact, else nearest, ties to the first key in the file's order), num_slices is
  `config_data[str(num_slices)]` (exact: a KeyError in the server when it is missing).
- vllm/lora/ops/triton_ops/lora_shrink_op.py `_lora_shrink`: `MAX_LORAS = lora_ids.size(0)`,
  `get_lora_op_configs("shrink", max_loras=MAX_LORAS, batch=M, hidden_size=K, rank=N,
  num_slices=NUM_SLICES)` with `N, K = lora_a_weights[0].shape[-2:]` and NUM_SLICES =
  len(lora_a_weights); lora_expand_op.py `_lora_expand` the same with op_type="expand",
  hidden_size=MAX_N (the widest slice, utils.py `_get_lora_b_ptr`: `MAX_N = max(hidden_sizes)`),
  rank=K and add_inputs.
- vllm/lora/ops/triton_ops/lora_kernel_metadata.py `LoRAKernelMeta.make(max_loras, ...)`:
  `active_lora_ids = torch.empty(max_loras + 1, ...)` ("+1 because 'no-lora' is also a
  possibility"), and vllm/lora/punica_wrapper/punica_gpu.py builds it with
  `LoRAKernelMeta.make(self.max_loras, ...)` from `lora_config.max_loras` (--max-loras) and passes
  that whole array to every op (`meta_args`): lora_ids.size(0) is --max-loras + 1 at every batch.
- punica_gpu.py `add_expand` (every linear layer) calls lora_expand with `add_inputs=True`.

vLLM's own tuner, benchmarks/kernels/benchmark_lora_tuning.py, writes the level
`max_loras_key = str(ctx.num_loras)` (the adapters its LoRAKernelMeta.make gets), one below what
the ops then ask: its files are found by the nearest rule, and a file holding several levels
serves a server the level of another --max-loras. Without a file vLLM serves its default; here
that is None.
"""
from __future__ import annotations

import json
from pathlib import Path


def server_max_loras(max_loras_flag: int) -> int:
    """What a server started with --max-loras L passes as max_loras: lora_ids.size(0)."""
    return max_loras_flag + 1


def load_lora_op_config(folder: str, device_name: str, op_type: str, add_inputs: bool | None) -> dict | None:
    gpu_name = device_name.replace(" ", "_").replace("-", "_")
    if op_type == "expand":
        config_fname = f"{gpu_name}_{op_type.upper()}_{str(add_inputs).upper()}.json"
    else:
        config_fname = f"{gpu_name}_{op_type.upper()}.json"
    config_path = Path(f"{folder}/{config_fname}")
    if not config_path.exists():
        return None
    with open(str(config_path)) as f:
        return json.load(f)


def get_lora_op_configs(folder: str, device_name: str, op_type: str, max_loras: int, batch: int, hidden_size: int,
                        rank: int, num_slices: int, add_inputs: bool | None = None) -> dict | None:
    assert op_type in ("shrink", "expand")
    m = batch
    k, n = (hidden_size, rank) if op_type == "shrink" else (rank, hidden_size)
    config_data = load_lora_op_config(folder, device_name, op_type, add_inputs)
    if not config_data:
        return None
    config_data = (config_data.get(str(max_loras))
                   or config_data[min(config_data.keys(), key=lambda x: abs(int(x) - max_loras))])
    config_data = config_data[str(num_slices)]
    config_data = config_data.get(str(m)) or config_data[min(config_data.keys(), key=lambda x: abs(int(x) - m))]
    config_data = config_data.get(str(k)) or config_data[min(config_data.keys(), key=lambda x: abs(int(x) - k))]
    config_data = config_data.get(str(n)) or config_data[min(config_data.keys(), key=lambda x: abs(int(x) - n))]
    assert config_data is not None
    return config_data


def launch_fields(op_type: str, config: dict) -> tuple:
    """What vLLM's op reads from the configuration (lora_shrink_op.py, lora_expand_op.py): a
    KeyError here is a crash in vLLM."""
    fields = (config["block_m"], config["block_n"], config["block_k"], config["num_warps"], config["num_ctas"],
              config["num_stages"])
    return fields + ((config["split_k"], config.get("group_size_m", 8)) if op_type == "shrink" else ())


def layer_requests(layer_dims: dict[str, int], parts: tuple[int, ...], split: str, tp: int) -> dict[str, tuple]:
    """op -> (hidden_size, num_slices) a vLLM LoRA layer asks for one dense layer of a model: the
    shrink over its input (K, divided by tp where the layer is row-parallel), the expand onto its
    widest slice (MAX_N; divided by tp where the layer is column-parallel)."""
    k = layer_dims["K"] // tp if split == "K" else layer_dims["K"]
    n = max(parts) // tp if split == "N" else max(parts)
    return {"shrink": (k, len(parts)), "expand": (n, len(parts))}
