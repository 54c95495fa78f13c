"""The process's runtime: the bounded cache a warm lookup reads, and the cold path behind it.

Warm: one dictionary read, one flag set (recency) and, when the answer came from a fallback
level, one added to a miss counter; no lock, no I/O. The cache is bounded (TUNER_RUNTIME_CACHE_SIZE)
and drops the least recently used key first, approximated by the second-chance (CLOCK) rule: a
key hit since it was last passed over is kept once more, so a hit never reorders the dict.

Cold (a key not in the cache), on the caller's thread: the settings (read leniently: a bad value
gets its default and one warning), the device probe (once), the kernel's spec and key (a bad
dtype or a dim below 1 gets the default, with one warning per cause); the resolver thread asks
the source (it starts with the state and reads a local one at once, Source.prepare, while the
caller imports the kernel: a bundle or SQLite file answers a first lookup in time); the caller
waits at most TUNER_RUNTIME_DEADLINE_MS, else serves the default (its launches are misses if the
answer is one) until the answer replaces it. `_lock` guards the cache's writes and the waiting
questions, never held across I/O. A default served because the source was unreachable is asked
again after TUNER_RUNTIME_RETRY_S; a fallback level's answer after TUNER_RUNTIME_REFRESH_S.
"""
from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import os
import queue
import threading
import time
from typing import Any

from tuner.runtime.answer import OTHER_FINGERPRINT, Answer, Identity
from tuner.runtime.keys import first_line as _first_line
from tuner.runtime.keys import key_for, probe_identity, spec_for, with_fingerprint
from tuner.runtime.levels import NoDefault, default_answer, resolve
from tuner.runtime.miss_tally import MissCounter, MissKey, Waiting, open_sink

log = logging.getLogger("tuner.runtime")

# (kernel, names, values) -> Entry, in the order of insertion (or of a second chance); names
# and values are the key's, in the caller's order, as two flat tuples (cheaper to build and hash
# than one tuple of pairs)
CACHE: dict[tuple, "Entry"] = {}
_lock = threading.Lock()  # cache writes and waiting questions; never held across I/O
_state_lock = threading.Lock()  # creating the process state (settings, probe)
_state: "State | None" = None


class Entry:
    """A cached answer: the read-only config, its provenance, the kernel's split of it for the
    live vendor (what @tuned passes), the miss tally its launches count to (None: not a miss),
    and whether it was hit since the eviction rule last passed it."""

    __slots__ = ("config", "answer", "split", "tally", "used")

    def __init__(self, answer: Answer, split: tuple[dict, dict], tally: Any):
        self.config, self.answer, self.split, self.tally, self.used = answer.config, answer, split, tally, False


def lookup(kernel: str, explain: bool = False, **key: Any) -> Any:
    """The configuration for kernel at this key (its dims by name, and dtype); with explain=True
    the Answer saying where it came from."""
    ck = (kernel, tuple(key), tuple(key.values()))
    entry = CACHE.get(ck)
    if entry is None:
        entry = cold(ck, kernel, key)
    else:
        entry.used = True
    tally = entry.tally
    if tally is not None:
        tally.count += 1
    return entry.answer if explain else entry.config


def entry_for(kernel: str, names: tuple, values: tuple) -> Entry:
    """lookup() for @tuned and bind(): the whole entry, its miss counted."""
    ck = (kernel, names, values)
    entry = CACHE.get(ck)
    if entry is None:
        entry = cold(ck, kernel, dict(zip(names, values)))
    else:
        entry.used = True
    tally = entry.tally
    if tally is not None:
        tally.count += 1
    return entry


def bind(kernel: str, *names: str) -> Any:
    """lookup() without keywords, for a launch loop: `get = bind("matmul", "M", "N", "K", "dtype")`,
    then `get(4096, 4096, 4096, "float16")` is lookup("matmul", M=4096, ..., dtype="float16"),
    the same cache and answers, without the cost of building a keyword dict on every call."""
    if not names or not all(isinstance(n, str) for n in names):
        raise LookupError(f"bind({kernel!r}, ...) takes the key's names as strings, e.g. "
                          f"bind({kernel!r}, 'M', 'N', 'K', 'dtype')")
    keys, width = tuple(names), len(names)

    def get(*values: Any) -> Any:
        # lookup()'s warm path written out again: a call to entry_for would cost as much as the hit
        entry = CACHE.get((kernel, keys, values))
        if entry is None:
            if len(values) != width:
                raise LookupError(f"the lookup bound to {kernel} ({', '.join(keys)}) takes {width} values, "
                                  f"got {len(values)}")
            return entry_for(kernel, keys, values).config
        entry.used = True
        tally = entry.tally
        if tally is not None:
            tally.count += 1
        return entry.config

    return get


class _Question:
    __slots__ = ("ck", "spec", "key", "done", "entry")

    def __init__(self, ck: tuple, spec: Any, key: Any):
        self.ck, self.spec, self.key = ck, spec, key
        self.done, self.entry = threading.Event(), None


class State:
    """Everything of the runtime but the cache: settings, identity, source, misses, resolver."""

    def __init__(self) -> None:
        from tuner import settings as settings_mod

        self.warned: set[str] = set()
        self.settings, problems = settings_mod.lenient()
        for problem in problems:
            self.warn(f"setting:{problem}", f"tuner: {problem}; using its default")  # one per setting
        try:
            settings_mod.configure_plugins(self.settings)
        except Exception as exc:  # only names are recorded there; never let it stop a built-in
            self.warn("plugins", f"tuner: cannot configure plug-in modules ({_first_line(exc)})")
        s = self.settings
        self.deadline_s, self.size = s.runtime_deadline_ms / 1000.0, max(1, s.runtime_cache_size)
        self.retry_s, self.refresh_s = s.runtime_retry_s, s.runtime_refresh_s
        self.identity = probe_identity(self.settings, self.warn)
        self.source: Any = None
        self.counter: MissCounter | None = None
        if self.identity.device_class is not None:
            from tuner.runtime.sources import open_source

            self.source = open_source(s, self.identity.target, self.warn)
            sink = open_sink(s, self.source) if s.miss_flush_s > 0 else None
            if sink is not None:
                from tuner.runtime.reported import reask  # (it imports this module)

                self.counter = MissCounter(sink, s.miss_flush_s, self.warn)
                self.counter.on_reported = lambda cks: reask(self, cks)  # a drop-in's winner written: ask again
        self.errors: dict[str, str] = {}
        self.pending: dict[tuple, _Question] = {}
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.later: list[tuple] = []  # heap of (due, order, ck, spec, key): answers to ask again
        self.order, self.closed = itertools.count(), False  # order: ties of due never compare keys
        self.thread: threading.Thread | None = None
        self.down_until, self.down_reason, self.refreshed_at = 0.0, "", time.monotonic()
        if self.source is not None:
            self._start()

    def warn(self, tag: str, message: str) -> None:
        if tag not in self.warned:
            self.warned.add(tag)
            log.warning(message)

    # ---- the kernel and its key (caller's thread) -----------------------------------------
    def spec(self, kernel: str) -> Any:
        if kernel in self.errors:
            raise LookupError(self.errors[kernel])
        try:
            return spec_for(kernel)
        except LookupError as exc:
            self.errors[kernel] = str(exc)
            raise

    # ---- the cache (any thread; _lock held) ------------------------------------------------
    def insert(self, ck: tuple, spec: Any, key: Any, answer: Answer, count: bool = True, waiting: bool = False
               ) -> Entry:
        """Put an answer in the cache (while this state is the live one); its launches count as
        misses when it is a real answer from a fallback level (not a default served while the
        source was unreachable, nor one for a key the caller got wrong). Those of a default served
        while the source is asked (`waiting`) are held until the answer says whether they were."""
        tally = Waiting() if waiting and self.counter is not None else None
        if not waiting and count and answer.is_miss and not answer.unreachable and self.counter is not None:
            tally = self.counter.tally(MissKey(key.kernel, key.version, key.stable_hash, key.dims, key.dtype,
                                               self.identity.slug, self.identity.fingerprint, answer.level))
            held = CACHE.get(ck)
            if held is not None and type(held.tally) is Waiting:
                tally.count += held.tally.count
                tally.signature = tally.signature or held.tally.signature
                if held.tally.reported is not None:  # a drop-in's winner, timed while this was asked
                    self.counter.report(tally, held.tally.reported)
        entry = Entry(answer, spec.split_config(dict(answer.config), self.identity.target.vendor), tally)
        if not self.closed:
            CACHE[ck] = entry
            while len(CACHE) > self.size:
                oldest = next(iter(CACHE))
                kept = CACHE.pop(oldest)
                if oldest == ck:  # the key just answered stays
                    CACHE[oldest] = kept
                elif kept.used:  # hit since last passed over: one more round
                    kept.used = False
                    CACHE[oldest] = kept
        return entry

    # ---- questions to the source (the resolver thread) --------------------------------------
    def ask(self, ck: tuple, spec: Any, key: Any) -> _Question:
        """The question for ck, handed to the resolver thread unless one is already waiting."""
        q = self.pending.get(ck)
        if q is None:
            q = self.pending[ck] = _Question(ck, spec, key)
            self.queue.put(q)
            if self.thread is None:
                self._start()
        return q

    def _start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="tuner-runtime", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._fingerprint()
            self.source.prepare()
        except Exception:  # the first question meets it again, and says so
            pass
        while not self.closed:
            wait = max(0.0, self.later[0][0] - time.monotonic()) if self.later else None
            try:
                q = self.queue.get(timeout=wait)
            except queue.Empty:
                q = None
            if q is not None:
                self._answer(q.ck, q.spec, q.key, q)
            while self.later and self.later[0][0] <= time.monotonic() and not self.closed:
                _, _, ck, spec, key = heapq.heappop(self.later)
                if ck in CACHE and ck not in self.pending:
                    self._answer(ck, spec, key, None)

    def _answer(self, ck: tuple, spec: Any, key: Any, q: _Question | None) -> None:
        try:
            self._answer_one(ck, spec, key, q)
        except Exception as exc:  # the kernel's own default raised: the caller's thread says so
            self.warn(f"answer:{spec.name}", f"tuner: cannot answer {spec.name} {key.label()} "
                                               f"({_first_line(getattr(exc, 'cause', exc))})")
            with _lock:
                self.pending.pop(ck, None)
            if q is not None:
                q.done.set()

    def _answer_one(self, ck: tuple, spec: Any, key: Any, q: _Question | None) -> None:
        answer = self._resolve(spec, key)
        with _lock:
            entry = self.insert(ck, spec, key, answer)
            if q is not None:
                q.entry = entry
                self.pending.pop(ck, None)
                q.done.set()
            due = (self.down_until if answer.unreachable
                   else time.monotonic() + self.refresh_s if answer.is_miss and self.refresh_s > 0 else None)
            if due is not None:
                self.ask_later(due, ck, spec, key)

    def ask_later(self, due: float, ck: tuple, spec: Any, key: Any) -> None:
        """Have the resolver thread ask for ck again at due (monotonic); _lock held."""
        heapq.heappush(self.later, (due, next(self.order), ck, spec, key))

    def _resolve(self, spec: Any, key: Any) -> Answer:
        now = time.monotonic()
        if now < self.down_until:
            return default_answer(spec, key, self.identity, f"{self.source.describe()} unreachable "
                                  f"({self.down_reason}); asked again in {self.down_until - now:.0f} s", True)
        try:
            self._fingerprint()
            if now - self.refreshed_at >= self.retry_s:
                self.source.refresh()
                self.refreshed_at = now
            answer = resolve(spec, key, self.identity, self.source, self.warn)
        except NoDefault:  # the kernel's, not the source's: the source stays up for every other kernel
            raise
        except Exception as exc:
            # don't pay a connection attempt for every new key while the source is down
            self.down_until, self.down_reason = time.monotonic() + self.retry_s, _first_line(exc)
            self.warn("source", f"tuner: cannot read tuned configurations from {self.source.describe()} "
                                f"({self.down_reason}); serving kernel defaults, asking again every "
                                f"{self.retry_s:g} s")
            return default_answer(spec, key, self.identity, f"{self.source.describe()} unreachable "
                                  f"({self.down_reason})", True)
        if answer.level == OTHER_FINGERPRINT:
            self.warn(f"stale:{spec.name}", f"tuner: {spec.name} configurations on {answer.device_class} were tuned "
                                            f"under another stack fingerprint than the live "
                                            f"{self.identity.fingerprint}; serving them until a retune")
        return answer

    def _fingerprint(self) -> None:
        """The live stack's fingerprint, read once (files, or nvidia-smi: never on a launch)."""
        if not self.identity.fingerprint:
            self.identity = with_fingerprint(self.identity, self.settings, self.warn)

    def settle(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while True:
            with _lock:
                waiting = list(self.pending.values())
            if not waiting:
                return True
            left = end - time.monotonic()
            if left <= 0 or not waiting[0].done.wait(left):
                return False

    def close(self) -> None:
        self.closed = True
        self.queue.put(None)
        if self.counter is not None:
            self.counter.close(0)  # its thread writes what was counted, on its own

    def after_fork(self) -> None:
        """In a forked child the threads are gone: start afresh, keeping what was answered."""
        for q in self.pending.values():
            q.done.set()
        self.pending, self.queue, self.thread, self.later = {}, queue.SimpleQueue(), None, []
        if self.counter is not None:
            self.counter.after_fork()


def state() -> State:
    global _state
    st = _state
    if st is None:
        with _state_lock:
            if _state is None:
                _state = State()
            st = _state
    return st


def cold(ck: tuple, kernel: str, raw: dict) -> Entry:
    """A key not in the cache: answer it within the deadline, or serve the default."""
    st = state()
    with _lock:  # a key another thread just answered, or moved for its second chance
        entry = CACHE.get(ck)
    if entry is not None:
        return entry
    spec = st.spec(kernel)
    key, changed = key_for(spec, raw, st.warn)
    identity = st.identity
    if changed is not None or identity.device_class is None:
        # nothing stored can be right: the caller's key is not a key of this kernel, or the
        # device is unknown (never serve another class's rows)
        reason = changed or "the device could not be probed"
        with _lock:
            return st.insert(ck, spec, key, _default(spec, key, identity, reason), count=False)
    with _lock:
        q = st.ask(ck, spec, key)
    if q.done.wait(st.deadline_s) and q.entry is not None:
        return q.entry
    answer = _default(spec, key, identity, f"waiting for {st.source.describe()} (deadline "
                                           f"{st.deadline_s * 1000:g} ms); the answer replaces this when it comes")
    with _lock:
        if q.entry is not None:  # it came while the default was computed
            return q.entry
        return st.insert(ck, spec, key, answer, waiting=True)


def _default(spec: Any, key: Any, identity: Identity, reason: str) -> Answer:
    try:
        return default_answer(spec, key, identity, reason)
    except Exception as exc:  # the kernel's own default raised: nothing can be served
        raise LookupError(f"{spec.name} has no default for {key.label()}: "
                          f"{_first_line(getattr(exc, 'cause', exc))}") from None


def settle(timeout_s: float = 10.0) -> bool:
    """Wait at most timeout_s until every lookup still waiting on the source has its answer in the
    cache; True when none is left. Call it after a model's warm-up and before capturing CUDA
    graphs, so that captured launches use the tuned configurations, not defaults served while
    the source was being asked."""
    st = _state
    return True if st is None else st.settle(timeout_s)


def flush_misses() -> int:
    """Write the counted misses now (from the caller's thread); returns the records written."""
    st = _state
    return st.counter.flush() if st is not None and st.counter is not None else 0


def clear_cache() -> None:
    """Forget cached answers, the settings and the live identity (after a retune, or in tests);
    counted misses are still written, in the background."""
    global _state
    with _state_lock, _lock:
        old, _state = _state, None
        CACHE.clear()
    if old is not None:
        old.close()


def _at_exit() -> None:
    st = _state
    if st is not None and st.counter is not None:
        st.counter.close()


def _after_fork() -> None:
    global _lock, _state_lock
    _lock, _state_lock = threading.Lock(), threading.Lock()
    if _state is not None:
        _state.after_fork()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
