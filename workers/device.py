"""Which device class a GPU belongs to: the half of a stored configuration's identity that is hardware.

A class is decided from the numbers torch reports (architecture, compute units, memory), not from
the device name: names drift between drivers (vLLM has shipped several bugs from this), and
MI300X, MI308X and MI325X all report gfx942. The name is consulted only where the numbers cannot
tell two products apart (A100 PCIe vs SXM, H200 vs H200 NVL).

torch is imported inside probe() only: the runtime lookup imports this module and must stay light.
"""
from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

from search_spaces.base import SpecError, Target, stable_hash, target_for

QUEUE_PREFIX = "tune."


@dataclass(frozen=True)
class DeviceClass:
    """A kind of device that shares tuned configurations; `slug` is its storage and queue name."""

    vendor: str  # nvidia | amd | cpu
    arch: str  # sm_90, gfx942, interpreter
    name: str  # normalized marketing name; informative only, never matched on
    compute_units: int  # SMs on NVIDIA, CUs on AMD, 1 for the interpreter
    memory_gb: int  # nominal size (80 for an H100 that reports 79.2 GiB)
    slug: str  # h100-sxm-80gb, mi300x-192gb, cpu-interpreter, nvidia-sm_89-128sm-24gb
    aliases: tuple[str, ...] = ()  # families this class answers to: ("h100",)

    @property
    def target(self) -> Target:
        try:
            return target_for(self.arch, self.compute_units)
        except SpecError:
            return _generic_target(self.vendor, self.arch, self.compute_units)

    @property
    def is_known(self) -> bool:
        return self.slug in _BY_SLUG

    def to_json(self) -> dict[str, Any]:
        return {"vendor": self.vendor, "arch": self.arch, "name": self.name,
                "compute_units": self.compute_units, "memory_gb": self.memory_gb,
                "slug": self.slug, "aliases": list(self.aliases)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "DeviceClass":
        return cls(str(data["vendor"]), str(data["arch"]), str(data["name"]), int(data["compute_units"]),
                   int(data["memory_gb"]), str(data["slug"]), tuple(str(a) for a in data.get("aliases", ())))

    @cached_property
    def stable_hash(self) -> str:
        return stable_hash(self.to_json())


def _generic_target(vendor: str, arch: str, compute_units: int) -> Target:
    # An architecture base.py has no row for yet (Blackwell, Turing, RDNA...). Limits every device
    # of the vendor meets: invalid configs are pruned too eagerly rather than sent to crash.
    if vendor == "amd":
        # gfx9 (GCN/CDNA) runs 64-wide wavefronts; RDNA (gfx10+) is compiled wave32 by Triton.
        warp = 64 if re.fullmatch(r"gfx9[0-9a-f]{1,2}", arch) else 32
        return Target("amd", arch, 65536, warp, 512, compute_units)
    if vendor == "cpu":
        return target_for("interpreter", compute_units)
    # 48 KiB is the per-block shared memory every CUDA GPU grants without the opt-in.
    return Target("nvidia", arch, 49152, 32, 255, compute_units)


CPU_INTERPRETER = DeviceClass("cpu", "interpreter", "Triton CPU interpreter", 1, 0, "cpu-interpreter", ("cpu",))

# Products told apart by (arch, compute units, nominal memory). Where two products share all three,
# the one with a name hint (_NAME_HINTS) wins when the reported name contains it; otherwise the
# un-hinted one is chosen, so a drifted name degrades to the more common product, never to "unknown".
KNOWN_DEVICES: tuple[DeviceClass, ...] = (
    DeviceClass("nvidia", "sm_90", "NVIDIA H100 SXM", 132, 80, "h100-sxm-80gb", ("h100",)),
    DeviceClass("nvidia", "sm_90", "NVIDIA H100 PCIe", 114, 80, "h100-pcie-80gb", ("h100",)),
    DeviceClass("nvidia", "sm_90", "NVIDIA H100 NVL", 132, 94, "h100-nvl-94gb", ("h100",)),
    DeviceClass("nvidia", "sm_90", "NVIDIA H200", 132, 141, "h200-141gb", ("h200",)),
    DeviceClass("nvidia", "sm_90", "NVIDIA H200 NVL", 132, 141, "h200-nvl-141gb", ("h200",)),
    DeviceClass("nvidia", "sm_80", "NVIDIA A100 SXM", 108, 40, "a100-sxm-40gb", ("a100",)),
    DeviceClass("nvidia", "sm_80", "NVIDIA A100 PCIe", 108, 40, "a100-pcie-40gb", ("a100",)),
    DeviceClass("nvidia", "sm_80", "NVIDIA A100 SXM", 108, 80, "a100-sxm-80gb", ("a100",)),
    DeviceClass("nvidia", "sm_80", "NVIDIA A100 PCIe", 108, 80, "a100-pcie-80gb", ("a100",)),
    DeviceClass("amd", "gfx942", "AMD Instinct MI300X", 304, 192, "mi300x-192gb", ("mi300x",)),
    DeviceClass("amd", "gfx942", "AMD Instinct MI308X", 80, 192, "mi308x-192gb", ("mi308x",)),
    DeviceClass("amd", "gfx942", "AMD Instinct MI325X", 304, 256, "mi325x-256gb", ("mi325x",)),
    CPU_INTERPRETER,
)
# PCIe and SXM A100s have the same SM count and memory; H200 NVL differs from H200 SXM only in power.
_NAME_HINTS: dict[str, str] = {"h200-nvl-141gb": "nvl", "a100-pcie-40gb": "pcie", "a100-pcie-80gb": "pcie"}

_BY_SLUG: dict[str, DeviceClass] = {dc.slug: dc for dc in KNOWN_DEVICES}


def _families() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for dc in KNOWN_DEVICES:
        for alias in dc.aliases:
            out.setdefault(alias, []).append(dc.slug)
    return {alias: tuple(slugs) for alias, slugs in out.items()}


# alias -> every slug of the family: a job for "h100" may run on any H100 worker.
ALIASES: dict[str, tuple[str, ...]] = _families()

# Memory sizes products are sold with, in GB as marketed. The driver reports less than the nominal
# size (ECC, firmware reservations: an 80 GB H100 shows 79.2 GiB, a 24 GB card with ECC 22.5 GiB).
_NOMINAL_GB = (4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 128, 141, 144, 180, 192, 256, 288)


def nominal_memory_gb(total_bytes: int) -> int:
    """The marketed size a reported memory total belongs to: the smallest nominal size it fits under."""
    gib = total_bytes / (1 << 30)
    for n in _NOMINAL_GB:
        if gib <= n * 1.01:
            # Far below every size that fits (a MIG slice, a partitioned GPU): report what is there.
            return n if gib >= n * 0.9 else max(1, round(gib))
    return max(1, round(gib))


def _generic_slug(vendor: str, arch: str, compute_units: int, memory_gb: int) -> str:
    unit = "sm" if vendor == "nvidia" else "cu"
    return f"{vendor}-{arch}-{compute_units}{unit}-{memory_gb}gb"


_GENERIC_SLUG = re.compile(r"(nvidia|amd)-[a-z0-9_]+-[0-9]+(sm|cu)-(?P<gb>[0-9]+)gb")


def classify(props: Mapping[str, Any]) -> DeviceClass:
    """The device class of a recorded property dict (the keys of torch.cuda.get_device_properties).

    Never raises for a GPU it does not know: such a device gets a generic class named by its numbers.
    """
    if props.get("type") == "cpu":
        return CPU_INTERPRETER
    raw_name = " ".join(str(props.get("name") or "").split())
    # CUDA builds of torch fill gcnArchName with a sentence, so only a "gfx" prefix means AMD.
    gcn = str(props.get("gcnArchName") or "").strip().lower()
    if props.get("is_hip") or gcn.startswith("gfx"):
        vendor = "amd"
        # "gfx942:sramecc+:xnack-": the suffix lists target features, not a different chip.
        arch = gcn.split(":")[0] if gcn.startswith("gfx") else "gfx-unknown"
    else:
        vendor = "nvidia"
        arch = f"sm_{int(props.get('major', 0))}{int(props.get('minor', 0))}"
    cus = int(props.get("multi_processor_count", 0))
    mem = nominal_memory_gb(int(props.get("total_memory", 0)))

    candidates = [dc for dc in KNOWN_DEVICES
                  if (dc.vendor, dc.arch, dc.compute_units, dc.memory_gb) == (vendor, arch, cus, mem)]
    lowered = raw_name.lower()
    hinted = [dc for dc in candidates if dc.slug in _NAME_HINTS and _NAME_HINTS[dc.slug] in lowered]
    plain = [dc for dc in candidates if dc.slug not in _NAME_HINTS]
    if hinted or plain:
        return (hinted or plain)[0]
    name = raw_name or f"{'AMD' if vendor == 'amd' else 'NVIDIA'} {arch}"
    return DeviceClass(vendor, arch, name, cus, mem, _generic_slug(vendor, arch, cus, mem))


def known_selectors() -> list[str]:
    return sorted(ALIASES) + sorted(_BY_SLUG)


def class_memory_bytes(selector: str) -> int | None:
    """The device memory a job for this class can count on (the smallest of a family), or None
    where the class does not say (the CPU interpreter: its workers' hosts differ)."""
    slugs = ALIASES.get(selector, (selector,))
    sizes = [_BY_SLUG[s].memory_gb if s in _BY_SLUG else _generic_memory_gb(s) for s in slugs]
    known = [gb for gb in sizes if gb]
    return min(known) * (1 << 30) if known and len(known) == len(sizes) else None


def _generic_memory_gb(slug: str) -> int | None:
    m = _GENERIC_SLUG.fullmatch(slug)
    return int(m["gb"]) if m else None


def resolve_device_class(text: str) -> str:
    """A device class as a user wrote it ("H100", "mi300x", "h100-sxm-80gb") -> its canonical selector.

    The result is a family alias or an exact slug; either is a queue suffix (`queue_for`).
    """
    selector = str(text).strip().lower()
    if selector in ALIASES or selector in _BY_SLUG or _GENERIC_SLUG.fullmatch(selector):
        return selector
    raise SpecError(f"unknown device class {text!r}; use an alias ({', '.join(sorted(ALIASES))}), "
                    f"a slug such as h100-sxm-80gb, or what `tuner devices` prints for an unlisted GPU")


def matches(alias_or_slug: str, slug: str) -> bool:
    """Whether a device of class `slug` may serve a request for `alias_or_slug`."""
    selector = str(alias_or_slug).strip().lower()
    return selector == slug or slug in ALIASES.get(selector, ())


def queue_for(text: str) -> str:
    """The queue a job for this device class is sent to."""
    return QUEUE_PREFIX + resolve_device_class(text)


def queue_names(dc: DeviceClass) -> tuple[str, ...]:
    """The queues a worker of this class consumes: its exact slug first, then its families."""
    return (QUEUE_PREFIX + dc.slug,) + tuple(QUEUE_PREFIX + a for a in dc.aliases)


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
        raise SpecError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
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
