"""What a kernel's constraints are checked against: each architecture's limits (shared memory,
warp size, registers) and the launch options each vendor's backend takes."""
from __future__ import annotations

from dataclasses import dataclass

from keys import SpecError


@dataclass(frozen=True)
class Target:
    """The hardware limits that constraints are checked against (one per architecture)."""

    vendor: str  # nvidia | amd | cpu
    arch: str  # sm_90, gfx942, interpreter
    smem_bytes: int  # shared memory (LDS on AMD) one program may use
    warp_size: int  # 32 on NVIDIA, 64 (a wavefront) on CDNA
    max_regs_per_thread: int
    compute_units: int = 1

    @property
    def is_hip(self) -> bool:
        return self.vendor == "amd"

    @property
    def is_interpreter(self) -> bool:
        return self.vendor == "cpu"


# Per-architecture limits. Shared memory is the per-block opt-in maximum
# (cudaDevAttrMaxSharedMemoryPerBlockOptin): 227 KiB on Hopper, 163 KiB on A100, 99 KiB on Ada;
# CDNA2/3 have 64 KiB of LDS per CU.
_ARCH_LIMITS: dict[str, tuple[str, int, int, int]] = {
    "sm_90": ("nvidia", 232448, 32, 255),
    "sm_89": ("nvidia", 101376, 32, 255),
    "sm_86": ("nvidia", 101376, 32, 255),
    "sm_80": ("nvidia", 166912, 32, 255),
    "gfx942": ("amd", 65536, 64, 512),
    "gfx90a": ("amd", 65536, 64, 512),
    "gfx950": ("amd", 163840, 64, 512),
    "interpreter": ("cpu", 1 << 30, 32, 1 << 20),
}


# Compile options a Triton launch takes beside the kernel's own arguments, on every backend, and
# those only one vendor's backend knows (CUDA's rejects options it does not know).
LAUNCH_OPTIONS = frozenset({"num_warps", "num_stages", "num_ctas", "maxnreg"})
_VENDOR_OPTIONS: dict[str, frozenset[str]] = {"amd": frozenset({"waves_per_eu", "matrix_instr_nonkdim", "kpack"})}
ANY_LAUNCH_OPTION = LAUNCH_OPTIONS.union(*_VENDOR_OPTIONS.values())


def launch_options(vendor: str) -> frozenset[str]:
    """The compile options a launch on this vendor's backend accepts."""
    return LAUNCH_OPTIONS | _VENDOR_OPTIONS.get(vendor, frozenset())


def target_for(arch: str, compute_units: int = 1) -> Target:
    try:
        vendor, smem, warp, regs = _ARCH_LIMITS[arch]
    except KeyError:
        raise SpecError(f"unknown architecture {arch!r}; known: {', '.join(sorted(_ARCH_LIMITS))}") from None
    return Target(vendor, arch, smem, warp, regs, compute_units)


# registers in one NVIDIA block (65,536 on every architecture since Kepler)
NV_REGS_PER_BLOCK = 65536
