"""A kernel that declares vLLM's LoRA files but not the op its file is named by: the export is
refused, the op never guessed. Register with TUNER_KERNEL_MODULES=tests.kernels.exports_unsaid."""
from __future__ import annotations

from search_spaces.lora_shrink import LoraShrink


class Unsaid(LoraShrink):
    name = "unsaid_lora"
    exports = ("vllm-lora",)
    vllm_lora_op = None
