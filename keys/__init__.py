"""The frozen keys that name a tuning problem (a kernel version, a shape, a dtype), the
configuration's hash, and the error a request that cannot be served raises.

The bottom of the import graph: devices/, db/, harness/, search/, search_spaces/, workers/ and
tuner/ all read keys; this module imports nothing of ours, nor torch or triton."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping

Config = dict[str, Any]

DTYPES = ("float16", "bfloat16", "float32")
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


class SpecError(ValueError):
    """A request that names a kernel, shape or dtype this module cannot serve.

    The message says what is wrong and how to fix it; the CLI prints it on one line.
    """


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def stable_hash(value: Any, length: int = 16) -> str:
    """A hash of the canonical JSON form: the same on every machine and Python version."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class TuningKey:
    """What a stored configuration answers: one kernel version, one shape, one dtype."""

    kernel: str
    version: str
    dims: tuple[tuple[str, int], ...]
    dtype: str

    @property
    def dim_map(self) -> dict[str, int]:
        return dict(self.dims)

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "version": self.version, "dims": dict(self.dims), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TuningKey":
        return cls(str(data["kernel"]), str(data["version"]),
                   tuple((str(k), int(v)) for k, v in data["dims"].items()), str(data["dtype"]))

    @cached_property
    def stable_hash(self) -> str:
        return stable_hash(self.to_json())

    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.dims) + f" {self.dtype}"


def log2_distance(config: Config, want: Config) -> float:
    """How far config is from want, in doublings summed over want's numeric parameters."""
    return sum(abs(math.log2(max(config.get(p, 1), 1)) - math.log2(max(v, 1)))
               for p, v in want.items() if isinstance(v, (int, float)))


def nearest(configs: Iterable[Config], want: Config) -> Config:
    """The configuration closest to want by log2_distance (the first of equals); configs must
    not be empty."""
    return min(configs, key=lambda c: log2_distance(c, want))


def config_hash(config: Config) -> str:
    return stable_hash(config, 12)
