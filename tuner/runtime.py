"""The load-time lookup library: what a kernel calls to get its configuration.

    from tuner.runtime import lookup, tuned
    cfg = lookup("matmul", M=4096, N=4096, K=4096, dtype="float16")

Fallback order: exact key on this device class and stack fingerprint -> the same key under
another fingerprint of the class (warned once: stale) -> the nearest stored shape of the class
-> the kernel's default. Sources: the database (TUNER_DB_URL) or an exported bundle
(TUNER_CONFIG_BUNDLE). If neither can be read the kernel's default is served and one warning
logged: a lookup never raises into the model. The warm path is one dictionary hit.

This module imports neither celery nor optuna; sqlalchemy is imported only when a lookup
misses the in-process cache and the source is a database.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("tuner.runtime")

# (kernel, ((name, value), ...)) -> config; read without a lock: dict reads are atomic in CPython
_cache: dict[tuple, dict] = {}
_lock = threading.Lock()
_state: dict[str, Any] = {}
_warned: set[str] = set()
SOURCE_RETRY_S = 60.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _warn_once(tag: str, message: str) -> None:
    if tag not in _warned:
        _warned.add(tag)
        log.warning(message)


def lookup(kernel: str, **key: Any) -> dict:
    """The configuration for kernel at this key (its dims by name, and dtype)."""
    cfg = _cache.get((kernel, tuple(key.items())))
    if cfg is None:
        cfg = _resolve(kernel, key)
    return cfg


def clear_cache() -> None:
    """Forget cached answers and the live identity (after a retune, or in tests)."""
    with _lock:
        _cache.clear()
        _state.clear()
        _warned.clear()
        _shape_index.clear()


def dtype_name(dtype: Any) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


# ---- resolving a miss ---------------------------------------------------------------------
def _live() -> dict[str, Any]:
    """Device class, fingerprint and config source of this process, found once."""
    if not _state:
        from devices.classes import CPU_INTERPRETER
        from devices.fingerprint import live_fingerprint
        from devices.probe import probe
        from tuner import settings as settings_mod

        settings = settings_mod.get()
        settings_mod.configure_plugins(settings)
        try:
            dc, _ = probe(settings.device)
        except Exception as exc:  # e.g. TUNER_DEVICE=cuda on a machine without one
            _warn_once("device", f"tuner: cannot probe the device ({exc}); serving interpreter defaults")
            dc = CPU_INTERPRETER
        try:
            fp_hash = live_fingerprint(dc, settings.fingerprint_override).hash
        except Exception as exc:  # a bad override must not stop the model
            _warn_once("fingerprint", f"tuner: cannot read the stack fingerprint ({exc}); exact matches disabled")
            fp_hash = ""
        source: Any
        if settings.config_bundle is not None:
            source = BundleSource(settings.config_bundle)
        else:
            source = DatabaseSource(settings.db_url)
        _state.update(device_class=dc, fingerprint=fp_hash, source=source)
    return _state


def _resolve(kernel: str, key: dict[str, Any]) -> dict:
    from search_spaces import registry

    with _lock:
        state = _live()  # reads the settings: TUNER_KERNEL_MODULES before the kernel is looked up
        spec = registry.get(kernel)  # an unknown kernel name is the caller's bug: it raises SpecError
        dims = {n: int(key[n]) for n in spec.key_names}
        tkey = spec.make_key(dims, dtype_name(key.get("dtype", "float32")))
        dc, fp = state["device_class"], state["fingerprint"]
        cfg = None
        if time.monotonic() >= state.get("source_down_until", 0.0):
            try:
                cfg = _stored(state["source"], tkey, dc.slug, fp)
            except Exception as exc:
                # don't pay a connection attempt on every new key while the source is down
                state["source_down_until"] = time.monotonic() + SOURCE_RETRY_S
                _warn_once("source", f"tuner: cannot read tuned configurations ({_first_line(exc)}); "
                                     "serving kernel defaults")
        if cfg is None:
            cfg = spec.default(tkey, dc.target)
        _cache[(kernel, tuple(key.items()))] = cfg
        return cfg


def _stored(source, tkey, slug: str, fp: str) -> dict | None:
    rows = source.exact(tkey.kernel, tkey.version, tkey.stable_hash, slug)
    if rows:
        for row_fp, config in rows:
            if row_fp == fp:
                return config
        _warn_once(f"stale:{tkey.kernel}",
                   f"tuner: {tkey.kernel} configurations on {slug} were tuned under another stack "
                   f"fingerprint than the live {fp}; serving them until a retune")
        return rows[0][1]
    candidates = source.shapes(tkey.kernel, tkey.version, tkey.dtype, slug)
    return _nearest(tkey.dim_map, candidates, fp)


def _nearest(dims: dict[str, int], candidates: list[tuple[dict, str, dict]], fp: str) -> dict | None:
    """The stored shape closest in log2 space (a 2x change in any dim counts 1); ties prefer the live stack."""
    if not candidates:
        return None
    index = _shape_index.get(id(candidates))
    if index is None or index[0] is not candidates:
        import numpy as np

        names = list(dims)
        rows = [(i, [math.log2(max(1, int(c[0][n]))) for n in names]) for i, c in enumerate(candidates)
                if all(n in c[0] for n in names)]
        index = (candidates, names, np.array([r[1] for r in rows], dtype=np.float64).reshape(len(rows), len(names)),
                 [r[0] for r in rows], np.array([candidates[r[0]][1] for r in rows], dtype=object))
        _shape_index[id(candidates)] = index
    _, names, logs, positions, fps = index
    if not positions:
        return None
    import numpy as np

    want = np.array([math.log2(dims[n]) for n in names])
    dist = np.abs(logs - want).sum(axis=1)
    dist += (fps != fp) * 1e-6
    return candidates[positions[int(dist.argmin())]][2]


# id(candidate list) -> (the list, dim names, log2 dims, positions, fingerprints): built once per list
_shape_index: dict[int, tuple] = {}


class DatabaseSource:
    """Current (non-superseded) best configurations from the tuning database (db.store's reader)."""

    def __init__(self, url: str):
        self.url = url
        self._shapes: dict[tuple, list] = {}

    def _rows(self, **filters: Any) -> list:
        from db import store
        from db.session import session_scope, sqlite_path

        path = sqlite_path(self.url)
        if path is not None and not path.exists():
            # connecting would create an empty file: say so instead
            raise FileNotFoundError(f"no tuning database at {path}")
        with session_scope(self.url) as s:
            return [(b.key, fp.hash, b.config) for b, _, fp in store.best_configs(s, **filters)]

    def exact(self, kernel: str, version: str, key_hash: str, slug: str) -> list[tuple[str, dict]]:
        return [(h, config) for _, h, config in self._rows(kernel=kernel, kernel_version=version,
                                                             key_hash=key_hash, device_classes=[slug])]

    def shapes(self, kernel: str, version: str, dtype: str, slug: str) -> list[tuple[dict, str, dict]]:
        k = (kernel, version, dtype, slug)
        if k not in self._shapes:  # one scan per kernel and dtype, then nearest lookups are in memory
            self._shapes[k] = [(key["dims"], h, config) for key, h, config in self._rows(
                kernel=kernel, kernel_version=version, dtype=dtype, device_classes=[slug])]
        return self._shapes[k]


class BundleSource:
    """An exported bundle file (tuner/formats/bundle.py), read once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._bundle = None

    def _load(self):
        if self._bundle is None:
            from tuner.formats.bundle import read

            self._bundle = read(self.path)
        return self._bundle

    def exact(self, kernel, version, key_hash, slug):
        return [(fp, config) for fp, config, _ in self._load().exact(kernel, version, key_hash, slug)]

    def shapes(self, kernel, version, dtype, slug):
        return self._load().shapes(kernel, version, dtype, slug)


# ---- the decorator ------------------------------------------------------------------------
class TunedKernel:
    """A @triton.jit kernel whose constexpr tile sizes and launch options come from lookup()."""

    def __init__(self, fn: Any, kernel: str, key: list[str], dtype_arg: str | None = None):
        self.fn, self.kernel, self.key = fn, kernel, tuple(key)
        names = list(getattr(fn, "arg_names", None) or fn.__code__.co_varnames)
        missing = [k for k in self.key if k not in names]
        if missing:
            raise ValueError(f"@tuned key {missing} are not arguments of {getattr(fn, '__name__', fn)}")
        self._pos = tuple(names.index(k) for k in self.key)
        self._dtype_pos = names.index(dtype_arg) if dtype_arg else 0
        self._split: dict[int, tuple[dict, dict]] = {}

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        def launch(*args: Any, **kwargs: Any) -> Any:
            return self.run(grid, *args, **kwargs)
        return launch

    def config_for(self, args: tuple, kwargs: dict) -> dict:
        vals = {k: (args[p] if p < len(args) else kwargs[k]) for k, p in zip(self.key, self._pos)}
        dt = args[self._dtype_pos] if self._dtype_pos < len(args) else None
        vals["dtype"] = dtype_name(getattr(dt, "dtype", "float32"))
        return lookup(self.kernel, **vals)

    def run(self, grid: Any, *args: Any, **kwargs: Any) -> Any:
        cfg = self.config_for(args, kwargs)
        split = self._split.get(id(cfg))
        if split is None:
            split = self._split[id(cfg)] = _split_config(self.kernel, cfg)
        consts, options = split
        g = grid(cfg) if callable(grid) else grid
        return self.fn[g](*args, **kwargs, **consts, **options)


def _split_config(kernel: str, cfg: dict) -> tuple[dict, dict]:
    """The kernel's own split of a configuration for the live device's vendor (KernelSpec.split_config)."""
    from search_spaces import registry

    return registry.get(kernel).split_config(cfg, _live()["device_class"].vendor)


def tuned(kernel: str, key: list[str], dtype_arg: str | None = None) -> Callable[[Any], TunedKernel]:
    """Decorate a @triton.jit kernel: `@tuned("matmul", key=["M", "N", "K"])`.

    Launch it as `kernel[grid](...)` without the tuned constexprs; `grid` may be a callable
    that receives the configuration (like triton.autotune's META). The dtype of the key is
    that of the first argument (or of `dtype_arg`).
    """
    def wrap(fn: Any) -> TunedKernel:
        return TunedKernel(fn, kernel, key, dtype_arg)
    return wrap
