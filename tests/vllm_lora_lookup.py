"""vLLM's lookup of tuned LoRA configurations, step for step, for the tests of `tuner export
--format vllm-lora`: vllm/lora/ops/triton_ops/utils.py, `load_lora_op_config` (the file name) and
`get_lora_op_configs` (the nested lookup) for the shrink and expand ops, as vLLM runs them with
VLLM_TUNED_CONFIG_FOLDER set. Without a file vLLM serves its default; here that is None.
"""
from __future__ import annotations

import json
from pathlib import Path


def load_lora_op_config(folder: str, device_name: str, op_type: str, add_inputs: bool | None) -> dict | None:
    # the name: torch.cuda.get_device_name() with " " and "-" made "_"; only expand names add_inputs
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
    # config_data[max_loras][num_slices][m][k][n]: the exact key, else the nearest (num_slices: exact)
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
