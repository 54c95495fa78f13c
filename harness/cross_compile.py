"""Building a kernel's configuration for a GPU architecture on a machine that has no such GPU.

Triton's compiler needs no device: the wheel ships ptxas and cuobjdump, and the AMD backend
assembles and links hsaco in-process. So the constraints in each kernel module can be held
against what the real compilers build for sm_90 or gfx942 (shared memory, registers, spills,
the matrix instructions chosen): the MI300X path included, which no machine here can run.
What this cannot tell: the time a build takes to run, and anything only the driver decides
at load time beyond the shared-memory and register limits checked here.

In-process here; harness/cross_build.py runs builds in a child process, which the tests need
(under TRITON_INTERPRET=1 @triton.jit gives interpreter functions that cannot be compiled) and
which can be killed when ptxas hangs.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

from devices import vendors
from keys import Config, SpecError, TuningKey
from devices.targets import NV_REGS_PER_BLOCK, Target
from search_spaces.base import KernelSpec

# ptxas stores a word or two to the stack even at 72 of 255 registers (seen on sm_90): that is
# not register pressure, and costs nothing in the main loop
SPILL_NOISE_BYTES = 16


@dataclass(frozen=True)
class Build:
    """What one configuration compiled to, as the driver would see it at load time."""

    arch: str
    shared_bytes: int  # static shared memory (LDS on AMD) the launch asks for
    registers: int  # per thread: REG on NVIDIA; VGPRs + AGPRs on AMD
    spill_bytes: int  # per thread: stack frame + local memory on NVIDIA, scratch on AMD (Triton
    # kernels have no stack arrays, so this is what spilled registers take)
    mma: tuple[str, ...]  # the matrix instructions in the binary (wgmma/mma on NVIDIA, v_mfma on AMD)
    occupancy: int | None  # waves per SIMD the AMD compiler reports; None on NVIDIA
    waves_per_eu: int | None  # the occupancy the AMD compiler was asked for (0: its own choice)
    k_width: int | None  # elements a thread holds along K in a dot operand (kpack doubles it on AMD)
    compile_s: float

    @property
    def spills(self) -> bool:
        return self.spill_bytes > SPILL_NOISE_BYTES

    def load_error(self, target: Target, num_warps: int) -> str | None:
        """Why the driver would refuse to launch it (what `_init_handles` raises), else None."""
        if self.shared_bytes > target.smem_bytes:
            kind = "LDS" if target.is_hip else "shared memory"
            return f"{kind} {self.shared_bytes} B > {target.smem_bytes} B on {target.arch}"
        if not target.is_hip and self.registers * num_warps * target.warp_size > NV_REGS_PER_BLOCK:
            return f"{self.registers} registers x {num_warps * target.warp_size} threads > {NV_REGS_PER_BLOCK}"
        return None


def cross_compile(spec: KernelSpec, config: Config, key: TuningKey, target: Target):
    """Compile config for key exactly as its launch on target would (same specialization, same
    options), without the device. Returns (Triton's CompiledKernel, Build); raises what the
    compiler raises (CompilationError, a ptxas failure)."""
    import triton
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import MockTensor, create_function_from_signature

    gpu = vendors.get(target.vendor).triton_target(target)
    s = spec.specialization(config, key, target)
    if s is None:
        raise SpecError(f"{spec.name} does not describe its launch (no specialization); it cannot be cross-compiled")
    if not hasattr(s.fn, "params"):
        raise SpecError("TRITON_INTERPRET=1 made the kernel an interpreter function; build in a "
                        "harness.cross_build.Builder process")
    # what JITFunction.run does before it compiles, with the target's backend in place of the
    # live driver's: bind, specialize (alignment, divisibility by 16), split constexprs
    backend = make_backend(gpu)
    binder = create_function_from_signature(s.fn.signature, s.fn.params, backend)
    kwargs = {**s.kwargs, "debug": False}
    bound, specialization, options = binder(*map(MockTensor.wrap_dtype, s.args), **kwargs)
    options, signature, constexprs, attrs = s.fn._pack_args(backend, kwargs, bound, specialization, options)
    t = time.perf_counter()
    kernel = triton.compile(ASTSource(s.fn, signature, constexprs, attrs), target=backend.target,
                            options=options.__dict__)
    seconds = time.perf_counter() - t
    read = {"amd": _amd_build, "nvidia": _nvidia_build}.get(target.vendor)
    if read is None:  # a vendor without a reader of its binaries is refused, never read as NVIDIA's
        raise SpecError(f"no reader of {target.vendor} binaries' resource usage; add one to harness/cross_compile.py")
    return kernel, read(kernel, target, seconds)


def _nvidia_build(kernel, target: Target, seconds: float) -> Build:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    ptx = kernel.asm["ptx"]
    mma = sorted(set(re.findall(r"\b(wgmma\.mma_async\.sync\.aligned\.m\d+n\d+k\d+|mma\.sync\.aligned\.m\d+n\d+k\d+)", ptx)))
    return Build(target.arch, kernel.metadata.shared + int(fields.get("SHARED", 0)), int(fields["REG"]),
                 int(fields.get("STACK", 0)) + int(fields.get("LOCAL", 0)), tuple(mma), None, None,
                 _k_width(kernel), seconds)


def _k_width(kernel) -> int | None:
    widths = [int(w) for w in re.findall(r"kWidth\s*=\s*(\d+)", kernel.asm["ttgir"])]
    return max(widths) if widths else None


def _amd_field(asm: str, name: str) -> int:
    found = re.findall(rf"\.{name}:\s+(\d+)", asm)
    return int(found[0]) if found else 0


def _amd_build(kernel, target: Target, seconds: float) -> Build:
    asm = kernel.asm["amdgcn"]
    occupancy = re.findall(r";\s*Occupancy:\s*(\d+)", asm)
    waves = re.findall(r'"amdgpu-waves-per-eu"="(\d+)', kernel.asm["llir"])
    return Build(target.arch, max(kernel.metadata.shared, _amd_field(asm, "group_segment_fixed_size")),
                 _amd_field(asm, "vgpr_count") + _amd_field(asm, "agpr_count"),
                 _amd_field(asm, "private_segment_fixed_size"),
                 tuple(sorted(set(re.findall(r"\bv_mfma_\w+", asm)))),
                 int(occupancy[0]) if occupancy else None, int(waves[0]) if waves else None,
                 _k_width(kernel), seconds)
