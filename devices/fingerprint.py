"""The software half of a stored configuration's identity: driver, GPU runtime, Triton and torch.

A configuration tuned under one stack is stale under another (a driver or compiler update can
reorder the best configs), so results are stored per (device class, fingerprint) and a new
fingerprint is repaired by the nightly retune. Versions are read from files and package metadata,
never by importing triton; torch is imported only for a GPU, which needs it anyway.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from functools import lru_cache
from importlib import metadata
from typing import Any, Mapping

from devices import vendors
from keys import SpecError, stable_hash


@dataclass(frozen=True)
class StackFingerprint:
    driver: str  # 555.42.06 | 6.10.5 (amdgpu) | none
    runtime: str  # cuda-12.8 | rocm-6.3.42131 | none
    triton: str
    torch: str

    def fields(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}

    @property
    def hash(self) -> str:
        return stable_hash(self.fields())

    def to_json(self) -> dict[str, str]:
        return self.fields()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "StackFingerprint":
        return cls(**{name: str(data[name]) for name in FIELDS})

    def label(self) -> str:
        return f"driver {self.driver}, {self.runtime}, triton {self.triton}, torch {self.torch}"


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclass_fields(StackFingerprint))


def parse_override(text: str) -> dict[str, str]:
    """ "driver=555.1,triton=3.7.0" -> {"driver": "555.1", "triton": "3.7.0"}; "" -> {}."""
    out: dict[str, str] = {}
    for pair in str(text or "").split(","):
        if not pair.strip():
            continue
        name, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not name or not value:
            raise SpecError(f"TUNER_FINGERPRINT_OVERRIDE has {pair.strip()!r}; write field=value pairs "
                            f"separated by commas, e.g. driver=555.1,triton=3.7.0")
        if name not in FIELDS:
            raise SpecError(f"TUNER_FINGERPRINT_OVERRIDE names unknown field {name!r}; "
                            f"use one of {', '.join(FIELDS)}")
        if name in out:
            raise SpecError(f"TUNER_FINGERPRINT_OVERRIDE sets {name!r} twice; keep one")
        out[name] = value
    return out


def live_fingerprint(device_class, override: str = "") -> StackFingerprint:
    """The stack this process runs on for device_class (a devices.classes.DeviceClass), with
    `override` (TUNER_FINGERPRINT_OVERRIDE) applied."""
    changes = parse_override(override)
    return replace(_probe(device_class.vendor), **changes)


def _package_version(*names: str) -> str:
    # ROCm and nightly wheels ship Triton under other distribution names.
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "none"


@lru_cache(maxsize=None)
def _probe(vendor: str) -> StackFingerprint:
    # Keyed by vendor, not by device: one process sees one driver and one runtime for all its GPUs.
    triton = _package_version("triton", "pytorch-triton-rocm", "pytorch-triton")
    v = vendors.get(vendor)
    return StackFingerprint(v.driver(), v.runtime(), triton, _package_version("torch"))
