"""A drop-in kernel's locally timed winner, reported so that every process of the fleet is served
the same one (@autotune with on_miss="autotune"; tuner/runtime/dropin.py).

Before timing its list for a key, the drop-in waits (at most WAIT_S) for the source's answer to the
key, since another process may have reported a winner for it already (level "reported"). After
timing, `report` puts the winner on the key's miss tally; the flusher writes it with the key's
record (never on a launch: the caller's thread only sets a field and wakes the flusher), the
service keeps the first winner per kernel version, key, class and stack, and once written
`reask` has the resolver thread ask the source for the key again: a process whose report lost to
an earlier one is then served the first, and its drop-in launches that from its next launch on.
Where a record lands, `parse_reported` checks the winner it carries.
"""
from __future__ import annotations

import time
from typing import Any

from tuner.runtime import cache

WAIT_S = 10.0  # what a drop-in waits for the source's answer before timing its whole list instead
MAX_REPORTED_MS = 1e7  # a reported median beyond this (about 3 hours a launch) is no timing


def answered(kernel: str, names: tuple, values: tuple, timeout_s: float = WAIT_S) -> Any:
    """The cache entry of a key once the source has answered it (or timeout_s passed): the
    launch's own lookup may have served a default while the source was asked."""
    st = cache._state
    ck = (kernel, names, values)
    if st is not None:
        with cache._lock:
            q = st.pending.get(ck)
        if q is not None:
            q.done.wait(timeout_s)
    return cache.CACHE.get(ck)


def report(kernel: str, names: tuple, values: tuple, config: dict, median_ms: float) -> bool:
    """Report the winner timed for a key whose launches count as misses; False where nothing is
    counted for it (misses not written, a key the fleet cannot tune, no device class)."""
    st = cache._state
    entry = cache.CACHE.get((kernel, names, values))
    if st is None or st.counter is None or entry is None or entry.tally is None:
        return False
    st.counter.report(entry.tally, ({"config": dict(config), "median_ms": float(median_ms)}, (kernel, names, values)))
    return True


def reask(st: Any, cks: list[tuple]) -> None:
    """The counter's on_reported (flusher thread): ask the source again, now, for the keys whose
    winners were just written, so the answer served is the one stored (the first reported)."""
    from tuner.runtime.keys import key_for

    fetch_now = getattr(st.source, "fetch_now", None)
    if fetch_now is not None:  # a source that holds what it read (a config server's bundle): read it anew
        fetch_now()
    due = []
    for ck in cks:
        kernel, names, values = ck
        try:
            spec = st.spec(kernel)
            key, _ = key_for(spec, dict(zip(names, values)), st.warn)
        except LookupError:
            continue
        due.append((ck, spec, key))
    with cache._lock:
        for ck, spec, key in due:
            st.ask_later(time.monotonic(), ck, spec, key)
    st.queue.put(None)  # wakes the resolver thread, which then finds them due


def parse_reported(rep: Any, spec: Any, key: Any, target: Any) -> dict[str, Any]:
    """A reported winner as a record carries it, checked where it lands (miss_tally.parse_record)
    as the runtime checks any stored row before serving it, since every process of the class is
    served it once stored; ValueError in one line says what is wrong."""
    import math

    from tuner.runtime.checks import refusal

    if not isinstance(rep, dict) or set(rep) != {"config", "median_ms"}:
        raise ValueError("reported must be {config: {PARAM: INT}, median_ms: NUMBER}")
    bad = refusal(spec, rep["config"], key, target)
    if bad is not None:  # what the kernel's check said first (its message leads with the kernel and key)
        why = bad.message.split(": ", 1)[-1] if bad.cause == "check" else bad.message
        raise ValueError(f"the reported configuration is refused: {why}")
    ms = rep["median_ms"]
    if type(ms) not in (int, float) or not math.isfinite(ms) or not 0 < ms <= MAX_REPORTED_MS:
        raise ValueError(f"reported median_ms must be a number of milliseconds above 0 and at most {MAX_REPORTED_MS:g}")
    return {"config": dict(rep["config"]), "median_ms": float(ms)}
