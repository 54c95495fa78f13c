"""Kernels and their search spaces. Imports nothing of tuner, workers or db."""
from search_spaces.base import Config, KernelSpec, SpecError, Target, TuningKey, config_hash, stable_hash, target_for

__all__ = ["Config", "KernelSpec", "SpecError", "Target", "TuningKey", "config_hash", "stable_hash",
           "target_for"]
