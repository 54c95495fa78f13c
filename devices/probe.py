"""Probing the live device: its class, from the numbers torch reports, and the stack it runs on.

torch is imported inside `probe` only, and only for a GPU: a CPU-only caller (the coordinator,
a lookup on the interpreter) never pays for it.
"""
from __future__ import annotations

import os
import platform
import re
from typing import Any

from devices.classes import CPU_INTERPRETER, DeviceClass, classify
from devices.fingerprint import StackFingerprint, live_fingerprint
from keys import SpecError


def _cpu_props() -> dict[str, Any]:
    # For the record only; the interpreter class is the same on every machine.
    return {"type": "cpu", "name": platform.processor() or platform.machine() or "cpu",
            "cpu_count": os.cpu_count() or 1}


def _gpu_props(torch: Any, index: int) -> dict[str, Any]:
    p = torch.cuda.get_device_properties(index)
    return {"name": p.name, "gcnArchName": str(getattr(p, "gcnArchName", "") or ""),
            "major": int(p.major), "minor": int(p.minor),
            "multi_processor_count": int(p.multi_processor_count), "total_memory": int(p.total_memory),
            "is_hip": bool(getattr(torch.version, "hip", None))}


_DEVICE = re.compile(r"cuda(?::([0-9]+))?")


def probe(device: str | None = None) -> tuple[DeviceClass, dict[str, Any]]:
    """The class of a live device and the properties it was decided from.

    `device` is "cpu", "cuda" or "cuda:N" (ROCm GPUs are cuda:N too); None picks cuda:0 when a GPU
    is visible, else the CPU interpreter.
    """
    text = None if device is None else str(device).strip().lower()
    if text == "cpu":
        return CPU_INTERPRETER, _cpu_props()
    match = _DEVICE.fullmatch(text) if text is not None else None
    if text is not None and match is None:
        raise SpecError(f"unknown device {str(device)[:40]!r}; use cpu, cuda or cuda:N")
    try:
        import torch
    except ImportError:
        if text is None:
            return CPU_INTERPRETER, _cpu_props()
        raise SpecError(f"device {device!r} needs torch, which is not installed; use --device cpu") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text is None:
        if count == 0:
            return CPU_INTERPRETER, _cpu_props()
        index = 0
    else:
        index = int(match.group(1) or 0)
        if count == 0:
            raise SpecError(f"no CUDA/ROCm device visible for {device!r} (torch {torch.__version__}); "
                            f"use --device cpu")
        if index >= count:
            raise SpecError(f"device {device!r} does not exist: {count} GPU(s) visible, "
                            f"use cuda:0..cuda:{count - 1}")
    props = _gpu_props(torch, index)
    return classify(props), props


def live_identity(device: str | None, override: str = "") -> tuple[DeviceClass, StackFingerprint, str]:
    """(class, stack fingerprint with `override` applied, device string "cpu" | "cuda:N") of the
    device to run on; None picks as `probe` does. SpecError says what is wrong with either."""
    dc, _ = probe(device)
    fp = live_fingerprint(dc, override)
    device_str = "cpu" if dc.target.is_interpreter else (device if device and ":" in device else "cuda:0")
    return dc, fp, device_str


def visible_devices() -> list[str]:
    """"cpu" and every GPU torch sees, as device strings."""
    names = ["cpu"]
    try:
        import torch
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return names
