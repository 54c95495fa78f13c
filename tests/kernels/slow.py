"""Kernels for the service's fault tests (register with TUNER_KERNEL_MODULES=tests.kernels.slow):

- `slow`: the trivial copy, with every launch sleeping N milliseconds (N is the key) plus P*Q
  milliseconds, so a trial can be made to outlast the janitor's stall time, and a configuration's
  time is known in advance (P=Q=1 is the fastest); while a folder MARKS exists in the process's
  temporary directory (TMPDIR, which a test sets for its worker), each launch first leaves a file
  there naming its process and configuration, so a test knows when a trial is being measured;
- `nofinal`: the trivial copy whose `default()` raises, which only the final re-measurement calls
  (with `--sampler random`, whose seeds are empty): a finalization that fails every time.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from keys import Config, TuningKey
from devices.targets import Target
from search_spaces.base import LazyTorch
from tests.kernels.trivial import Trivial

torch = LazyTorch(globals())  # as the built-ins: a worker's main process never imports torch
MARKS = "tuner-slow-launches"


def _mark(config: Config) -> None:
    folder = Path(tempfile.gettempdir()) / MARKS
    if folder.is_dir():
        (folder / f"{os.getpid()}-P{config['P']}-Q{config['Q']}").touch()


class Slow(Trivial):
    name = "slow"

    def space(self, target: Target) -> dict[str, tuple]:
        return {"P": (1, 2, 3, 4), "Q": (1, 2, 3, 4), "num_warps": (1,)}

    def default(self, key: TuningKey, target: Target) -> Config:
        return {"P": 4, "Q": 4, "num_warps": 1}

    def make_inputs(self, key: TuningKey, device: str, seed: int) -> tuple[torch.Tensor, float]:
        return torch.arange(16, dtype=torch.float32, device=device), key.dim_map["N"] / 1e3

    def launch(self, config: Config, inputs) -> torch.Tensor:
        x, base_s = inputs
        _mark(config)
        time.sleep(base_s + config["P"] * config["Q"] * 1e-3)
        return x.clone()

    def reference(self, inputs) -> torch.Tensor:
        return inputs[0].clone()


class NoFinal(Trivial):
    name = "nofinal"

    def default(self, key: TuningKey, target: Target) -> Config:
        raise RuntimeError("nofinal has no default: a staged finalization failure")
