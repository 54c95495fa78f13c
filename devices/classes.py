"""Which device class a GPU belongs to: the half of a stored configuration's identity that is hardware.

A class is decided from the numbers torch reports (architecture, compute units, memory), not from
the device name: names drift between drivers (vLLM has shipped several bugs from this), and
MI300X, MI308X and MI325X all report gfx942. The name is consulted only where the numbers cannot
tell two products apart (A100 PCIe vs SXM, H200 vs H200 NVL).

Nothing here imports torch (devices/probe.py reads the properties): the runtime lookup imports
this module and must stay light.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Mapping

from devices import vendors
from keys import SpecError, stable_hash
from devices.targets import Target, target_for


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
    # what torch.cuda.get_device_name() reported on the probed device (vLLM and SGLang name their
    # config files by it); recorded with the class when a worker registers, never part of its identity
    device_name: str = field(default="", compare=False)

    @property
    def target(self) -> Target:
        try:
            return target_for(self.arch, self.compute_units)
        except SpecError:
            return vendors.get(self.vendor).generic_target(self.arch, self.compute_units)

    @property
    def is_known(self) -> bool:
        return self.slug in _BY_SLUG

    def to_json(self) -> dict[str, Any]:
        out = {"vendor": self.vendor, "arch": self.arch, "name": self.name,
               "compute_units": self.compute_units, "memory_gb": self.memory_gb,
               "slug": self.slug, "aliases": list(self.aliases)}
        return {**out, "device_name": self.device_name} if self.device_name else out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "DeviceClass":
        return cls(str(data["vendor"]), str(data["arch"]), str(data["name"]), int(data["compute_units"]),
                   int(data["memory_gb"]), str(data["slug"]), tuple(str(a) for a in data.get("aliases", ())),
                   str(data.get("device_name") or ""))

    @cached_property
    def stable_hash(self) -> str:
        return stable_hash({k: v for k, v in self.to_json().items() if k != "device_name"})


CPU_INTERPRETER = DeviceClass("cpu", "interpreter", "Triton CPU interpreter", 1, 0, "cpu-interpreter", ("cpu",))

# Products told apart by (arch, compute units, nominal memory). Where two products share all three,
# the one with a name hint wins when the reported name contains it; otherwise the un-hinted one is
# chosen, so a drifted name degrades to the more common product, never to "unknown". Beside each:
# what torch.cuda.get_device_name() reports on it, the usual name first (the names in vLLM's
# shipped config files; where a class has no worker yet, export and import use these), and its
# name hint. Each slug is written here once; every table below is derived from this one.
_PRODUCTS: tuple[tuple[DeviceClass, tuple[str, ...], str | None], ...] = (
    (DeviceClass("nvidia", "sm_90", "NVIDIA H100 SXM", 132, 80, "h100-sxm-80gb", ("h100",)),
     ("NVIDIA H100 80GB HBM3", "NVIDIA H100"), None),
    (DeviceClass("nvidia", "sm_90", "NVIDIA H100 PCIe", 114, 80, "h100-pcie-80gb", ("h100",)), ("NVIDIA H100 PCIe",), None),
    (DeviceClass("nvidia", "sm_90", "NVIDIA H100 NVL", 132, 94, "h100-nvl-94gb", ("h100",)), ("NVIDIA H100 NVL",), None),
    (DeviceClass("nvidia", "sm_90", "NVIDIA H200", 132, 141, "h200-141gb", ("h200",)), ("NVIDIA H200",), None),
    # H200 NVL differs from H200 SXM only in power
    (DeviceClass("nvidia", "sm_90", "NVIDIA H200 NVL", 132, 141, "h200-nvl-141gb", ("h200",)), ("NVIDIA H200 NVL",), "nvl"),
    # PCIe and SXM A100s have the same SM count and memory
    (DeviceClass("nvidia", "sm_80", "NVIDIA A100 SXM", 108, 40, "a100-sxm-40gb", ("a100",)), ("NVIDIA A100-SXM4-40GB",), None),
    (DeviceClass("nvidia", "sm_80", "NVIDIA A100 PCIe", 108, 40, "a100-pcie-40gb", ("a100",)),
     ("NVIDIA A100-PCIE-40GB",), "pcie"),
    (DeviceClass("nvidia", "sm_80", "NVIDIA A100 SXM", 108, 80, "a100-sxm-80gb", ("a100",)), ("NVIDIA A100-SXM4-80GB",), None),
    (DeviceClass("nvidia", "sm_80", "NVIDIA A100 PCIe", 108, 80, "a100-pcie-80gb", ("a100",)),
     ("NVIDIA A100 80GB PCIe",), "pcie"),
    (DeviceClass("amd", "gfx942", "AMD Instinct MI300X", 304, 192, "mi300x-192gb", ("mi300x",)), ("AMD Instinct MI300X",), None),
    (DeviceClass("amd", "gfx942", "AMD Instinct MI308X", 80, 192, "mi308x-192gb", ("mi308x",)), ("AMD Instinct MI308X",), None),
    (DeviceClass("amd", "gfx942", "AMD Instinct MI325X", 304, 256, "mi325x-256gb", ("mi325x",)), ("AMD Instinct MI325X",), None),
)
KNOWN_DEVICES: tuple[DeviceClass, ...] = tuple(dc for dc, _, _ in _PRODUCTS) + (CPU_INTERPRETER,)
_NAME_HINTS: dict[str, str] = {dc.slug: hint for dc, _, hint in _PRODUCTS if hint}

_BY_SLUG: dict[str, DeviceClass] = {dc.slug: dc for dc in KNOWN_DEVICES}
DEVICE_NAMES: dict[str, tuple[str, ...]] = {dc.slug: names for dc, names, _ in _PRODUCTS}


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
    return f"{vendor}-{arch}-{compute_units}{vendors.get(vendor).compute_unit}-{memory_gb}gb"


_GPUS = [v for v in vendors.VENDORS if v.name != "cpu"]
_GENERIC_SLUG = re.compile(rf"({'|'.join(v.name for v in _GPUS)})-[a-z0-9_]+-[0-9]+"
                           rf"({'|'.join({v.compute_unit for v in _GPUS})})-(?P<gb>[0-9]+)gb")


def classify(props: Mapping[str, Any]) -> DeviceClass:
    """The device class of a recorded property dict (the keys of torch.cuda.get_device_properties).

    Never raises for a GPU it does not know: such a device gets a generic class named by its numbers.
    """
    vendor = vendors.for_props(props)
    if vendor.name == "cpu":
        return CPU_INTERPRETER
    raw_name = " ".join(str(props.get("name") or "").split())
    arch = vendor.arch(props)
    cus = int(props.get("multi_processor_count", 0))
    mem = nominal_memory_gb(int(props.get("total_memory", 0)))

    candidates = [dc for dc in KNOWN_DEVICES
                  if (dc.vendor, dc.arch, dc.compute_units, dc.memory_gb) == (vendor.name, arch, cus, mem)]
    lowered = raw_name.lower()
    hinted = [dc for dc in candidates if dc.slug in _NAME_HINTS and _NAME_HINTS[dc.slug] in lowered]
    plain = [dc for dc in candidates if dc.slug not in _NAME_HINTS]
    reported = str(props.get("name") or "")
    if hinted or plain:
        return replace((hinted or plain)[0], device_name=reported)
    name = raw_name or f"{vendor.label} {arch}"
    return DeviceClass(vendor.name, arch, name, cus, mem, _generic_slug(vendor.name, arch, cus, mem),
                       device_name=reported)


def device_names(slug: str, reported: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """The names torch reports for a class's devices: those its workers reported, else the known
    product's usual one, else (no torch name: the CPU interpreter, an unlisted GPU no worker named)
    the class's own name where the class is known."""
    if reported:
        return tuple(reported)
    if slug in DEVICE_NAMES:
        return DEVICE_NAMES[slug][:1]
    return (_BY_SLUG[slug].name,) if slug in _BY_SLUG else ()


# vLLM, SGLang and the LoRA export make file names of a device name: letters, digits and what real
# GPUs' names hold (NVIDIA H100 80GB HBM3, AMD Instinct MI300X (gfx942)), never a path separator
_SAFE_NAME = re.compile(r"[A-Za-z0-9_. ()-]{1,100}")


def check_device_name(name: str) -> str:
    """A device name torch reported, refused (SpecError, one line) unless it is safe in a file name:
    `[A-Za-z0-9_. ()-]`, at most 100 characters, no `..`. An empty name (none reported) passes."""
    if name and (not _SAFE_NAME.fullmatch(name) or ".." in name):
        raise SpecError(f"device name {name[:80]!r} is not a safe file name (exports name files by it): the "
                        "driver must report letters, digits, spaces and _ . ( ) - only, at most 100, without '..'")
    return name


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

    The result is a family alias or an exact slug; either is a queue suffix (workers/queues.py).
    """
    selector = str(text).strip().lower()
    if selector in ALIASES or selector in _BY_SLUG or _GENERIC_SLUG.fullmatch(selector):
        return selector
    raise SpecError(f"unknown device class {text!r}; use an alias ({', '.join(sorted(ALIASES))}), "
                    f"a slug such as h100-sxm-80gb, or what `tuner devices` prints for an unlisted GPU")


_GENERIC_PARTS = re.compile(rf"(?P<vendor>{'|'.join(v.name for v in _GPUS)})-(?P<arch>[a-z0-9_]+)-(?P<cus>[0-9]+)"
                            rf"(?:{'|'.join({v.compute_unit for v in _GPUS})})-(?P<gb>[0-9]+)gb")


def class_for(text: str) -> DeviceClass:
    """The one device class a user's selector names: a known slug, a family with one member, or an
    unlisted GPU's generic slug; SpecError when it names none, or several (a family such as h100)."""
    selector = resolve_device_class(text)
    slugs = ALIASES.get(selector, (selector,))
    if len(slugs) > 1:
        raise SpecError(f"device class {str(text)[:40]!r} names {len(slugs)} classes ({', '.join(slugs)}); give one")
    if slugs[0] in _BY_SLUG:
        return _BY_SLUG[slugs[0]]
    m = _GENERIC_PARTS.fullmatch(slugs[0])
    if m is None:
        raise SpecError(f"device class {str(text)[:40]!r} is not one of this version's classes")
    return DeviceClass(m["vendor"], m["arch"], f"{vendors.get(m['vendor']).label} {m['arch']}", int(m["cus"]),
                       int(m["gb"]), slugs[0])


def matches(alias_or_slug: str, slug: str) -> bool:
    """Whether a device of class `slug` may serve a request for `alias_or_slug`."""
    selector = str(alias_or_slug).strip().lower()
    return selector == slug or slug in ALIASES.get(selector, ())


