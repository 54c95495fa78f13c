"""Kernels and their search spaces. Imports nothing of tuner, workers or db."""
from keys import Config, SpecError, TuningKey, config_hash, stable_hash
from devices.targets import Target, target_for
from search_spaces.base import KernelSpec

__all__ = ["Config", "KernelSpec", "SpecError", "Target", "TuningKey", "config_hash", "stable_hash",
           "target_for"]
