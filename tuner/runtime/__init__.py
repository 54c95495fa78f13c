"""The load-time lookup library: what a model process calls to get a kernel's configuration.

    from tuner.runtime import lookup, tuned, explain
    cfg = lookup("matmul", M=4096, N=4096, K=4096, dtype="float16")   # read-only dict
    @autotune(configs=[...], key=["N"])   # in place of @triton.autotune: see dropin.py
    why = explain("matmul", M=4096, N=4096, K=4096, dtype="float16")  # = lookup(..., explain=True)
    get = bind("matmul", "M", "N", "K", "dtype"); cfg = get(4096, 4096, 4096, "float16")  # no keywords

Fallback order (levels.py): exact key on this device class and stack fingerprint -> the same key
under another fingerprint of the class -> the nearest stored shape of the class -> the kernel's
default; a fallback row is served only if the kernel's check() accepts it for the key asked.
Sources (sources.py), the first set wins: a `tuner serve` (TUNER_CONFIG_URL: the class's bundle
over HTTP, a copy kept in TUNER_HOME for restarts without the server, refreshed in the
background), an exported bundle (TUNER_CONFIG_BUNDLE), the database (TUNER_DB_URL).

Safe inside a model (cache.py): a warm lookup is one dictionary hit; a miss is asked off the
launch path and waited for at most TUNER_RUNTIME_DEADLINE_MS (50 ms), then the default is
served until the answer comes; defaults served while the source was unreachable are asked
again; the cache is a bounded LRU. Nothing raises into the model but a programming error of the
caller, as a LookupError with the fix: an unknown kernel (or one whose module does not import),
or a key dim that is missing or not an integer. Bad settings, an unsupported dtype, a dim below
1 or an unknown device serve the default with one warning per cause.

Misses (misses.py): what was served from a fallback level is counted and written in the
background to the database, to the `tuner serve` of TUNER_CONFIG_URL (POST /v1/misses), or,
with a bundle, to a JSON-lines file; `tuner retune --misses` turns the most frequent into
tuning jobs.

Importing this package loads neither celery nor optuna (nor sqlalchemy, nor urllib's HTTP
client: those are imported by the background thread, when the source is a database or a server).
"""
from __future__ import annotations

from typing import Any

from tuner.runtime.answer import Answer, ReadOnlyConfig
from tuner.runtime.cache import bind, clear_cache, flush_misses, lookup, settle
from tuner.runtime.decorator import TunedKernel, tuned
from tuner.runtime.keys import dtype_name


def __getattr__(name: str) -> Any:
    # @autotune imports triton: only a process that uses it pays for it
    if name in ("autotune", "DropinKernel"):
        from tuner.runtime import dropin

        return getattr(dropin, name)
    raise AttributeError(f"module 'tuner.runtime' has no attribute {name!r}")


def explain(kernel: str, **key: Any) -> Answer:
    """Where lookup(kernel, **key) gets its configuration: level, source, row age, distance, reason."""
    return lookup(kernel, explain=True, **key)


__all__ = ["Answer", "DropinKernel", "autotune", "ReadOnlyConfig", "TunedKernel", "bind", "clear_cache", "dtype_name", "explain", "flush_misses",
           "lookup", "settle", "tuned"]
