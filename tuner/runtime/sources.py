"""Where the runtime reads stored configurations: one small `Source` interface and its kinds.

Adding a source is one class: subclass `Source`, give it a `name`, a `from_settings` that
returns an instance when the settings ask for it (else None), `exact` and `shapes` (and
`reported`, where it can hold what drop-in kernels reported); then put it
in `SOURCES`, before the kinds it should win over. The first kind whose `from_settings` answers
is the process's source. Both questions are asked from the runtime's background thread, never
on a launch; a source may raise (the runtime then serves defaults and asks again later) and
may keep what it read until `refresh()`. What a source returns is checked before it is served
(checks.py): a source need not trust its rows, but one that keeps rows on disk keeps only those
that pass (HttpSource).

The kinds, in the order they win: a `tuner serve` (TUNER_CONFIG_URL; HttpSource), a bundle file
(TUNER_CONFIG_BUNDLE), the database (TUNER_DB_URL, or the embedded default).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, ClassVar

from tuner.runtime.keys import first_line as _first_line
from tuner.runtime.rows import ShapeSet, Stored


class Source:
    """Stored configurations by key (see the module docstring for adding a kind)."""

    name: ClassVar[str] = "source"
    # the live device's limits, and the runtime's one-warning-per-cause, for a source that checks
    # rows as it reads them; open_source sets them (None: no such check, e.g. `tuner lookup`)
    target: Any = None
    warn: Callable[[str, str], None] | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> "Source | None":
        """An instance when the settings (tuner.settings.Settings) choose this kind, else None."""
        return None

    def exact(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        """The current bests of one key on a device class, newest first (any fingerprint)."""
        raise NotImplementedError

    def shapes(self, kernel: str, version: str, dtype: str, slug: str) -> ShapeSet:
        """Every stored shape of a kernel version and dtype on a device class."""
        raise NotImplementedError

    def reported(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        """The winners drop-in kernels timed and reported for one key on a class, the first
        reported first (one per fingerprint); none where the source holds none."""
        return []

    def refresh(self) -> None:
        """Forget what was read, so the next questions see rows stored since."""

    def prepare(self) -> None:
        """Read now what the first question will need, if that is local and cheap: the runtime calls
        it from its background thread as it starts, while the caller's thread imports the kernel, so
        that a first lookup is answered within the deadline. May raise (then asked again later)."""

    def describe(self) -> str:
        """Where it reads, for messages (no password)."""
        return self.name


class DatabaseSource(Source):
    """The tuning database (TUNER_DB_URL). A SQLite file (the embedded default) is read with the
    standard library's sqlite3 (db.best_rows), so that a model process's first lookup is answered
    within the deadline; any other database through db.store's reader of best rows."""

    name = "database"

    def __init__(self, url: str):
        from db.best_rows import sqlite_file

        self.url, self.file = url, sqlite_file(url)
        self._shapes: dict[tuple, ShapeSet] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> "DatabaseSource":
        return cls(settings.db_url)

    def describe(self) -> str:
        if self.file is not None:  # no password in it, and no SQLAlchemy to import for redact
            return f"database {self.url}"
        from db.urls import redact

        return f"database {redact(self.url)}"

    def _rows(self, kernel: str, version: str, slug: str, **narrow: str) -> list[Stored]:
        if self.file is not None:
            from db.best_rows import current_rows

            return [Stored(*row) for row in current_rows(self.file, kernel, version, slug, **narrow)]
        from db import store
        from db.session import session_scope

        with session_scope(self.url) as s:
            return [Stored(b.key["dims"], fp.hash, b.config, b.created_at.isoformat())
                    for b, _, fp in store.best_configs(s, kernel=kernel, kernel_version=version, device_classes=[slug],
                                                       **narrow)]

    def exact(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        return self._rows(kernel, version, slug, key_hash=key_hash)

    def reported(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        if self.file is not None:
            from db.best_rows import reported_rows

            return [Stored(*row) for row in reported_rows(self.file, kernel, version, slug, key_hash)]
        from db.reported import reported_configs
        from db.session import session_scope

        with session_scope(self.url) as s:
            return [Stored(r.key["dims"], r.fingerprint, r.config, r.reported_at.isoformat())
                    for r in reported_configs(s, kernel=kernel, kernel_version=version, key_hash=key_hash,
                                              device_class=slug)]

    def shapes(self, kernel: str, version: str, dtype: str, slug: str) -> ShapeSet:
        k = (kernel, version, dtype, slug)
        if k not in self._shapes:  # one scan per kernel and dtype, then nearest lookups are in memory
            self._shapes[k] = ShapeSet(self._rows(kernel, version, slug, dtype=dtype))
        return self._shapes[k]

    def refresh(self) -> None:
        self._shapes = {}


class BundleRows:
    """A bundle read (tuner.formats.bundle.Bundle) answering as a source does, with the shape sets
    built from it; what the bundle and HTTP sources hold."""

    def __init__(self, bundle: Any):
        self.bundle = bundle
        self._shapes: dict[tuple, ShapeSet] = {}

    def exact(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        rows = [Stored(e["key"]["dims"], fp, config, e.get("tuned_at"))
                for fp, config, e in self.bundle.exact(kernel, version, key_hash, slug)]
        return sorted(rows, key=lambda r: r.tuned_at or "", reverse=True)  # newest first, as the database

    def reported(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        rows = [Stored(e["key"]["dims"], fp, config, e.get("reported_at"))
                for fp, config, e in self.bundle.reported(kernel, version, key_hash, slug)]
        return sorted(rows, key=lambda r: r.tuned_at or "")  # the first reported first, as the database

    def shapes(self, kernel: str, version: str, dtype: str, slug: str) -> ShapeSet:
        k = (kernel, version, dtype, slug)
        if k not in self._shapes:
            self._shapes[k] = ShapeSet([Stored(dims, fp, config, tuned_at)
                                        for dims, fp, config, tuned_at in self.bundle.shapes(kernel, version, dtype, slug)])
        return self._shapes[k]


class BundleSource(Source):
    """An exported bundle file (TUNER_CONFIG_BUNDLE; tuner/formats/bundle.py), read again when
    its modification time changes."""

    name = "bundle"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._rows: BundleRows | None = None
        self._mtime: float | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> "BundleSource | None":
        return cls(settings.config_bundle) if settings.config_bundle is not None else None

    def describe(self) -> str:
        return f"bundle {self.path}"

    def _load(self) -> BundleRows:
        if self._rows is None:
            from tuner.formats.bundle import read

            mtime = self.path.stat().st_mtime
            self._rows, self._mtime = BundleRows(read(self.path)), mtime
        return self._rows

    def prepare(self) -> None:
        self._load()

    def exact(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        return self._load().exact(kernel, version, key_hash, slug)

    def shapes(self, kernel: str, version: str, dtype: str, slug: str) -> ShapeSet:
        return self._load().shapes(kernel, version, dtype, slug)

    def reported(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        return self._load().reported(kernel, version, key_hash, slug)

    def refresh(self) -> None:
        try:
            changed = self.path.stat().st_mtime != self._mtime
        except OSError:
            changed = True
        if changed:
            self._rows = None


class _Held:
    """The bundle an HTTP source serves a class from, and the ETag the server gave it."""

    __slots__ = ("rows", "etag", "fetched_at")

    def __init__(self, rows: BundleRows, etag: str | None, fetched_at: str):
        self.rows, self.etag, self.fetched_at = rows, etag, fetched_at


class HttpSource(Source):
    """A `tuner serve` (TUNER_CONFIG_URL): the bundle of the process's device class, from
    GET /v1/bundle?device_class=SLUG with the bearer token TUNER_RUNTIME_TOKEN, else
    TUNER_API_TOKEN (tuner/runtime/client.py: bounded, and never in clear beyond this machine).
    The entries it keeps, in memory and on disk, are those that pass the runtime's checks for the
    live device (checks.screen_bundle); without the live device's limits (`tuner lookup`) it keeps
    no copy.

    The first question of a class reads the copy kept on disk (TUNER_HOME/config-url/SLUG.json,
    0600, written atomically; the URL it came from is in it) and serves from it while the server
    is asked again in a thread of its own; without a copy the bundle is fetched there and then (a
    failure raises: the runtime serves defaults and asks again after TUNER_RUNTIME_RETRY_S).
    `refresh()` (the runtime calls it at most every TUNER_RUNTIME_RETRY_S, when it has a question)
    re-validates in that thread with If-None-Match: a 304 costs nothing, a new bundle replaces the
    one served, and its copy the one on disk. A server that is down, hangs or refuses the token
    while a bundle is held costs one warning; the bundle held goes on being served."""

    name = "http"
    FETCH_TIMEOUT_S = 10.0

    def __init__(self, url: str, options: Any, home: Path):
        self.url, self.options, self.home = url.rstrip("/"), options, Path(home)
        self._held: dict[str, _Held] = {}  # slug -> what is served; replaced whole, never changed in place
        self._fetching: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Any) -> "HttpSource | None":
        from tuner.runtime.client import Options

        return cls(settings.config_url, Options.from_settings(settings), settings.home) if settings.config_url else None

    def describe(self) -> str:
        from db.urls import redact

        return f"config server {redact(self.url)}"

    def copy_path(self, slug: str) -> Path:
        return self.home / "config-url" / f"{slug}.json"

    def exact(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        return self._rows(slug).exact(kernel, version, key_hash, slug)

    def shapes(self, kernel: str, version: str, dtype: str, slug: str) -> ShapeSet:
        return self._rows(slug).shapes(kernel, version, dtype, slug)

    def reported(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        return self._rows(slug).reported(kernel, version, key_hash, slug)

    def fetch_now(self) -> None:
        """Ask the server again now, in the calling thread, for every class held: after this process
        reported a winner (tuner/runtime/reported.py), so that the answer it is served next is the
        one the service kept. A failure is warned of once; what is held goes on being served."""
        for slug in list(self._held):
            self._refresh_one(slug)

    def refresh(self) -> None:
        for slug in list(self._held):
            self._fetch_in_background(slug)

    def _rows(self, slug: str) -> BundleRows:
        held = self._held.get(slug)
        if held is None:
            held = self._read_copy(slug)
            if held is not None:
                self._held[slug] = held
                self._fetch_in_background(slug)  # the server may hold newer rows than the copy
            else:
                held = self._fetch(slug)
        return held.rows

    def _fetch(self, slug: str) -> _Held:
        """Ask the server (If-None-Match: the ETag of what is held); the bundle now served."""
        import json
        from urllib.parse import quote

        from tuner.formats.bundle import Bundle
        from tuner.runtime import client

        old = self._held.get(slug)
        status, headers, body = client.call("GET", f"{self.url}/v1/bundle?device_class={quote(slug)}", self.options,
                                            self.FETCH_TIMEOUT_S, etag=old.etag if old is not None else None)
        if status == 304 and old is not None:
            return old
        try:
            doc = json.loads(body)
            if self.target is not None and isinstance(doc, dict) and isinstance(doc.get("entries"), list):
                from tuner.runtime.checks import screen_bundle

                doc = screen_bundle(doc, slug, self.target, self.warn or (lambda tag, message: None))
            rows = BundleRows(Bundle(doc, f"the answer of {self.describe()}"))
        except (ValueError, KeyError, TypeError) as exc:  # json's errors are ValueErrors
            raise ValueError(f"GET /v1/bundle answered {status} with no bundle: {str(exc)[:120]}") from None
        held = self._held[slug] = _Held(rows, headers.get("etag"), _now())
        if self.target is not None:
            self._write_copy(slug, doc, held)
        return held

    def _fetch_in_background(self, slug: str) -> None:
        with self._lock:
            running = self._fetching.get(slug)
            if running is not None and running.is_alive():  # (a thread of the parent is not alive after fork)
                return
            thread = self._fetching[slug] = threading.Thread(target=self._refresh_one, args=(slug,), daemon=True,
                                                             name="tuner-config-url")
        thread.start()

    def _refresh_one(self, slug: str) -> None:
        try:
            self._fetch(slug)
        except Exception as exc:
            held = self._held.get(slug)
            when = f"the copy fetched {held.fetched_at}" if held is not None else "what it holds"
            self._warn("refresh", f"tuner: cannot refresh tuned configurations from {self.describe()} "
                                  f"({_first_line(exc)}); serving {when}, asking again later")

    def _read_copy(self, slug: str) -> _Held | None:
        import json

        from tuner.formats.bundle import Bundle

        path = self.copy_path(slug)
        try:
            doc = json.loads(path.read_text())
            came = doc.get("served_by") or {}
            if came.get("url") != self.url:  # another server's rows are not this one's
                return None
            return _Held(BundleRows(Bundle(doc, str(path))), came.get("etag"), str(came.get("fetched_at")))
        except FileNotFoundError:
            return None
        except Exception as exc:  # a damaged copy: fetched afresh and overwritten
            self._warn("copy-read", f"tuner: ignoring the copy {path} ({_first_line(exc)})")
            return None

    def _write_copy(self, slug: str, doc: dict, held: _Held) -> None:
        """Keep the bundle for a restart without the server: the bundle as served, plus where it came
        from. 0600: the server keeps its results from other hosts behind the token, so the copy is
        for this user only (the token itself is never written)."""
        import json

        from tuner.formats.bundle import write_atomic

        from tuner.runtime.files import PRIVATE_FILE, private_dir

        path = self.copy_path(slug)
        try:
            private_dir(path.parent)
            write_atomic(path, json.dumps({**doc, "served_by": {"url": self.url, "etag": held.etag,
                                                                 "fetched_at": held.fetched_at}}), mode=PRIVATE_FILE)
        except OSError as exc:
            self._warn("copy-write", f"tuner: cannot keep a copy of the tuned configurations at {path} "
                                     f"({_first_line(exc)}); a restart without the server will serve defaults")

    def _warn(self, tag: str, message: str) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            logging.getLogger("tuner.runtime").warning(message)


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# the kinds of source, the first whose from_settings answers wins
# TUNER_CONFIG_URL, then TUNER_CONFIG_BUNDLE, then TUNER_DB_URL (or the embedded default)
SOURCES: list[type[Source]] = [HttpSource, BundleSource, DatabaseSource]


def open_source(settings: Any, target: Any = None, warn: Callable[[str, str], None] | None = None) -> Source:
    """The process's source for these settings; rows it keeps are checked for target (the live
    device's limits), refusals told through warn."""
    for kind in SOURCES:
        source = kind.from_settings(settings)
        if source is not None:
            source.target, source.warn = target, warn
            return source
    raise LookupError("no configuration source is configured")
