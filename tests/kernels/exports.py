"""Kernels that declare export formats (KernelSpec.exports) without being the built-ins the formats
were written for: a format must pick them up from the declaration alone.

Register with TUNER_KERNEL_MODULES=tests.kernels.exports.
"""
from __future__ import annotations

from search_spaces.fused_moe import FusedMoe
from search_spaces.lora_shrink import LoraShrink


class OtherMoe(FusedMoe):
    """vLLM's fused-MoE files only (not SGLang's)."""

    name = "other_moe"
    exports = ("vllm",)


class OtherShrink(LoraShrink):
    """vLLM's LoRA files, under its own op name."""

    name = "other_shrink"
    exports = ("vllm-lora",)
    vllm_lora_op = ("OTHER", "K", "RANK")
