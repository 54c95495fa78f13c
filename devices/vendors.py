"""What the service must know of each GPU vendor, in one place: adding a vendor is one class here
and one line in VENDORS (plus its architectures' limits in devices/targets.py).

A vendor decides: whether a device's properties are its own and which architecture they name;
whether a launch on a torch device is its backend's (`launch_vendor`, which every kernel asks);
the limits of an architecture nobody has entered yet; the driver and GPU runtime versions of the
stack fingerprint; and the Triton backend that builds for it. Nothing here imports torch or triton
at module level: the runtime lookup imports this module.
"""
from __future__ import annotations

import os
import re
import subprocess
from typing import Any, ClassVar, Mapping

from keys import SpecError
from devices.targets import Target, target_for


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class Vendor:
    """One vendor's facts. Subclasses answer for their devices only; `VENDORS` asks them in order."""

    name: ClassVar[str]
    compute_unit: ClassVar[str] = "cu"  # how a generic slug counts compute units: "sm" or "cu"
    label: ClassVar[str] = ""  # how a device with no name is called
    # torch's name of the fp8 type (e4m3) the vendor's devices compute in: OCP's e4m3fn, as the
    # interpreter's (fp8 models' weights are converted to it where a vendor's differs)
    fp8: ClassVar[str] = "float8_e4m3fn"

    def claims(self, props: Mapping[str, Any]) -> bool:
        """Whether the recorded properties (torch.cuda.get_device_properties' fields) are this vendor's."""
        raise NotImplementedError

    def arch(self, props: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def generic_target(self, arch: str, compute_units: int) -> Target:
        """Limits that every device of the vendor meets, for an architecture devices/targets.py
        has no row for yet: invalid configurations are pruned too eagerly rather than sent to crash."""
        raise NotImplementedError

    def driver(self) -> str:
        return "none"

    def runtime(self) -> str:
        return "none"

    def runs(self, device_type: str, hip: str | None, cuda: str | None) -> bool:
        """Whether this vendor's Triton backend runs a launch on tensors of torch's `device_type`
        ("cpu", "cuda", ...) under a torch built for `hip` and `cuda` (torch.version's fields)."""
        return False

    def triton_target(self, target: Target):
        """Triton's GPUTarget for one of this vendor's architectures (for builds without the device)."""
        raise SpecError(f"{target.arch} has no binary to build; name a GPU architecture such as sm_90")


class Cpu(Vendor):
    name = "cpu"

    def claims(self, props):
        return props.get("type") == "cpu"

    def arch(self, props):
        return "interpreter"

    def generic_target(self, arch, compute_units):
        return target_for("interpreter", compute_units)

    def runs(self, device_type, hip, cuda):
        return device_type == "cpu"  # the Triton interpreter, whatever torch was built for


class Amd(Vendor):
    name = "amd"
    label = "AMD"
    # gfx942 (MI300X/MI325X) computes in the FNUZ variant (vLLM's current_platform.fp8_dtype());
    # gfx950 moves to OCP's: a rule by architecture once a gfx950 class is added
    fp8 = "float8_e4m3fnuz"

    def claims(self, props):
        # CUDA builds of torch fill gcnArchName with a sentence, so only a "gfx" prefix means AMD
        return bool(props.get("is_hip")) or str(props.get("gcnArchName") or "").strip().lower().startswith("gfx")

    def arch(self, props):
        gcn = str(props.get("gcnArchName") or "").strip().lower()
        # "gfx942:sramecc+:xnack-": the suffix lists target features, not a different chip
        return gcn.split(":")[0] if gcn.startswith("gfx") else "gfx-unknown"

    def generic_target(self, arch, compute_units):
        # gfx9 (GCN/CDNA) runs 64-wide wavefronts; RDNA (gfx10+) is compiled wave32 by Triton
        warp = 64 if re.fullmatch(r"gfx9[0-9a-f]{1,2}", arch) else 32
        return Target("amd", arch, 65536, warp, 512, compute_units)

    def runs(self, device_type, hip, cuda):
        return device_type == "cuda" and hip is not None  # ROCm torch names its GPUs "cuda" too

    def driver(self):
        version = _read("/sys/module/amdgpu/version").strip()
        # no DKMS module: the amdgpu driver is the one built into the running kernel
        return version or f"kernel-{os.uname().release}"

    def runtime(self):
        import torch

        # torch wheels bundle the HIP runtime, so torch's own version is the one kernels run on
        hip = str(getattr(torch.version, "hip", None) or "unknown")
        return f"rocm-{hip.split('-')[0]}"

    def triton_target(self, target):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("hip", target.arch, target.warp_size)


class Nvidia(Vendor):
    name = "nvidia"
    compute_unit = "sm"
    label = "NVIDIA"

    def claims(self, props):
        return True  # asked last: a GPU that is no other vendor's is a CUDA device

    def arch(self, props):
        return f"sm_{int(props.get('major', 0))}{int(props.get('minor', 0))}"

    def generic_target(self, arch, compute_units):
        # 48 KiB is the per-block shared memory every CUDA GPU grants without the opt-in
        return Target("nvidia", arch, 49152, 32, 255, compute_units)

    def runs(self, device_type, hip, cuda):
        return device_type == "cuda" and hip is None and cuda is not None

    def driver(self):
        # the kernel module's version, e.g. 555.42.06: a point release changes it but not the CUDA
        # driver API version (12.5), and point releases do change code generation and timing
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

    def runtime(self):
        import torch

        return f"cuda-{torch.version.cuda or 'unknown'}"

    def triton_target(self, target):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", int(target.arch.removeprefix("sm_")), target.warp_size)


# Asked in this order by `for_props`: the catch-all (NVIDIA) last.
VENDORS: tuple[Vendor, ...] = (Cpu(), Amd(), Nvidia())
_BY_NAME = {v.name: v for v in VENDORS}


def for_props(props: Mapping[str, Any]) -> Vendor:
    return next(v for v in VENDORS if v.claims(props))


def launch_vendor(device_type: str, hip: str | None, cuda: str | None) -> str:
    """The vendor whose backend runs a launch on a tensor of `device_type` under a torch built for
    `hip` and `cuda` (torch.version.hip, .cuda): the one rule every kernel's launch splits its
    configuration by (KernelSpec.vendor_of). A device no vendor here runs (an XPU, a torch built for
    neither) is refused rather than launched with another vendor's options."""
    for vendor in VENDORS:
        if vendor.runs(device_type, hip, cuda):
            return vendor.name
    raise SpecError(f"no vendor here launches Triton kernels on {str(device_type)[:20]} tensors (torch built for "
                    f"hip={hip}, cuda={cuda}); add one to devices/vendors.py")


def get(name: str) -> Vendor:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise SpecError(f"unknown vendor {name!r}; known: {', '.join(_BY_NAME)}") from None
