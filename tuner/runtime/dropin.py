"""`@autotune`: the drop-in for `@triton.autotune` whose configurations come from the fleet.

    from tuner.runtime import autotune

    @autotune(configs=[triton.Config({"BLOCK": 64}, num_warps=4), ...], key=["N"])   # was @triton.autotune
    @triton.jit
    def kernel(x_ptr, N, BLOCK: tl.constexpr): ...

    kernel[lambda META: (triton.cdiv(N, META["BLOCK"]),)](x, N)
    kernel.best_config   # the triton.Config the last launch used

Same arguments and meaning as triton.autotune (configs, key, prune_configs_by, reset_to_zero,
restore_value, pre_hook, post_hook, warmup, rep, do_bench), plus `name=` (default
module.function), `on_miss=` and `inputs=`. At launch the key is formed as triton.autotune forms
it (the key's values, every argument's dtype) and looked up through the runtime (tuner.runtime.lookup's
cache, sources, deadline and checks) under the kernel's name: dims are the key's arguments
(positive integers; a bool as 1 or 2), the dtype field every argument's dtype
(search_spaces.dropin.dtype_key: "float16" where all are, else e.g. "f32/f16"), so each of
triton.autotune's keys is one of the fleet's. `prune_configs_by` is applied once per key as
triton.autotune applies it: a miss with on_miss="default" launches the first config the prune keeps,
a stored row it rejects is a miss, and a prune that keeps nothing raises Triton's AutotunerError.
A stored row is launched. On a miss, on_miss="default"
launches the first config (the prune kept) at once; on_miss="autotune" first waits for the source's answer (another
process may have reported a winner for the key: level "reported", launched as any stored row),
else times the list here as triton.autotune does (once per key per process) and reports the
winner with the key's miss (tuner/runtime/reported.py): the service keeps the first winner
reported per key, class and stack, and a process whose report lost adopts that one, so the ranks
of a job agree. A measured best, once the fleet tunes the key, outranks it. Every miss is
counted with the launch's signature (search_spaces.dropin), so that `tuner tune NAME --from-misses` or `tuner retune --misses` tune
the keys production launched. A key the fleet cannot name (a key argument that is not a
positive integer or a bool, no float16/bfloat16/float32 tensor) is launched as on a miss, not
counted, with one warning per cause.

`inputs(signature, device, seed) -> {argument: value}` makes the arguments a tuning worker cannot
rebuild from the signature (index tensors whose values must be valid); the signature holds the
recorded arguments, and "key", "dtype", "seed" and "device".
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

from triton import Config
from triton.runtime.autotuner import Autotuner
from triton.runtime.errors import AutotunerError

from search_spaces import dropin
from keys import canonical_json
from tuner.runtime import reported
from tuner.runtime.answer import DEFAULT
from tuner.runtime.cache import entry_for

ON_MISS = ("default", "autotune")


class _KeyState(NamedTuple):
    """What a DropinKernel settles once per triton.autotune key."""
    runtime_key: tuple | None  # (names, values) of the fleet's key; None where it cannot name it
    first: Config  # the first config the prune keeps: a miss's launch with on_miss="default"
    kept: frozenset | None  # the kept configs' dict forms; None where nothing is pruned
    judged: dict  # off-list config's dict form -> whether the prune keeps it alone (asked once)


class DropinKernel(Autotuner):
    """A @triton.jit kernel launched with the fleet's configuration for each key (module docstring)."""

    def __init__(self, fn: Any, configs: list, key: list, *, name: str | None, on_miss: str,
                 inputs: Callable | None, **triton_kw: Any):
        if on_miss not in ON_MISS:
            raise ValueError(f"@autotune on_miss={str(on_miss)[:40]!r}: use one of {', '.join(ON_MISS)}")
        super().__init__(fn, fn.arg_names, configs, key, **triton_kw)
        self.name = name or f"{self.base_fn.__module__}.{self.base_fn.__name__}"
        self.on_miss, self.inputs = on_miss, inputs
        self.best_config: Config | None = None
        # a config's dict form -> the user's own Config (its pre_hook kept)
        self._listed = {canonical_json(dropin.config_dict(c)): c for c in reversed(self.configs)}
        self._states: dict[tuple, _KeyState] = {}  # triton's key -> what it settled
        self._configs: dict[int, tuple[Any, Config, str]] = {}  # id(cache entry) -> (entry, Config, dict form)
        self._warned: set[str] = set()
        self.spec_class = dropin.spec_class(self)

    def triton_config(self, config: dict) -> Config:
        """The Config of a point of the space (the listed one where it is listed)."""
        listed = self._listed.get(canonical_json(config))
        if listed is not None:
            return listed
        options = {n: config[n] for n in dropin.OPTIONS if n in config}
        return Config({n: v for n, v in config.items() if n not in dropin.OPTIONS}, **options)

    def _runtime_key(self, args: dict) -> tuple | None:
        """The fleet's key for triton.autotune's: the key's values as dims (a bool as 1 or 2:
        dims are positive), the dtype field every argument's dtype (search_spaces.dropin.dtype_key);
        None, with one warning per cause, where the fleet cannot name it."""
        dims = []
        for k in self.keys:
            v = args.get(k)
            if type(v) is bool:
                v = int(v) + 1
            elif type(v) is not int or v < 1:
                return self._unkeyed(f"key argument {k}={str(v)[:40]} is not a positive integer or a bool")
            dims.append(v)
        dtype = dropin.dtype_key(args)
        if dtype is None:
            return self._unkeyed("no floating-point tensor argument of float16, bfloat16 or float32")
        return (tuple(self.keys) + ("dtype",), tuple(dims) + (dtype,))

    def _unkeyed(self, why: str) -> None:
        cause = why.split("=")[0]  # one warning per cause, not per value
        if cause not in self._warned:
            self._warned.add(cause)
            warnings.warn(f"@autotune {self.name}: {why}, so the fleet has no key for the launch: launched "
                          f"as on a miss (on_miss={self.on_miss!r}), locally, and not counted", stacklevel=6)
        return None

    def _key_state(self, args: dict, kwargs: dict) -> _KeyState:
        """The key's runtime key and what the prune keeps: once per triton key, as
        triton.autotune prunes once per key (early_config_prune only: perf_model and top_k choose
        what is timed, on_miss="autotune"). Pruning everything raises as triton.autotune does."""
        rk = self._runtime_key(args)
        if self.early_config_prune is None or len(self.configs) < 2:
            return _KeyState(rk, self.configs[0], None, {})
        kept = self.early_config_prune(self.configs, self.nargs, **kwargs)
        if not kept:
            raise AutotunerError("No valid autotuner configs after pruning. "
                                 "`early_config_prune` should return at least one config.")
        return _KeyState(rk, kept[0], frozenset(canonical_json(dropin.config_dict(c)) for c in kept), {})

    def _kept(self, state: _KeyState, config: Config, form: str, kwargs: dict) -> bool:
        """Whether the prune keeps a served config for these arguments: a listed one where it kept it
        from the list, one off the list where it keeps it alone (asked once per key)."""
        if state.kept is None or form in state.kept:
            return True
        if form in self._listed:
            return False
        judged = state.judged.get(form)
        if judged is None:
            judged = state.judged[form] = bool(self.early_config_prune([config], self.nargs, **kwargs))
        return judged

    def _config(self, entry: Any) -> tuple[Config, str]:
        hit = self._configs.get(id(entry))
        if hit is not None and hit[0] is entry:
            return hit[1], hit[2]
        if len(self._configs) > 4096:  # entries replaced by refreshed answers
            self._configs.clear()
        form = canonical_json(dict(entry.config))
        config = self.triton_config(dict(entry.config))
        self._configs[id(entry)] = (entry, config, form)
        return config, form

    def _served(self, entry: Any, state: _KeyState, kwargs: dict) -> Config | None:
        """The stored row's config, where it is one (not the default) and the prune keeps it."""
        if entry is None or entry.answer.level == DEFAULT:
            return None
        config, form = self._config(entry)
        return config if self._kept(state, config, form, kwargs) else None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.nargs = nargs = dict(zip(self.arg_names, args))
        all_args = {**nargs, **kwargs}
        _args = {k: v for (k, v) in all_args.items() if k in self.arg_names}
        key = [_args[k] for k in self.keys if k in _args]
        for arg in _args.values():  # triton.autotune's key: the named values and every tensor's dtype
            if hasattr(arg, "dtype"):
                key.append(str(arg.dtype))
        key = tuple(key)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = self._key_state(_args, kwargs)
        rk, entry = state.runtime_key, None
        if rk is not None:
            try:
                entry = entry_for(self.name, rk[0], rk[1])
            except Exception:  # never into the model: served as a miss
                entry = None
        if entry is not None:
            tally = entry.tally
            if tally is not None and tally.signature is None:
                tally.signature = self._signature(_args, kwargs.get("grid"))
            config = self._served(entry, state, kwargs)
            if config is not None:
                return self._launch(config, args, kwargs)
        if self.on_miss == "autotune":
            timing = key not in self.cache and len(self.configs) > 1
            if timing and entry is not None:  # a winner another process reported beats timing again
                config = self._served(reported.answered(self.name, rk[0], rk[1]), state, kwargs)
                if config is not None:
                    return self._launch(config, args, kwargs)
            ret = super().run(*args, **kwargs)  # timed once per key, kept in self.cache
            if timing and entry is not None and key in self.cache:
                self._report(rk, self.cache[key])
            return ret
        return self._launch(state.first, args, kwargs)

    def _report(self, rk: tuple, winner: Config) -> None:
        """Report the winner just timed (in the background: tuner/runtime/reported.py), where its
        median is a timing (a list that failed everywhere has none)."""
        import math

        timing = (getattr(self, "configs_timings", None) or {}).get(winner)
        median = timing[0] if isinstance(timing, (list, tuple)) else timing
        if type(median) in (int, float) and math.isfinite(median) and 0 < median <= reported.MAX_REPORTED_MS:
            reported.report(self.name, rk[0], rk[1], dropin.config_dict(winner), float(median))

    def _signature(self, args: dict, grid: Any) -> dict | None:
        try:
            return dropin.signature_of(self, args, grid)
        except Exception:  # a grid that cannot be evaluated off its launch: counted without one
            return None

    def _launch(self, config: Config, args: tuple, kwargs: dict) -> Any:
        self.best_config = config
        if config.pre_hook is not None:
            config.pre_hook({**self.nargs, **kwargs, **config.all_kwargs()})
        ret = self.fn.run(*args, **kwargs, **config.all_kwargs())
        self.nargs = None
        return ret


def autotune(configs: list, key: list, prune_configs_by: dict | None = None, reset_to_zero: list | None = None,
             restore_value: list | None = None, pre_hook: Callable | None = None, post_hook: Callable | None = None,
             warmup: int | None = None, rep: int | None = None, use_cuda_graph: bool = False,
             do_bench: Callable | None = None, cache_results: bool = False, *, name: str | None = None,
             on_miss: str = "default", inputs: Callable | None = None) -> Callable[[Any], DropinKernel]:
    """Decorate a @triton.jit kernel as triton.autotune would (see the module docstring)."""
    def decorator(fn: Any) -> DropinKernel:
        return DropinKernel(fn, configs, key, name=name, on_miss=on_miss, inputs=inputs,
                            reset_to_zero=reset_to_zero, restore_value=restore_value, pre_hook=pre_hook,
                            post_hook=post_hook, prune_configs_by=prune_configs_by, warmup=warmup, rep=rep,
                            use_cuda_graph=use_cuda_graph, do_bench=do_bench, cache_results=cache_results)
    return decorator
