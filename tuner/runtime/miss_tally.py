"""The misses a process served (a configuration from a fallback level), counted in memory and
written in the background, batched, to a sink; the JSON-lines form they take in a file.

A launch only adds one to a counter (`Tally.count += 1`; under contention an increment can be
lost, which a count of launches can afford). A flusher thread writes the counts at most once
every `TUNER_MISS_FLUSH_S` seconds, and once more at exit (waiting at most `EXIT_WAIT_S`); a
write that fails is dropped, with one warning, never retried and never on a launch.

Sinks: TUNER_MISS_FILE when set; else the source's own kind: the database, the `tuner serve` of
TUNER_CONFIG_URL (POST /v1/misses), or with a bundle TUNER_HOME/misses.jsonl.

A drop-in kernel's locally timed winner (tuner/runtime/reported.py) rides on its key's tally
(`MissCounter.report` wakes the flusher); once written, `on_reported` has the runtime ask again.

Adding a sink is one class: subclass `MissSink` with `from_settings(settings, source)` (an
instance when it should receive this process's misses, else None) and `write(records)`, and put
it in `SINKS` before the kinds it should win over.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

from tuner.runtime.answer import MISS_LEVELS

EXIT_WAIT_S = 2.0
POST_BATCH = 500  # records per POST /v1/misses (about 200 KB; the API takes at most this many a request)
POST_TIMEOUT_S = 5.0
MAX_RECORD_COUNT = 10**9  # launches one record may count: a flush every few seconds never comes near
RECORD_FIELDS = ("kernel", "kernel_version", "key_hash", "key", "dtype", "device_class", "fingerprint", "level",
                 "count", "first_seen", "last_seen")


@dataclass(frozen=True)
class MissKey:
    """What a miss is counted under."""

    kernel: str
    kernel_version: str
    key_hash: str
    dims: tuple[tuple[str, int], ...]
    dtype: str
    device_class: str
    fingerprint: str
    level: str


class Tally:
    # signature: the launch a drop-in kernel (@autotune) missed with, for rebuilding its inputs;
    # reported: ({"config", "median_ms"}, the cache key asked again once written) not yet written
    __slots__ = ("key", "count", "flushed", "first_seen", "signature", "reported")

    def __init__(self, key: MissKey):
        self.key, self.count, self.flushed = key, 0, 0
        self.first_seen = datetime.now(timezone.utc).isoformat()
        self.signature: dict[str, Any] | None = None
        self.reported: tuple[dict[str, Any], tuple] | None = None


class Waiting:
    """The launches of a default served while the source was asked: misses if the answer turns out
    to be a miss (added to its tally then), else not counted."""

    __slots__ = ("count", "signature", "reported")

    def __init__(self) -> None:
        self.count = 0
        self.signature: dict[str, Any] | None = None  # a drop-in's launch, kept for the tally it becomes
        self.reported: tuple[dict[str, Any], tuple] | None = None  # and its winner, as Tally.reported


def record(key: MissKey, count: int, first_seen: str, last_seen: str,
           signature: dict[str, Any] | None = None, reported: dict[str, Any] | None = None) -> dict[str, Any]:
    """A miss record as sinks, files and db.store.record_misses take it (JSON); `signature` and
    `reported` ({"config", "median_ms"}: the winner it timed) only where a drop-in kernel recorded
    them, so a record without them reads as it always did. A record carrying a winner may count
    no launch (they went out with an earlier flush)."""
    out = {"kernel": key.kernel, "kernel_version": key.kernel_version, "key_hash": key.key_hash,
           "key": {"kernel": key.kernel, "version": key.kernel_version, "dims": dict(key.dims), "dtype": key.dtype},
           "dtype": key.dtype, "device_class": key.device_class, "fingerprint": key.fingerprint,
           "level": key.level, "count": count, "first_seen": first_seen, "last_seen": last_seen}
    if signature is not None:
        out["signature"] = signature
    if reported is not None:
        out["reported"] = reported
    return out


def parse_record(data: Any) -> dict[str, Any]:
    """Check one record read from outside (a JSON line, a POST, a sink's batch); ValueError says
    what is wrong. Only a registered kernel at its current version, a key its make_key accepts, a
    known device-class slug and a stack hash are taken (anything else grows the table and /metrics
    with rows nobody can tune). The key hash is recomputed from the key, never taken from the line.
    A drop-in's launch signature (an optional field) is checked and kept in the stored key's JSON
    as "signature", outside the key's identity and hash. A drop-in's reported winner (optional:
    {"config", "median_ms"}) is checked as any stored row is before a runtime serves it (exactly
    the kernel's parameters, plain ints, its check() on the record's device class), since every
    process of the class is served it once stored; the median is a positive finite number."""
    import re

    from devices.classes import class_for
    from search_spaces import registry
    from keys import SpecError, TuningKey
    from search_spaces.dropin import check_signature

    if not isinstance(data, dict):
        raise ValueError("a miss record must be a JSON object")
    missing = [f for f in RECORD_FIELDS if f not in data]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    try:
        key = TuningKey.from_json(data["key"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError("key must be {kernel, version, dims: {NAME: INT}, dtype}") from None
    if (key.kernel, key.version, key.dtype) != (data["kernel"], data["kernel_version"], data["dtype"]):
        raise ValueError("kernel, kernel_version and dtype must match the key")
    try:
        spec = registry.get(key.kernel)
        made = spec.make_key(key.dim_map, key.dtype)
    except SpecError as exc:
        raise ValueError(str(exc).splitlines()[0][:160]) from None
    if key.version != spec.version:
        raise ValueError(f"kernel_version {key.version[:40]!r} is not {spec.name}'s current version {spec.version}")
    # the names and values the kernel's key takes, in any order (a drop-in names them as its key= does)
    if (made.dim_map, made.dtype) != (key.dim_map, key.dtype) or any(v >= 2**63 for _, v in key.dims):
        raise ValueError(f"key dims must be {spec.name}'s {', '.join(spec.key_names)}, each an integer below 2**63")
    if data["level"] not in MISS_LEVELS:
        raise ValueError(f"level must be one of {', '.join(MISS_LEVELS)}")
    least = 0 if data.get("reported") is not None else 1  # a winner may follow its launches' count
    if type(data["count"]) is not int or not least <= data["count"] <= MAX_RECORD_COUNT:
        raise ValueError(f"count must be an integer from {least} to {MAX_RECORD_COUNT}")
    slug = data["device_class"]
    try:
        dc = class_for(slug) if isinstance(slug, str) and len(slug) <= 80 else None
    except SpecError:
        dc = None
    if dc is None or dc.slug != slug:
        raise ValueError(f"device_class {str(slug)[:40]!r} is not a device-class slug (`tuner devices` prints them)")
    if not isinstance(data["fingerprint"], str) or not re.fullmatch("[0-9a-f]{16}", data["fingerprint"]):
        raise ValueError("fingerprint must be a stack hash: 16 hex digits")
    seen = []
    for f in ("first_seen", "last_seen"):
        try:
            when = datetime.fromisoformat(str(data[f])[:64])
        except ValueError:
            raise ValueError(f"{f} must be an ISO-8601 time") from None
        seen.append(when if when.tzinfo else when.replace(tzinfo=timezone.utc))
    stored = key.to_json()
    if data.get("signature") is not None:
        why = check_signature(data["signature"])
        if why is not None:
            raise ValueError(why)
        stored["signature"] = data["signature"]
    out = {**{f: data[f] for f in RECORD_FIELDS}, "key": stored, "key_hash": key.stable_hash,
           "first_seen": seen[0], "last_seen": seen[1]}
    if data.get("reported") is not None:
        from tuner.runtime.reported import parse_reported

        out["reported"] = parse_reported(data["reported"], spec, made, dc.target)
    return out


class MissSink:
    """Where counted misses go (see the module docstring for adding a kind)."""

    name: ClassVar[str] = "sink"

    @classmethod
    def from_settings(cls, settings: Any, source: Any) -> "MissSink | None":
        return None

    def write(self, records: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class DatabaseSink(MissSink):
    """The tuning database the configurations come from (db.store.record_misses)."""

    name = "database"

    def __init__(self, url: str):
        self.url = url

    @classmethod
    def from_settings(cls, settings: Any, source: Any) -> "DatabaseSink | None":
        return cls(settings.db_url) if getattr(source, "name", None) == "database" else None

    def write(self, records: list[dict[str, Any]]) -> None:
        from db import store
        from db.reported import record_reported
        from db.session import session_scope, sqlite_path

        path = sqlite_path(self.url)
        if path is not None and not path.exists():
            raise FileNotFoundError(f"no tuning database at {path}")
        parsed = [parse_record(r) for r in records]
        with session_scope(self.url) as s:
            store.record_misses(s, parsed)
            record_reported(s, parsed)

    def describe(self) -> str:
        from db.urls import redact

        return f"database {redact(self.url)}"


class FileSink(MissSink):
    """JSON lines appended to a file (TUNER_MISS_FILE; by default TUNER_HOME/misses.jsonl when the
    source is a bundle), for `tuner misses import FILE`. Each flush is one append. A file (and a
    TUNER_HOME) it creates is this user's only (tuner/runtime/files.py)."""

    name = "file"

    def __init__(self, path: Path, make_dir: bool = False):
        self.path, self.make_dir = Path(path), make_dir

    @classmethod
    def from_settings(cls, settings: Any, source: Any) -> "FileSink | None":
        if settings.miss_file is not None:
            return cls(settings.miss_file)
        if getattr(source, "name", None) == "bundle":
            return cls(settings.home / "misses.jsonl", make_dir=True)
        return None

    def write(self, records: list[dict[str, Any]]) -> None:
        from tuner.runtime.files import PRIVATE_FILE, private_dir

        if self.make_dir:
            private_dir(self.path.parent)
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
        try:
            os.write(fd, data)  # one append: processes sharing the file never interleave a line
        finally:
            os.close(fd)

    def describe(self) -> str:
        return f"file {self.path}"


class HttpSink(MissSink):
    """The `tuner serve` the configurations come from (TUNER_CONFIG_URL): POST /v1/misses with the
    source's token, at most POST_BATCH records a request. A server that is down, hangs (for at most
    POST_TIMEOUT_S, in the flusher thread) or refuses costs the batch, never a launch. None where
    the client will not send the token there (the source already warned of it)."""

    name = "http"

    def __init__(self, url: str, options: Any):
        self.url, self.options = url.rstrip("/"), options

    @classmethod
    def from_settings(cls, settings: Any, source: Any) -> "HttpSink | None":
        from tuner.runtime import client

        if getattr(source, "name", None) != "http":
            return None
        options = client.Options.from_settings(settings)
        return None if client.refusal(settings.config_url, options) else cls(settings.config_url, options)

    def write(self, records: list[dict[str, Any]]) -> None:
        from tuner.runtime import client

        for i in range(0, len(records), POST_BATCH):
            client.call("POST", f"{self.url}/v1/misses", self.options, POST_TIMEOUT_S,
                        body={"records": records[i:i + POST_BATCH]})

    def describe(self) -> str:
        from db.urls import redact

        return f"config server {redact(self.url)}"


# an explicit TUNER_MISS_FILE wins; else the kind of the source decides (bundle: a file)
SINKS: list[type[MissSink]] = [FileSink, HttpSink, DatabaseSink]


def open_sink(settings: Any, source: Any) -> MissSink | None:
    for kind in SINKS:
        sink = kind.from_settings(settings, source)
        if sink is not None:
            return sink
    return None


class MissCounter:
    """The tallies of one process and the thread that flushes them."""

    def __init__(self, sink: MissSink, flush_s: float, warn: Callable[[str, str], None]):
        self.sink, self.flush_s, self.warn = sink, flush_s, warn
        self._tallies: dict[MissKey, Tally] = {}
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        # called (in the flusher thread) with the cache keys whose reported winners were written
        self.on_reported: Callable[[list[tuple]], None] | None = None

    def tally(self, key: MissKey) -> Tally:
        """The tally a cache entry adds its launches to (cold path)."""
        with self._lock:
            t = self._tallies.get(key)
            if t is None:
                t = self._tallies[key] = Tally(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tuner-misses", daemon=True)
                self._thread.start()
            return t

    def report(self, tally: Any, reported: tuple[dict[str, Any], tuple]) -> None:
        """A drop-in's locally timed winner ({"config", "median_ms"}, its cache key) for the key of
        tally (a Tally, or a Waiting that becomes one): written by the flusher, woken for it."""
        tally.reported = reported
        if type(tally) is Tally:
            self.wake()

    def wake(self) -> None:
        """Flush now rather than at the end of the interval (a winner waits to be written)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tuner-misses", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            self.flush()
            if stopping:
                return

    def pending(self) -> Iterable[tuple[Tally, int]]:
        with self._lock:
            tallies = list(self._tallies.values())
        return [(t, t.count - t.flushed) for t in tallies if t.count > t.flushed or t.reported is not None]

    def flush(self) -> int:
        """Write what was counted since the last flush; returns the records written (0 when the
        sink failed: those counts are dropped). One flush at a time, so no count is written twice."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> int:
        now = datetime.now(timezone.utc).isoformat()
        batch, asked = [], []
        for t, n in self.pending():
            t.flushed += n
            reported, t.reported = t.reported, None  # sent once: lost with the batch if the write fails
            if reported is not None:
                asked.append(reported[1])
            batch.append(record(t.key, n, t.first_seen, now, t.signature, reported and reported[0]))
        if not batch:
            return 0
        try:
            self.sink.write(batch)
        except Exception as exc:
            text = str(exc).strip().splitlines()
            self.warn("misses", f"tuner: cannot write runtime misses to {self.sink.describe()} "
                                f"({type(exc).__name__}: {text[0][:200] if text else ''}); dropped")
            return 0
        if asked and self.on_reported is not None and not self._stop.is_set():  # at exit nobody asks again
            self.on_reported(asked)
        return len(batch)

    def close(self, wait_s: float = EXIT_WAIT_S) -> None:
        """Flush once more in the flusher thread and wait for it at most wait_s (at exit)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(wait_s)

    def after_fork(self) -> None:
        """In a forked child: the flusher thread is gone; the parent's counts are the parent's."""
        self._lock, self._flushing = threading.Lock(), threading.Lock()
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread = None
        for t in self._tallies.values():
            t.flushed, t.reported = t.count, None
