"""The software half of a stored configuration's identity: driver, GPU runtime, Triton and torch.

A configuration tuned under one stack is stale under another (a driver or compiler update can
reorder the best configs), so results are stored per (device class, fingerprint) and a new
fingerprint is repaired by the nightly retune. Versions are read from files and package metadata,
never by importing triton; torch is imported only for a GPU, which needs it anyway.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, fields as dataclass_fields, replace
from functools import lru_cache
from importlib import metadata
from typing import Any, Mapping

from search_spaces.base import SpecError, stable_hash
from workers.device import DeviceClass


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


def live_fingerprint(device_class: DeviceClass, override: str = "") -> StackFingerprint:
    """The stack this process runs on for device_class, with `override` (TUNER_FINGERPRINT_OVERRIDE) applied."""
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
    torch_version = _package_version("torch")
    if vendor == "cpu":
        return StackFingerprint("none", "none", triton, torch_version)
    import torch

    if vendor == "amd":
        # torch wheels bundle the HIP runtime, so torch's own version is the one kernels run on.
        hip = str(getattr(torch.version, "hip", None) or "unknown")
        return StackFingerprint(_amd_driver(), f"rocm-{hip.split('-')[0]}", triton, torch_version)
    return StackFingerprint(_nvidia_driver(), f"cuda-{torch.version.cuda or 'unknown'}", triton, torch_version)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _nvidia_driver() -> str:
    # The kernel module's version, e.g. 555.42.06: a point release changes it but not the CUDA
    # driver API version (12.5), and point releases do change code generation and timing.
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", _read("/proc/driver/nvidia/version"))
    if found:
        return found.group(1)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else "unknown"


def _amd_driver() -> str:
    version = _read("/sys/module/amdgpu/version").strip()
    if version:
        return version
    # No DKMS module: the amdgpu driver is the one built into the running kernel.
    return f"kernel-{os.uname().release}"
