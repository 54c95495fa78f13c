"""The contract every kernel module keeps (keys/ holds the keys that name a tuning problem,
devices/targets.py the limits a kernel is checked against).

Nothing here imports torch or triton: the coordinator and the runtime read keys and
spaces without a GPU stack. Kernel modules import those themselves.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Iterable, Iterator, Mapping

from devices.targets import ANY_LAUNCH_OPTION, Target, launch_options
from keys import DTYPES, Config, SpecError, TuningKey, canonical_json, config_hash, nearest


# how a routing kernel's inputs route tokens unless a job names another of its `routings`
DEFAULT_ROUTING = "uniform"


class LazyTorch:
    """A stand-in for torch in a kernel module (`torch = LazyTorch(globals())`), replaced there by
    torch itself at its first use. Reading a kernel's space, key, constraints and default (the
    CLI's checks, `tuner submit`, `tuner kernels`, a worker's main process) needs no torch, whose
    import costs ~3 s of CPU; making inputs, launching and checking results do."""

    def __init__(self, namespace: dict[str, Any]):
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        import torch

        self._namespace["torch"] = torch
        return getattr(torch, name)


class _TorchDtypes(Mapping):
    """DTYPES as torch dtypes, torch imported at the first lookup."""

    def __getitem__(self, name: str) -> Any:
        if name not in DTYPES:
            raise KeyError(name)
        import torch

        return getattr(torch, name)

    def __iter__(self) -> Iterator[str]:
        return iter(DTYPES)

    def __len__(self) -> int:
        return len(DTYPES)


TORCH_DTYPES: Mapping[str, Any] = _TorchDtypes()


def compiled_identity(kernel: Any, **launch: Any) -> str:
    """A hash of a Triton CompiledKernel's binary (cubin, hsaco), the launch metadata that is
    not in it (warps, CTAs, dynamic shared memory), and `launch`: whatever else decides what a
    launch does (the grid, runtime arguments taken from the config). Equal hashes, same work."""
    md = kernel.metadata
    binary = kernel.kernel if isinstance(kernel.kernel, bytes) else str(kernel.kernel).encode()
    meta = {name: repr(getattr(md, name, None)) for name in ("num_warps", "num_ctas", "shared", "cluster_dims")}
    return hashlib.sha256(binary + canonical_json({"meta": meta, "launch": launch}).encode()).hexdigest()[:24]


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def block_limit(values: tuple[int, ...] | list[int], extent: int) -> int:
    """The largest block worth trying for a problem extent: the smallest candidate that covers
    the extent padded to a power of two (the largest candidate when none does). A bigger block
    computes only masked lanes; the smallest candidate is always allowed."""
    need = next_pow2(extent)
    return min((v for v in values if v >= need), default=max(values))


def require_launchable(on_cpu: bool) -> None:
    """Raise, saying how to fix it, when a launch cannot work: CPU tensors run only in the Triton
    interpreter, and the interpreter needs TRITON_INTERPRET=1 before triton is first imported
    (triton.language's own jit functions, tl.cdiv and tl.sum among them, are wrapped then).
    Called by kernel modules at launch; triton is imported here only then."""
    import triton

    interpret = bool(triton.knobs.runtime.interpret)
    if on_cpu and not interpret:
        raise RuntimeError("CPU tensors run only in the Triton interpreter: set TRITON_INTERPRET=1 "
                           "in the environment before triton is imported")
    if interpret and type(triton.language.standard.cdiv).__name__ != "InterpretedFunction":
        raise RuntimeError("TRITON_INTERPRET=1 was set after triton was imported; set it in the "
                           "environment before the first import of triton")


@dataclass(frozen=True)
class Specialization:
    """A launch's exact specialization without inputs, in the form Triton's `warmup` takes:
    the @triton.jit function, its positional arguments with a torch dtype standing for each
    tensor (Triton assumes 16-byte alignment, as torch's allocations have), the constexpr and
    compile-option keywords, and the grid. The same object compiles on the live device
    (`KernelSpec.compile`) and, for any architecture, on a machine without it (cross_compile)."""

    fn: Any
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    grid: tuple[int, ...]


class KernelSpec:
    """One tunable kernel. Subclasses live one per module in search_spaces/ (or a user's package).

    Importing a kernel module must run nothing heavy; torch and triton are imported there,
    but inputs are made and kernels compiled only when a method is called.
    """

    name: ClassVar[str]
    key_names: ClassVar[tuple[str, ...]]
    dtypes: ClassVar[tuple[str, ...]] = DTYPES
    # dtype -> (atol, rtol) against the reference
    tolerances: ClassVar[dict[str, tuple[float, float]]] = {
        "float16": (1e-2, 1e-2), "bfloat16": (5e-2, 2e-2), "float32": (1e-3, 1e-3)}

    # configuration entries the grid reads but the kernel does not take as an argument (the
    # runtime hands them to the grid callable only)
    grid_only: ClassVar[frozenset[str]] = frozenset()
    # how a kernel that routes tokens (a mixture of experts) may draw the routing of its inputs, the
    # default first; make_inputs takes `routing=` for the others. Empty: the kernel routes nothing.
    routings: ClassVar[tuple[str, ...]] = ()
    # the export formats (tuner/formats/: "vllm", "sglang", "vllm-lora") that write this kernel's
    # bests for a server to read: a format writes the kernels that declare it, and refuses others
    exports: ClassVar[tuple[str, ...]] = ()
    # the smallest (dims, dtype) that still runs every part of the kernel: where the conformance
    # test (tests/test_conformance.py) runs it on the interpreter. None: every dim 16, the first dtype
    tiny_shape: ClassVar[tuple[dict[str, int], str] | None] = None
    # whether a trial's inputs are rebuilt from a launch signature a model process recorded (a
    # drop-in kernel: search_spaces/dropin.py): a key with none recorded cannot be tuned
    needs_signature: ClassVar[bool] = False

    # ---- identity -------------------------------------------------------------------
    @cached_property
    def version(self) -> str:
        """A hash of the code that decides what this kernel does (search_spaces/versions.py
        `kernel_source`): an edit to it gets a new version; a comment, a docstring or an edit to
        another kernel's code does not."""
        from search_spaces.versions import kernel_source  # here: that module reads this one's classes

        return hashlib.sha256(kernel_source(type(self)).encode()).hexdigest()[:12]

    def example_dims(self) -> dict[str, int]:
        """A representative shape of the key (`tuner kernels` counts valid configurations there)."""
        return {n: 1024 for n in self.key_names}

    def make_key(self, dims: Mapping[str, Any], dtype: str) -> TuningKey:
        """Validate user-given dims and dtype; raise SpecError with the fix on bad input."""
        names = set(self.key_names)
        missing = [n for n in self.key_names if n not in dims]
        extra = [n for n in dims if n not in names]
        if missing or extra:
            want = ",".join(f"{n}=<int>" for n in self.key_names)
            what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}"
            raise SpecError(f"shape for {self.name} has {what}; write it as {want}")
        values = []
        for n in self.key_names:
            raw = dims[n]
            try:
                v = int(raw)
                if str(raw).strip() != str(v) and not isinstance(raw, int):
                    raise ValueError
            except (TypeError, ValueError):
                raise SpecError(f"shape dim {n}={raw!r} is not an integer; write e.g. {n}=512") from None
            if v <= 0:
                raise SpecError(f"shape dim {n}={v} must be a positive integer")
            values.append((n, v))
        if dtype not in self.dtypes:
            raise SpecError(f"dtype {dtype!r} is not supported by {self.name}; use one of {', '.join(self.dtypes)}")
        return TuningKey(self.name, self.version, tuple(values), dtype)

    # ---- the space ------------------------------------------------------------------
    def space(self, target: Target) -> dict[str, tuple]:
        raise NotImplementedError

    def split_config(self, config: Config, vendor: str) -> tuple[Config, Config]:
        """(kernel arguments, launch options) of a configuration launched on vendor's backend: the
        constexprs the jit function takes, and the compile options Triton takes beside them. A
        vendor-specific option (the AMD knobs) is dropped on another vendor's backend, and grid-only
        entries go to neither. The harness, the runtime and the exporters all split here."""
        options = launch_options(vendor)
        args = {k: v for k, v in config.items() if k not in ANY_LAUNCH_OPTION and k not in self.grid_only}
        return args, {k: v for k, v in config.items() if k in options}

    @staticmethod
    def vendor_of(where: Any) -> str:
        """The vendor whose Triton backend runs a launch on `where` (a tensor, a torch.device or a
        device string such as "cuda:0"): devices/vendors.py's `launch_vendor`, the one rule every
        kernel splits its launch by ("cpu" for the interpreter). A kernel never decides it itself,
        so a new vendor is one class there, not an `else` in every kernel."""
        import torch

        from devices.vendors import launch_vendor

        device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
        return launch_vendor(device.type, torch.version.hip, torch.version.cuda)

    def triton_config(self, config: Config, vendor: str):
        """The configuration as @triton.autotune takes it (for comparisons with it)."""
        import triton

        args, options = self.split_config(config, vendor)
        named = {k: options.pop(k) for k in ("num_warps", "num_stages", "num_ctas", "maxnreg") if k in options}
        return triton.Config({**args, **options}, **named)

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        """None when the configuration can run on target for key, else the reason it cannot."""
        return None

    def check_space(self, config: Config, target: Target) -> str | None:
        """The reason config is not a point of space(target) (unknown, missing or out-of-range
        parameters), else None: the first thing every check() asks."""
        space = self.space(target)
        unknown = sorted(set(config) - set(space))
        missing = [p for p in space if p not in config]
        if unknown or missing:
            parts = ([f"unknown {', '.join(unknown)}"] if unknown else []) + \
                    ([f"missing {', '.join(missing)}"] if missing else [])
            return f"parameters do not match the {self.name} space on {target.arch}: {'; '.join(parts)}"
        for p, values in space.items():
            if config[p] not in values:
                return f"{p}={config[p]!r} is outside the {target.arch} space {tuple(values)}"
        return None

    def default(self, key: TuningKey, target: Target) -> Config:
        raise NotImplementedError

    def nearest_valid(self, want: Config, key: TuningKey, target: Target) -> Config:
        """The valid configuration closest to want (in log2 steps per parameter): how a default
        heuristic repairs itself on a target whose limits it did not foresee."""
        valid = self.valid_configs(key, target)
        if not valid:
            raise SpecError(f"no valid {self.name} configuration for {key.label()} on {target.arch}")
        return nearest(valid, want)

    def known_good(self, key: TuningKey, target: Target) -> list[Config]:
        """Configurations worth trying first (e.g. the Triton tutorial's list); valid ones only are used."""
        return []

    def valid_unique(self, configs: Iterable[Config], key: TuningKey, target: Target) -> list[Config]:
        """The valid configurations among configs, in order, each once: a known-good list."""
        out, seen = [], set()
        for c in configs:
            if self.check(c, key, target) is None and config_hash(c) not in seen:
                seen.add(config_hash(c))
                out.append(c)
        return out

    def configs(self, target: Target) -> Iterator[Config]:
        """Every point of the cartesian space, valid or not, in a stable order."""
        space = self.space(target)
        names = list(space)
        for values in itertools.product(*(space[n] for n in names)):
            yield dict(zip(names, values))

    def valid_configs(self, key: TuningKey, target: Target) -> list[Config]:
        return [c for c in self.configs(target) if self.check(c, key, target) is None]

    # ---- running --------------------------------------------------------------------
    def make_inputs(self, key: TuningKey, device: str, seed: int) -> Any:
        raise NotImplementedError

    def trial_inputs(self, key: TuningKey, device: str, seed: int, routing: str = DEFAULT_ROUTING,
                     signature: Mapping[str, Any] | None = None) -> Any:
        """The inputs of one trial as its request describes them: the routing it names, for a
        kernel that routes tokens (`routings`; SpecError for one it does not have), and the launch
        signature a miss recorded, for a kernel whose inputs are rebuilt from one (a drop-in
        overrides this; others have no use for it). The harness asks only this, so a kernel whose
        inputs take something new says so here, not in harness/."""
        if routing == DEFAULT_ROUTING:
            return self.make_inputs(key, device, seed)
        if routing not in self.routings:
            have = f"use one of {', '.join(self.routings)}" if self.routings else "it routes no tokens"
            raise SpecError(f"{self.name} has no routing {str(routing)[:40]!r}; {have}")
        return self.make_inputs(key, device, seed, routing=routing)

    def launch(self, config: Config, inputs: Any) -> Any:
        raise NotImplementedError

    def reference(self, inputs: Any) -> Any:
        raise NotImplementedError

    def trial_bytes(self, key: TuningKey, input_sets: int = 1) -> int | None:
        """Device memory one trial holds at its peak (its input sets, the output, the reference
        and the fp32 copies the output check makes), or None when the kernel cannot say. A
        request whose trial cannot fit the device is refused before anything is queued."""
        return None

    def specialization(self, config: Config, key: TuningKey, target: Target) -> Specialization | None:
        """What the launch of config for key compiles, without inputs (see Specialization), or
        None when the kernel cannot say. It must agree with launch() argument for argument, or
        a precompiled binary is not the one the launch looks up."""
        return None

    def compile(self, config: Config, key: TuningKey, target: Target) -> str | None:
        """Compile config for key on the current device ahead of its first launch, and return
        the identity of what was built (see `compiled_identity`), or None when there is nothing
        to compile (the interpreter) or the kernel has no specialization.

        The harness calls it in parallel compile processes: Triton writes the binary to its
        on-disk cache, so the benchmark process's first launch loads it instead of compiling,
        and configurations with equal identities are benchmarked once. Raises what a launch
        would raise for a configuration that cannot be built (CompilationError, OutOfResources).
        """
        spec = None if target.is_interpreter else self.specialization(config, key, target)
        if spec is None:
            return None
        kernel = spec.fn.warmup(*spec.args, grid=spec.grid, **spec.kwargs)
        kernel._init_handles()  # load it as a launch would: raises OutOfResources (shared memory, threads)
        return compiled_identity(kernel, grid=spec.grid)

    def flops(self, key: TuningKey) -> float | None:
        return None

    def bytes_moved(self, key: TuningKey) -> float | None:
        """The bytes one launch must read and write at the least (each input and the output
        once; a fused kernel's intermediates not counted), from which reports count GB/s; None
        where the kernel cannot say."""
        return None
