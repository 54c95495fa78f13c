"""`@tuned`: a @triton.jit kernel whose tuned constexprs and launch options come from lookup().

    @tuned("softmax_tutorial", key={"M": "n_rows", "N": "n_cols"})   # tuning-key name -> argument
    @triton.jit
    def softmax_kernel(out_ptr, in_ptr, in_stride, out_stride, n_rows, n_cols, BLOCK_SIZE: tl.constexpr, ...): ...

    softmax_kernel[lambda cfg: (min(cfg["PROGRAMS"], n_rows),)](y, x, x.stride(0), y.stride(0), n_rows, n_cols)

`key` is a list of names that are both tuning-key names and kernel arguments, a mapping from
tuning-key names to argument names, or a function that gets the launch's arguments by name and
returns the key's dims (and, optionally, its dtype). The dtype is that of the first argument
(or of `dtype_arg`). The kernel's split of the configuration (KernelSpec.split_config) is kept
with the cached answer, so each launch passes exactly the configuration its grid was computed
from: constexprs and launch options to the kernel, grid-only entries to the grid callable only.
"""
from __future__ import annotations

import sys
from operator import itemgetter
from typing import Any, Callable, Mapping

from tuner.runtime.cache import Entry, entry_for
from tuner.runtime.keys import dtype_name

_DTYPES: dict[Any, str] = {None: "float32"}  # an argument's dtype -> its name (no dtype: float32)


def _dtype_of(value: Any) -> str:
    dt = getattr(value, "dtype", None)
    name = _DTYPES.get(dt)
    if name is None:
        name = _DTYPES[dt] = dtype_name(dt)
    return name


class TunedKernel:
    """A @triton.jit kernel launched with the configuration lookup() gives for each launch's key."""

    def __init__(self, fn: Any, kernel: str, key: Any, dtype_arg: str | None = None):
        self.fn, self.kernel = fn, kernel
        self.__name__ = getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", "kernel")
        code = getattr(fn, "__code__", None)
        names = list(getattr(fn, "arg_names", None) or (code.co_varnames[:code.co_argcount] if code else ()))
        self._names = tuple(names)
        self._key_fn: Callable[[dict], Mapping[str, Any]] | None = None
        self._slots: tuple[tuple[str, int, str], ...] = ()
        if callable(key) and not isinstance(key, (list, tuple, Mapping)):
            self._key_fn = key
        else:
            mapping = dict(key) if isinstance(key, Mapping) else {k: k for k in key}
            bad = [f"{t}={a!r}" for t, a in mapping.items() if a not in names]
            if bad:
                raise ValueError(f"@tuned({kernel!r}) key {', '.join(bad)} names no argument of {self.__name__} "
                                 f"({', '.join(names)}); map each tuning-key name to an argument, e.g. "
                                 "key={'M': 'n_rows'}, or give a function of the arguments")
            self._slots = tuple((t, names.index(a), a) for t, a in mapping.items())
        if dtype_arg is not None and dtype_arg not in names:
            raise ValueError(f"@tuned({kernel!r}) dtype_arg {dtype_arg!r} is not an argument of {self.__name__}")
        dtype_from = dtype_arg or (names[0] if names else "")
        self._dtype = (names.index(dtype_from) if dtype_from else 0, dtype_from)
        # the fast path of a launch that passes the key's arguments and the dtype's by position:
        # those arguments in one C call (a tuple: the dtype's comes last, so there are two or more),
        # the cache key built without a keyword dict; none for a key function
        positions = tuple(p for _, p, _ in self._slots)
        self._key_names = tuple(t for t, _, _ in self._slots) + ("dtype",)
        self._fast_after = max(positions + (self._dtype[0],)) if positions else sys.maxsize
        self._key_args = itemgetter(*positions, self._dtype[0]) if positions else None

    def entry(self, args: tuple, kwargs: dict) -> Entry:
        """The cached answer for a launch with these arguments (a dictionary hit when warm)."""
        n = len(args)
        if n > self._fast_after:
            values = self._key_args(args)
            dtype = _DTYPES.get(getattr(values[-1], "dtype", None))
            if dtype is not None:
                return entry_for(self.kernel, self._key_names, values[:-1] + (dtype,))
        if self._key_fn is None:
            items = []
            for t, p, a in self._slots:
                if p < n:
                    items.append((t, args[p]))
                elif a in kwargs:
                    items.append((t, kwargs[a]))
                else:
                    raise TypeError(f"{self.__name__}[grid](...) was called without {a!r}, which @tuned reads "
                                    f"as the key's {t}")
            has_dtype = False
        else:
            bound = dict(zip(self._names, args))
            bound.update(kwargs)
            items = list(self._key_fn(bound).items())
            has_dtype = any(t == "dtype" for t, _ in items)
        if not has_dtype:
            p, a = self._dtype
            items.append(("dtype", _dtype_of(args[p] if p < n else kwargs.get(a))))
        names, values = zip(*items)
        return entry_for(self.kernel, names, values)

    def config_for(self, args: tuple, kwargs: dict) -> Any:
        """The (read-only) configuration a launch with these arguments gets."""
        return self.entry(args, kwargs).config

    def launch_kwargs(self, *args: Any, **kwargs: Any) -> dict:
        """What a launch with these arguments adds to them: the constexprs and launch options of its
        configuration (never its grid-only entries)."""
        consts, options = self.entry(args, kwargs).split
        return {**consts, **options}

    def run(self, grid: Any, *args: Any, **kwargs: Any) -> Any:
        entry = self.entry(args, kwargs)
        consts, options = entry.split
        g = grid(entry.config) if callable(grid) else grid
        return self.fn[g](*args, **kwargs, **consts, **options)

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        def launch(*args: Any, **kwargs: Any) -> Any:
            return self.run(grid, *args, **kwargs)
        return launch


def tuned(kernel: str, key: Any, dtype_arg: str | None = None) -> Callable[[Any], TunedKernel]:
    """Decorate a @triton.jit kernel (see the module docstring): `@tuned("matmul", key=["M", "N", "K"])`.

    Launch it as `kernel[grid](...)` without the tuned constexprs; `grid` may be a callable that
    receives the configuration (like triton.autotune's META)."""
    def wrap(fn: Any) -> TunedKernel:
        return TunedKernel(fn, kernel, key, dtype_arg)
    return wrap
