"""Whether a key's trial fits the memory of the device class that would run it: the one check
`tuner tune`, `tuner submit`, the retune of stale keys and the retune of runtime misses share,
so a shape that one refuses is never queued by another."""
from __future__ import annotations

import os
from typing import Any, Iterable

from devices.classes import CPU_INTERPRETER, class_memory_bytes, matches


def host_memory() -> int | None:
    """This host's physical memory in bytes, where the platform says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def unfit(spec: Any, keys: Iterable[Any], selector: str, where: str, *, input_sets: int = 1,
          cuda_graph: bool = False, host_bytes: int | None = None) -> str | None:
    """Why a device class cannot run these keys of `spec` (a KernelSpec), or None when it can:
    CUDA graphs on the interpreter, or a trial that needs more memory than the class has (on the
    interpreter, `host_bytes`: the CPU class's workers are taken to have as much as this host),
    which would fail every trial it is given or, on the interpreter, wake the host's OOM killer."""
    interpreter = matches(selector, CPU_INTERPRETER.slug)
    if interpreter and cuda_graph:
        return (f"--cuda-graph needs a GPU, and {where} is the Triton CPU interpreter, which has "
                "no CUDA graphs; drop --cuda-graph or tune on a GPU")
    memory_bytes = host_bytes if interpreter else class_memory_bytes(selector)
    where = "this host" if interpreter else where
    if not memory_bytes:
        return None
    for key in keys:
        need = spec.trial_bytes(key, input_sets)
        if need is not None and need > memory_bytes:
            fewer = " or fewer --rotate-buffers" if input_sets > 1 else ""
            return (f"{spec.name} {key.label()} needs about {need / 2**30:.1f} GiB for one trial (inputs, "
                    f"output, reference), more than the {memory_bytes / 2**30:.0f} GiB of {where}; "
                    f"tune a smaller shape{fewer}")
    return None
