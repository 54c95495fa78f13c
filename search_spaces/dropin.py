"""A kernel decorated with `tuner.runtime.autotune` (the drop-in for @triton.autotune) as a
registered kernel, with no KernelSpec written by hand, and the launch signature its inputs are
rebuilt from.

- space: per parameter, the product of the values the config list uses, plus the neighbouring
  num_warps (half, double) and num_stages (one less, one more) of those it uses;
- check(): membership in that space; default(): the list's first configuration;
- make_inputs(): rebuilt from the launch signature a production miss recorded (`signature_of`),
  or by the decorator's `inputs=` function; reference(): the first configuration's outputs
  (every tensor argument after the launch) on inputs made the same way.

The signature (JSON, written and read only here): each argument the configurations do not set,
a tensor as its shape, strides and dtype, a scalar as its value; and the launch's grid for every
combination of the space's constexprs (`grids`), evaluated when the miss was recorded, since the
grid callable itself (code) never leaves the process.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import re
import sys
from typing import Any, Mapping

from keys import DTYPES, Config, SpecError, TuningKey, canonical_json
from devices.targets import Target
from search_spaces.base import DEFAULT_ROUTING, KernelSpec, LazyTorch
from search_spaces.versions import normalized_source

torch = LazyTorch(globals())

OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
MAX_GRIDS = 4096  # grid evaluations a signature keeps (one per combination of the space's constexprs)
MAX_ELEMENTS = 1 << 32  # the most elements a rebuilt tensor may span (a worker allocates it)
SIGNATURE_BYTES = 256 * 1024  # the largest signature a miss record may carry (checked where it lands)
_SCALARS = (bool, int, float, str, type(None))


def config_dict(cfg: Any) -> Config:
    """A triton.Config as a point of the space: its constexprs, num_warps, num_stages (and
    num_ctas, maxnreg where set)."""
    out = dict(cfg.kwargs)
    out["num_warps"], out["num_stages"] = cfg.num_warps, cfg.num_stages
    if getattr(cfg, "num_ctas", 1) not in (1, None):
        out["num_ctas"] = cfg.num_ctas
    if getattr(cfg, "maxnreg", None) is not None:
        out["maxnreg"] = cfg.maxnreg
    return out


def space_of(configs: list) -> dict[str, tuple]:
    """The product of the values the configurations use, num_warps and num_stages widened by a step."""
    points = [config_dict(c) for c in configs]
    names = list(dict.fromkeys(n for p in points for n in p))
    space: dict[str, tuple] = {}
    for n in names:
        used = {p[n] for p in points if n in p}
        if n == "num_warps":
            used |= {w * f for w in used for f in (0.5, 2) if 1 <= w * f <= 32}
            used = {int(w) for w in used}
        elif n == "num_stages":
            used |= {s + d for s in used for d in (-1, 1) if 1 <= s + d <= 8}
        space[n] = tuple(sorted(used, key=lambda v: (str(type(v)), v)))
    return space


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "data_ptr") and hasattr(value, "stride") and hasattr(value, "dtype")


DTYPE_CHARS = 16  # the most a key's dtype field holds (the database's column)
_SHORT = (("bfloat", "bf"), ("float", "f"), ("uint", "u"), ("int", "i"), ("complex", "c"))


def _short(dtype: str) -> str:
    for long, short in _SHORT:
        if dtype.startswith(long):
            return short + dtype[len(long):]
    return dtype


def dtype_key(args: Mapping[str, Any]) -> str | None:
    """The key's dtype field: what triton.autotune adds to its key (`str(arg.dtype)` of every
    argument that has one, in argument order), readable and at most DTYPE_CHARS long.

    - every such argument of the first floating-point tensor's dtype, none None: that dtype
      ("float16"), the key every one-dtype kernel always had;
    - otherwise each argument with a dtype, or None ("-", a tensor left out), in order, short
      names run-length coded: x f32, out f16 -> "f32/f16"; x, w, b f16, mean, rstd f32 ->
      "f16*3/f32*2"; past DTYPE_CHARS, "mix-" and a hash of that list.
    None: no floating-point tensor of DTYPES (the key cannot be named)."""
    listed = [("-" if v is None else str(v.dtype).removeprefix("torch."))
              for v in args.values() if v is None or hasattr(v, "dtype")]
    base = next((str(v.dtype).removeprefix("torch.") for v in args.values()
                 if _is_tensor(v) and v.dtype.is_floating_point), None)
    if base not in DTYPES:
        return None
    if all(d == base for d in listed):
        return base
    runs = [[_short(d), 1] for d in listed[:1]]
    for d in map(_short, listed[1:]):
        if d == runs[-1][0]:
            runs[-1][1] += 1
        else:
            runs.append([d, 1])
    mixed = "/".join(d if n == 1 else f"{d}*{n}" for d, n in runs)
    return mixed if len(mixed) <= DTYPE_CHARS else "mix-" + hashlib.sha256(mixed.encode()).hexdigest()[:12]


def dtype_parts(dtype: str) -> list[str]:
    """The dtypes a key's dtype field names (dtype_key), DTYPES' names only; [] for a hashed one."""
    if dtype in DTYPES:
        return [dtype]
    longs = {_short(d): d for d in DTYPES}
    return [longs[p.split("*")[0]] for p in dtype.split("/") if p.split("*")[0] in longs]


def _dtype_problem(dtype: Any) -> str | None:
    if dtype in DTYPES:
        return None
    if (isinstance(dtype, str) and len(dtype) <= DTYPE_CHARS
            and re.fullmatch(r"mix-[0-9a-f]{12}|[a-z0-9_\-]+(\*[0-9]+)?(/[a-z0-9_\-]+(\*[0-9]+)?)+", dtype)):
        return None
    return (f"dtype {str(dtype)[:40]!r} is not one of {', '.join(DTYPES)} nor a drop-in's mixed dtype "
            "(each argument's dtype in order, e.g. f32/f16)")


def signature_of(kernel: Any, args: Mapping[str, Any], grid: Any) -> dict[str, Any]:
    """What a launch with these arguments (by name) needs to be rebuilt elsewhere (see the module
    docstring). Arguments the configurations set are left out; one that is neither a tensor nor a
    plain scalar is recorded by its type's name (then only `inputs=` can rebuild it)."""
    set_by_config = set(kernel.spec_class.space_)
    out: dict[str, Any] = {}
    for name in kernel.arg_names:
        if name in set_by_config or name not in args:
            continue
        v = args[name]
        if _is_tensor(v):
            out[name] = {"shape": list(v.shape), "strides": list(v.stride()),
                         "dtype": str(v.dtype).removeprefix("torch.")}
        elif isinstance(v, _SCALARS):
            out[name] = {"value": v}
        else:
            out[name] = {"type": type(v).__name__}
    sig: dict[str, Any] = {"args": out}
    if callable(grid):
        space = kernel.spec_class.space_
        consts = [n for n in space if n not in OPTIONS]
        first = config_dict(kernel.configs[0])
        grids = []
        for values in itertools.islice(itertools.product(*(space[n] for n in consts)), MAX_GRIDS):
            point = dict(zip(consts, values))
            meta = {**args, **first, **point}
            grids.append([point, [int(g) for g in grid(meta)]])
        sig["grids"] = grids
    else:
        sig["grid"] = [int(g) for g in (grid if isinstance(grid, (tuple, list)) else (grid,))]
    return sig


def check_signature(sig: Any) -> str | None:
    """Why a signature read from outside cannot be one (None: it can): where a record lands."""
    if not isinstance(sig, dict) or not isinstance(sig.get("args"), dict):
        return "signature must be an object with args"
    if len(canonical_json(sig)) > SIGNATURE_BYTES:
        return f"signature is over {SIGNATURE_BYTES // 1024} KiB"
    for name, a in sig["args"].items():
        if not isinstance(a, dict) or not ({"shape", "value", "type"} & set(a)):
            return f"signature argument {str(name)[:40]!r} must have a shape, a value or a type"
        if "shape" in a and not (all(type(x) is int and x >= 0 for x in a["shape"] + a.get("strides", [0]))
                                 and len(a.get("strides", [])) == len(a["shape"]) and isinstance(a.get("dtype"), str)):
            return f"signature tensor {str(name)[:40]!r} needs non-negative integer shape and strides and a dtype"
        if "shape" in a and 1 + sum((s - 1) * st for s, st in zip(a["shape"], a["strides"]) if s) > MAX_ELEMENTS:
            return f"signature tensor {str(name)[:40]!r} spans more than {MAX_ELEMENTS:,} elements"
    return None


class DropinInputs:
    """A rebuilt launch: its arguments by name and the grid of each constexpr combination."""

    def __init__(self, args: dict[str, Any], signature: Mapping[str, Any]):
        self.args, self.signature = args, signature
        self.grids = {canonical_json(p): tuple(g) for p, g in signature.get("grids", [])}


def _tensor(a: Mapping[str, Any], device: str, gen: Any) -> Any:
    dtype = getattr(torch, a["dtype"])
    shape, strides = a["shape"], a["strides"]
    size = 1 + sum((s - 1) * st for s, st in zip(shape, strides)) if all(shape) else 0
    if dtype.is_floating_point:
        base = torch.randn(size, generator=gen).to(dtype)
    else:  # index tensors: zeros are in range wherever they point (give inputs= for real ones)
        base = torch.zeros(size, dtype=dtype)
    return base.to(device).as_strided(shape, strides)


class _Dtypes(tuple):
    """DTYPES, and `in` also true of a mixed dtype (dtype_key) where the runtime checks a key's."""

    def __contains__(self, dtype: object) -> bool:
        return _dtype_problem(dtype) is None


class _Tolerances(dict):
    """(atol, rtol) by dtype; a mixed dtype gets the loosest of the dtypes it names (all of them
    where it names none: a hashed one)."""

    def get(self, dtype: Any, default: Any = None) -> Any:
        if dtype in self:
            return self[dtype]
        tols = [self[d] for d in (dtype_parts(dtype) if isinstance(dtype, str) else []) or list(self)]
        return (max(t[0] for t in tols), max(t[1] for t in tols))


class DropinSpec(KernelSpec):
    """The KernelSpec of one drop-in kernel; `spec_class` makes a subclass per kernel."""

    name = "dropin"  # replaced per kernel
    key_names: tuple[str, ...] = ()
    kernel: Any = None  # the DropinKernel (tuner.runtime.autotune)
    space_: dict[str, tuple] = {}
    needs_signature = True
    dtypes = _Dtypes(DTYPES)
    tolerances = _Tolerances(KernelSpec.tolerances)

    def make_key(self, dims: Mapping[str, Any], dtype: str) -> TuningKey:
        """KernelSpec.make_key, the dtype also a mixed one (dtype_key: every argument's dtype)."""
        problem = _dtype_problem(dtype)
        if problem is not None:
            raise SpecError(f"{self.name}: {problem}")
        key = super().make_key(dims, DTYPES[0])
        return TuningKey(key.kernel, key.version, key.dims, dtype)

    @property
    def version(self) -> str:
        k = self.kernel
        try:  # normalized: a comment or docstring edited in the kernel is no new version
            source = normalized_source(inspect.getsource(k.base_fn))
        except (OSError, TypeError, SyntaxError):
            source = k.base_fn.__qualname__
        data = canonical_json({"configs": [config_dict(c) for c in k.configs], "key": list(k.keys)})
        return hashlib.sha256((source + data).encode()).hexdigest()[:12]

    def example_dims(self) -> dict[str, int]:
        return {n: 1024 for n in self.key_names}

    def space(self, target: Target) -> dict[str, tuple]:
        return dict(self.space_)

    def check(self, config: Config, key: TuningKey, target: Target) -> str | None:
        return self.check_space(config, target)

    def default(self, key: TuningKey, target: Target) -> Config:
        return config_dict(self.kernel.configs[0])

    def known_good(self, key: TuningKey, target: Target) -> list[Config]:
        return [config_dict(c) for c in self.kernel.configs]

    def make_inputs(self, key: TuningKey, device: str, seed: int, signature: Mapping[str, Any] | None = None) -> Any:
        sig = {**(signature or {"args": {}}), "key": key.dim_map, "dtype": key.dtype, "seed": seed, "device": device}
        gen = torch.Generator().manual_seed(seed)
        args: dict[str, Any] = {}
        for name, a in sig["args"].items():
            if "shape" in a:
                args[name] = _tensor(a, device, gen)
            elif "value" in a:
                args[name] = a["value"]
        if self.kernel.inputs is not None:
            args.update(self.kernel.inputs(sig, device, seed))
        # in the kernel's order (a record read back may have its names sorted): what launch() returns
        args = {n: args[n] for n in self.kernel.arg_names if n in args}
        missing = [n for n in self.kernel.arg_names if n not in args and n not in self.space_]
        if missing:
            raise ValueError(f"{self.name}: cannot rebuild {', '.join(missing)} from the launch signature "
                             f"({'none recorded for this key' if signature is None else 'not a tensor or scalar'}); "
                             "give @autotune an inputs= function that makes them")
        return DropinInputs(args, sig)

    def trial_inputs(self, key: TuningKey, device: str, seed: int, routing: str = DEFAULT_ROUTING,
                     signature: Mapping[str, Any] | None = None) -> DropinInputs:
        """Rebuilt from the launch signature the request carries (no routing: a drop-in routes nothing)."""
        if routing != DEFAULT_ROUTING:
            return super().trial_inputs(key, device, seed, routing)  # refused there, with the reason
        return self.make_inputs(key, device, seed, signature)

    def launch(self, config: Config, inputs: DropinInputs) -> list:
        k = self.kernel
        consts = {n: v for n, v in config.items() if n not in OPTIONS}
        if "grid" in inputs.signature:
            grid = tuple(inputs.signature["grid"])
        else:
            grid = inputs.grids.get(canonical_json(consts))
            if grid is None:
                raise ValueError(f"{self.name}: the launch signature has no grid for {consts}")
        nargs = dict(inputs.args)
        full = {**nargs, **config}
        cfg = k.triton_config(config)
        if cfg.pre_hook is not None:
            cfg.pre_hook(full)
        k.pre_hook(full)
        try:
            k.fn[grid](**nargs, **cfg.all_kwargs())
        except Exception as exc:
            k.post_hook(full, exception=exc)
            raise
        k.post_hook(full, exception=None)
        return [v for v in nargs.values() if _is_tensor(v)]

    def reference(self, inputs: DropinInputs) -> list:
        sig = inputs.signature  # the same seed and device: the same values, in buffers of their own
        fresh = self.make_inputs(TuningKey(self.name, self.version, tuple(sig["key"].items()), sig["dtype"]),
                                 sig["device"], sig["seed"], sig)
        return self.launch(config_dict(self.kernel.configs[0]), fresh)


def spec_class(kernel: Any) -> type[DropinSpec]:
    """A DropinSpec subclass for this kernel, placed in the kernel's module (so that
    TUNER_KERNEL_MODULES finds it there) and in the registry (so that the process that decorated
    it finds it without that setting)."""
    from search_spaces import registry

    module = kernel.base_fn.__module__
    cls = type(f"Dropin_{kernel.base_fn.__name__}", (DropinSpec,),
               {"__module__": module, "name": kernel.name, "key_names": tuple(kernel.keys), "kernel": kernel,
                "space_": space_of(kernel.configs)})
    mod = sys.modules.get(module)
    if mod is not None:
        setattr(mod, cls.__name__, cls)
    registry.add(cls)
    return cls
